"""Model configuration with named presets (the official `fluid_*` factories plus the CPU testbed)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightgen.errors import BOOL, MAPPING, TEXT, InputError, Rule, check_fields, check_known, integer, list_of, number, \
    one_of, optional


@dataclass
class LightGenConfig:
    """Everything needed to rebuild the model, its text encoder and its latent codec.

    Defaults are the official LightGen 0.7B (`fluid_large` + DiffLoss 8×1536, SD3.5 VAE, flan-T5-XXL).
    """

    # latent codec: "vae" (diffusers AutoencoderKL) or "pixel" (identity on RGB, for the testbed)
    codec: str = "vae"
    codec_path: str = "stabilityai/stable-diffusion-3.5-large"
    latent_channels: int = 16
    vae_stride: int = 8
    patch_size: int = 2
    scaling_factor: float = 1.5305
    shift_factor: float = 0.0609
    resolution: int = 512  # default sampling resolution (pixels)
    pos_grid: int = 16  # learned position tables cover pos_grid² tokens (256 officially)
    interpolate_offset: float = 0.1
    rel_pos_bias: bool = False  # testbed option: learned 2-D relative-offset attention bias in encoder/decoder
    pos_init: str = "normal"  # position tables' init: "normal" (official, std 0.02) or "sincos" (MAE's 2-D table)
    # testbed option, where else the caption enters the trunk (officially only the cross stack after the decoder):
    # "pool" adds the projected mean caption state to every encoder and decoder input token, "prefix" appends the
    # projected caption states to the encoder and decoder sequences (as MAR's class-token buffer)
    trunk_text: str = "none"
    # transformer (one width for encoder, decoder, cross stack and aligner, as officially)
    width: int = 1024
    encoder_depth: int = 16
    decoder_depth: int = 16
    cross_depth: int = 16
    text_depth: int = 6
    num_heads: int = 16
    mlp_ratio: float = 4.0
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    # text encoder: a hub id / local path of a T5 encoder, or "tiny-t5" (random, built from t5_config)
    text_encoder: str = "google/flan-t5-xxl"
    caption_channels: int = 4096
    max_length: int = 128
    t5_config: dict[str, Any] | None = None
    text_vocab: list[str] | None = None  # tiny-t5 only: word-level vocabulary (else byte-level)
    # diffusion head
    diffloss_depth: int = 8
    diffloss_width: int = 1536
    num_sampling_steps: int = 100
    diffusion_batch_mul: int = 4
    clip_sample: float | None = None  # clamp predicted x0 while sampling (off officially; pixels: 1.0)
    prediction: str = "epsilon"  # what the head predicts: "epsilon" (official) or "v" (see diffloss.py)
    # training-time behaviour
    mask_ratio_min: float = 0.7
    timestep_shift: float = 1.0  # > 1 draws training timesteps toward high noise (official: 1, uniform)
    text_drop_prob: float = 0.1
    grad_checkpointing: bool = False
    preset: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.text_vocab, str):
            raise InputError(f"text_vocab: expected a list of words or null, got the name {self.text_vocab!r}; the "
                             "library resolves no names ('testbed' is the testbed grammar's vocabulary: load the "
                             "config with bench.config.load_train_config, as `lightgen-bench train` does)")
        check_fields(self, RULES)
        if self.width % self.num_heads:
            raise InputError(f"num_heads: expected a divisor of width {self.width}, got {self.num_heads}")
        if self.resolution % self.pixels_per_token:
            raise InputError(f"resolution: expected a multiple of vae_stride×patch_size = {self.pixels_per_token}, "
                             f"got {self.resolution}")

    @property
    def token_dim(self) -> int:
        return self.latent_channels * self.patch_size ** 2

    @property
    def pixels_per_token(self) -> int:
        return self.vae_stride * self.patch_size

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (rows, cols) for an image size, or an InputError naming the constraint."""
        p = self.pixels_per_token
        if height <= 0 or width <= 0 or height % p or width % p:
            raise InputError(f"height/width: expected positive multiples of vae_stride×patch_size = {p}, "
                             f"got {height}×{width}")
        return height // p, width // p

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "LightGenConfig":
        if name not in PRESETS:
            raise InputError(f"preset: unknown {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], "preset": name, **check_known(overrides, cls, "model")})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "LightGenConfig":
        try:
            return cls(**check_known(d, cls, source))
        except InputError as e:
            raise InputError(f"{source}: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


_DEPTH, _POSITIVE, _PROBABILITY = integer(1), number(0, above=True), number(0, 1)
# what every field must be (checked once, at construction); cross-field rules are in __post_init__
RULES: dict[str, Rule] = dict(
    codec=one_of("vae", "pixel"), codec_path=TEXT, latent_channels=integer(1), vae_stride=integer(1),
    patch_size=integer(1), scaling_factor=_POSITIVE, shift_factor=number(), resolution=integer(1),
    pos_grid=integer(1), interpolate_offset=number(0), rel_pos_bias=BOOL, pos_init=one_of("normal", "sincos"),
    trunk_text=one_of("none", "pool", "prefix"), width=integer(1), encoder_depth=_DEPTH, decoder_depth=_DEPTH,
    cross_depth=_DEPTH, text_depth=_DEPTH, num_heads=integer(1), mlp_ratio=_POSITIVE,
    attn_dropout=number(0, 1, below=True), proj_dropout=number(0, 1, below=True), text_encoder=TEXT,
    caption_channels=integer(1), max_length=integer(1), t5_config=optional(MAPPING), text_vocab=optional(list_of(TEXT)),
    diffloss_depth=_DEPTH, diffloss_width=integer(1), num_sampling_steps=integer(1), diffusion_batch_mul=integer(1),
    clip_sample=optional(_POSITIVE), prediction=one_of("epsilon", "v"), mask_ratio_min=_PROBABILITY,
    timestep_shift=_POSITIVE, text_drop_prob=_PROBABILITY, grad_checkpointing=BOOL, preset=optional(TEXT))

# what may change between a checkpoint and a run initialised from it (`init_from`): the resolution (multi-stage),
# training-time regularisation and sampling settings. Every other field changes what the weights mean.
STAGE_FIELDS = frozenset({"resolution", "mask_ratio_min", "timestep_shift", "text_drop_prob", "attn_dropout",
                          "proj_dropout", "grad_checkpointing", "diffusion_batch_mul", "num_sampling_steps",
                          "clip_sample", "pos_init", "preset"})

_TINY_T5 = dict(vocab_size=384, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="relu")

PRESETS: dict[str, dict[str, Any]] = {
    "lightgen-base": dict(width=768, encoder_depth=12, decoder_depth=12, cross_depth=12, num_heads=12),
    "lightgen-0.7b": dict(),
    "lightgen-huge": dict(width=1280, encoder_depth=20, decoder_depth=20, cross_depth=20, num_heads=16),
    # 32 px RGB, 4×4-pixel tokens (8×8 grid), sized to train in minutes on 2 CPU cores. Deviations from
    # the official recipe, each chosen by measured testbed runs: no dropout, masking from 30% (tiny runs
    # must also learn the many-visible-tokens regime that sampling reaches), 25 respaced diffusion
    # steps, and x0 clipping (pixels live in [-1, 1]).
    "testbed": dict(codec="pixel", codec_path="", latent_channels=3, vae_stride=1, patch_size=4,
                    scaling_factor=1.0, shift_factor=0.0, resolution=32, pos_grid=8,
                    width=192, encoder_depth=3, decoder_depth=3, cross_depth=3, text_depth=2, num_heads=6,
                    attn_dropout=0.0, proj_dropout=0.0, mask_ratio_min=0.3,
                    text_encoder="tiny-t5", caption_channels=64, max_length=16, t5_config=_TINY_T5,
                    diffloss_depth=3, diffloss_width=256, num_sampling_steps=25, diffusion_batch_mul=4,
                    clip_sample=1.0),
}
# The testbed at 2/3 width and depth (a KD step costs ~1/3) with the two opt-in options that made the trunk
# read the visible tokens within a few hundred CPU steps (README, "Making the student learn"): v-prediction
# and a relative-position attention bias initialised local. ε-prediction with absolute positions alone left
# the context gain near 1e-3 for 1,000 steps.
PRESETS["testbed-small"] = {**PRESETS["testbed"], **dict(
    width=128, num_heads=4, encoder_depth=2, decoder_depth=2, cross_depth=2, diffloss_width=128,
    diffusion_batch_mul=2, prediction="v", rel_pos_bias=True)}
