"""The numbers of GenEval's `summary_scores.py`, plus `summary.json` and a one-row markdown table.

Task score = mean of `correct` over that task's *images*; overall = unweighted mean of the task
scores (not a mean over images or prompts). Error rows (unreadable images) are left out and counted.
Each score also gets a bootstrap 95 % interval over prompts (`bench.geneval.stats`): `tasks[t].ci`,
`overall_ci`, how they were drawn under `bootstrap`, and the correct / scored images of every prompt
under `prompt_counts` (a list, one per run), from which intervals and comparisons are recomputed.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from bench.geneval.layout import OFFICIAL_PROMPTS, read_prompts
from bench.geneval.rules import TAGS, Rules
from bench.geneval.stats import Bootstrap, confidence_intervals, half_width, point_scores, prompt_counts
from lightgen.errors import InputError
from lightgen.files import write_text

OFFICIAL_COLOURS = "clip:ViT-L-14:openai"  # open_clip ViT-L-14, OpenAI weights


ROW_FIELDS = ("filename", "tag", "correct", "metadata")  # what every scored row of ours or the official scorer holds


def read_results(path: str | os.PathLike) -> list[dict]:
    """Rows of a results.jsonl (ours or the official pandas one); a torn last line (a killed run) is ignored,
    any other line that is not a row is an InputError naming it."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) and not text.endswith("\n"):
                break
            raise InputError(f"{path}:{i}: expected one JSON object per line") from None
        missing = [k for k in ROW_FIELDS if k not in row] if isinstance(row, dict) else list(ROW_FIELDS)
        if missing:
            raise InputError(f"{path}:{i}: expected a result row with {', '.join(missing)}")
        rows.append(row)
    return rows


def summarize(rows: Iterable[dict], boot: Bootstrap | None = Bootstrap()) -> dict[str, Any]:
    """Official numbers, plus bootstrap intervals unless `boot` is None."""
    rows = list(rows)
    good = [r for r in rows if not r.get("error")]
    by_tag: dict[str, list[bool]] = {}  # first-appearance order, like groupby(sort=False)
    by_prompt: dict[str, bool] = {}
    for r in good:
        by_tag.setdefault(r["tag"], []).append(bool(r["correct"]))
        by_prompt[r["metadata"]] = by_prompt.get(r["metadata"], False) or bool(r["correct"])
    tasks = {t: {"score": sum(v) / len(v), "correct": sum(v), "images": len(v)} for t, v in by_tag.items()}
    out = {
        "overall": sum(t["score"] for t in tasks.values()) / len(tasks) if tasks else float("nan"),
        "tasks": tasks,
        "images": len(good),
        "prompts": len(by_prompt),
        "correct_images": sum(r["correct"] for r in good) / len(good) if good else float("nan"),
        "correct_prompts": sum(by_prompt.values()) / len(by_prompt) if by_prompt else float("nan"),
        "errors": len(rows) - len(good),
    }
    return with_intervals(out, [prompt_counts(good)], boot) if boot and tasks else out


def with_intervals(summary: dict, runs: list, boot: Bootstrap) -> dict:
    """`summary` with `tasks[t].ci`, `overall_ci` and `bootstrap` from the prompt counts of its runs."""
    ci = confidence_intervals(runs, boot)
    tasks = {t: {**v, "ci": ci["tasks"][t]} for t, v in summary["tasks"].items()}
    unit = "prompt, within each task" + ("; and training seed" if len(runs) > 1 else "")
    return {**summary, "tasks": tasks, "overall_ci": ci["overall"],
            "bootstrap": {**boot.__dict__, "unit": unit, "runs": len(runs)},
            "prompt_counts": [{t: {k: list(v) for k, v in run[t].items()} for t in run} for run in runs]}


def combine_runs(summaries: list[dict], boot: Bootstrap = Bootstrap()) -> dict:
    """One configuration scored in several runs (training seeds) on the same prompts: task scores and
    overall are the means over runs, counts are summed, intervals cover seeds and prompts. Scorer fields
    come from the first run; runs scored otherwise are refused."""
    scorer = ("detector", "checkpoint", "image_size", "color_classifier", "rules")
    first = summaries[0]
    for s in summaries[1:]:
        if any(s.get(k) != first.get(k) for k in scorer):
            raise InputError("combine: runs scored by different scorers: " + ", ".join(
                f"{k}: {first.get(k)!r} vs {s.get(k)!r}" for k in scorer if s.get(k) != first.get(k)))
    runs = [run for s in summaries for run in s["prompt_counts"]]
    scores = point_scores(runs)
    tasks = {t: {"score": scores[t], "correct": sum(s["tasks"][t]["correct"] for s in summaries),
                 "images": sum(s["tasks"][t]["images"] for s in summaries)} for t in first["tasks"]}
    out = {"overall": scores["overall"], "tasks": tasks, "images": sum(s["images"] for s in summaries),
           "prompts": first["prompts"], "errors": sum(s.get("errors", 0) for s in summaries),
           **{k: first[k] for k in scorer if k in first}}
    return with_intervals(out, runs, boot)


