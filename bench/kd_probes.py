"""Why KD stalls on the testbed: three probes of the trunk's use of context (README, "Why KD stalls").

`lightgen-bench probe-kd KIND` runs one and appends its record (scores, probe, config, versions, commit)
to `results/testbed/kd-probes/results.jsonl`:

  sincos  MAE's fixed 2-D sin-cos table as the initial position tables (`pos_init: sincos`)
  grid    a token-aligned world: every box edge on the 4-px token grid (`DataSpec.token_grid`)
  copy    flat one-colour images under a constant caption: how soon does the trunk read context at all?
  curve   a recipe's learning curve: KD with `--set` overrides, snapshots probed and scored against CPU time

The first two are 500 KD steps at the KD config (`eval_configs/train/testbed_kd.yaml`, recorded with the
result) on the demo's 16,000 renders, then the probe and testbed GenEval at CFG 4 and 1.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from bench.config import train_config
from bench.experiment import DataSpec, EvalSpec, cached, distilled, evaluate, run_training
from bench.provenance import run_record
from lightgen.errors import InputError
from lightgen.files import write_text

KINDS = ("curve", "sincos", "grid", "copy")
KD_CONFIG = "eval_configs/train/testbed_kd.yaml"
DATA = DataSpec(n=16000)  # the demo's data
STEPS, GUIDANCE_SCALES = 500, (4.0, 1.0)
TOKEN_GRID = 8  # tokens per side of a 32-px testbed image (4-px tokens)


def kd_probe(name: str, data: Path, work: Path, steps: int = STEPS, **model) -> dict:
    """`steps` KD steps at the committed KD config (model fields overridden by `model`), then the probe and
    testbed GenEval at each guidance scale."""
    cfg = train_config(KD_CONFIG, {"steps": steps, "model": model}, out=str(work / name))
    cfg.cache = str(cached(data, cfg))
    pipe = run_training(cfg)
    return {"train": dataclasses.asdict(cfg), **scores(pipe, cfg.cache, work / name, None, 48)}


def scores(pipe: Path, cache: str, outdir: Path, limit: int | None, completion_images: int) -> dict:
    """The probe on the KD data and testbed GenEval (32 AR steps) at each guidance scale."""
    from lightgen.probe import probe_pipeline

    out = {"probe": probe_pipeline(pipe, cache, completion_images=completion_images)}
    for c in GUIDANCE_SCALES:
        s = evaluate(pipe, outdir / f"eval-cfg{c:g}", EvalSpec(steps=32, guidance_scale=c, fid=False, limit=limit))
        out[f"cfg{c:g}"] = {"overall": s["overall"], **{t: v["score"] for t, v in s["tasks"].items()}}
    return out


def kd_curve(name: str, work: Path, overrides: dict, steps: int = 1000, every: int = 250,
             limit: int | None = 120) -> dict:
    """A learning curve of one recipe: KD at the committed config with `overrides` (a `--set` layer), a
    pipeline every `every` steps, each probed and scored on `limit` evenly spaced testbed prompts, against the
    training's process CPU time up to it (the cost that matters on a shared CPU; None for a resumed run)."""
    marks = sorted({*range(every, steps, every), steps})
    cfg = train_config(KD_CONFIG, overrides, {"steps": steps, "export_steps": marks[:-1]}, out=str(work / name))
    cfg.cache = str(cached(distilled(work, DATA), cfg))
    resumed = (Path(cfg.out) / "checkpoints").is_dir()
    cpu = time.process_time()
    final = run_training(cfg)
    per_step = None if resumed else (time.process_time() - cpu) / steps
    points = []
    for step in marks:
        pipe = final if step == steps else Path(cfg.out) / "snapshots" / f"step-{step:08d}"
        points.append({"step": step, "train_cpu_min": per_step and step * per_step / 60,
                       **scores(pipe, cfg.cache, Path(cfg.out) / f"eval-{step}", limit, 24)})
    return {"name": name, "overrides": overrides, "limit": limit, "train": dataclasses.asdict(cfg), "points": points}


