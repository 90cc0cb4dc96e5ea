"""`lightgen-bench perf`: speed and memory of training, sampling and FID, each beside a baseline timed
in the same process, call for call in alternating order, so the ratio survives a noisy shared machine.

Baselines: with `--official PATH` the official `FLUID` class from a user's checkout (`bench.official`),
holding the same weights and fed the same inputs and batch; otherwise an unoptimised reference path of
our own code: training = head on every token (as the official code) + reference head embeddings + fp32
+ unfused AdamW; sampling = one prompt (4 images) per call as the official GenEval script, text
branch / cross K/V / head embeddings recomputed at every step; FID = scipy `sqrtm`.
Ours runs in the precision a user gets: bf16 autocast where bf16 matmuls are native (GPUs,
AVX512-BF16/AMX CPUs), fp32 elsewhere; the official code as its scripts run it (fp16 autocast on a
GPU, fp32 on a CPU). Clock: process CPU time with one thread on a CPU (other processes on the machine
do not count), wall time otherwise.
"""
from __future__ import annotations

import json
import resource
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

from bench.provenance import cpu_name
from lightgen.config import LightGenConfig
from lightgen.errors import InputError
from lightgen.mar import LightGen
from lightgen.pipeline import sampling_precision
from lightgen.precision import native_bf16

# dense bf16 peak (TFLOP/s) by device name fragment, for MFU
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # what decides bf16 speed on a CPU


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> tuple[str, Callable[[], float]]:
    """Process CPU time for single-threaded CPU runs (immune to other processes), else wall time."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return "process", time.process_time
    return "wall", time.perf_counter


def race(fns: dict[str, Callable[[], object]], iters: int, warmup: int, device: torch.device) -> dict[str, dict]:
    """Per name: median seconds per call (and CUDA peak memory), in `iters` rounds that call every
    function once, alternating the order, after `warmup` calls each."""
    _, now = clock(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times, peaks = {name: [] for name in fns}, {name: 0.0 for name in fns}
    for r in range(iters):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t0 = now()
            fns[name]()
            _sync(device)
            times[name].append(now() - t0)
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device) / 2 ** 30)
    return {name: {"seconds": statistics.median(t), "all_seconds": t,
                   **({"peak_mem_gib": peaks[name]} if device.type == "cuda" else {})} for name, t in times.items()}


def machine(device: torch.device) -> dict:
    """What the numbers were measured on: device name, CPU model and its bf16-relevant flags, threads."""
    flags = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "cpu": cpu_name(), "cpu_flags": [f for f in CPU_FLAGS if f in flags], "native_bf16": native_bf16(device),
            "torch_threads": torch.get_num_threads(), "clock": clock(device)[0]}


def _flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _inputs(config: LightGenConfig, batch: int, resolution: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    h = resolution // config.vae_stride
    latents = torch.randn(batch, config.latent_channels, h, h, generator=g).clamp(-3, 3)
    text = torch.randn(batch, config.max_length, config.caption_channels, generator=g)
    return latents.to(device), text.to(device)


def _official_model(official, model: LightGen, batch: int, resolution: int, device: torch.device):
    """The official FLUID holding `model`'s weights, and how far its outputs are from ours."""
    from bench.official import build_official, max_abs_diff

    theirs = build_official(official, model.config, model.state_dict(), device).train(model.training)
    return theirs, max_abs_diff(model, theirs, batch, resolution, device)


def _official_amp(device: torch.device):
    """The official scripts' `torch.cuda.amp.autocast()` (fp16 on a GPU; nothing on a CPU)."""
    return torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()


