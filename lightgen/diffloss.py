"""Per-token diffusion head (MAR's DiffLoss; LightGen §3, MAR Eq. 6 with improved-DDPM numerics).

A small AdaLN MLP predicts ε and a learned-range variance for one token `x` given its transformer
condition `c`. Training: cosine schedule, 1000 steps, loss = MSE(ε) + VB term. Sampling: the 1000-step
process respaced to `num_sampling_steps`, ancestral steps, CFG on ε only, temperature on the per-step
noise only.

Two opt-in training options (official defaults: ε, uniform t) exist because the ε-loss barely rewards
knowing x0 where the noise is high (an x0 error e costs √SNR·e in ε), which is exactly where the sampler
picks each token's mode, and where only the transformer's context can tell: `prediction="v"`
(v = √ᾱ·ε − √(1−ᾱ)·x0, whose loss weights x0 errors by 1 + SNR) and `timestep_shift` > 1 (t drawn
from u' = s·u / (1 + (s−1)·u), u uniform: every t kept, more mass at high noise).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

# draws -> (draws, rows, channels) standard normal noise: all of one sampling call's noise at once, so
# per-image generators cost one random call per image and AR step, not one per diffusion step
Randn = Callable[[int], torch.Tensor]


# ----------------------------------------------------------------------------------------- network
class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding ([cos | sin], 256 dims) of the *integer* timestep, then an MLP."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(self.in_ln(x) * (1 + scale) + shift)


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


class SimpleMLPAdaLN(nn.Module):
    """net(x, t, c) -> (N, 2·C): ε channels ‖ variance-interpolation channels."""

    def __init__(self, in_channels: int, cond_channels: int, width: int, depth: int):
        super().__init__()
        self.in_channels = in_channels
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(cond_channels, width)
        self.input_proj = nn.Linear(in_channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, 2 * in_channels)
        self.grad_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for lin in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        zeroed = [b.adaLN_modulation[-1] for b in self.res_blocks]
        zeroed += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for lin in zeroed:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The reference computation: every embedding evaluated for every row."""
        return self.body(self.input_proj(x), self.time_embed(t) + self.cond_embed(c))

    def body(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Res-blocks + final layer on projected input `x` and condition `y` = time + cond embedding.
        Callers that know `y` repeats (one timestep per sampling step, a condition reused over 100
        steps, a finite set of training timesteps) compute it once and broadcast it here."""
        for block in self.res_blocks:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, y, use_reentrant=False)
            else:
                x = block(x, y)
        return self.final_layer(x, y)


# ----------------------------------------------------------------------------------------- process
def _cosine_betas(steps: int) -> torch.Tensor:
    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)],
                        dtype=torch.float64)


def _spaced_steps(total: int, count: int) -> list[int]:
    """Evenly spaced, rounded kept steps (improved-DDPM `space_timesteps(total, [count])`)."""
    if count == 1:
        return [0]
    stride = (total - 1) / (count - 1)
    return [round(i * stride) for i in range(count)]


def _normal_kl(m1, lv1, m2, lv2):
    return 0.5 * (-1.0 + lv2 - lv1 + torch.exp(lv1 - lv2) + (m1 - m2) ** 2 * torch.exp(-lv2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _discretized_gaussian_nll(x, mean, log_scale):
    """−log p(x) for data on 256 bins in [−1, 1] (improved-DDPM decoder term at t = 0)."""
    centered, inv_std = x - mean, torch.exp(-log_scale)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1 / 255))
    cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))
    return -log_probs


PREDICTIONS = ("epsilon", "v")


class GaussianDiffusion:
    """ε- (or v-) prediction, learned-range variance diffusion over the kept subset of a cosine schedule.

    `use_steps` = all 1000 for training; a respaced subset for sampling, where the network still
    sees the *original* timestep index (no rescaling), as in the official code.
    `clip_x0` clamps the predicted x0 while sampling (DDPM's `clip_denoised`; off officially). The
    cosine schedule ends at ᾱ ≈ 2e-9, where an ε error e moves x0 by e·2e4: a long-trained head is
    precise enough, a minutes-trained one is not, and data with a known range can be clipped.
    """

    def __init__(self, use_steps: list[int], total_steps: int = 1000, clip_x0: float | None = None,
                 prediction: str = "epsilon", timestep_shift: float = 1.0):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction: expected one of {PREDICTIONS}, got {prediction!r}")
        self.clip_x0, self.prediction, self.timestep_shift = clip_x0, prediction, timestep_shift
        base_ac = torch.cumprod(1 - _cosine_betas(total_steps), 0)
        ac = base_ac[use_steps]
        betas = 1 - ac / torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])
        ac_prev = torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])
        post_var = betas * (1 - ac_prev) / (1 - ac)
        self.num_steps = len(use_steps)
        self.timestep_map = torch.tensor(use_steps, dtype=torch.long)
        f32 = lambda v: v.to(torch.float32)  # noqa: E731  (tables computed in float64, used in float32)
        self.sqrt_ac, self.sqrt_1m_ac = f32(ac.sqrt()), f32((1 - ac).sqrt())
        self.sqrt_recip_ac, self.sqrt_recipm1_ac = f32((1 / ac).sqrt()), f32((1 / ac - 1).sqrt())
        self.post_coef1 = f32(betas * ac_prev.sqrt() / (1 - ac))
        self.post_coef2 = f32((1 - ac_prev) * (1 - betas).sqrt() / (1 - ac))
        self.post_log_var = f32(torch.log(torch.cat([post_var[1:2], post_var[1:]])))
        self.log_betas = f32(torch.log(betas))

    @staticmethod
    def _at(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return table.to(t.device)[t][:, None]

    def q_sample(self, x0, t, noise):
        return self._at(self.sqrt_ac, t) * x0 + self._at(self.sqrt_1m_ac, t) * noise

    def sample_t(self, n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training timesteps: uniform (official), or shifted toward high noise by `timestep_shift`."""
        if self.timestep_shift == 1.0:
            return torch.randint(0, self.num_steps, (n,), device=device, generator=generator)
        u = torch.rand(n, device=device, generator=generator)
        u = self.timestep_shift * u / (1 + (self.timestep_shift - 1) * u)
        return (u * self.num_steps).long().clamp(max=self.num_steps - 1)

    def target(self, x0, t, noise):
        """What the network regresses: ε, or v = √ᾱ·ε − √(1−ᾱ)·x0."""
        if self.prediction == "epsilon":
            return noise
        return self._at(self.sqrt_ac, t) * noise - self._at(self.sqrt_1m_ac, t) * x0

    def to_eps(self, out, xt, t):
        """The network's prediction as ε (v -> ε = √ᾱ·v + √(1−ᾱ)·x_t): CFG and the posterior use ε."""
        if self.prediction == "epsilon":
            return out
        return self._at(self.sqrt_ac, t) * out + self._at(self.sqrt_1m_ac, t) * xt

    def _posterior(self, x0, xt, t):
        mean = self._at(self.post_coef1, t) * x0 + self._at(self.post_coef2, t) * xt
        return mean, self._at(self.post_log_var, t)

    def p_mean_logvar(self, eps, v, xt, t):
        frac = (v + 1) / 2
        log_var = frac * self._at(self.log_betas, t) + (1 - frac) * self._at(self.post_log_var, t)
        x0 = self._at(self.sqrt_recip_ac, t) * xt - self._at(self.sqrt_recipm1_ac, t) * eps
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        mean, _ = self._posterior(x0, xt, t)
        return mean, log_var

    def training_losses(self, net: nn.Module, x0, c, t=None, noise=None, vb: bool = True,
                        fast: bool = True) -> torch.Tensor:
        """Per-row loss (N,): mean_C (ε − ε̂)² + VB (bits; ε detached inside it, as improved-DDPM).
        With v-prediction the MSE is on v. `vb=False` gives the plain MSE (what Diffusion-DPO compares).
        `fast=False`: reference path."""
        if t is None:
            t = self.sample_t(x0.shape[0], x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        xt = self.q_sample(x0, t, noise)
        if fast and len(t) > self.num_steps:  # embed each of the T steps once, gather per row
            table = net.time_embed(self.timestep_map.to(t.device))
            out = net.body(net.input_proj(xt), table[t] + net.cond_embed(c))
        else:
            out = net(xt, self.timestep_map.to(t.device)[t], c)
        pred, v = out.chunk(2, dim=-1)
        mse = (self.target(x0, t, noise) - pred).pow(2).mean(-1)
        if not vb:
            return mse
        true_mean, true_lv = self._posterior(x0, xt, t)
        mean, lv = self.p_mean_logvar(self.to_eps(pred.detach(), xt, t), v, xt, t)
        kl = _normal_kl(true_mean, true_lv, mean, lv).mean(-1) / math.log(2.0)
        nll = _discretized_gaussian_nll(x0, mean, 0.5 * lv).mean(-1) / math.log(2.0)
        return mse + torch.where(t == 0, nll, kl)

    @torch.no_grad()
    def sample(self, net: nn.Module, c: torch.Tensor, randn: Randn, cfg: float | None = None,
               temperature: float = 1.0, fast: bool = True) -> torch.Tensor:
        """Ancestral sampling. With a guidance scale `cfg`, `c` is [cond ‖ uncond] and only the cond
        half is returned: both halves share the noise, ε is guided, each half keeps its own variance.
        `fast` hoists what does not change over the steps (condition embedding; the time embeddings of
        all steps in one call; the shared input projection of both CFG halves); `fast=False` is the reference."""
        guided = cfg is not None
        n = c.shape[0] // 2 if guided else c.shape[0]
        noise = randn(self.num_steps)  # [0]: x_T; [j]: the noise added by the j-th step
        x = noise[0]
        steps = self.timestep_map.to(c.device)
        cond, temb = (net.cond_embed(c), net.time_embed(steps)) if fast else (None, None)
        for i in reversed(range(self.num_steps)):
            t = torch.full((n,), i, dtype=torch.long, device=c.device)
            if fast:
                h = net.input_proj(x)
                out = net.body(torch.cat([h, h]) if guided else h, temb[i:i + 1] + cond)
            else:
                tt = steps[t]
                out = net(torch.cat([x, x]), torch.cat([tt, tt]), c) if guided else net(x, tt, c)
            eps, v = out.chunk(2, dim=-1)
            if self.prediction != "epsilon":
                eps = self.to_eps(eps, torch.cat([x, x]) if guided else x, torch.cat([t, t]) if guided else t)
            if guided:
                eps_c, eps_u = eps.chunk(2)
                eps, v = eps_u + cfg * (eps_c - eps_u), v[:n]
            mean, lv = self.p_mean_logvar(eps, v, x, t)
            x = mean if i == 0 else mean + torch.exp(0.5 * lv) * noise[self.num_steps - i] * temperature
        return x


class DiffLoss(nn.Module):
    """The head as laid out officially (`diffloss.net.*`), with its train and sampling processes."""

    def __init__(self, target_channels: int, z_channels: int, width: int, depth: int,
                 num_sampling_steps: int = 100, clip_x0: float | None = None, prediction: str = "epsilon",
                 timestep_shift: float = 1.0):
        super().__init__()
        self.in_channels = target_channels
        self.net = SimpleMLPAdaLN(target_channels, z_channels, width, depth)
        self.train_diffusion = GaussianDiffusion(list(range(1000)), prediction=prediction, timestep_shift=timestep_shift)
        self.sample_diffusion = GaussianDiffusion(_spaced_steps(1000, num_sampling_steps), clip_x0=clip_x0,
                                                  prediction=prediction)

    def forward(self, target, z, t=None, noise=None, vb: bool = True, fast: bool = True) -> torch.Tensor:
        """Per-row loss (N,); the caller applies the token mask."""
        return self.train_diffusion.training_losses(self.net, target, z, t, noise, vb, fast)

    def sample(self, z, randn: Randn, cfg: float | None = None, temperature: float = 1.0,
               fast: bool = True) -> torch.Tensor:
        return self.sample_diffusion.sample(self.net, z, randn, cfg, temperature, fast)
