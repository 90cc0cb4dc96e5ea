"""`lightgen-bench compare A B`: the paired difference of two GenEval results on the same prompts.

A and B are result folders, `summary.json` or `results.jsonl` files: a summary holds the correct /
scored images of every prompt of each of its runs (`prompt_counts`; an ablation point trained with
several seeds holds one per seed), so committed summaries compare without their images. Results of
different scorers (detector, checkpoint, colour classifier) are not compared.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from bench.geneval.stats import Bootstrap, paired_difference, prompt_counts
from bench.geneval.summary import read_results
from lightgen.errors import InputError
from lightgen.files import read_json

SCORER = ("detector", "checkpoint", "color_classifier", "rules")


def _scorer(record: dict) -> str:
    """The scorer settings of a row or summary, as one comparable string."""
    return json.dumps({k: record.get(k) for k in SCORER}, sort_keys=True)


def load_runs(path: str | os.PathLike) -> tuple[list[dict], tuple]:
    """Prompt counts (one per run) and the scorer of a result path: a results.jsonl, a summary.json (its
    `prompt_counts`), or a folder holding either."""
    path = Path(path)
    summary = path if path.suffix == ".json" else path / "summary.json"
    if path.is_dir() and not summary.is_file() and (path / "results.jsonl").is_file():
        path = path / "results.jsonl"
    if path.is_file() and path.suffix == ".jsonl":
        rows = [r for r in read_results(path) if not r.get("error")]
        scorers = {_scorer(r) for r in rows}
        if len(scorers) != 1:
            raise InputError(f"{path}: expected scored rows of one scorer, found {len(scorers)}")
        return [prompt_counts(rows)], scorers.pop()
    if summary.is_file():
        s = read_json(summary, "GenEval summary")
        if isinstance(s.get("prompt_counts"), list) and s["prompt_counts"]:
            return s["prompt_counts"], _scorer(s)
        raise InputError(f"{summary}: no prompt_counts (written before intervals existed); rescore the folder")
    raise InputError(f"{path}: expected a results.jsonl or summary.json, or a folder holding one")


def compare(a: str | os.PathLike, b: str | os.PathLike, boot: Bootstrap = Bootstrap()) -> dict:
    """`paired_difference` of two result paths, with what was compared."""
    (runs_a, scorer_a), (runs_b, scorer_b) = load_runs(a), load_runs(b)
    if scorer_a != scorer_b:
        raise InputError(f"{b}: scored by {scorer_b}, {a} by {scorer_a}; compare results of one scorer")
    return {"a": str(a), "b": str(b), "scorer": json.loads(scorer_a), **paired_difference(runs_a, runs_b, boot)}


def format_comparison(d: dict) -> str:
    """A small table: A, B, A − B and its interval per task, then the overall line."""
    pct = round(100 * d["bootstrap"]["level"])
    lines = [f"A = {d['a']} ({d['runs'][0]} run(s)), B = {d['b']} ({d['runs'][1]} run(s)), {d['prompts']} prompts",
             f"{'task':<16} {'A':>6} {'B':>6} {'A-B':>7}  {pct}% CI (paired bootstrap over prompts)"]
    for t, v in [*d["tasks"].items(), ("overall", d["overall"])]:
        lines.append(f"{t:<16} {v['a']:6.3f} {v['b']:6.3f} {v['diff']:+7.3f}  [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]")
    lines.append(f"P(A not better than B) = {d['overall']['p_not_better']:.3f} (share of bootstrap replicates)")
    return "\n".join(lines)
