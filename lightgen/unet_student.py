"""A peer student: a small pixel-space `diffusers.UNet2DConditionModel` trained on the same data.

The paper's data claims (plateau, diversity over volume) are about the distilled *data*, so they
should hold for any student. This one is built from diffusers parts only and learns fast at small
scale: DDPM noise (`DDPMScheduler.add_noise`) and diffusers' ε-MSE loss on the pixels the testbed
codec caches, cross-attention (at the low resolutions) to the same frozen text states, the null
condition of classifier-free guidance = the encoder's states of the empty prompt, as the pipeline
uses at sampling time.

It is saved as a diffusers `IFPipeline` (DeepFloyd IF's stage 1: pixel-space UNet2DConditionModel +
T5EncoderModel + tokenizer + scheduler), so `lightgen-bench geneval --pipeline DIR` and any diffusers
code load it without a special case. What IFPipeline hard-codes, and how the student meets it:
  * prompts are tokenised to 77 tokens: the student's text states are cached at max_length 77. T5
    masks padding, so the states of the real tokens are those of the LightGen testbed preset
    (max_length 16) — only more padding positions follow them.
  * its guidance splits the UNet output into ε and a variance half (IF learns its variance): the
    UNet has 2 × 3 output channels; the scheduler's fixed variance ignores the second half, which
    the loss does not train.
  * the scheduler must have `variance_type`: sampling uses DPMSolverMultistepScheduler (DPM-Solver++,
    ~20 steps, x0 clipped to the pixel range) built from the training DDPMScheduler's config.
  * safety checker, feature extractor and watermarker are optional components, left out.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lightgen.cache import FeatureCache
from lightgen.codecs import config_latents
from lightgen.config import STAGE_FIELDS, LightGenConfig
from lightgen.errors import InputError, Rule, check_fields, check_known, check_same, integer, list_of, number, \
    one_of, optional
from lightgen.text import TextEncoder

IF_MAX_LENGTH = 77  # IFPipeline.encode_prompt's fixed token length


@dataclass
class UNetStudentConfig:
    """The UNet and its noise schedule (the text encoder and codec come from the LightGen config)."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    attention_levels: list[int] = field(default_factory=lambda: [1, 2])  # 0 = full resolution
    attention_head_dim: int = 32
    norm_num_groups: int = 8
    mid_block_type: str = "UNetMidBlock2DCrossAttn"  # or "UNetMidBlock2D" (no attention)
    addition_embed_type: str | None = None  # "text": the caption attention-pooled into the time embedding (IF)
    resnet_time_scale_shift: str = "default"  # "scale_shift": the embedding scales and shifts (IF), not adds
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"  # "epsilon" | "v_prediction" | "sample" (x0)
    snr_gamma: float | None = None  # Min-SNR loss weighting (diffusers' training scripts' --snr_gamma)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "unet") -> "UNetStudentConfig":
        try:
            return cls(**check_known(raw, cls, source))
        except InputError as e:
            raise InputError(f"{source}: {e}") from None

    def __post_init__(self) -> None:
        check_fields(self, UNET_RULES)
        levels = len(self.block_out_channels)
        if not all(0 <= a < levels for a in self.attention_levels):
            raise InputError(f"attention_levels: expected levels in [0, {levels}), got {self.attention_levels}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise InputError(f"norm_num_groups: {self.norm_num_groups} must divide every block_out_channels entry "
                             f"{self.block_out_channels}")


UNET_RULES: dict[str, Rule] = dict(
    block_out_channels=list_of(integer(1), nonempty=True), layers_per_block=integer(1),
    attention_levels=list_of(integer(0)), attention_head_dim=integer(1), norm_num_groups=integer(1),
    mid_block_type=one_of("UNetMidBlock2DCrossAttn", "UNetMidBlock2D"), addition_embed_type=optional(one_of("text")),
    resnet_time_scale_shift=one_of("default", "scale_shift"), num_train_timesteps=integer(2),
    beta_schedule=one_of("linear", "scaled_linear", "squaredcos_cap_v2"),
    prediction_type=one_of("epsilon", "v_prediction", "sample"), snr_gamma=optional(number(0, above=True)))


def check_text_length(config: LightGenConfig) -> None:
    """What the data side of a UNet student's config must be: pixels, IFPipeline's text length."""
    if config.codec != "pixel":
        raise InputError(f"model.codec: the UNet student works on pixels; expected 'pixel', got {config.codec!r}")
    if config.max_length != IF_MAX_LENGTH:
        raise InputError(f"model.max_length: the UNet student is saved as an IFPipeline, which encodes prompts to "
                         f"{IF_MAX_LENGTH} tokens; expected {IF_MAX_LENGTH}, got {config.max_length}")


