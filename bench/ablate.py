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
  dpo         before/after Diffusion-DPO, β sweep (× SFT weights), from a KD run trained here or from a
              trained pipeline (`init_from`), optionally with the SFT-only control (`dpo_sft_only`);
              compare.{md,json}: paired differences against the start
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
from bench.provenance import earlier_invocations, run_record, setting_difference, with_invocations
from lightgen.errors import BOOL, MAPPING, TEXT, InputError, Rule, check_fields, check_known, integer, list_of, nested, \
    number, one_of, optional
from lightgen.files import read_json, read_yaml, write_text
from lightgen.probe import probe_pipeline
from lightgen.train import TrainConfig

KINDS = ("data-scale", "diversity", "steps", "resolution", "dpo", "guidance")
STUDENT_CONFIGS = {"lightgen": "eval_configs/train/testbed_kd.yaml", "unet": "eval_configs/train/testbed_unet.yaml"}
DPO_CONFIGS = {"lightgen": "eval_configs/train/testbed_dpo.yaml", "unet": "eval_configs/train/testbed_dpo_unet.yaml"}
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
    dpo_config: str | None = None  # default: the student's (DPO_CONFIGS)
    dpo: dict[str, Any] = field(default_factory=dict)
    dpo_pairs: int = 1024
    # dpo kind: each β runs with each SFT weight, in units of β/4 (the DPO term's pull on the winner's error at
    # the start, σ(0)·β/2): 1 = the SFT term pulls as hard; 0 = pure Diffusion-DPO
    dpo_sft: list[float] = field(default_factory=lambda: [0.0])
    init_from: str | None = None  # dpo kind: the starting pipeline (a trained run's); default: train one here
    # dpo kind: also the SFT-only control, the student's own objective on the winners alone with the DPO run's
    # optimiser, steps and batch (what DPO + SFT would give without the losers)
    dpo_sft_only: bool = False

    def __post_init__(self) -> None:
        check_fields(self, ABLATION_RULES)
        nested("data", DataSpec, self.data)  # their fields are checked when they are built
        nested("eval", EvalSpec, self.eval)

    @classmethod
    def load(cls, path: str | Path, kind: str) -> "AblationConfig":
        raw = check_known({"kind": kind, **read_yaml(path, "ablation config")}, cls, str(path))
        if raw["kind"] != kind:
            raise InputError(f"{path}: kind: file is for {raw['kind']!r}, command asked for {kind!r}")
        try:
            ab = cls(**raw)
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
        if ab.init_from is not None and ab.kind != "dpo":
            raise InputError(f"{path}: init_from: only the dpo ablation starts from a trained pipeline")
        if {"dpo_beta", "dpo_sft_weight"} & set(ab.dpo):
            raise InputError(f"{path}: dpo: dpo_beta and dpo_sft_weight are set per point (points, dpo_sft)")
        ab.train_config = ab.train_config or STUDENT_CONFIGS[ab.student]
        ab.dpo_config = ab.dpo_config or DPO_CONFIGS[ab.student]
        for key, name, layer in (("train_config", ab.train_config, ab.train), ("dpo_config", ab.dpo_config, ab.dpo)):
            trained = train_config(name, layer).student
            if trained != ab.student:
                raise InputError(f"{path}: {key} {name} trains the {trained!r} student, the ablation names "
                                 f"{ab.student!r}")
        return ab


