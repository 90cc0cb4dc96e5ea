"""`lightgen-bench compare A B`: the paired difference of two GenEval results on the same prompts.

A and B are result folders (`results.jsonl` inside, or a `summary.json` naming it), `results.jsonl`
files, or ablation points trained with several seeds (their `summary.json` lists every seed's rows
under `seed_results`). Rows scored by different detectors are not compared.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from bench.geneval.stats import Bootstrap, paired_difference, prompt_counts
from bench.geneval.summary import read_results
from lightgen.errors import InputError

SCORER = ("detector", "checkpoint", "color_classifier")


def results_files(path: str | os.PathLike) -> list[Path]:
    """The results.jsonl file(s) behind a result path (several: one per training seed)."""
    path = Path(path)
    if path.is_file():
        return [path]
    summary = path / "summary.json"
    meta = json.loads(summary.read_text()) if summary.is_file() else {}
    if meta.get("seed_results"):
        return [Path(p) for p in meta["seed_results"]]
    for candidate in (path / "results.jsonl", meta.get("results")):
        if candidate and Path(candidate).is_file():
            return [Path(candidate)]
    raise InputError(f"{path}: expected a results.jsonl, or a folder with results.jsonl or a summary.json naming it")


def _runs(path: str | os.PathLike) -> tuple[list[dict], tuple]:
    runs, scorers = [], set()
    for f in results_files(path):
        rows = [r for r in read_results(f) if not r.get("error")]
        if not rows:
            raise InputError(f"{f}: no scored rows")
        scorers |= {tuple(r.get(k) for k in SCORER) for r in rows}
        runs.append(prompt_counts(rows))
    if len(scorers) > 1:
        raise InputError(f"{path}: rows scored by several scorers {sorted(map(str, scorers))}")
    return runs, scorers.pop()


def compare(a: str | os.PathLike, b: str | os.PathLike, boot: Bootstrap = Bootstrap()) -> dict:
    """`paired_difference` of two result paths, with what was compared."""
    (runs_a, scorer_a), (runs_b, scorer_b) = _runs(a), _runs(b)
    if scorer_a != scorer_b:
        raise InputError(f"{b}: scored by {scorer_b}, {a} by {scorer_a}; compare results of one scorer")
    return {"a": str(a), "b": str(b), "scorer": dict(zip(SCORER, scorer_a)), **paired_difference(runs_a, runs_b, boot)}


def format_comparison(d: dict) -> str:
    """A small table: A, B, A − B and its interval per task, then the overall line."""
    pct = round(100 * d["bootstrap"]["level"])
    lines = [f"A = {d['a']} ({d['runs'][0]} run(s)), B = {d['b']} ({d['runs'][1]} run(s)), {d['prompts']} prompts",
             f"{'task':<16} {'A':>6} {'B':>6} {'A-B':>7}  {pct}% CI (paired bootstrap over prompts)"]
    for t, v in [*d["tasks"].items(), ("overall", d["overall"])]:
        lines.append(f"{t:<16} {v['a']:6.3f} {v['b']:6.3f} {v['diff']:+7.3f}  [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]")
    lines.append(f"P(A not better than B) = {d['overall']['p_not_better']:.3f} (share of bootstrap replicates)")
    return "\n".join(lines)