def _train_step(model, forward: Callable[[], torch.Tensor], amp, fused: bool) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=fused or None)

    def step():
        with amp:
            loss = forward()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def perf_train(config: LightGenConfig, batch: int, resolution: int, device: torch.device, iters: int,
               reference: bool, official=None) -> dict:
    from bench.official import cuda_noop

    torch.manual_seed(0)
    model = LightGen(config).to(device).train()
    latents, text = _inputs(config, batch, resolution, device)
    gpu, bf16 = device.type == "cuda", native_bf16(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    steps = {"optimised": _train_step(model, lambda: model(latents, text), amp, gpu)}
    precision = {"optimised": "bf16-autocast" if bf16 else "fp32"}
    if official is not None:
        theirs, diff = _official_model(official, model, batch, resolution, device)

        def official_forward():
            with cuda_noop(device):
                return theirs(latents, text, height=resolution, width=resolution)
        steps["official"] = _train_step(theirs, official_forward, _official_amp(device), False)
        precision["official"] = "fp16-autocast" if gpu else "fp32"
    elif reference:
        steps["reference"] = _train_step(model, lambda: model(latents, text, fast=False), nullcontext(), False)
        precision["reference"] = "fp32"
    results = race(steps, iters, warmup=1, device=device)
    for name, row in results.items():
        row.update(step_s=row["seconds"], img_per_s=batch / row["seconds"], precision=precision[name])
        if gpu:
            row["flops_per_step"] = flops = _flops(steps[name])
            peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in torch.cuda.get_device_name(device)), None)
            if peak and name == "optimised":
                row["mfu"] = flops / row["seconds"] / (peak * 1e12)
    if official is not None:
        results["official"]["max_abs_diff"] = diff
    return results


