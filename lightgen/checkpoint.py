"""Weight files: safetensors for ours, a refusing unpickler for the official `.pth` files."""
from __future__ import annotations

import argparse
import pickle
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


def load_official_pth(path: str | Path) -> dict:
    """Read an official checkpoint without executing pickled code: `weights_only=True` plus an explicit
    allow-list (argparse.Namespace). Anything else in the pickle is refused."""
    try:
        with torch.serialization.safe_globals(OFFICIAL_PTH_ALLOWLIST):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(f"{path}: refused to unpickle: it holds objects outside the allow-list "
                         f"{[c.__name__ for c in OFFICIAL_PTH_ALLOWLIST]} ({str(e).splitlines()[0]})") from e
    except (OSError, RuntimeError, EOFError) as e:
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
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