def plus_minus(score: float, ci: list[float] | None, digits: int = 2) -> str:
    """`0.62 ± 0.02` (± = half the 95 % interval); just the score when there is no interval."""
    return f"{score:.{digits}f}" + (f" ± {half_width(ci):.{digits}f}" if ci else "")


def comparability(scorer: dict, rules: Rules, rows: Iterable[dict], n_samples: int = 4) -> dict:
    """Whether the numbers can stand next to published GenEval scores, and why not.

    Needs GenEval's own detector weights at the official 800 px, its CLIP, the official rules and
    every one of the 553 official prompts with `n_samples` scored images each. CLIP run in fp32
    (CPU) instead of fp16 autocast (CUDA) is noted: it can flip near-tied colours.
    """
    why = []
    if not scorer.get("official_weights"):
        why.append(f"detector weights {scorer.get('checkpoint')!r} are not GenEval's checkpoint "
                   "(mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco ...-743b7d99.pth or its -c9d0c4f2 conversion)")
    if scorer.get("image_size") != 800:
        why.append(f"detector image size {scorer.get('image_size')} (official: 800)")
    if scorer.get("color_classifier") != OFFICIAL_COLOURS:
        why.append(f"colour classifier {scorer.get('color_classifier')} (official: {OFFICIAL_COLOURS})")
    if rules != Rules():
        why.append(f"rules {rules} differ from the official defaults")
    canon = lambda m: json.dumps(json.loads(m) if isinstance(m, str) else m, sort_keys=True)
    scored = Counter(canon(r["metadata"]) for r in rows if not r.get("error"))
    if scored != Counter({canon(p): n_samples for p in read_prompts(OFFICIAL_PROMPTS)}):
        why.append(f"not the 553 official prompts x {n_samples} scored images")
    clip_fp32 = str(scorer.get("color_classifier")).startswith("clip:") and scorer.get("color_precision") != "fp16-autocast"
    notes = [f"CLIP logits in {scorer.get('color_precision')} (official: fp16 autocast on CUDA)"] if clip_fp32 else []
    return {"comparable": not why, "why_not": why, "notes": notes}


def format_summary(s: dict) -> str:
    lines = ["Summary", "=======", f"Total images: {s['images']}", f"Total prompts: {s['prompts']}",
             f"% correct images: {s['correct_images']:.2%}", f"% correct prompts: {s['correct_prompts']:.2%}",
             "", "Task breakdown", "=============="]
    ci = lambda v: f"  [{plus_minus(v['score'], v['ci'])}]" if v.get("ci") else ""  # noqa: E731
    lines += [f"{t:<16} = {v['score']:.2%} ({v['correct']} / {v['images']}){ci(v)}" for t, v in s["tasks"].items()]
    lines += ["", f"Overall score (avg. over tasks): {s['overall']:.5f}"]
    if s.get("overall_ci"):
        lo, hi = s["overall_ci"]
        lines.append(f"Overall: {plus_minus(s['overall'], s['overall_ci'])} (95% CI {lo:.3f}-{hi:.3f}, bootstrap "
                     f"over prompts, {s['bootstrap']['resamples']} resamples)")
    if s.get("errors"):
        lines.append(f"Unreadable images (not scored): {s['errors']}")
    return "\n".join(lines)


def markdown_row(s: dict, name: str, detector: str = "") -> str:
    """Header + one row: overall, the 6 tasks in GenEval order, images, detector."""
    tags = [t for t in TAGS if t in s["tasks"]] + [t for t in s["tasks"] if t not in TAGS]
    head = ["run", "overall", *tags, "images", "detector"]
    row = [name, f"{s['overall']:.4f}", *(f"{s['tasks'][t]['score']:.4f}" for t in tags), str(s["images"]), detector]
    return "\n".join("| " + " | ".join(r) + " |" for r in (head, ["---"] * len(head), row)) + "\n"


def summary_path(results: str | os.PathLike) -> Path:
    """`results.jsonl` -> `summary.json` beside it; `x.jsonl` -> `x.summary.json`."""
    results = Path(results)
    return results.with_name("summary.json" if results.name == "results.jsonl" else f"{results.stem}.summary.json")


def write_summary(s: dict, path: str | os.PathLike, name: str, detector: str = "") -> None:
    """`path` (.json) and the markdown table beside it (.md)."""
    write_text(path, json.dumps(s, indent=2) + "\n")
    write_text(Path(path).with_suffix(".md"), markdown_row(s, name, detector))
