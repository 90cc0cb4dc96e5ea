"""Bootstrap confidence intervals for GenEval scores, over prompts and (optionally) training seeds.

The unit of resampling is the *prompt*: a prompt's images share its difficulty, so they are kept
together (resampling images would treat them as independent and understate the interval). A task
score is correct images / images over the drawn prompts; the overall is the unweighted mean of the
task scores, so every task is resampled on its own and the draws are combined as the overall is.

Several runs of one configuration (training seeds) are scored on the same prompts: a replicate draws
the seeds with replacement and, once, the prompts of every task, and averages the drawn seeds' task
scores on the drawn prompts. The interval then holds both the seed spread and the prompt sampling.
A paired comparison of two configurations uses the same prompt draw on both sides.

Percentile intervals from a seeded numpy generator: the same rows give the same interval.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from bench.geneval.rules import TAGS
from lightgen.errors import InputError


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are drawn (recorded in every summary beside the intervals)."""

    resamples: int = 2000
    seed: int = 0
    level: float = 0.95


# tag -> prompt key -> (correct images, scored images); stored in summary.json under `prompt_counts`
# (one per run), so intervals and comparisons need no images and no results.jsonl
PromptCounts = dict[str, dict[str, tuple[int, int]]]


def prompt_key(row: dict) -> str:
    """A result row's prompt: its folder in the GenEval layout (`<index>/samples/<file>`) and a hash of its
    metadata (two folders with equal metadata stay two prompts; the hash keeps other prompts apart)."""
    digest = hashlib.sha1(row["metadata"].encode()).hexdigest()[:10]
    return f"{Path(row['filename']).parent.parent.name}:{digest}"


def prompt_counts(rows: Iterable[dict]) -> PromptCounts:
    """Correct and scored images per prompt, per task; error rows (unreadable images) are left out."""
    out: PromptCounts = {}
    for r in rows:
        if r.get("error"):
            continue
        per_tag = out.setdefault(r["tag"], {})
        c, n = per_tag.get(prompt_key(r), (0, 0))
        per_tag[prompt_key(r)] = (c + bool(r["correct"]), n + 1)
    return out


def _tags(counts: PromptCounts) -> list[str]:
    return [t for t in TAGS if t in counts] + sorted(t for t in counts if t not in TAGS)


def _aligned(runs: Sequence[PromptCounts], where: str) -> tuple[list[str], dict[str, list[str]]]:
    """Tags and sorted prompt keys shared by every run; runs scored on other prompts are an error."""
    if not runs:
        raise InputError(f"{where}: no scored runs")
    tags = _tags(runs[0])
    prompts = {t: sorted(runs[0][t]) for t in tags}
    for i, run in enumerate(runs[1:], 1):
        if _tags(run) != tags or any(sorted(run[t]) != prompts[t] for t in tags):
            raise InputError(f"{where}: run {i} was scored on other prompts than run 0; runs are combined "
                             "prompt by prompt, so they need the same prompt set")
    return tags, prompts


def _arrays(runs: Sequence[PromptCounts], tags: list[str], prompts: dict[str, list[str]]):
    """Per tag: (runs × prompts) arrays of correct and scored images."""
    return {t: (np.array([[run[t][p][0] for p in prompts[t]] for run in runs], dtype=np.float64),
                np.array([[run[t][p][1] for p in prompts[t]] for run in runs], dtype=np.float64)) for t in tags}


def _prompt_weights(rng: np.random.Generator, tags: list[str], prompts: dict[str, list[str]],
                    resamples: int) -> dict[str, np.ndarray]:
    """How often each prompt is drawn in each replicate: (resamples × prompts) per tag."""
    out = {}
    for t in tags:
        n = len(prompts[t])
        draws = rng.integers(0, n, size=(resamples, n))
        out[t] = np.stack([np.bincount(d, minlength=n) for d in draws]).astype(np.float64)
    return out


def _replicates(arrays, weights: dict[str, np.ndarray], seeds: np.ndarray) -> np.ndarray:
    """(resamples × tags) task scores: drawn seeds' scores on the drawn prompts, averaged over seeds."""
    cols = []
    for t, (correct, images) in arrays.items():
        per_run = (weights[t] @ correct.T) / (weights[t] @ images.T)  # (resamples × runs)
        cols.append(np.take_along_axis(per_run, seeds, axis=1).mean(axis=1))
    return np.stack(cols, axis=1)


def _seed_draws(rng: np.random.Generator, runs: int, resamples: int) -> np.ndarray:
    return rng.integers(0, runs, size=(resamples, runs))


def point_scores(runs: Sequence[PromptCounts]) -> dict[str, float]:
    """Task scores and overall, averaged over runs (each run as `summary_scores.py` computes it)."""
    tags, prompts = _aligned(runs, "scores")
    arrays = _arrays(runs, tags, prompts)
    tasks = {t: float((c.sum(axis=1) / n.sum(axis=1)).mean()) for t, (c, n) in arrays.items()}
    return {**tasks, "overall": float(np.mean(list(tasks.values())))}


def _interval(samples: np.ndarray, level: float) -> list[float]:
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def confidence_intervals(runs: Sequence[PromptCounts], boot: Bootstrap = Bootstrap()) -> dict:
    """Percentile intervals for every task and the overall: {"tasks": {tag: [lo, hi]}, "overall": [lo, hi]}."""
    tags, prompts = _aligned(runs, "bootstrap")
    rng = np.random.default_rng(boot.seed)
    weights = _prompt_weights(rng, tags, prompts, boot.resamples)
    reps = _replicates(_arrays(runs, tags, prompts), weights, _seed_draws(rng, len(runs), boot.resamples))
    return {"tasks": {t: _interval(reps[:, i], boot.level) for i, t in enumerate(tags)},
            "overall": _interval(reps.mean(axis=1), boot.level)}


def paired_difference(a: Sequence[PromptCounts], b: Sequence[PromptCounts], boot: Bootstrap = Bootstrap()) -> dict:
    """A − B on the same prompts: the difference of task scores and overall, each with a percentile
    interval from replicates that draw the same prompts for A and B (seeds drawn on each side), and the
    fraction of replicates in which A is not better (a one-sided bootstrap p-value for A > B)."""
    tags, prompts = _aligned([*a, *b], "compare")
    rng = np.random.default_rng(boot.seed)
    weights = _prompt_weights(rng, tags, prompts, boot.resamples)
    reps = [_replicates(_arrays(runs, tags, prompts), weights, _seed_draws(rng, len(runs), boot.resamples))
            for runs in (a, b)]
    diff = reps[0] - reps[1]
    pa, pb = point_scores(a), point_scores(b)
    overall = diff.mean(axis=1)
    return {"tasks": {t: {"a": pa[t], "b": pb[t], "diff": pa[t] - pb[t], "ci": _interval(diff[:, i], boot.level)}
                      for i, t in enumerate(tags)},
            "overall": {"a": pa["overall"], "b": pb["overall"], "diff": pa["overall"] - pb["overall"],
                        "ci": _interval(overall, boot.level), "p_not_better": float((overall <= 0).mean())},
            "prompts": sum(len(p) for p in prompts.values()), "runs": [len(a), len(b)],
            "bootstrap": {**boot.__dict__, "unit": "prompt, within each task; paired"}}


def half_width(ci: Sequence[float]) -> float:
    """The ± of a printed `mean ± x`: half the interval's width (the interval itself is in the JSON)."""
    return (ci[1] - ci[0]) / 2

