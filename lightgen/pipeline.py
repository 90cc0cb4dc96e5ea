"""`LightGenPipeline`: prompts -> PIL images, diffusers-style `from_pretrained` / `save_pretrained`.

Directory layout: `config.json` (model config + which weights to sample with), `model.safetensors`
(raw weights), `model_ema.safetensors` (EMA, optional), `text_encoder/` when the text encoder is our
tiny random one (real encoders are referenced by hub id / path in the config).
"""
from __future__ import annotations

import json
import shutil
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from diffusers.utils import BaseOutput
from PIL import Image

from lightgen.checkpoint import check_state_dict, load_into, load_official_pth, load_weights, save_weights
from lightgen.codecs import LatentCodec, build_codec
from lightgen.config import LightGenConfig
from lightgen.errors import InputError
from lightgen.files import atomic_write
from lightgen.mar import LightGen
from lightgen.precision import native_bf16
from lightgen.text import TextEncoder

WEIGHT_NAMES = ("model", "model_ema")


def build_text_encoder(config: LightGenConfig, path: str | Path | None = None, seed: int = 0) -> TextEncoder:
    if path is not None:
        return TextEncoder.from_pretrained(path, config.max_length)
    if config.text_encoder == "tiny-t5":
        return TextEncoder.tiny(config.t5_config or {}, config.max_length, config.text_vocab, seed)
    return TextEncoder.from_pretrained(config.text_encoder, config.max_length)


PRECISIONS = ("auto", "fp32", "bf16")


def sampling_precision(precision: str, device: torch.device | str) -> AbstractContextManager:
    """The context to sample in: "fp32" (exact), "bf16" (autocast), "auto" = bf16 only where bf16
    matmuls are native (GPUs, AMX / AVX512-BF16 CPUs; emulated bf16 is far slower than fp32)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if precision == "bf16" or (precision == "auto" and native_bf16(device)):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def image_to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL RGB -> (B, 3, H, W) float in [−1, 1]."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def tensor_to_images(x: torch.Tensor) -> list[Image.Image]:
    """[−1, 1] -> uint8 PIL, as the official post-processing: round((x/2 + 0.5).clamp(0, 1)·255)."""
    arr = ((x.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def per_image_seeds(n: int, seed: int | Sequence[int] | None, generator) -> list[int]:
    """One seed per image: an int seed s gives s, s+1, …; a list is used as is; a generator (or the
    global RNG) draws them."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != n:
            raise InputError(f"seed: expected {n} per-image seeds, got {len(seed)}")
        return [int(s) for s in seed]
    if seed is not None:
        return [int(seed) + i for i in range(n)]
    return torch.randint(0, 2 ** 62, (n,), generator=generator).tolist()


def write_pipeline(path: str | Path, config: LightGenConfig, weights: dict[str, dict[str, torch.Tensor]],
                   default_weights: str, text_encoder: TextEncoder | str | Path | None = None, **extra) -> Path:
    """Write a pipeline directory from state dicts; `text_encoder` (object or saved directory) is stored
    in `text_encoder/` when the config's encoder is our tiny one. config.json goes last: a directory
    without it is not a pipeline, so an interrupted write is never mistaken for a finished one."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, state in weights.items():
        save_weights(state, path / f"{name}.safetensors")
    if config.text_encoder == "tiny-t5" and text_encoder is not None:
        if isinstance(text_encoder, TextEncoder):
            text_encoder.save_pretrained(path / "text_encoder")
        elif Path(text_encoder).resolve() != (path / "text_encoder").resolve():
            shutil.copytree(text_encoder, path / "text_encoder", dirs_exist_ok=True)
    meta = {"lightgen": config.to_dict(), "default_weights": default_weights, **extra}
    atomic_write(path / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, default=str)))
    return path


def convert_official(ckpt: str | Path, out_dir: str | Path, preset: str = "lightgen-0.7b") -> Path:
    """Official `checkpoint-*.pth` -> pipeline directory. Both `model` and `model_ema` are kept; the
    directory samples with `model` (raw), as every official script does."""
    config = LightGenConfig.from_preset(preset)
    official = load_official_pth(ckpt)
    with torch.device("meta"):
        reference = LightGen(config)
    names = [n for n in WEIGHT_NAMES if isinstance(official.get(n), dict)]
    for name in names:
        check_state_dict(reference, official[name], f"{ckpt}['{name}']")
    args = official.get("args")
    return write_pipeline(out_dir, config, {n: official[n] for n in names}, "model", source=str(ckpt),
                          epoch=official.get("epoch"), official_args=vars(args) if args is not None else None)


def read_pipeline_config(path: str | Path) -> tuple[LightGenConfig, dict]:
    """The model config and metadata of a pipeline directory, without loading any weights."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise InputError(f"{path}: not a LightGen pipeline directory (no config.json)")
    try:
        meta = json.loads(cfg_file.read_text())
        return LightGenConfig.from_dict(meta["lightgen"], source=str(cfg_file)), meta
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{cfg_file}: expected a JSON object with a 'lightgen' config ({e})") from e


