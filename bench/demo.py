"""`lightgen-bench demo`: the whole paper loop on the testbed in one command.

distil a dataset from the teacher → KD pretraining → DPO pairs (teacher winners, model losers) →
Diffusion-DPO → testbed GenEval + FID before and after DPO → paper-style table, sample grid, curves.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from types import SimpleNamespace

from bench.config import merge, train_config
from bench.experiment import DataSpec, EvalSpec, cached, distilled, evaluate, parameter_count, run_training
from bench.provenance import run_record
from lightgen.errors import TEXT, InputError, check_fields, integer, nested
from lightgen.files import atomic_write, read_yaml, write_text
from lightgen.probe import probe_pipeline
from lightgen.train import TrainConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "eval_configs" / "demo.yaml"
# --quick: the same loop, sized for CI (about a minute)
QUICK = {"data": {"n": 256}, "kd": {"steps": 12, "batch_size": 32, "save_every": 6, "log_every": 2},
         "dpo": {"steps": 4, "batch_size": 16, "save_every": 2, "log_every": 1}, "dpo_pairs": 32,
         "eval": {"limit": 24, "steps": 4}, "completion_images": 4}


DEFAULTS = {"kd_config": "eval_configs/train/testbed_kd.yaml", "dpo_config": "eval_configs/train/testbed_dpo.yaml",
            "dpo_pairs": 1024, "completion_images": 48}
DEFAULT_RULES = {"kd_config": TEXT, "dpo_config": TEXT, "dpo_pairs": integer(1), "completion_images": integer(1)}


def load_demo_config(path: str | Path | None, quick: bool) -> dict:
    path = Path(path or DEFAULT_CONFIG)
    raw = read_yaml(path, "demo config")
    known = {"data", "kd_config", "kd", "dpo_config", "dpo", "dpo_pairs", "eval", "completion_images"}
    if unknown := sorted(set(raw) - known):
        raise InputError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
    for key in ("data", "kd", "dpo", "eval"):
        if not isinstance(raw.get(key, {}), dict):
            raise InputError(f"{path}: {key}: expected a mapping of options, got {type(raw[key]).__name__}")
    config = merge(raw, QUICK) if quick else raw
    try:  # the sections (data, eval, kd, dpo) are checked when run_demo builds them, before any work
        check_fields(SimpleNamespace(**{**DEFAULTS, **config}), DEFAULT_RULES)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    return config


def run_demo(config: dict, output: Path, work: Path, seed: int, command: list[str]) -> dict:
    """Run (or resume) the demo; returns the summary written to `output/summary.json`. `command` is the
    command line recorded in `output/run.json`."""
    started = time.perf_counter()
    from bench.testbed.captions import max_diversity, sample_captions
    from bench.testbed.teacher import TestbedTeacher
    from lightgen.dpo import build_pairs

    settings = {**DEFAULTS, **config}
    data_spec = nested("data", DataSpec, {**config.get("data", {}), "seed": seed})
    eval_spec = nested("eval", EvalSpec, {**config.get("eval", {}), "seed": seed})
    kd = train_config(settings["kd_config"], config.get("kd", {}), out=str(work / "kd"), seed=seed,
                      resolution=data_spec.resolution)
    dpo = train_config(settings["dpo_config"], config.get("dpo", {}), out=str(work / "dpo"), seed=seed,
                       init_from=str(Path(kd.out) / "pipeline"),
                       resolution=data_spec.resolution)  # both checked before any work starts
    data = distilled(work, data_spec)
    kd.cache = str(cached(data, kd))
    kd_pipe = run_training(kd)
    before = evaluate(kd_pipe, work / "eval-kd", eval_spec)

    captions = sample_captions(settings["dpo_pairs"], data_spec.diversity or max_diversity(), seed + 1)
    pairs = build_pairs(kd_pipe, work / "pairs", winners=TestbedTeacher(data_spec.resolution), captions=captions,
                        seed=seed + 1, steps=eval_spec.steps,
                        guidance_scale=eval_spec.guidance_scale)
    dpo.cache, dpo.loser_cache = str(cached(pairs / "winner", dpo)), str(cached(pairs / "loser", dpo))
    dpo_pipe = run_training(dpo)
    after = evaluate(dpo_pipe, work / "eval-dpo", eval_spec)
    for summary, pipe in ((before, kd_pipe), (after, dpo_pipe)):  # what each model uses, on the KD data
        summary["probe"] = probe_pipeline(pipe, kd.cache, completion_images=settings["completion_images"])

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
    params = f"{parameter_count(kd) / 1e6:.1f}M"
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
    _grid(output / "samples.png", {f"KD student\n{kd.steps} steps": work / "eval-kd" / "images",
                                   f"KD + DPO\n+{dpo.steps} DPO\nsteps": work / "eval-dpo" / "images"}, data)
    for name, cfg in (("kd", kd), ("dpo", dpo)):
        metrics = pd.read_csv(Path(cfg.out) / "metrics.csv")
        line_plot(metrics, "step", ["loss"], output / f"{name}_loss.png", f"{name.upper()} training loss",
                  ylabel="loss")
    return {"runs": compare, "table": str(output / "table.md")}


def _grid(path: Path, folders: dict[str, Path], data: DataSpec, prompts: int = 12) -> None:
    """samples.png: one column per prompt (the first `prompts` of the evaluation, labelled underneath), one row
    per source: the teacher's render and each model's first sample, all with the image's GenEval seed."""
    from PIL import Image

    from bench.geneval.layout import read_layout
    from bench.testbed.teacher import TestbedTeacher
    from lightgen.distill import sample_seed

    layouts = {name: read_layout(folder)[:prompts] for name, folder in folders.items()}
    first = next(iter(layouts.values()))
    texts = [f.metadata["prompt"] for f in first]
    teacher = TestbedTeacher(data.resolution)(texts, [sample_seed(data.seed, int(f.path.name), 0) for f in first])
    rows = {"teacher\n(testbed\nrender)": teacher,
            **{name: [Image.open(f.samples[0]) for f in fs] for name, fs in layouts.items()}}
    title = (f"First sample of the first {len(texts)} testbed GenEval prompts (caption below each column, "
             f"{data.resolution} px shown x3); the teacher row renders the same caption with the same seed")
    atomic_write(path, lambda tmp: _labelled(rows, texts, title).save(tmp, format="PNG"))