def student_step_seconds(cfg, iters: int = 2) -> float:
    """Median CPU seconds (process time, all threads) of one training step of `cfg`'s student (a
    `TrainConfig`: its loss, backward and AdamW at its batch size and precision) on a synthetic cache of
    its shapes, for --dry-run estimates. CPU time, not wall time: on a shared machine the wall time says
    more about the other jobs than about the step; with one thread it is the step's time on an idle core."""
    import tempfile

    from PIL import Image

    from lightgen.cache import FeatureCache, build_cache
    from lightgen.codecs import build_codec
    from lightgen.pipeline import build_text_encoder
    from lightgen.train import make_student

    config = cfg.model_config()
    res = cfg.resolution or config.resolution
    word = config.text_vocab[0] if config.text_vocab else "a"
    records = [(Image.new("RGB", (res, res), (i % 256,) * 3), word) for i in range(cfg.batch_size)]
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(build_cache(records, Path(tmp) / "cache", config, build_codec(config),
                                         build_text_encoder(config), res))
        student = make_student(cfg, config, res, cache)
        torch.manual_seed(0)
        model = student.build().train()
        groups = student.param_groups(model, cfg.weight_decay, cfg.head_lr_scale)
        opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "lr_scale"} for g in groups], lr=cfg.learning_rate)
        rows = [cache[i] for i in range(len(cache))]
        batch = (torch.stack([r.moments for r in rows]), torch.stack([r.text for r in rows]))
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.mixed_precision == "bf16" else nullcontext()

        def step():
            with amp:
                loss, _ = student.loss(model, batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # warm-up
        times = []
        for _ in range(iters):
            t0 = time.process_time()
            step()
            times.append(time.process_time() - t0)
        return sorted(times)[len(times) // 2]


def perf_sample(config: LightGenConfig, batch: int, resolution: int, device: torch.device, steps: int,
                guidance_scale: float, iters: int, reference: bool, official=None) -> dict:
    from bench.official import cuda_noop

    torch.manual_seed(0)
    model = LightGen(config).to(device).eval()
    _, text = _inputs(config, batch, resolution, device)
    kw = dict(num_iter=steps, guidance_scale=guidance_scale, height=resolution, width=resolution)

    def ours(n_per_call: int, cache: bool, precision: str):
        def call():
            for i in range(0, batch, n_per_call):
                chunk = text[i:i + n_per_call]
                gens = [torch.Generator(device).manual_seed(i + k) for k in range(len(chunk))]
                with sampling_precision(precision, device):
                    model.sample_tokens(chunk, gens, cache=cache, **kw)
        return call

    calls, per_call = {"optimised": ours(batch, True, "auto")}, {"optimised": batch}
    if official is not None:
        theirs, diff = _official_model(official, model, batch, resolution, device)

        def official_call():
            with torch.no_grad(), cuda_noop(device), _official_amp(device):
                theirs.sample_tokens(batch, num_iter=steps, cfg=guidance_scale, cfg_schedule="constant", texts=text,
                                     height=resolution, width=resolution)
        calls["official"], per_call["official"] = official_call, batch
    elif reference:
        calls["reference"], per_call["reference"] = ours(min(4, batch), False, "fp32"), min(4, batch)
    results = race(calls, iters, warmup=1, device=device)
    for name, row in results.items():
        row.update(s_per_image=row["seconds"] / batch, img_per_s=batch / row["seconds"], images_per_call=per_call[name],
                   precision="bf16-autocast" if name == "optimised" and native_bf16(device) else
                   "fp16-autocast" if name == "official" and device.type == "cuda" else "fp32")
    if official is not None:
        results["official"]["max_abs_diff"] = diff
    return results


def perf_fid(dim: int, n: int, reference: bool) -> dict:
    from bench.fid import frechet_distance, statistics as fid_statistics

    g = torch.Generator().manual_seed(0)
    stats = [fid_statistics((torch.randn(n, dim, generator=g) * s).double().numpy()) for s in (1.0, 1.1)]
    calls = {"optimised": lambda: frechet_distance(*stats[0], *stats[1])}
    if reference:
        from cleanfid.fid import frechet_distance as cleanfid_fd
        calls["reference"] = lambda: cleanfid_fd(*stats[0], *stats[1])
    results = race(calls, 1, 0, torch.device("cpu"))
    if reference:
        results["reference"]["impl"] = "clean-fid frechet_distance (scipy sqrtm)"
    return results


def run_perf(preset: str, what: str, batch: int, resolution: int | None, device: str, iters: int = 3,
             steps: int = 64, guidance_scale: float = 4.0, reference: bool = True, out: str | Path | None = None,
             overrides: dict | None = None, official: str | Path | None = None, command: str | None = None,
             note: str | None = None) -> dict:
    """Measure one workload beside its baseline (the official code at `official`, else our reference
    path) and write a JSON record (with the `command` that ran it and a free-text `note`, when given)."""
    from bench.provenance import environment
    from bench.official import load_official, official_kwargs, source_digest

    config = LightGenConfig.from_preset(preset, **(overrides or {}))
    dev = torch.device(device)
    res = resolution or config.resolution
    config.grid(res, res)
    if what not in ("train", "sample", "fid"):
        raise InputError(f"what: expected train|sample|fid, got {what!r}")
    module = None
    if official is not None:
        if what == "fid":
            raise InputError("--official: compares the model (train|sample), not FID")
        official_kwargs(config)  # a config without an official counterpart fails before any work
        module = load_official(official)
    if what == "train":
        results = perf_train(config, batch, res, dev, iters, reference, module)
    elif what == "sample":
        results = perf_sample(config, batch, res, dev, steps, guidance_scale, iters, reference, module)
    else:
        results = perf_fid(2048, max(batch, 4096), reference)
    baseline = "official" if module is not None else "reference"
    if baseline in results:
        results["speedup"] = results[baseline]["seconds"] / results["optimised"]["seconds"]
    record = {**({"command": command} if command else {}), **({"note": note} if note else {}),
              "what": what, "preset": preset, "overrides": overrides or {}, "batch": batch, "resolution": res,
              "sampling_steps": steps, "guidance_scale": guidance_scale, "baseline": baseline, **machine(dev),
              "results": results, **environment()}
    if dev.type == "cpu":
        record["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    if module is not None:
        record["official"] = {"path": str(official), "files_sha256": source_digest(official)}
    if out:
        from lightgen.files import write_text

        write_text(out, json.dumps(record, indent=2))
    return record