@dataclass
class LightGenPipelineOutput(BaseOutput):
    """What a pipeline call returns, as in diffusers: `.images` (PIL images, or tokens for `output_type="latent"`)."""

    images: list[Image.Image] | torch.Tensor


class LightGenPipeline:
    def __init__(self, model: LightGen, text_encoder: TextEncoder, codec: LatentCodec,
                 weights: dict[str, dict[str, torch.Tensor]] | None = None, default_weights: str = "model_ema"):
        """`weights` holds the raw and EMA state dicts (kept for `save_pretrained`); the model samples
        with `weights[default_weights]` when present, else with its current parameters."""
        self.model, self.text_encoder, self.codec = model.eval(), text_encoder, codec
        self.config = model.config
        self.weights = weights or {"model": model.state_dict()}
        self.default_weights = default_weights if default_weights in self.weights else "model"
        load_into(self.model, self.weights[self.default_weights], self.default_weights)

    @property
    def device(self) -> torch.device:
        return self.model.fake_latent.device

    def to(self, device) -> "LightGenPipeline":
        for m in (self.model, self.text_encoder, self.codec):
            m.to(device)
        return self

    # ---------------------------------------------------------------------------------- storage
    @classmethod
    def from_pretrained(cls, path: str | Path, weights: str | None = None, device: str | None = None,
                        text_encoder: TextEncoder | None = None, codec: LatentCodec | None = None,
                        ) -> "LightGenPipeline":
        """Load a pipeline directory; `weights` = "model" | "model_ema" (default: the directory's choice)."""
        path = Path(path)
        config, meta = read_pipeline_config(path)
        chosen = weights or meta.get("default_weights", "model_ema")
        files = {n: path / f"{n}.safetensors" for n in WEIGHT_NAMES if (path / f"{n}.safetensors").is_file()}
        if chosen not in files:
            raise InputError(f"{path}: weights {chosen!r} requested but {chosen}.safetensors is missing "
                             f"(found {sorted(files)})")
        if text_encoder is None:
            local = path / "text_encoder"
            text_encoder = build_text_encoder(config, local if local.is_dir() else None)
        codec = codec or build_codec(config, path / "vae" if (path / "vae").is_dir() else None)
        model = LightGen(config)
        pipe = cls(model, text_encoder, codec, {n: load_weights(f) for n, f in files.items()}, chosen)
        return pipe.to(device) if device else pipe

    def save_pretrained(self, path: str | Path) -> None:
        self.weights[self.default_weights] = self.model.state_dict()
        write_pipeline(path, self.config, self.weights, self.default_weights, self.text_encoder)

    # --------------------------------------------------------------------------------- sampling
    def _check(self, prompts, num_inference_steps: int, guidance_scale: float) -> list[str]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise InputError("prompt: expected at least one prompt, got an empty list")
        if num_inference_steps < 1:
            raise InputError(f"num_inference_steps: expected >= 1, got {num_inference_steps}")
        if guidance_scale < 0:
            raise InputError(f"guidance_scale: expected >= 0, got {guidance_scale}")
        return list(prompts)

    def _generators(self, n: int, seed, generator) -> list[torch.Generator]:
        """One generator per image: a list of `n` generators is used as is (diffusers' per-image form);
        otherwise `per_image_seeds(n, seed, generator)` seeds one each on the pipeline's device."""
        if isinstance(generator, (list, tuple)):
            if seed is not None or len(generator) != n:
                raise InputError(f"generator: expected one per image ({n}) and no seed, got {len(generator)}"
                                 f"{' and a seed' if seed is not None else ''}")
            return list(generator)
        return [torch.Generator(self.device).manual_seed(s) for s in per_image_seeds(n, seed, generator)]

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], num_images_per_prompt: int = 1, num_inference_steps: int = 64,
                 guidance_scale: float = 4.0, cfg_schedule: str = "constant", temperature: float = 1.0,
                 height: int | None = None, width: int | None = None,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 seed: int | Sequence[int] | None = None, batch_size: int = 32, output_type: str = "pil",
                 return_dict: bool = True, precision: str = "auto") -> LightGenPipelineOutput | tuple:
        """Images in prompt-major order (prompt 0's images first), as `.images`. Each image has its own
        generator (`generator`: one per image, or one that draws a seed per image; or `seed`: image k gets
        seed + k), so it does not depend on `batch_size` or on the other prompts. `output_type="latent"`
        returns tokens. `precision`: see `sampling_precision` ("auto": bf16 where native, else the exact fp32 path)."""
        prompts = self._check(prompt, num_inference_steps, guidance_scale)
        autocast = sampling_precision(precision, self.device)
        height, width = height or self.config.resolution, width or self.config.resolution
        rows, cols = self.config.grid(height, width)
        flat = [p for p in prompts for _ in range(num_images_per_prompt)]
        gens = self._generators(len(flat), seed, generator)
        outs = []
        for i in range(0, len(flat), batch_size):
            text = self.text_encoder(flat[i:i + batch_size]).to(self.device)
            with autocast:
                outs.append(self.model.sample_tokens(text, gens[i:i + batch_size], num_iter=num_inference_steps,
                                                     guidance_scale=guidance_scale, cfg_schedule=cfg_schedule,
                                                     temperature=temperature, height=height, width=width))
        tokens = torch.cat(outs)
        images = tokens if output_type == "latent" else self._decode(tokens, rows, cols)
        return LightGenPipelineOutput(images=images) if return_dict else (images,)

    def _decode(self, tokens: torch.Tensor, rows: int, cols: int) -> list[Image.Image]:
        return tensor_to_images(self.codec.decode(self.model.unpatchify(tokens, rows, cols)))

    @torch.no_grad()
    def inpaint(self, image: Image.Image, mask_image: Image.Image, prompt: str, num_images: int = 1,
                seed: int | Sequence[int] | None = None, generator=None, num_inference_steps: int = 64,
                guidance_scale: float = 4.0, **kwargs) -> LightGenPipelineOutput:
        """Zero-shot inpainting: regenerate the tokens under the white part of `mask_image`, keep the rest."""
        self._check([prompt], num_inference_steps, guidance_scale)
        width, height = image.size
        rows, cols = self.config.grid(height, width)
        if mask_image.size != image.size:
            raise InputError(f"mask_image: expected size {image.size}, got {mask_image.size}")
        latents = self.codec.latents(self.codec.moments(image_to_tensor([image]).to(self.device)), sample=False)
        init = self.model.patchify(latents).expand(num_images, -1, -1)
        p = self.config.pixels_per_token
        m = torch.from_numpy(np.asarray(mask_image.convert("L"), dtype=np.float32) > 127)
        fill = m.reshape(rows, p, cols, p).any(dim=3).any(dim=1).flatten()  # any masked pixel -> token
        text = self.text_encoder([prompt] * num_images).to(self.device)
        with sampling_precision(kwargs.pop("precision", "auto"), self.device):
            tokens = self.model.sample_tokens(text, self._generators(num_images, seed, generator),
                                              num_iter=num_inference_steps, guidance_scale=guidance_scale,
                                              height=height, width=width, init_tokens=init, inpaint_mask=fill, **kwargs)
        return LightGenPipelineOutput(images=self._decode(tokens, rows, cols))
