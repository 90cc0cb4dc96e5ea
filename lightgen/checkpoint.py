"""Weight files: safetensors for ours, a refusing unpickler for the official `.pth` files."""
from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lightgen.errors import InputError
from lightgen.files import atomic_write

# Everything an official LightGen/MAR checkpoint pickles besides tensors and plain containers.
OFFICIAL_PTH_ALLOWLIST = [argparse.Namespace]


def save_weights(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise InputError(f"{path}: not a readable safetensors file ({e})") from e


def read_pth(path: str | Path, allowlist: list) -> object:
    """`torch.load(weights_only=True)` with an explicit allow-list of globals, so no pickled code runs.
    A refused global, a truncated or corrupt file: one InputError naming the file (and the global)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(allowlist):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))  # "Unsupported global: GLOBAL x.y" / "unsupported GLOBAL x.y"
        if found is None:
            raise InputError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from None
        allowed = [a[1] if isinstance(a, tuple) else f"{a.__module__}.{a.__qualname__}" for a in allowlist]
        raise InputError(f"{path}: refused to unpickle {found.group(1)}: it is outside the allow-list of "
                         f"tensors, plain containers and {allowed}") from None
    except (OSError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        raise InputError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from None


def load_official_pth(path: str | Path) -> dict:
    """Read an official LightGen checkpoint (allow-list: argparse.Namespace, its training args)."""
    ckpt = read_pth(path, OFFICIAL_PTH_ALLOWLIST)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise InputError(f"{path}: expected a dict with a 'model' state dict (official LightGen layout)")
    return ckpt


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict key and shape check whose error names the first few offenders."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
    if problems:
        raise InputError(f"{source}: does not match this model config: " + "; ".join(problems))


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    check_state_dict(model, state, source)
    model.load_state_dict(state, strict=True)
