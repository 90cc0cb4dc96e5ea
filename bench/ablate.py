"""`lightgen-bench ablate <kind>`: the paper's ablations (Fig. 6, §5) on the testbed.

Each grid point = distil/reuse data → train (or reuse checkpoints along one run for `steps`) →
testbed GenEval (+ FID), once per training seed (`seeds`). Every seed of a point is persisted as it
finishes (`points/<label>/seed-<s>.json`) and skipped on rerun; `points/<label>/summary.json` combines
the seeds (mean, and intervals over seeds and prompts). Outputs: table.{md,tex,csv}, plot.png (Fig. 6
style, error bars), run.json. `student` names the model trained (lightgen | unet: the UNet peer).

Kinds and what a point varies:
  data-scale  number of distilled images at a fixed caption pool   (paper Fig. 6a: plateaus)
  diversity   distinct captions at a fixed number of images       (the paper's central claim)
  steps       training iterations, at one or more resolutions      (Fig. 6b)
  resolution  train/evaluate at two resolutions, stage 2 initialised from stage 1, against the high
              resolution from scratch at equal compute (a step costs ∝ pixels)
  dpo         before/after Diffusion-DPO, β sweep
  guidance    CFG scale at sampling time, all points on one trained model
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.config import train_config
from bench.experiment import DataSpec, EvalSpec, cached, distilled, evaluate, is_diffusers_pipeline, run_training
from bench.provenance import run_record
from lightgen.errors import InputError, check_known
from lightgen.files import read_yaml, write_text
from lightgen.probe import probe_pipeline
from lightgen.train import TrainConfig

KINDS = ("data-scale", "diversity", "steps", "resolution", "dpo", "guidance")
STUDENT_CONFIGS = {"lightgen": "eval_configs/train/testbed_kd.yaml", "unet": "eval_configs/train/testbed_unet.yaml"}
STUDENT_NAMES = {"lightgen": "LightGen", "unet": "UNet"}


@dataclass
class AblationConfig:
    kind: str
    points: list[Any]  # data-scale: n; diversity: distinct captions; steps: iterations; dpo: β values;
    # guidance: CFG scales
    student: str = "lightgen"  # lightgen | unet
    seeds: list[int] = field(default_factory=lambda: [0])  # training seeds per point
    train_config: str | None = None  # default: the student's (STUDENT_CONFIGS)
    train: dict[str, Any] = field(default_factory=dict)  # overrides of the KD config
    data: dict[str, Any] = field(default_factory=dict)  # DataSpec fields held fixed
    eval: dict[str, Any] = field(default_factory=dict)
    resolutions: list[int] = field(default_factory=lambda: [32])  # steps / resolution kinds
    stage2_steps: int = 0  # resolution kind: steps of the high-resolution stage
    dpo_config: str = "eval_configs/train/testbed_dpo.yaml"
    dpo: dict[str, Any] = field(default_factory=dict)
    dpo_pairs: int = 1024

    @classmethod
    def load(cls, path: str | Path, kind: str) -> "AblationConfig":
        raw = check_known({"kind": kind, **read_yaml(path, "ablation config")}, cls, str(path))
        if raw["kind"] != kind:
            raise InputError(f"{path}: kind: file is for {raw['kind']!r}, command asked for {kind!r}")
        if not raw.get("points"):
            raise InputError(f"{path}: points: expected a non-empty list")
        seeds = raw.get("seeds", [0])
        if not (isinstance(seeds, list) and seeds and all(isinstance(x, int) and x >= 0 for x in seeds)
                and len(set(seeds)) == len(seeds)):
            raise InputError(f"{path}: seeds: expected a non-empty list of distinct ints >= 0, got {seeds!r}")
        ab = cls(**raw)
        if ab.student not in STUDENT_CONFIGS:
            raise InputError(f"{path}: student: expected one of {', '.join(STUDENT_CONFIGS)}, got {ab.student!r}")
        if ab.kind == "dpo" and ab.student != "lightgen":
            raise InputError(f"{path}: student: the dpo ablation needs Diffusion-DPO, implemented for lightgen only")
        ab.train_config = ab.train_config or STUDENT_CONFIGS[ab.student]
        trained = train_config(ab.train_config, ab.train).student
        if trained != ab.student:
            raise InputError(f"{path}: train_config {ab.train_config} trains the {trained!r} student, the ablation "
                             f"names {ab.student!r}")
        return ab


@dataclass
class Point:
    label: str
    x: Any  # the plotted value
    data: DataSpec
    train: TrainConfig | None  # None: a snapshot of another point's run (steps)
    pipeline: Path | None = None  # set for snapshot points
    resolution: int = 32
    extra: dict[str, Any] = field(default_factory=dict)


def seeded(path: Path, seed: int) -> Path:
    """Where seed `seed` of a run lives: seed 0 keeps the path of single-seed runs, others get a suffix."""
    return path if seed == 0 else path.with_name(f"{path.name}-seed{seed}")


def plan(ab: AblationConfig, work: Path, seed: int = 0) -> list[Point]:
    """The grid points of an ablation, in order, for one training seed."""
    base = DataSpec(**check_known(ab.data, DataSpec, "data"))
    train = lambda name, **fixed: train_config(ab.train_config, ab.train, fixed, seed=seed,  # noqa: E731
                                               out=str(seeded(work / "train" / name, seed)))
    points = []
    if ab.kind in ("data-scale", "diversity"):
        for v in ab.points:
            spec = dataclasses.replace(base, **({"n": int(v)} if ab.kind == "data-scale" else {"diversity": int(v)}))
            label = f"n{spec.n}" if ab.kind == "data-scale" else f"d{spec.diversity}"
            points.append(Point(label, int(v), spec, train(label, resolution=spec.resolution),
                                resolution=spec.resolution))
    elif ab.kind == "steps":
        for res in ab.resolutions:
            spec = dataclasses.replace(base, resolution=res)
            cfg = train(f"r{res}", resolution=res, steps=max(ab.points), export_steps=sorted(ab.points))
            for s in sorted(ab.points):  # the first point trains the whole run; all read its snapshots
                points.append(Point(f"r{res}-s{s}", s, spec, cfg if s == min(ab.points) else None,
                                    Path(cfg.out) / "snapshots" / f"step-{s:08d}", res, {"resolution": res}))
    elif ab.kind == "resolution":
        low, high = ab.resolutions
        s1 = int(ab.points[0])
        stage1 = train(f"r{low}", resolution=low, steps=s1)
        points.append(Point(f"r{low}", low, dataclasses.replace(base, resolution=low), stage1, resolution=low,
                            extra={"stage": f"{low} px, {s1} steps"}))
        stage2 = train(f"r{high}-from-r{low}", resolution=high, steps=ab.stage2_steps,
                       init_from=str(Path(stage1.out) / "pipeline"), warmup_steps=0)
        points.append(Point(f"r{high}-from-r{low}", high, dataclasses.replace(base, resolution=high), stage2,
                            resolution=high, extra={"stage": f"{high} px, {ab.stage2_steps} steps from the {low} px run"}))
        steps = ab.stage2_steps + round(s1 * (low / high) ** 2)  # equal compute: a step costs ∝ pixels
        scratch = train(f"r{high}-scratch", resolution=high, steps=steps)
        points.append(Point(f"r{high}-scratch", high, dataclasses.replace(base, resolution=high), scratch,
                            resolution=high, extra={"stage": f"{high} px, {steps} steps from scratch (equal compute)"}))
    elif ab.kind == "dpo":
        kd = train("kd", resolution=base.resolution)
        points.append(Point("before-dpo", 0.0, base, kd, resolution=base.resolution, extra={"beta": None}))
        for beta in ab.points:
            points.append(Point(f"beta{beta:g}", float(beta), base, None, resolution=base.resolution,
                                extra={"beta": float(beta)}))
    elif ab.kind == "guidance":
        run = train("kd", resolution=base.resolution)
        for i, g in enumerate(ab.points):  # the first point trains; all evaluate its final pipeline
            points.append(Point(f"cfg{float(g):g}", float(g), base, run if i == 0 else None,
                                Path(run.out) / "pipeline", base.resolution, {"guidance_scale": float(g)}))
    else:
        raise InputError(f"kind: expected one of {KINDS}, got {ab.kind!r}")
    return points


def _train_point(cfg: TrainConfig, launcher: str | None) -> Path:
    if launcher == "accelerate":
        cfg_file = Path(cfg.out) / "train.yaml"
        cfg_file.parent.mkdir(parents=True, exist_ok=True)
        cfg_file.write_text(yaml.safe_dump(dataclasses.asdict(cfg)))
        subprocess.run(["accelerate", "launch", "-m", "bench.cli", "train", "--config", str(cfg_file)], check=True)
        return Path(cfg.out) / "pipeline"
    return run_training(cfg)


def run_ablation(ab: AblationConfig, output: Path, work: Path, command: list[str], launcher: str | None = None) -> dict:
    """Run (or resume) every point for every seed; write table, plot and run.json (recording `command`) into
    `output`."""
    started = time.perf_counter()
    runs = {seed: _run_seed(ab, output, work, seed, launcher) for seed in ab.seeds}
    results = [(p, _combined(ab, p, [runs[seed][i] for seed in ab.seeds], output))
               for i, p in enumerate(plan(ab, work))]
    write_outputs(ab, results, output)
    record = run_record(command, dataclasses.asdict(ab), started)
    write_text(output / "run.json", json.dumps(record, indent=2, default=str))
    return {"points": [{"label": p.label, "overall": s["overall"], "overall_ci": s.get("overall_ci")}
                       for p, s in results]}


def _run_seed(ab: AblationConfig, output: Path, work: Path, seed: int, launcher: str | None) -> list[dict]:
    """Every point's summary for one training seed (`points/<label>/seed-<s>.json`, skipped when there)."""
    eval_spec = EvalSpec(**check_known(ab.eval, EvalSpec, "eval"))
    summaries, run, probes = [], None, {}  # probes: one per pipeline (guidance points share one)
    for p in plan(ab, work, seed):
        run = p if p.train is not None else run  # the training run this point reads (snapshots, DPO)
        done = output / "points" / p.label / f"seed-{seed}.json"
        if not done.is_file():
            write_text(done, json.dumps({**_run_point(ab, p, run, work, seed, eval_spec, launcher, probes),
                                         "seed": seed}, indent=2))
        summaries.append(json.loads(done.read_text()))
    return summaries


