"""Which conditions a trained generator actually uses (a training diagnostic, not a paper metric).

A MAR predicts each masked token from two sources: the visible tokens (context, through encoder and
decoder) and the caption (through the cross stack). The probe measures the masked-token ε-MSE three
times on the same batch with the same mask, order, timesteps and noise: as trained; with the visible
tokens taken from another image (`context_gain` = the loss increase); with the null condition instead
of the caption (`text_gain`). A gain near 0 means the model ignores that source. On the testbed a
too-large learning rate drives `context_gain` to ~1e-7 within ~50 steps and keeps it there for
thousands of steps: the model then samples every token independently (mosaics), whatever its loss.

`completion` asks the same question of the sampler: it regenerates the right half of each image from
its own left half and from another image's left half (same caption, same seeds). Their errors against
the true right half have a ratio near 1 when sampling ignores what is already drawn.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from lightgen.errors import InputError
from lightgen.mar import LightGen


@dataclass
class ProbeResult:
    loss: float  # masked-token ε-MSE as trained
    context_gain: float  # loss(visible tokens of another image) − loss
    text_gain: float  # loss(null condition) − loss
    masked: int  # masked tokens per image
    images: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def probe(model: LightGen, latents: torch.Tensor, text_states: torch.Tensor, masked_fraction: float = 0.5,
          seed: int = 0) -> ProbeResult:
    """Latents (B, C, h, w) normalised as in training, raw text states (B, T, caption_channels)."""
    was_training = model.training
    model.eval()
    x = model.patchify(latents)
    B, L, _ = x.shape
    if B < 2:
        raise ValueError("probe: needs at least 2 images (context is swapped between them)")
    n_mask = max(1, min(L - 1, round(L * masked_fraction)))
    g = torch.Generator().manual_seed(seed)
    orders = torch.rand(B, L, generator=g).argsort(1).to(latents.device)
    rows = B * n_mask * model.config.diffusion_batch_mul
    t = torch.randint(0, 1000, (rows,), generator=g).to(latents.device)
    noise = torch.randn(rows, model.config.token_dim, generator=g).to(latents.device)
    masked = torch.zeros(B, L, dtype=torch.bool, device=x.device).scatter(1, orders[:, :n_mask], True)
    grid = (latents.shape[-2] // model.config.patch_size, latents.shape[-1] // model.config.patch_size)
    other = model.unpatchify(torch.where(masked[..., None], x, x.roll(1, 0)), *grid)
    keep, drop = torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)

    def loss(lat, dropped):
        return model(lat, text_states, orders=orders, num_masked=n_mask, drop_text=dropped.to(latents.device),
                     t=t, noise=noise, vb=False).item()

    base = loss(latents, keep)
    result = ProbeResult(base, loss(other, keep) - base, loss(latents, drop) - base, n_mask, B)
    model.train(was_training)
    return result


@dataclass
class CompletionResult:
    own_mse: float  # error of the regenerated right halves, given each image's own left half
    swapped_mse: float  # the same, given another image's left half
    ratio: float  # own / swapped: ~1 = sampling ignores the visible tokens; 0 = perfect completion
    images: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def completion(model: LightGen, latents: torch.Tensor, text_states: torch.Tensor, seed: int = 0,
               steps: int = 16, guidance_scale: float = 1.0) -> CompletionResult:
    """Regenerate the right half of each image (latents (B, C, h, w), B >= 2) with its caption, once
    with its own left half visible and once with the next image's; image i uses seed + i both times."""
    was_training = model.training
    model.eval()
    x = model.patchify(latents)
    B = x.shape[0]
    if B < 2:
        raise ValueError("completion: needs at least 2 images (left halves are swapped between them)")
    rows, cols = latents.shape[-2] // model.config.patch_size, latents.shape[-1] // model.config.patch_size
    fill = (torch.arange(cols) >= cols // 2).repeat(rows)  # (L,), row-major tokens
    size = dict(height=latents.shape[-2] * model.config.vae_stride, width=latents.shape[-1] * model.config.vae_stride)

    def right_half_mse(init: torch.Tensor) -> float:
        gens = [torch.Generator(latents.device).manual_seed(seed + i) for i in range(B)]
        out = model.sample_tokens(text_states, gens, num_iter=steps, guidance_scale=guidance_scale, init_tokens=init, inpaint_mask=fill,
                                  **size)
        return (out - x)[:, fill.to(x.device)].pow(2).mean().item()

    own, swapped = right_half_mse(x), right_half_mse(torch.where(fill[None, :, None].to(x.device), x, x.roll(1, 0)))
    model.train(was_training)
    return CompletionResult(own, swapped, own / swapped, B)


def spaced(total: int, n: int) -> list[int]:
    """`min(n, total)` evenly spaced indices into `total` rows, first and last included."""
    return [round(i * (total - 1) / max(1, n - 1)) for i in range(min(n, total))]


def load_rows(path, cache, n: int = 256, weights: str | None = None, seed: int = 0):
    """(model, latents, text states): a pipeline directory's model and `n` evenly spaced rows of a
    feature cache it was trained on, normalised as in training; load once, then `probe`/`completion`."""
    from lightgen.cache import FeatureCache
    from lightgen.checkpoint import load_into
    from lightgen.codecs import normalize_moments
    from lightgen.train import load_init

    config, state = load_init(path, weights)
    features = FeatureCache(cache, config)
    samples = [features[r] for r in spaced(len(features), n)]
    model = LightGen(config)
    load_into(model, state, f"{path}")
    # the posterior sample (VAE codecs) is seeded too, so a probe is reproducible
    latents = normalize_moments(torch.stack([s.moments for s in samples]), config.scaling_factor, config.shift_factor,
                                sample=config.codec != "pixel", generator=torch.Generator().manual_seed(seed))
    return model, latents, torch.stack([s.text for s in samples])


def probe_pipeline(path, cache, n: int = 256, masked_fraction: float = 0.5, weights: str | None = None,
                   seed: int = 0, completion_images: int = 0) -> dict:
    """`probe` of a pipeline directory on `n` evenly spaced rows of a feature cache it was trained on,
    and with `completion_images` >= 2, `completion` on that many of those rows (evenly spaced), from one
    model load."""
    if not 0 < masked_fraction < 1:
        raise InputError(f"masked: expected a fraction in (0, 1), got {masked_fraction}")
    if completion_images and not 2 <= completion_images <= n:
        raise InputError(f"completion: expected 0 (off) or 2 to n ({n}) images, got {completion_images}")
    model, latents, text = load_rows(path, cache, n, weights, seed)
    result = probe(model, latents, text, masked_fraction, seed).to_dict()
    if completion_images:
        rows = spaced(len(latents), completion_images)
        result["completion"] = completion(model, latents[rows], text[rows], seed).to_dict()
    return result
