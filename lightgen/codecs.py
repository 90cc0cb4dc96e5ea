"""Latent codecs: images in [−1, 1] <-> normalised latents the generator models.

Both codecs expose the official three steps: `moments` (posterior mean ‖ logvar, what the feature
cache stores), `latents` (a posterior *sample*, then (z − shift)·scale), and `decode` (the inverse).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from lightgen.config import LightGenConfig
from lightgen.errors import InputError


def normalize_moments(moments: torch.Tensor, scaling_factor: float, shift_factor: float, sample: bool = True,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Posterior sample (or mean) of moments (mean ‖ logvar, logvar clamped to [−30, 20] as
    officially), then (z − shift)·scale."""
    mean, logvar = moments.float().chunk(2, dim=1)
    z = mean
    if sample:
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        z = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device)
    return (z - shift_factor) * scaling_factor


def config_latents(moments: torch.Tensor, config: LightGenConfig) -> torch.Tensor:
    """Cached moments -> normalised training latents (a posterior sample, except for the pixel codec)."""
    return normalize_moments(moments, config.scaling_factor, config.shift_factor, sample=config.codec != "pixel")


class LatentCodec(nn.Module):
    stride: int
    channels: int

    def __init__(self, scaling_factor: float, shift_factor: float):
        super().__init__()
        self.scaling_factor, self.shift_factor = scaling_factor, shift_factor

    def moments(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def latents(self, moments: torch.Tensor, generator: torch.Generator | None = None,
                sample: bool = True) -> torch.Tensor:
        """Posterior sample (or mean) of cached moments, normalised as the official training does."""
        return normalize_moments(moments, self.scaling_factor, self.shift_factor, sample, generator)

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.latents(self.moments(images), generator)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._decode(latents / self.scaling_factor + self.shift_factor)


class PixelCodec(LatentCodec):
    """Identity codec on RGB (the testbed): a posterior with zero variance around the pixels."""

    stride, channels = 1, 3

    def moments(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([images, torch.full_like(images, -30.0)], dim=1)

    def latents(self, moments, generator=None, sample: bool = True):
        return super().latents(moments, generator, sample=False)

    def _decode(self, z):
        return z


class VAECodec(LatentCodec):
    """diffusers `AutoencoderKL` (officially the SD3.5-large VAE: 16 channels, stride 8)."""

    def __init__(self, vae: nn.Module, scaling_factor: float, shift_factor: float):
        super().__init__(scaling_factor, shift_factor)
        self.vae = vae.eval().requires_grad_(False)
        self.channels = vae.config.latent_channels
        self.stride = 2 ** (len(vae.config.block_out_channels) - 1)

    @classmethod
    def from_pretrained(cls, path: str | Path, scaling_factor: float, shift_factor: float) -> "VAECodec":
        from diffusers import AutoencoderKL

        local = Path(path)
        subfolder = "vae" if (local / "vae").is_dir() or not local.exists() else None
        try:
            vae = AutoencoderKL.from_pretrained(str(path), subfolder=subfolder)
        except (OSError, EnvironmentError) as e:
            raise InputError(f"codec_path {str(path)!r}: cannot load an AutoencoderKL ({e})") from e
        return cls(vae, scaling_factor, shift_factor)

    @torch.no_grad()
    def moments(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images.to(self.vae.dtype)).latent_dist.parameters.float()

    def _decode(self, z):
        return self.vae.decode(z.to(self.vae.dtype)).sample.float()


def build_codec(config: LightGenConfig, path: str | Path | None = None) -> LatentCodec:
    """The codec a config names; `path` overrides `config.codec_path` (e.g. a local VAE copy)."""
    if config.codec == "pixel":
        codec = PixelCodec(config.scaling_factor, config.shift_factor)
    elif config.codec == "vae":
        codec = VAECodec.from_pretrained(path or config.codec_path, config.scaling_factor, config.shift_factor)
    else:
        raise InputError(f"codec: expected 'vae' or 'pixel', got {config.codec!r}")
    if (codec.channels, codec.stride) != (config.latent_channels, config.vae_stride):
        raise InputError(f"codec: has {codec.channels} channels and stride {codec.stride}, config expects "
                         f"{config.latent_channels} and {config.vae_stride}")
    return codec