def _run_point(ab: AblationConfig, p: Point, run: Point, work: Path, seed: int, eval_spec: EvalSpec,
               launcher: str | None, probes: dict[Path, dict]) -> dict:
    """Train (the first point of a run) or reuse the run, evaluate and probe; the point's summary for `seed`."""
    train = dataclasses.replace(run.train, cache=str(cached(distilled(work, run.data), run.train)))
    trained = _train_point(train, launcher) if p.train is not None else None
    if ab.kind == "dpo" and p.train is None:
        pipeline = _dpo_point(ab, p, Path(train.out) / "pipeline", work, seed)
    else:  # snapshot points (steps, guidance) read the run trained by the first of them
        pipeline = p.pipeline or trained
    spec = dataclasses.replace(eval_spec, guidance_scale=p.extra.get("guidance_scale", eval_spec.guidance_scale))
    summary = evaluate(pipeline, seeded(work / "eval" / p.label, seed), spec)
    if pipeline not in probes and not is_diffusers_pipeline(pipeline):  # LightGen's, on the KD training data
        probes[pipeline] = probe_pipeline(pipeline, train.cache)
    if pipeline in probes:
        summary["probe"] = probes[pipeline]
    return {**summary, "point": _point_record(p)}


def _point_record(p: Point) -> dict:
    return {"label": p.label, "x": p.x, **p.extra, "data": dataclasses.asdict(p.data)}


