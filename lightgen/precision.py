"""Which precision pays off on this device: bf16 autocast only where matmuls run natively in bf16.

On a CPU without AVX512-BF16 / AMX, bf16 matmuls are emulated: a testbed KD step measured 200+ s in
bf16 against ~2 s in fp32 on an AVX2-only AMD EPYC, so "auto" must fall back to fp32 there.
"""
from __future__ import annotations

import torch


def native_bf16(device: torch.device | str) -> bool:
    """True on CUDA devices with bf16 support and on CPUs with native bf16 matmuls (oneDNN's check)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_mixed_precision(name: str, device: torch.device | str) -> str:
    """accelerate's mixed_precision for a config value: "auto" -> "bf16" where native, else "no"."""
    if name != "auto":
        return name
    return "bf16" if native_bf16(device) else "no"