def _labelled(rows: dict[str, list], captions: list[str], title: str = "", scale: int = 3):
    """Images in a grid (nearest-neighbour upscaled), row names (may hold line breaks) on the left, wrapped
    captions under the columns, then the title line."""
    import textwrap

    from PIL import Image, ImageDraw

    side = rows[next(iter(rows))][0].width * scale
    pitch, line, margin = side + 2, 11, 70  # 2-px white gaps; default bitmap font: ~6 px a character, 11 a line
    wrapped = [textwrap.wrap(c.removeprefix("a photo of "), max(1, side // 6)) for c in captions]
    canvas = Image.new("RGB", (margin + len(captions) * pitch,
                               len(rows) * pitch + line * (max(map(len, wrapped)) + 2 * bool(title)) + 2), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (name, images) in enumerate(rows.items()):
        y = r * pitch
        draw.multiline_text((4, y + side // 2 - line * (name.count("\n") + 1) // 2), name, fill="black")
        for c, im in enumerate(images):
            canvas.paste(im.convert("RGB").resize((side, side), Image.NEAREST), (margin + c * pitch, y))
    for c, lines in enumerate(wrapped):
        for k, text in enumerate(lines):
            draw.text((margin + c * pitch + 2, len(rows) * pitch + k * line), text, fill="black")
    draw.text((4, canvas.height - line - 2), title, fill="black")
    return canvas
