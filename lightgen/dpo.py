"""Diffusion-DPO for the MAR head (paper §4.2, Eq. 7; Wallace et al. adapted to per-token diffusion).

For a pair (caption, winner, loser) the policy and the frozen reference see the *same* mask and order,
text drop, timesteps and noise for winner and loser. With E the per-image ε-error over masked tokens:

    loss = −log σ(−β/2 · [(E^θ_w − E^ref_w) − (E^θ_l − E^ref_l)])

The UNet student (lightgen/unet_student.py) feeds its own diffusers objective to the same loss
(`preference_loss`), with one timestep, noise and text drop per pair.

Pairs follow the official builder: winner = a reference image for the caption (a real image, or the
testbed teacher's render), loser = the current model's own sample (either student's pipeline).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from lightgen.codecs import config_latents
from lightgen.config import LightGenConfig
from lightgen.errors import InputError


def shared_randomness(model, batch: int, length: int, config: LightGenConfig, device) -> dict:
    """One order, mask count, text-drop flag, timestep and noise per pair, duplicated winner/loser."""
    raw = getattr(model, "module", model)
    orders = raw.sample_orders(batch, length, device)
    n_mask = raw.sample_mask_count(length, device)
    drop = torch.rand(batch, device=device) < config.text_drop_prob
    rows = (config.diffusion_batch_mul, batch, n_mask)
    t = raw.diffloss.train_diffusion.sample_t(math.prod(rows), device).view(rows)
    noise = torch.randn(*rows, config.token_dim, device=device)
    pair = lambda a, dim: torch.cat([a, a], dim=dim)  # noqa: E731
    return dict(orders=pair(orders, 0), num_masked=n_mask, drop_text=pair(drop, 0),
                t=pair(t, 1).flatten(), noise=pair(noise, 1).flatten(0, 2))


def dpo_loss(model, batch, config: LightGenConfig, reference, cfg) -> tuple[torch.Tensor, dict[str, float]]:
    """Batch = (winner moments, loser moments, text states); returns the loss and logged metrics."""
    winners, losers, text = batch
    B = winners.shape[0]
    x = config_latents(torch.cat([winners, losers]), config)
    text2 = torch.cat([text, text])
    L = (x.shape[-2] // config.patch_size) * (x.shape[-1] // config.patch_size)
    shared = shared_randomness(model, B, L, config, x.device)
    err = model(x, text2, reduction="none", vb=cfg.dpo_vb, **shared)
    with torch.no_grad():
        ref = reference(x, text2, reduction="none", vb=cfg.dpo_vb, **shared)
    return preference_loss(err, ref, cfg)


def preference_loss(err: torch.Tensor, ref: torch.Tensor, cfg) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 7 on per-sample errors `[winners; losers]` of the policy (`err`) and the frozen reference (`ref`),
    plus `cfg.dpo_sft_weight` × the winners' mean error; the one implementation every student's DPO uses."""
    (e_w, e_l), (r_w, r_l) = err.chunk(2), ref.chunk(2)
    inside = -0.5 * cfg.dpo_beta * ((e_w - r_w) - (e_l - r_l))
    loss = -F.logsigmoid(inside).mean()
    if cfg.dpo_sft_weight:
        loss = loss + cfg.dpo_sft_weight * e_w.mean()
    return loss, {"implicit_acc": (inside > 0).float().mean().item(), "reward_margin": inside.mean().item(),
                  "err_w": e_w.mean().item(), "err_l": e_l.mean().item()}


def build_pairs(ckpt: str | Path, out: str | Path, winners, captions: list[str] | None = None, n: int | None = None,
                seed: int = 0, steps: int = 64, guidance_scale: float = 4.0, device: str = "cpu") -> Path:
    """Write `out/winner` and `out/loser`: two text-to-image folders, row-aligned (same captions, same
    order). `winners` is a teacher (renders the captions) or a reference dataset folder (its images, as
    the official builder's real photos). Losers are `ckpt`'s own samples. Both steps resume."""
    from lightgen.distill import T2IFolder, distill, sample_key

    out = Path(out)
    losers = _own_sampler(Path(ckpt), steps, guidance_scale, device)
    if isinstance(winners, (str, Path)):
        reference = T2IFolder(winners)
        count = len(reference) if n is None else min(n, len(reference))
        captions = [reference.caption(i) for i in range(count)]
        _copy_rows(reference, out / "winner", count, sample_key)
    else:
        if not captions:
            raise InputError("captions: the teacher needs at least one caption")
        count = n or len(captions)
        distill(winners, captions, out / "winner", n=count, seed=seed)
        captions = [captions[i % len(captions)] for i in range(count)]
    distill(losers, captions, out / "loser", n=count, seed=seed)
    return out


def model_resolution(ckpt: str | Path) -> int:
    """The sampling resolution of a trained student's pipeline (the UNet's record, else LightGen's config)."""
    record = Path(ckpt) / "lightgen_student.json"
    if record.is_file():
        return int(json.loads(record.read_text())["resolution"])
    from lightgen.pipeline import read_pipeline_config
    return read_pipeline_config(ckpt)[0].resolution


def _own_sampler(ckpt: Path, steps: int, guidance_scale: float, device: str):
    """The model's sampler as a teacher, at its resolution. The name identifies the checkpoint (path + weights
    mtime): a retrained model never resumes old losers."""
    from lightgen.distill import SeededPipeline
    from lightgen.pipeline import LightGenPipeline

    side = model_resolution(ckpt)
    kwargs = dict(num_inference_steps=steps, guidance_scale=guidance_scale, height=side, width=side)
    if (ckpt / "model_index.json").is_file():  # the UNet student's IFPipeline
        weights = ckpt / "unet" / "diffusion_pytorch_model.safetensors"
        return SeededPipeline(str(ckpt), device, f"diffusers:{ckpt.resolve()}@{weights.stat().st_mtime_ns}", **kwargs)
    pipe = LightGenPipeline.from_pretrained(ckpt, device=device)
    weights = ckpt / f"{pipe.default_weights}.safetensors"
    return SeededPipeline(pipe, device, f"lightgen:{ckpt.resolve()}@{weights.stat().st_mtime_ns}", **kwargs)


def _copy_rows(reference, out: Path, count: int, key) -> None:
    """The first `count` rows of a reference dataset, re-indexed like a distilled folder."""
    from lightgen.files import atomic_write

    for i in range(count):
        image, caption = reference[i]
        dest = out / key(i)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.with_suffix(".json").exists():
            atomic_write(dest.with_suffix(".png"), lambda tmp: image.save(tmp, format="PNG"))
            atomic_write(dest.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps({"prompt": caption})))
    atomic_write(out / "index.txt", lambda tmp: Path(tmp).write_text("".join(key(i) + "\n" for i in range(count))))