def _combined(ab: AblationConfig, p: Point, per_seed: list[dict], output: Path) -> dict:
    """`points/<label>/summary.json`: the point over its seeds (scores averaged, intervals over seeds and
    prompts, FID and probe averaged with their per-seed values kept), named as its table row."""
    from bench.geneval.summary import combine_runs

    summary = combine_runs(per_seed)
    fids = [s["fid"]["fid"] for s in per_seed if s.get("fid")]
    if fids:
        summary["fid"] = {"fid": sum(fids) / len(fids), "per_seed": fids,
                          "extractor": per_seed[0]["fid"].get("extractor")}
    if all("heldout" in s for s in per_seed):
        summary["heldout"] = combine_runs([s["heldout"] for s in per_seed])
    probes = [s["probe"] for s in per_seed if "probe" in s]
    if probes:
        summary["probe"] = {k: sum(q[k] for q in probes) / len(probes) for k, v in probes[0].items()
                            if isinstance(v, (int, float))}
    summary |= {"seeds": ab.seeds, "student": ab.student, "row_name": _row_name(ab, p), "point": _point_record(p),
                "eval": per_seed[0]["eval"], "pipelines": [s["pipeline"] for s in per_seed],
                "per_seed": [{"seed": s["seed"], "overall": s["overall"], "fid": (s.get("fid") or {}).get("fid")}
                             for s in per_seed]}
    write_text(output / "points" / p.label / "summary.json", json.dumps(summary, indent=2))
    return summary