ABLATION_RULES: dict[str, Rule] = dict(
    kind=one_of(*KINDS), points=Rule(lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list"),
    student=one_of(*STUDENT_CONFIGS),
    seeds=Rule(lambda v: list_of(integer(0), nonempty=True).ok(v) and len(set(v)) == len(v),
               "a non-empty list of distinct integers >= 0"),
    train_config=optional(TEXT), train=MAPPING, data=MAPPING, eval=MAPPING,
    resolutions=list_of(integer(1), nonempty=True), stage2_steps=integer(0), dpo_config=optional(TEXT), dpo=MAPPING,
    dpo_pairs=integer(1), dpo_sft=list_of(number(0), nonempty=True), init_from=optional(TEXT), dpo_sft_only=BOOL)


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
    elif ab.kind == "dpo":  # the starting model: init_from, or a KD run trained as the first point
        kd = None if ab.init_from else train("kd", resolution=base.resolution)
        start = Path(ab.init_from) if ab.init_from else None
        known = {"init_from": ab.init_from} if ab.init_from else {}  # recorded: results of another start are refused
        points.append(Point("before-dpo", 0.0, base, kd, start, base.resolution, {"beta": None, **known}))
        for beta, sft in ((float(b), float(w)) for b in ab.points for w in ab.dpo_sft):
            points.append(Point(f"beta{beta:g}" + (f"-sft{sft:g}" if sft else ""), beta, base, None,
                                resolution=base.resolution,
                                extra={"beta": beta, "sft_weight": sft * beta / 4, **known}))
        if ab.dpo_sft_only:
            points.append(Point("sft-only", None, base, None, resolution=base.resolution,
                                extra={"beta": None, "sft_only": True, **known}))
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
    started, earlier = time.perf_counter(), earlier_invocations(output / "run.json")
    runs = {seed: _run_seed(ab, output, work, seed, launcher) for seed in ab.seeds}
    results = [(p, _combined(ab, p, [runs[seed][i] for seed in ab.seeds], output))
               for i, p in enumerate(plan(ab, work))]
    write_outputs(ab, results, output)
    record = with_invocations(run_record(command, dataclasses.asdict(ab), started), earlier)
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
        settings = point_settings(p, run, eval_spec, seed)
        if not done.is_file():
            write_text(done, json.dumps({**_run_point(ab, p, run, work, seed, eval_spec, launcher, probes),
                                         "seed": seed, "settings": settings}, indent=2))
        summaries.append(json.loads(done.read_text()))
        diff = setting_difference(summaries[-1].get("settings", settings), settings)  # none recorded: older run
        if diff:
            raise InputError(f"{done}: point {p.label} was run with other settings ({diff}); use a new --output "
                             f"(and --work), or delete {done} to rerun the point")
    return summaries


def point_settings(p: Point, run: Point | None, eval_spec: EvalSpec, seed: int) -> dict:
    """What a point's result depends on: its record, the training run it reads (not where that lives), the
    evaluation and the seed, as JSON would store them."""
    train = dataclasses.asdict(run.train) if run else {}
    settings = {"point": _point_record(p), "train": {k: v for k, v in train.items() if k not in ("out", "cache")},
                "eval": dataclasses.asdict(eval_spec), "seed": seed}
    return json.loads(json.dumps(settings, default=str))


def _run_point(ab: AblationConfig, p: Point, run: Point, work: Path, seed: int, eval_spec: EvalSpec,
               launcher: str | None, probes: dict[Path, dict]) -> dict:
    """Train (the first point of a run) or reuse the run, evaluate and probe; the point's summary for `seed`."""
    # run is None when no point trains (dpo from init_from): no KD data, and no probe (it reads the KD cache)
    train = dataclasses.replace(run.train, cache=str(cached(distilled(work, run.data), run.train))) if run else None
    trained = _train_point(train, launcher) if p.train is not None else None
    if ab.kind == "dpo" and trains_from_start(p):
        pipeline = _dpo_point(ab, p, Path(ab.init_from or Path(train.out) / "pipeline"), work, seed)
    else:  # snapshot points (steps, guidance) read the run trained by the first of them
        pipeline = p.pipeline or trained
    spec = dataclasses.replace(eval_spec, guidance_scale=p.extra.get("guidance_scale", eval_spec.guidance_scale))
    summary = evaluate(pipeline, seeded(work / "eval" / p.label, seed), spec)
    if ab.kind == "steps":
        summary["train_cpu_s"] = train_cpu_seconds(Path(train.out) / "metrics.csv", p.x)
    elif trained is not None:  # the point's own training run, to its last step
        summary["train_cpu_s"] = train_cpu_seconds(Path(train.out) / "metrics.csv", train.steps)
    if train and pipeline not in probes and not is_diffusers_pipeline(pipeline):  # LightGen's, on the KD data
        probes[pipeline] = probe_pipeline(pipeline, train.cache)
    if pipeline in probes:
        summary["probe"] = probes[pipeline]
    return {**summary, "point": _point_record(p)}


def trains_from_start(p: Point) -> bool:
    """A dpo-kind point that fine-tunes the starting model (a β point or the SFT-only control)."""
    return p.extra.get("beta") is not None or p.extra.get("sft_only", False)


def train_cpu_seconds(metrics: Path, step: int) -> float | None:
    """Training process CPU seconds up to `step`, summed from the run's metrics.csv (`cpu_s` per logged
    interval); None for runs logged before the column existed."""
    import pandas as pd

    rows = pd.read_csv(metrics)
    if "cpu_s" not in rows:
        return None
    rows = rows[rows["step"] <= step]
    if rows.empty or rows["step"].iloc[-1] != step:  # (snapshots at multiples of log_every)
        return None
    return float(rows["cpu_s"].sum())


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
    cpu = [s.get("train_cpu_s") for s in per_seed]
    if cpu and None not in cpu:
        summary["train_cpu_s"] = sum(cpu) / len(cpu)
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
    run = {"objective": "kd"} if p.extra.get("sft_only") else {"dpo_beta": p.extra["beta"],
                                                                 "dpo_sft_weight": p.extra["sft_weight"]}
    cfg = train_config(ab.dpo_config, ab.dpo, out=str(seeded(work / "train" / p.label, seed)), init_from=str(kd_pipe),
                       resolution=p.resolution, seed=seed, **run)
    cfg.cache = str(cached(pairs / "winner", cfg))
    if cfg.objective == "dpo":
        cfg.loser_cache = str(cached(pairs / "loser", cfg))
    return run_training(cfg)


def write_outputs(ab: AblationConfig, results: list[tuple[Point, dict]], output: Path) -> None:
    import pandas as pd

    from bench.experiment import parameter_count
    from bench.tables import build_table, result_row, write_table

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
    probed = [{"x": p.x, **s["probe"]} for p, s in results if "probe" in s]
    if probed:
        write_text(output / "probe.csv", pd.DataFrame(probed).to_csv(index=False))
    plot_outputs(ab.kind, [s for _, s in results], output, ab.student)
    if ab.kind == "dpo":
        write_comparisons(results, output)


def write_comparisons(results: list[tuple[Point, dict]], output: Path) -> None:
    """`compare.{json,md}`: each DPO point against the starting model (the first point), as `lightgen-bench
    compare` of their summaries gives it (paired over prompts and seeds), overall and position, FID beside."""
    from bench.geneval.compare import compare

    def diff(d: dict | None) -> str:
        return "–" if d is None else f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"

    start, fid0 = output / "points" / results[0][0].label / "summary.json", results[0][1].get("fid", {}).get("fid")
    records, lines = {}, ["| DPO point | Δ overall [95% CI] | Δ position [95% CI] | FID before → after |",
                          "|---|---|---|---|"]
    for p, s in results[1:]:
        d = records[p.label] = compare(output / "points" / p.label / "summary.json", start)
        fid = s.get("fid", {}).get("fid")
        fids = f"{fid0:.1f} → {fid:.1f} ({100 * (fid / fid0 - 1):+.0f} %)" if fid and fid0 else "–"
        lines.append(f"| {s['row_name']} | {diff(d['overall'])} | {diff(d['tasks'].get('position'))} | {fids} |")
    write_text(output / "compare.json", json.dumps(records, indent=2))
    write_text(output / "compare.md", "\n".join(lines) + "\n")


XLABELS = {"data-scale": "distilled images", "diversity": "distinct training captions", "steps": "training steps",
           "resolution": "resolution (px)", "dpo": "DPO β (0 = before DPO)", "guidance": "CFG scale"}


def plot_outputs(kind: str, summaries: list[dict], output: Path, student: str = "lightgen") -> list[Path]:
    """plot.png (GenEval: overall and every tag, 0–1, error bars; FID beside them where scored) and probe.png
    from the points' summaries alone, so `replot` redraws a committed folder without training."""
    import pandas as pd

    from bench.plots import INTERVALS, RECONSTRUCTED, geneval_panels, probe_panels, scores_with_intervals

    rows, rebuilt = [], False
    for s in (s for s in summaries if not s["point"].get("sft_only")):  # the SFT control has no β: table only
        fields, reconstructed = scores_with_intervals(s, f"points/{s['point']['label']}")
        rebuilt |= reconstructed
        row = {"x": s["point"]["x"], "fid": (s.get("fid") or {}).get("fid"), **fields}
        if kind == "dpo":  # one line without and one with the SFT term, both from the starting model
            sft = s["point"].get("sft_weight")
            rows += [{**row, "series": n} for n in (["DPO", "DPO + SFT"] if s["point"].get("beta") is None
                                                    else ["DPO + SFT" if sft else "DPO"])]
        else:
            rows.append({**row, "series": f"{s['point'].get('resolution', 32)} px"})
    frame, xlabel, logx = pd.DataFrame(rows), XLABELS[kind], kind in ("data-scale", "diversity")
    series = "series" if kind in ("steps", "dpo") and frame["series"].nunique() > 1 else None
    extra = ("fid", "FID (testbed extractor)") if frame["fid"].notna().any() else None
    paths = [geneval_panels(frame, output / "plot.png", _plot_title(kind, summaries, student), xlabel, series=series,
                            logx=logx, extra=extra, note=RECONSTRUCTED if rebuilt else INTERVALS)]
    probed = pd.DataFrame([{"x": s["point"]["x"], **s["probe"]} for s in summaries if "probe" in s])
    if len(probed):
        paths.append(probe_panels(probed, output / "probe.png", f"What the {STUDENT_NAMES[student]} student uses "
                                  f"(lightgen.probe on its training data) vs {xlabel}", xlabel, logx))
    return paths


def _plot_title(kind: str, summaries: list[dict], student: str) -> str:
    """Model, data, prompts × images and sampling, as far as they are the same for every point."""
    data = [s["point"]["data"] for s in summaries]
    ns, ds = {d["n"] for d in data}, {d.get("diversity") for d in data}
    renders = f"{ns.pop():,} teacher renders" if len(ns) == 1 else "teacher renders (x axis)"
    captions = "" if len(ds) > 1 else ", all captions" if None in ds else f", {ds.pop():,} captions"
    first, ev = summaries[0], summaries[0].get("eval", {})
    counts = sorted({len(s.get("seeds", [0])) for s in summaries})
    seeds = len(first.get("seeds", [0]))
    per = first["images"] // max(1, first["prompts"] * seeds)
    cfg = "" if kind == "guidance" else f", CFG {ev.get('guidance_scale', ev.get('cfg', 4.0)):g}"
    return (f"{STUDENT_NAMES[student]} student on the testbed: GenEval vs {XLABELS[kind]}\n{renders}{captions} · "
            f"{first['prompts']} testbed prompts × {per} image{'s' * (per > 1)}"
            + (f" × {'–'.join(map(str, counts))} training seeds" if counts[-1] > 1 else "")
            + f" · {ev.get('steps')} sampling steps{cfg}")


def replot(folder: Path) -> list[Path]:
    """Redraw an ablation folder's plots from its committed run.json and points/*/summary.json (no training);
    a folder of several ablation folders of one kind and student (e.g. a grid run as two configs) gets one
    plot of all their points."""
    parts = [folder] if (folder / "run.json").is_file() else sorted(p.parent for p in folder.glob("*/run.json"))
    configs = [read_json(p / "run.json", "ablation record").get("config") for p in parts] or [None]
    for part, config in zip(parts or [folder], configs):
        if not isinstance(config, dict) or config.get("kind") not in KINDS:
            raise InputError(f"{part / 'run.json'}: expected an ablation's record (config.kind one of {', '.join(KINDS)})")
    kinds = {(c["kind"], c.get("student", "lightgen")) for c in configs}
    if len(kinds) > 1:
        raise InputError(f"{folder}: its ablation folders are of different kinds or students {sorted(kinds)}; "
                         f"plot each on its own")
    summaries = [read_json(f, "point summary") for part in parts for f in sorted(part.glob("points/*/summary.json"))]
    if not summaries:
        raise InputError(f"{folder}: no points/<label>/summary.json to plot")
    (kind, student), = kinds
    return plot_outputs(kind, sorted(summaries, key=lambda s: s["point"]["x"]), folder, student)


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
    if p.extra.get("sft_only"):
        return f"{student}, SFT only (winners alone, DPO's optimiser and steps)"
    if p.extra.get("beta") is None:
        return f"{student}, before DPO"
    sft = p.extra.get("sft_weight")
    return f"{student}, DPO β={p.extra['beta']:g}" + (f" + SFT (weight {sft:g})" if sft else "")


# A DPO step against a KD step of the same batch: winner and loser through the policy (forward + backward, about
# 3 forwards each) and through the frozen reference (a forward each): 2·3 + 2 forwards against 3.
DPO_STEP_COST = 8 / 3


def describe(ab: AblationConfig, work: Path, seconds_per_step: float) -> str:
    """--dry-run: the plan and an estimate from a measured training step's CPU time."""
    lines, total = [], 0.0
    kd_batch = train_config(ab.train_config, ab.train).batch_size
    for p in plan(ab, work):
        steps, cost, note = (p.train.steps, 1.0, "") if p.train is not None else (0, 0.0, " (snapshot)")
        if ab.kind == "dpo" and trains_from_start(p):
            dpo, sft = train_config(ab.dpo_config, ab.dpo), p.extra.get("sft_only")
            steps, cost = dpo.steps, (1 if sft else DPO_STEP_COST) * dpo.batch_size / kd_batch
            note = " (SFT only)" if sft else " (DPO)"
        elif p.train is None and ab.kind == "dpo":
            note = f" (starting pipeline {ab.init_from})"
        total += steps * seconds_per_step * cost * (p.resolution / 32) ** 2
        lines.append(f"{p.label:>24}: data n={p.data.n} diversity={p.data.diversity or 'all'} "
                     f"{p.resolution}px, train {steps} steps{note}")
    seeds = len(ab.seeds)
    lines.append(f"student {ab.student}, seeds {ab.seeds}: estimated training CPU time {seeds * total / 60:.1f} min "
                 f"({seeds} × {total / 60:.1f}; measured {seconds_per_step:.2f} CPU s/step at 32 px"
                 + (f", a DPO step counted as {DPO_STEP_COST:.2f} × a KD step of its batch" if ab.kind == "dpo" else "")
                 + "; plus distillation and evaluation)")
    return "\n".join(lines)


def measured_step_seconds(ab: AblationConfig) -> float:
    """Seconds per training step of the ablation's student at 32 px, measured on synthetic data."""
    from bench.perf import student_step_seconds

    return student_step_seconds(train_config(ab.train_config, ab.train, resolution=32))

