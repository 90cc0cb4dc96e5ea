"""The official LightGen code, loaded at run time from a user's checkout (never vendored): its `FLUID`
class with our weights, so `lightgen-bench perf --official PATH` can time it beside ours.

The official modules import each other as top-level packages (`models.*`, `diffusion`) and call
`.cuda()` on fresh tensors. Both are handled without touching their files: the packages are bound to
the checkout's folders for the import only (sys.modules and sys.path are restored afterwards, so the
generic names never leak), and on a CPU the calls run under `cuda_noop()`.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

from lightgen.config import LightGenConfig
from lightgen.errors import InputError
from lightgen.files import files_sha256

OFFICIAL_REPO = "github.com/XianfengWu01/LightGen"
MODEL_FILE = "models/fluid_arbitrary.py"
_PACKAGES = ("models", "diffusion")  # the checkout's top-level packages that FLUID imports


def _owned(name: str) -> bool:
    return name.split(".")[0] in _PACKAGES


def _bind_package(name: str, folder: Path) -> None:
    """Register `folder` as the top-level package `name` (regular or namespace), shadowing any other."""
    init = folder / "__init__.py"
    if init.is_file():
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        module = types.ModuleType(name)
        module.__path__ = [str(folder)]
        sys.modules[name] = module


def load_official(path: str | Path) -> types.ModuleType:
    """The checkout's `models.fluid_arbitrary` module (with `FLUID`), imported in isolation."""
    root = Path(path)
    if not (root / MODEL_FILE).is_file():
        raise InputError(f"--official {path}: expected a checkout of the official LightGen repository "
                         f"({OFFICIAL_REPO}) containing {MODEL_FILE}")
    saved_modules = {n: m for n, m in sys.modules.items() if _owned(n)}
    saved_path = list(sys.path)
    for name in saved_modules:
        del sys.modules[name]
    try:
        for name in _PACKAGES:
            _bind_package(name, root / name)
        module = importlib.import_module("models.fluid_arbitrary")
    except Exception as e:  # noqa: BLE001  (any failure of third-party code is a bad --official input)
        raise InputError(f"{root / MODEL_FILE}: import failed ({type(e).__name__}: {e}); the official code "
                         "needs timm, scipy and diffusers") from e
    finally:
        for name in [n for n in sys.modules if _owned(n)]:
            del sys.modules[name]
        sys.modules.update(saved_modules)
        sys.path[:] = saved_path  # the official file appends '..' entries to sys.path at import
    if not hasattr(module, "FLUID"):
        raise InputError(f"{root / MODEL_FILE}: expected a FLUID class")
    return module


def source_digest(path: str | Path) -> str:
    """sha256 over the official files that define the model (identifies the checkout's version)."""
    return files_sha256(path, (p for name in _PACKAGES for p in (Path(path) / name).glob("*.py")))


@contextlib.contextmanager
def cuda_noop(device: torch.device):
    """On a CPU, `Tensor.cuda()` returns the tensor itself (the official code calls it unconditionally)."""
    if device.type == "cuda":
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def official_kwargs(config: LightGenConfig) -> dict:
    """FLUID constructor arguments for our config (the `fluid_*` factories' LayerNorm eps 1e-6).
    FLUID hard-codes 16×16 position tables, so only `pos_grid` 16 configs have a counterpart."""
    c = config
    if c.pos_grid != 16:
        raise InputError(f"pos_grid: the official FLUID hard-codes 256-entry (16×16) position tables; "
                         f"expected 16 for an official comparison, got {c.pos_grid} (use --set pos_grid=16)")
    official = dict(clip_sample=None, prediction="epsilon", timestep_shift=1.0, rel_pos_bias=False)
    for key, value in official.items():  # our options that the official code does not have
        if getattr(c, key) != value:
            raise InputError(f"{key}: the official FLUID has no such option; expected {value!r} for an official "
                             f"comparison, got {getattr(c, key)!r}")
    stacks = {}
    for name, depth in (("encoder", c.encoder_depth), ("decoder", c.decoder_depth), ("cross", c.cross_depth)):
        stacks.update({f"{name}_embed_dim": c.width, f"{name}_depth": depth, f"{name}_num_heads": c.num_heads})
    return dict(img_size=c.resolution, vae_stride=c.vae_stride, patch_size=c.patch_size, text_depth=c.text_depth,
                mlp_ratio=c.mlp_ratio, norm_layer=partial(nn.LayerNorm, eps=1e-6), caption_channels=c.caption_channels,
                max_length=c.max_length, interpolate_offset=c.interpolate_offset, vae_embed_dim=c.latent_channels,
                mask_ratio_min=c.mask_ratio_min, text_drop_prob=c.text_drop_prob, attn_dropout=c.attn_dropout,
                proj_dropout=c.proj_dropout, diffloss_d=c.diffloss_depth, diffloss_w=c.diffloss_width,
                num_sampling_steps=str(c.num_sampling_steps), diffusion_batch_mul=c.diffusion_batch_mul,
                grad_checkpointing=c.grad_checkpointing, **stacks)


def build_official(module: types.ModuleType, config: LightGenConfig, state_dict: dict[str, torch.Tensor],
                   device: torch.device) -> nn.Module:
    """The official FLUID for `config`, holding exactly `state_dict` (ours: same names, strict load)."""
    model = module.FLUID(**official_kwargs(config))
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise InputError(f"official FLUID: our state dict does not load strictly ({e})") from e
    return model.to(device)


@torch.no_grad()
def max_abs_diff(ours, official: nn.Module, batch: int, resolution: int, device: torch.device) -> dict[str, float]:
    """How far the two models' outputs are apart on the same inputs (eval mode, no dropout): the
    trunk's per-token condition z for a random half-masked grid and the diffusion head's output. Large
    values would mean the weights do not play the same roles in both models."""
    c, training = ours.config, (ours.training, official.training)
    ours.eval(), official.eval()
    rows, cols = c.grid(resolution, resolution)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(batch, rows * cols, c.token_dim, generator=g).to(device)
    text = torch.randn(batch, c.max_length, c.caption_channels, generator=g).to(device)
    mask = (torch.rand(batch, rows * cols, generator=g).argsort(1) < rows * cols // 2).float().to(device)
    official.seq_h, official.seq_w, official.seq_len = rows, cols, rows * cols  # set by its forward/sample_tokens
    with cuda_noop(device):
        z = official.forward_fluid_text_decoder(
            official.forward_fluid_decoder(official.forward_fluid_encoder(tokens, mask), mask), official.text_emb(text))
    z_ours = ours.forward_features(tokens, mask, text, resolution, resolution)
    x, t = tokens.flatten(0, 1), torch.randint(0, 1000, (batch * rows * cols,), generator=g).to(device)
    head = official.diffloss.net(x, t, z.flatten(0, 1))
    head_ours = ours.diffloss.net(x, t, z.flatten(0, 1))
    ours.train(training[0]), official.train(training[1])
    return {"z": (z - z_ours).abs().max().item(), "head": (head - head_ours).abs().max().item()}