def _dpo_point(ab: AblationConfig, p: Point, kd_pipe: Path, work: Path, seed: int) -> Path:
    from bench.testbed.captions import max_diversity, sample_captions
    from bench.testbed.teacher import TestbedTeacher
    from lightgen.dpo import build_pairs

    eval_spec = EvalSpec(**ab.eval)
    captions = sample_captions(ab.dpo_pairs, p.data.diversity or max_diversity(), p.data.seed + 1)
    pairs = build_pairs(kd_pipe, seeded(work / "pairs", seed), winners=TestbedTeacher(p.resolution),
                        captions=captions, seed=p.data.seed + 1, steps=eval_spec.steps,
                        guidance_scale=eval_spec.guidance_scale)
    cfg = train_config(ab.dpo_config, ab.dpo, out=str(seeded(work / "train" / p.label, seed)), init_from=str(kd_pipe),
                       dpo_beta=p.extra["beta"], resolution=p.resolution, seed=seed)
    cfg.cache, cfg.loser_cache = str(cached(pairs / "winner", cfg)), str(cached(pairs / "loser", cfg))
    return run_training(cfg)


def write_outputs(ab: AblationConfig, results: list[tuple[Point, dict]], output: Path) -> None:
    import pandas as pd

    from bench.experiment import parameter_count
    from bench.tables import build_table, line_plot, result_row, score_fields, write_table

    params = f"{parameter_count(train_config(ab.train_config, ab.train)) / 1e6:.1f}M"
    rows = []
    for p, s in results:
        name = s.get("row_name") or _row_name(ab, p)
        data = f"{p.data.n:,} renders, {p.data.diversity or 'all'} captions"
        rows.append(result_row(s, name, params=params, data=data, resolution=p.resolution,
                               source=f"ours: testbed detector, {p.resolution} px, {_sample_count(s)}"))
        if ab.kind == "diversity" and s.get("heldout"):  # generalisation: the held-out-combination prompts alone
            held = {**s["heldout"], "seeds": s.get("seeds", [0])}
            rows.append(result_row(held, f"{name}: held-out prompts", params=params, data=data,
                                   resolution=p.resolution,
                                   source=f"ours: held-out combinations only, {_sample_count(held)}"))
    table = build_table(rows)
    for ext in ("md", "tex", "csv"):
        write_table(table, output / f"table.{ext}")
    frame = pd.DataFrame([{"x": p.x, "series": p.extra.get("resolution", ""), "fid": s.get("fid", {}).get("fid"),
                           **score_fields(s)} for p, s in results])
    xlabel = {"data-scale": "distilled images", "diversity": "distinct training captions", "steps": "training steps",
              "resolution": "resolution (px)", "dpo": "DPO β (0 = before DPO)", "guidance": "CFG scale"}[ab.kind]
    tags = [c for c in ("overall", "position", "counting", "color_attr") if c in frame]
    if ab.kind == "steps" and frame["series"].nunique() > 1:
        values = [c for c in ("overall", "overall_ci_low", "overall_ci_high") if c in frame]
        wide = frame.pivot_table(index="x", columns="series", values=values)
        wide.columns = [f"overall @ {series} px{value.removeprefix('overall')}" for value, series in wide.columns]
        line_plot(wide.reset_index(), "x", [c for c in wide.columns if "_ci_" not in c], output / "plot.png",
                  f"GenEval (testbed) vs {xlabel}", xlabel=xlabel)
    else:
        line_plot(frame, "x", tags, output / "plot.png", f"GenEval (testbed) vs {xlabel}", xlabel=xlabel,
                  logx=ab.kind in ("data-scale", "diversity"))
    probed = pd.DataFrame([{"x": p.x, **s["probe"]} for p, s in results if "probe" in s])
    if len(probed):
        write_text(output / "probe.csv", probed.to_csv(index=False))
        line_plot(probed, "x", ["context_gain", "text_gain"], output / "probe.png",
                  "What the model uses: loss increase without it (lightgen.probe)", xlabel=xlabel,
                  ylabel="masked-token ε-MSE increase", logx=ab.kind in ("data-scale", "diversity"), symlogy=1e-7)


