"""The paper's loop on the testbed, as reusable steps: distil → cache → KD → (pairs → DPO) → evaluate.

Every step writes under a folder named by what determines it and is skipped when already complete,
so the demo and the ablations resume where they stopped and share data between grid points.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.geneval.layout import TESTBED_PROMPTS, read_prompts
from lightgen.errors import BOOL, InputError, check_fields, integer, number, optional
from lightgen.files import read_json, write_text
from lightgen.train import TrainConfig, train


@dataclass
class EvalSpec:
    """How a checkpoint is evaluated: testbed GenEval (+ FID against teacher renders)."""

    n_samples: int = 1  # images per prompt (official GenEval: 4)
    steps: int = 16  # AR steps
    guidance_scale: float = 4.0
    temperature: float = 1.0
    seed: int = 0
    limit: int | None = None  # an evenly spaced subset of N prompts, every tag included (smoke runs)
    fid: bool = True

    def __post_init__(self) -> None:
        check_fields(self, dict(n_samples=integer(1), steps=integer(1), guidance_scale=number(0),
                                temperature=number(0), seed=integer(0), limit=optional(integer(1)), fid=BOOL))


@dataclass
class DataSpec:
    n: int = 8000
    diversity: int | None = None  # distinct captions (default: all the grammar has)
    resolution: int = 32
    seed: int = 0
    token_grid: int | None = None  # the token-aligned world: box edges on an N × N grid (default: anywhere)

    def __post_init__(self) -> None:
        check_fields(self, dict(n=integer(1), diversity=optional(integer(1)), resolution=integer(1), seed=integer(0),
                                token_grid=optional(integer(1))))


def digest(obj: Any) -> str:
    """A short stable hash of JSON-able settings, for folder names that say what made them."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def distilled(root: Path, spec: DataSpec) -> Path:
    """Teacher renders of `n` captions drawn from a pool of `diversity` distinct ones."""
    from bench.testbed.captions import max_diversity, sample_captions
    from bench.testbed.teacher import TestbedTeacher
    from lightgen.distill import distill

    diversity = spec.diversity or max_diversity()
    grid = f"-g{spec.token_grid}" if spec.token_grid else ""
    out = root / f"data-n{spec.n}-d{diversity}-r{spec.resolution}-s{spec.seed}{grid}"
    if not (out / "meta.json").is_file() or not json.loads((out / "meta.json").read_text()).get("complete"):
        distill(TestbedTeacher(spec.resolution, spec.token_grid), sample_captions(spec.n, diversity, spec.seed), out,
                seed=spec.seed, batch_size=256, extra={"diversity": diversity})
    return out


def cached(data: Path, cfg: TrainConfig) -> Path:
    """The feature cache of `data` for the model/resolution of `cfg` (built once, then reused)."""
    from lightgen.cache import build_cache, cache_signature
    from lightgen.codecs import build_codec
    from lightgen.distill import T2IFolder
    from lightgen.pipeline import build_text_encoder

    config = cfg.model_config()
    resolution = cfg.resolution or config.resolution
    out = data.with_name(f"{data.name}.cache-{digest(cache_signature(config, resolution))}")
    return build_cache(T2IFolder(data), out, config, build_codec(config), build_text_encoder(config), resolution,
                       source=str(data))


def parameter_count(cfg: TrainConfig) -> int:
    """Parameters of `cfg`'s student network (built on the meta device: no memory, no init)."""
    import torch

    from lightgen.mar import LightGen
    from lightgen.unet_student import UNetStudentConfig, build_unet

    config = cfg.model_config()
    with torch.device("meta"):
        model = build_unet(config, UNetStudentConfig.from_dict(cfg.unet), cfg.resolution or config.resolution) \
            if cfg.student == "unet" else LightGen(config)
    return sum(p.numel() for p in model.parameters())


def run_training(cfg: TrainConfig) -> Path:
    """Train (resuming if interrupted); a finished run is not retrained."""
    final = Path(cfg.out) / "pipeline"
    if (final / "config.json").is_file() or (final / "model_index.json").is_file():  # LightGen / diffusers
        return final
    return train(cfg, resume="auto")