def build_unet(config: LightGenConfig, unet: UNetStudentConfig, resolution: int):
    from diffusers import UNet2DConditionModel

    n = len(unet.block_out_channels)
    down = tuple("CrossAttnDownBlock2D" if i in unet.attention_levels else "DownBlock2D" for i in range(n))
    up = tuple("CrossAttnUpBlock2D" if n - 1 - i in unet.attention_levels else "UpBlock2D" for i in range(n))
    return UNet2DConditionModel(
        sample_size=resolution, in_channels=config.latent_channels, out_channels=2 * config.latent_channels,
        block_out_channels=tuple(unet.block_out_channels), layers_per_block=unet.layers_per_block,
        down_block_types=down, up_block_types=up,
        cross_attention_dim=config.caption_channels, attention_head_dim=unet.attention_head_dim,
        norm_num_groups=unet.norm_num_groups, mid_block_type=unet.mid_block_type,
        addition_embed_type=unet.addition_embed_type, resnet_time_scale_shift=unet.resnet_time_scale_shift)


def train_scheduler(unet: UNetStudentConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=unet.num_train_timesteps, beta_schedule=unet.beta_schedule,
                         prediction_type=unet.prediction_type, variance_type="fixed_small", clip_sample=True)


def sampling_scheduler(train: Any):
    """DPM-Solver++ (2nd order) on the training schedule; the predicted x0 is clipped to the pixel range
    [-1, 1] (dynamic thresholding with its ceiling at 1), as DDPM's `clip_sample` and LightGen's testbed
    `clip_sample: 1.0` do."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(train.config, algorithm_type="dpmsolver++", solver_order=2,
                                                   thresholding=True, sample_max_value=1.0)


def text_encoder_source(config: LightGenConfig, cache: FeatureCache) -> str:
    """Where the cache's frozen text encoder loads from: the copy a tiny-t5 cache stores, else the config's."""
    local = cache.text_encoder_path()
    if local is None and config.text_encoder == "tiny-t5":
        raise InputError(f"{cache.path}: the cache holds no text_encoder/ for its tiny-t5; rebuild it")
    return str(local) if local is not None else config.text_encoder


class UNetStudent:
    """What the trainer needs from a student: the network, its initial weights, optimizer groups, its
    loss on a batch (KD) or on a batch of preference pairs (Diffusion-DPO), its export."""

    name = "unet"

    def __init__(self, config: LightGenConfig, unet: UNetStudentConfig, resolution: int, cache: FeatureCache):
        check_text_length(config)
        self.config, self.unet, self.resolution = config, unet, resolution
        self.scheduler = train_scheduler(unet)
        self.text_encoder = text_encoder_source(config, cache)
        # the null condition of guidance: IFPipeline's negative prompt "" through the same encoder
        self.null_text = TextEncoder.from_pretrained(self.text_encoder, config.max_length)([""])

    def build(self) -> torch.nn.Module:
        return build_unet(self.config, self.unet, self.resolution)

    def init_state(self, path: str | Path, weights: str | None = None) -> dict[str, torch.Tensor]:
        """The UNet weights of a pipeline this student exported (they are its EMA weights), refused when its
        recorded configs mean something else (e.g. an ε UNet for a v-prediction run)."""
        from diffusers import UNet2DConditionModel

        if weights not in (None, "model_ema"):
            raise InputError(f"init_weights: a UNet pipeline holds its EMA weights only, got {weights!r}")
        record = Path(path) / "lightgen_student.json"
        if record.is_file():
            saved = json.loads(record.read_text())
            check_same(f"init_from {path}", self.unet, UNetStudentConfig(**saved["unet"]), frozenset({"snr_gamma"}))
            check_same(f"init_from {path}", self.config, LightGenConfig(**saved["lightgen"]), STAGE_FIELDS)
        try:
            return UNet2DConditionModel.from_pretrained(str(path), subfolder="unet").state_dict()
        except (OSError, EnvironmentError) as e:
            raise InputError(f"init_from {path}: not a UNet student pipeline ({e})") from e

    def param_groups(self, model: torch.nn.Module, weight_decay: float, head_lr_scale: float = 1.0) -> list[dict]:
        """Decay on weights of rank > 1 only (diffusers scripts decay all; norms and biases are the usual
        exception); no separate head."""
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (no_decay if p.ndim == 1 or name.endswith(".bias") else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
                {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]

    def loss(self, model, batch, **_) -> tuple[torch.Tensor, dict[str, float]]:
        """diffusers' text-to-image objective: MSE between the UNet's prediction and ε (or v) at a uniform
        timestep (Min-SNR weighted with `snr_gamma`); the caption is replaced by the empty prompt's states
        with probability `text_drop_prob` (of the LightGen config, as for LightGen's null condition)."""
        moments, text = batch
        x0 = config_latents(moments, self.config)
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.unet.num_train_timesteps, (x0.shape[0],), device=x0.device)
        drop = torch.rand(x0.shape[0], device=x0.device) < self.config.text_drop_prob
        error = self._squared_error(model, x0, text, noise, t, drop)
        if self.unet.snr_gamma is None:
            return error.mean(), {}
        return self._per_image(error, t).mean(), {}

    def dpo_loss(self, model, batch, reference, cfg) -> tuple[torch.Tensor, dict[str, float]]:
        """Diffusion-DPO (lightgen.dpo.preference_loss) on this objective's per-image error, as the official
        train.py: one timestep, noise and text drop per pair, shared by winner and loser and by the policy
        and the frozen reference (the starting pipeline)."""
        from lightgen.dpo import preference_loss

        winners, losers, text = batch
        x0 = config_latents(torch.cat([winners, losers]), self.config)
        B = winners.shape[0]
        noise = torch.randn_like(x0[:B]).repeat(2, 1, 1, 1)
        t = torch.randint(0, self.unet.num_train_timesteps, (B,), device=x0.device).repeat(2)
        drop = (torch.rand(B, device=x0.device) < self.config.text_drop_prob).repeat(2)
        text = text.repeat(2, 1, 1)
        err = self._per_image(self._squared_error(model, x0, text, noise, t, drop), t)
        with torch.no_grad():
            ref = self._per_image(self._squared_error(reference, x0, text, noise, t, drop), t)
        return preference_loss(err, ref, cfg)

    def _squared_error(self, model, x0, text, noise, t, drop) -> torch.Tensor:
        """Elementwise (prediction − target)² of the UNet at (x0, noise, t), the target in the scheduler's
        parametrisation (ε, v or x0); dropped captions see the empty prompt's states."""
        text = torch.where(drop[:, None, None], self.null_text.to(text), text)
        noisy = self.scheduler.add_noise(x0, noise, t)
        target = {"epsilon": noise, "sample": x0}.get(self.unet.prediction_type)
        target = self.scheduler.get_velocity(x0, noise, t) if target is None else target
        pred = model(noisy, t, encoder_hidden_states=text).sample[:, :x0.shape[1]]
        return F.mse_loss(pred.float(), target.float(), reduction="none")

    def _per_image(self, error: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The per-image objective: mean squared error, Min-SNR weighted with `snr_gamma`."""
        per_image = error.mean(dim=(1, 2, 3))
        if self.unet.snr_gamma is None:
            return per_image
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.scheduler, t)  # min(SNR, γ) / SNR for ε, / (SNR + 1) for v (diffusers' scripts), / 1 for x0
        weight = snr.clamp(max=self.unet.snr_gamma) / {"epsilon": snr, "v_prediction": snr + 1}.get(
            self.unet.prediction_type, 1.0)
        return per_image * weight

    def export(self, path: Path, model: torch.nn.Module, ema: list[torch.Tensor], cache: FeatureCache) -> Path:
        """An IFPipeline directory sampling with the EMA weights; written beside `path` and renamed, so a
        directory with model_index.json is always complete."""
        from diffusers import IFPipeline
        from transformers import AutoTokenizer, T5EncoderModel

        unet = self.build()
        unet.load_state_dict({**model.state_dict(), **dict(zip([n for n, _ in model.named_parameters()], ema))})
        pipe = IFPipeline(tokenizer=AutoTokenizer.from_pretrained(self.text_encoder),
                          text_encoder=T5EncoderModel.from_pretrained(self.text_encoder), unet=unet,
                          scheduler=sampling_scheduler(self.scheduler), safety_checker=None, feature_extractor=None,
                          watermarker=None, requires_safety_checker=False)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        pipe.save_pretrained(tmp)
        (tmp / "lightgen_student.json").write_text(json.dumps(
            {"student": self.name, "unet": dataclasses.asdict(self.unet), "lightgen": self.config.to_dict(),
             "resolution": self.resolution}, indent=2))
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        return path
