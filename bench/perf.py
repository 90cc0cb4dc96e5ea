"""`lightgen-bench perf`: speed and memory of training, sampling and FID, always beside an
unoptimised reference path of our own code measured in the same run (ratios survive noisy machines).

Reference paths: training = head on every token (as the official code) + reference head embeddings +
fp32 + unfused AdamW (optimised: masked tokens only, time-embedding table, bf16 autocast where bf16
matmuls are native — GPUs, AVX512-BF16/AMX CPUs — and fused AdamW on GPU); sampling = one prompt (4 images) per call as the official GenEval script, text
branch / cross K/V / head embeddings recomputed at every step; FID = scipy `sqrtm`.
"""
from __future__ import annotations

import json
import platform
import resource
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

from lightgen.config import LightGenConfig
from lightgen.errors import InputError
from lightgen.mar import LightGen
from lightgen.precision import native_bf16

# dense bf16 peak (TFLOP/s) by device name fragment, for MFU
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], iters: int, warmup: int, device: torch.device) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _peak_memory(device: torch.device) -> float:
    """GiB: CUDA allocator peak, or the process's max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def cpu_name() -> str:
    """The CPU model (for result files), e.g. 'Intel(R) Xeon(R) ...'."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _inputs(config: LightGenConfig, batch: int, resolution: int, device: torch.device):
    h = resolution // config.vae_stride
    latents = torch.randn(batch, config.latent_channels, h, h, device=device).clamp(-3, 3)
    text = torch.randn(batch, config.max_length, config.caption_channels, device=device)
    return latents, text


def perf_train(config: LightGenConfig, batch: int, resolution: int, device: torch.device, iters: int,
               reference: bool) -> dict:
    torch.manual_seed(0)
    model = LightGen(config).to(device).train()
    latents, text = _inputs(config, batch, resolution, device)
    gpu, bf16 = device.type == "cuda", native_bf16(device)
    results = {}
    paths = [("optimised", True)] + ([("reference", False)] if reference else [])
    for name, fast in paths:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=(gpu and fast) or None)
        amp = torch.autocast(device.type, dtype=torch.bfloat16) if (bf16 and fast) else nullcontext()

        def step():
            with amp:
                loss = model(latents, text, fast=fast)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        if gpu:
            torch.cuda.reset_peak_memory_stats(device)
        seconds = _timed(step, iters, warmup=2, device=device)
        row = {"step_s": seconds, "img_per_s": batch / seconds, "peak_mem_gib": _peak_memory(device),
               "precision": "bf16-autocast" if (bf16 and fast) else "fp32"}
        if gpu:
            flops = _flops(step)
            row["flops_per_step"] = flops
            peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in torch.cuda.get_device_name(device)), None)
            if peak and fast:
                row["mfu"] = flops / seconds / (peak * 1e12)
        results[name] = row
    return results


def perf_sample(config: LightGenConfig, batch: int, resolution: int, device: torch.device, steps: int,
                guidance_scale: float, iters: int, reference: bool) -> dict:
    torch.manual_seed(0)
    model = LightGen(config).to(device).eval()
    _, text = _inputs(config, batch, resolution, device)

    def run(n_per_call: int, cache: bool):
        def call():
            for i in range(0, batch, n_per_call):
                chunk = text[i:i + n_per_call]
                gens = [torch.Generator(device).manual_seed(i + k) for k in range(len(chunk))]
                model.sample_tokens(chunk, gens, num_iter=steps, guidance_scale=guidance_scale, height=resolution, width=resolution,
                                    cache=cache)
        return call

    results = {}
    paths = [("optimised", batch, True)] + ([("reference", min(4, batch), False)] if reference else [])
    for name, per_call, cache in paths:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = _timed(run(per_call, cache), iters, warmup=1, device=device)
        results[name] = {"s_per_image": seconds / batch, "img_per_s": batch / seconds, "images_per_call": per_call,
                         "peak_mem_gib": _peak_memory(device)}
    return results


def perf_fid(dim: int, n: int, reference: bool) -> dict:
    from bench.fid import frechet_distance, statistics

    g = torch.Generator().manual_seed(0)
    stats = [statistics((torch.randn(n, dim, generator=g) * s).double().numpy()) for s in (1.0, 1.1)]
    results = {"optimised": {"seconds": _timed(lambda: frechet_distance(*stats[0], *stats[1]), 1, 0, torch.device("cpu"))}}
    if reference:
        from cleanfid.fid import frechet_distance as cleanfid_fd
        results["reference"] = {"seconds": _timed(lambda: cleanfid_fd(*stats[0], *stats[1]), 1, 0, torch.device("cpu")),
                                "impl": "clean-fid frechet_distance (scipy sqrtm)"}
    return results


def run_perf(preset: str, what: str, batch: int, resolution: int | None, device: str, iters: int = 3,
             steps: int = 64, guidance_scale: float = 4.0, reference: bool = True, out: str | Path | None = None,
             overrides: dict | None = None) -> dict:
    """Measure one workload (optimised and reference) and write a JSON record."""
    from bench.provenance import environment

    config = LightGenConfig.from_preset(preset, **(overrides or {}))
    dev = torch.device(device)
    res = resolution or config.resolution
    config.grid(res, res)
    if what == "train":
        results = perf_train(config, batch, res, dev, iters, reference)
    elif what == "sample":
        results = perf_sample(config, batch, res, dev, steps, guidance_scale, iters, reference)
    elif what == "fid":
        results = perf_fid(2048, max(batch, 4096), reference)
    else:
        raise InputError(f"what: expected train|sample|fid, got {what!r}")
    opt, ref = results.get("optimised"), results.get("reference")
    if opt and ref:
        results["speedup"] = (opt["img_per_s"] / ref["img_per_s"] if "img_per_s" in opt
                              else ref["seconds"] / opt["seconds"])
    record = {"what": what, "preset": preset, "batch": batch, "resolution": res, "device": str(dev),
              "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
              "torch_threads": torch.get_num_threads(), "sampling_steps": steps,
              "results": results, **environment()}
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(record, indent=2))
    return record