def plot_curves(records: list[dict], path: Path) -> Path:
    """Testbed GenEval at CFG 1 (overall and every tag, 0–1, with intervals from the per-tag counts of one
    image per prompt) and the context gain against training CPU minutes, one line per recipe."""
    from collections import Counter

    import pandas as pd

    from bench.experiment import eval_prompts
    from bench.plots import RECONSTRUCTED, counted_intervals, geneval_panels

    rows = []
    for r in records:
        sizes = Counter(p["tag"] for p in eval_prompts(r.get("limit")))
        for p in (p for p in r["points"] if p["train_cpu_min"] is not None):
            counts = {t: (round(p["cfg1"][t] * n), n) for t, n in sizes.items()}
            rows.append({"x": p["train_cpu_min"], "recipe": r["name"], **p["cfg1"], **counted_intervals(counts),
                         "context_gain": p["probe"]["context_gain"]})
    prompts = "/".join(sorted({str(len(eval_prompts(r.get("limit")))) for r in records}))
    title = (f"LightGen KD recipes (probe-kd curve): testbed GenEval at CFG 1 vs training CPU minutes\n"
             f"{DATA.n:,} teacher renders · {prompts} testbed prompts × 1 image · 32 sampling steps")
    return geneval_panels(pd.DataFrame(rows), path, title, "training CPU minutes", series="recipe",
                          extra=("context_gain", "context gain (lightgen.probe)"), note=RECONSTRUCTED)


def replot(folder: Path) -> list[Path]:
    """Redraw curves.png from the curve records of `folder/results.jsonl` (no training)."""
    path = folder / "results.jsonl"
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: expected one JSON record per line ({e})") from None
    curves = [r for r in records if isinstance(r, dict) and r.get("kind") == "curve"]
    if not curves:
        raise InputError(f"{path}: no `curve` records to plot (made by `lightgen-bench probe-kd curve`)")
    return [plot_curves(curves, folder / "curves.png")]


def copy_task(lr: float, head_lr: float, steps: int = 300, every: int = 25, seed: int = 0, probe_n: int = 128) -> dict:
    """Images of one random flat colour under a constant caption: context is the only information, so the
    context gain measures how soon the trunk learns to read the visible tokens at all."""
    from lightgen.config import LightGenConfig
    from lightgen.mar import LightGen
    from lightgen.probe import probe
    from lightgen.train import param_groups

    torch.manual_seed(seed)
    model = LightGen(LightGenConfig.from_preset("testbed"))
    groups = param_groups(model, weight_decay=0.02, head_lr_scale=head_lr / lr)  # the trainer's split
    for group in groups:
        group["lr"] = lr * group.pop("lr_scale")
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.95))
    text = torch.randn(1, model.config.max_length, model.config.caption_channels)

    def batch(n: int) -> torch.Tensor:
        return (torch.rand(n, 3, 1, 1) * 2 - 1).expand(n, 3, 32, 32).contiguous()

    curve = []
    for step in range(steps + 1):
        if step % every == 0:
            p = probe(model, batch(probe_n), text.expand(probe_n, -1, -1))
            curve.append({"step": step, "loss": p.loss, "context_gain": p.context_gain})
            print(curve[-1], flush=True)
        if step < steps:
            loss = model(batch(64), text.expand(64, -1, -1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
            opt.step()
    return {"lr": lr, "head_lr": head_lr, "curve": curve}


def run_probe(kind: str, work: Path, output: Path, command: list[str], curve: dict | None = None) -> dict:
    """Run one probe and append its record to `output` (rewritten atomically); returns the record. `curve`:
    the arguments of `kd_curve` for kind "curve", whose records are also drawn to `curves.png` beside `output`."""
    started = time.perf_counter()
    if kind == "curve":
        result = kd_curve(work=work, **(curve or {}))
    elif kind == "sincos":
        result = kd_probe("sincos", distilled(work, DATA), work, pos_init="sincos")
    elif kind == "grid":
        result = kd_probe("grid", distilled(work, dataclasses.replace(DATA, token_grid=TOKEN_GRID)), work)
    elif kind == "copy":
        result = {"runs": [copy_task(2e-4, 4e-3), copy_task(1e-3, 4e-3)]}
    else:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    config = {"kind": kind, "steps": (curve or {}).get("steps", STEPS) if kind == "curve" else STEPS,
              **({"train": result.pop("train")} if "train" in result else {})}
    record = {"kind": kind, **result, **run_record(command, config, started)}
    old = output.read_text() if output.is_file() else ""
    write_text(output, old + json.dumps(record) + "\n")
    if kind == "curve":
        curves = [r for r in [*map(json.loads, old.splitlines()), record] if r["kind"] == "curve"]
        plot_curves(curves, output.parent / "curves.png")
    return record