def _sample_count(s: dict) -> str:
    """`360 prompts × 4 images × 3 seeds` (seeds only when more than one)."""
    seeds = len(s.get("seeds", [0]))
    text = f"{s['prompts']} prompts × {s['images'] // max(1, s['prompts'] * seeds)} images"
    return text + (f" × {seeds} seeds" if seeds > 1 else "")


def _row_name(ab: AblationConfig, p: Point) -> str:
    student = STUDENT_NAMES[ab.student]
    if ab.kind == "data-scale":
        return f"{student}, {p.data.n:,} images"
    if ab.kind == "diversity":
        return f"{student}, {p.data.diversity:,} captions"
    if ab.kind == "steps":
        return f"{student}, {p.x} steps @ {p.resolution} px"
    if ab.kind == "resolution":
        return f"{student}, {p.extra.get('stage', p.label)}"
    if ab.kind == "guidance":
        return f"{student}, CFG {p.x:g}"
    return f"{student}, " + ("before DPO" if p.extra.get("beta") is None else f"DPO β={p.extra['beta']:g}")


def describe(ab: AblationConfig, work: Path, seconds_per_step: float) -> str:
    """--dry-run: the plan and an estimate from a measured training step's CPU time."""
    lines, total = [], 0.0
    for p in plan(ab, work):
        steps = p.train.steps if p.train is not None else (ab.dpo.get("steps", 0) if ab.kind == "dpo" else 0)
        scale = (p.resolution / 32) ** 2
        total += steps * seconds_per_step * scale
        lines.append(f"{p.label:>24}: data n={p.data.n} diversity={p.data.diversity or 'all'} "
                     f"{p.resolution}px, train {steps} steps" + (" (snapshot)" if p.train is None else ""))
    seeds = len(ab.seeds)
    lines.append(f"student {ab.student}, seeds {ab.seeds}: estimated training CPU time {seeds * total / 60:.1f} min "
                 f"({seeds} × {total / 60:.1f}; measured {seconds_per_step:.2f} CPU s/step at 32 px; plus "
                 "distillation and evaluation)")
    return "\n".join(lines)


def measured_step_seconds(ab: AblationConfig) -> float:
    """Seconds per training step of the ablation's student at 32 px, measured on synthetic data."""
    from bench.perf import student_step_seconds

    return student_step_seconds(train_config(ab.train_config, ab.train, resolution=32))

