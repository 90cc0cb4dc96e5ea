"""`lightgen-bench demo`: the whole paper loop on the testbed in one command.

distil a dataset from the teacher → KD pretraining → DPO pairs (teacher winners, model losers) →
Diffusion-DPO → testbed GenEval + FID before and after DPO → paper-style table, sample grid, curves.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from bench.config import merge, train_config
from bench.experiment import DataSpec, EvalSpec, cached, distilled, evaluate, run_training
from bench.provenance import run_record
from lightgen.errors import InputError, check_known
from lightgen.files import read_yaml, write_text
from lightgen.probe import probe_pipeline
from lightgen.train import TrainConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "eval_configs" / "demo.yaml"
# --quick: the same loop, sized for CI (about a minute)
QUICK = {"data": {"n": 256}, "kd": {"steps": 12, "batch_size": 32, "save_every": 6, "log_every": 2},
         "dpo": {"steps": 4, "batch_size": 16, "save_every": 2, "log_every": 1}, "dpo_pairs": 32,
         "eval": {"limit": 24, "steps": 4}, "completion_images": 4}


def load_demo_config(path: str | Path | None, quick: bool) -> dict:
    path = Path(path or DEFAULT_CONFIG)
    raw = read_yaml(path, "demo config")
    known = {"data", "kd_config", "kd", "dpo_config", "dpo", "dpo_pairs", "eval", "completion_images"}
    if unknown := sorted(set(raw) - known):
        raise InputError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
    return merge(raw, QUICK) if quick else raw


def run_demo(config: dict, output: Path, work: Path, seed: int, command: list[str]) -> dict:
    """Run (or resume) the demo; returns the summary written to `output/summary.json`. `command` is the
    command line recorded in `output/run.json`."""
    started = time.perf_counter()
    from bench.testbed.captions import max_diversity, sample_captions
    from bench.testbed.teacher import TestbedTeacher
    from lightgen.dpo import build_pairs

    data_spec = DataSpec(**check_known({**config.get("data", {}), "seed": seed}, DataSpec, "data"))
    eval_spec = EvalSpec(**check_known({**config.get("eval", {}), "seed": seed}, EvalSpec, "eval"))
    data = distilled(work, data_spec)

    kd = train_config(config.get("kd_config", "eval_configs/train/testbed_kd.yaml"), config.get("kd", {}),
                       out=str(work / "kd"), seed=seed, resolution=data_spec.resolution)
    kd.cache = str(cached(data, kd))
    kd_pipe = run_training(kd)
    before = evaluate(kd_pipe, work / "eval-kd", eval_spec)

    captions = sample_captions(config.get("dpo_pairs", 1024), data_spec.diversity or max_diversity(), seed + 1)
    pairs = build_pairs(kd_pipe, work / "pairs", winners=TestbedTeacher(data_spec.resolution), captions=captions,
                        seed=seed + 1, steps=eval_spec.steps,
                        guidance_scale=eval_spec.guidance_scale)
    dpo = train_config(config.get("dpo_config", "eval_configs/train/testbed_dpo.yaml"), config.get("dpo", {}),
                        out=str(work / "dpo"), seed=seed, init_from=str(kd_pipe), resolution=data_spec.resolution)
    dpo.cache, dpo.loser_cache = str(cached(pairs / "winner", dpo)), str(cached(pairs / "loser", dpo))
    dpo_pipe = run_training(dpo)
    after = evaluate(dpo_pipe, work / "eval-dpo", eval_spec)
    for summary, pipe in ((before, kd_pipe), (after, dpo_pipe)):  # what each model uses, on the KD data
        summary["probe"] = probe_pipeline(pipe, kd.cache, completion_images=config.get("completion_images", 48))

    summary = write_report(output, work, data_spec, {"KD (before DPO)": before, "KD + DPO": after}, kd, dpo)
    record = run_record(command, {"demo": config, "kd": dataclasses.asdict(kd), "dpo": dataclasses.asdict(dpo)},
                        started)
    write_text(output / "run.json", json.dumps(record, indent=2, default=str))
    return {**summary, "wall_s": record["wall_s"]}


def write_report(output: Path, work: Path, data: DataSpec, runs: dict[str, dict], kd: TrainConfig,
                 dpo: TrainConfig) -> dict:
    """table.{md,tex,csv} (paper columns), before/after comparison, sample grid, loss curves."""
    import pandas as pd

    from bench.tables import build_table, line_plot, result_row, write_table

    output.mkdir(parents=True, exist_ok=True)
    params = _params(kd.model_config())
    rows = [result_row(s, f"LightGen-testbed ({name})", params=params, data=f"{data.n:,} teacher renders",
                       resolution=data.resolution,
                       source=f"ours: testbed detector, {data.resolution} px, {s['images']} images")
            for name, s in runs.items()]
    table = build_table(rows)
    for ext in ("md", "tex", "csv"):
        write_table(table, output / f"table.{ext}")
    compare = {name: {"overall": s["overall"], **{t: v["score"] for t, v in s["tasks"].items()},
                      "fid": s.get("fid", {}).get("fid"),
                      **({"context_gain": s["probe"]["context_gain"], "text_gain": s["probe"]["text_gain"],
                          "completion_ratio": s["probe"]["completion"]["ratio"]} if "probe" in s else {})}
               for name, s in runs.items()}
    write_text(output / "before_after.json", json.dumps(compare, indent=2))
    _grid(output / "samples.png", [work / "eval-kd" / "images", work / "eval-dpo" / "images"])
    for name, cfg in (("kd", kd), ("dpo", dpo)):
        metrics = pd.read_csv(Path(cfg.out) / "metrics.csv")
        line_plot(metrics, "step", ["loss"], output / f"{name}_loss.png", f"{name.upper()} training loss",
                  ylabel="loss")
    return {"runs": compare, "table": str(output / "table.md")}


def _params(config) -> str:
    import torch

    from lightgen.mar import LightGen

    with torch.device("meta"):
        n = sum(p.numel() for p in LightGen(config).parameters())
    return f"{n / 1e6:.1f}M"


def _grid(path: Path, folders: list[Path], prompts: int = 12) -> None:
    """Rows: the first images of each evaluation folder (before / after DPO), same prompts and seeds."""
    from PIL import Image

    from bench.geneval.layout import make_grid

    rows = [[Image.open(p) for p in sorted(f.glob("*/samples/*.png"))[:prompts]] for f in folders]
    grid = make_grid([im for row in rows for im in row], cols=prompts)
    grid.resize((grid.width * 3, grid.height * 3), Image.NEAREST).save(path)