def eval_prompts(limit: int | None, prompts_file: Path = TESTBED_PROMPTS) -> list[dict]:
    """The prompts an evaluation scores: all, or `limit` evenly spaced ones (every tag included)."""
    prompts = read_prompts(prompts_file)
    return prompts[::-(-len(prompts) // limit)] if limit else prompts


def evaluate(pipeline: Path, outdir: Path, spec: EvalSpec, prompts_file: Path = TESTBED_PROMPTS) -> dict:
    """Testbed GenEval summary (+ FID vs teacher renders of the same prompts and seeds)."""
    from bench.geneval.colors import get_color_classifier
    from bench.geneval.detectors import get_detector
    from bench.geneval.generate import generate
    from bench.geneval.score import score

    from bench.geneval.generate import dir_sha256
    from bench.provenance import setting_difference

    prompts = eval_prompts(spec.limit, prompts_file)
    outdir.mkdir(parents=True, exist_ok=True)
    summary_file = outdir / "evaluation.json"  # written last: its presence means the step is complete
    identity = json.loads(json.dumps({"pipeline_sha256": dir_sha256(pipeline), "eval": asdict(spec),
                                      "prompts": digest(prompts)}))
    if summary_file.is_file():  # reused only for the same weights, settings and prompts
        done = read_json(summary_file, "evaluation")
        diff = setting_difference(done["identity"], identity) if isinstance(done.get("identity"), dict) else \
            "no settings recorded"
        if diff:
            raise InputError(f"{summary_file}: evaluated with other weights or settings ({diff}); delete {outdir} "
                             f"to evaluate again, or use another work folder")
        return done
    generator = pipeline_generator(pipeline, spec)
    t0 = time.perf_counter()
    generate(generator, prompts, outdir / "images", n_samples=spec.n_samples, batch_size=64, seed=spec.seed)
    gen_s = time.perf_counter() - t0
    run = score(outdir / "images", get_detector("testbed"), get_color_classifier("testbed"), prompts=prompts,
                results=outdir / "results.jsonl", n_samples=spec.n_samples, num_workers=0, progress=False)
    summary = {**run.summary, "pipeline": str(pipeline), "eval": asdict(spec), "generate_s": gen_s,
               "identity": identity}
    if Path(prompts_file) == TESTBED_PROMPTS:  # the prompts with held-out combinations, scored on their own
        from bench.geneval.summary import read_results, summarize
        from bench.testbed.prompts import heldout_rows

        held = heldout_rows(read_results(run.results))
        if held:
            summary["heldout"] = summarize(held)
    if spec.fid:
        summary["fid"] = teacher_fid(outdir / "images", prompts, spec)
    write_text(summary_file, json.dumps(summary, indent=2))
    return summary


def is_diffusers_pipeline(path: Path) -> bool:
    """A diffusers pipeline directory (the UNet student's), not a LightGen one."""
    return (Path(path) / "model_index.json").is_file()


def pipeline_generator(pipeline: Path, spec: EvalSpec):
    """The GenEval generator of a trained student's pipeline directory, with the spec's sampling settings
    (`steps`: AR steps for LightGen, solver steps for a diffusers pipeline; `temperature`: LightGen's)."""
    from bench.geneval.generate import get_generator

    where = {"pipeline" if is_diffusers_pipeline(pipeline) else "ckpt": str(pipeline)}
    return get_generator(**where, steps=spec.steps, guidance_scale=spec.guidance_scale, temperature=spec.temperature)


def teacher_fid(images: Path, prompts: list[dict], spec: EvalSpec) -> dict:
    """FID (testbed extractor) of generated images against teacher renders of the same prompts."""
    from bench.fid import fid
    from bench.geneval.generate import generate
    from bench.testbed.teacher import TestbedTeacher

    reference = images.parent.parent / f"teacher-{digest([prompts, spec.n_samples, spec.seed])}"  # shared by runs
    generate(TestbedTeacher(), prompts, reference, n_samples=spec.n_samples, batch_size=256, seed=spec.seed + 1,
             progress=False)
    files = lambda root: sorted(str(p) for p in root.glob("*/samples/*.png"))  # noqa: E731
    return fid(files(images), files(reference), extractor="testbed", cache_dir=None)
