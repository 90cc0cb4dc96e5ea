"""Plots a person reads at a glance: GenEval as small multiples, probes on labelled linear axes.

A GenEval figure has one panel per score (overall and the six tags), each on the same fixed 0–1 axis
with its 95 % bootstrap interval as error bars, so a curve at the floor looks flat and noise looks like
noise (auto-scaled axes turn 0.00–0.05 into peaks). Summaries of one image per prompt made before
intervals were recorded get them reconstructed from their per-tag counts: with one image a prompt is
either correct or not, so the counts are the per-prompt data up to order and the bootstrap over prompts
is the one the scorer runs (`bench.geneval.stats`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from bench.tables import SCORES, score_fields
from lightgen.files import atomic_path

PANELS = ("overall", "single_object", "two_object", "counting", "colors", "position", "color_attr")
INTERVALS = "error bars: 95 % bootstrap interval over prompts"
RECONSTRUCTED = INTERVALS + " (reconstructed from per-tag counts, one image per prompt)"


def counted_intervals(counts: Mapping[str, tuple[int, int]]) -> dict[str, float]:
    """`<tag>_ci_low/high` and `overall_ci_low/high` from (correct, images) per tag, one image per prompt."""
    from bench.geneval.stats import confidence_intervals

    runs = [{t: {f"{i:05d}": (int(i < c), 1) for i in range(n)} for t, (c, n) in counts.items() if n}]
    ci = confidence_intervals(runs)
    return {f"{t}_ci_{end}": v[i] for t, v in [*ci["tasks"].items(), ("overall", ci["overall"])]
            for i, end in enumerate(("low", "high"))}


def scores_with_intervals(summary: Mapping, where: str = "summary") -> tuple[dict[str, float], bool]:
    """`score_fields` of a summary, with intervals reconstructed where it has none and scored one image per
    prompt in one run; the flag says whether they were reconstructed."""
    fields = score_fields(summary, where)
    one_image = summary.get("images") == summary.get("prompts") and len(summary.get("seeds", [0])) == 1
    if "overall_ci_low" in fields or not one_image:
        return fields, False
    counts = {t: (int(v["correct"]), int(v["images"])) for t, v in summary["tasks"].items() if "correct" in v}
    return fields | counted_intervals(counts), True


def _errors(frame: pd.DataFrame, y: str) -> np.ndarray | None:
    lo, hi = f"{y}_ci_low", f"{y}_ci_high"
    if lo not in frame or hi not in frame:
        return None
    v = frame[y].to_numpy(float)
    return np.nan_to_num(np.vstack([v - frame[lo].to_numpy(float), frame[hi].to_numpy(float) - v]))


def save(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """A matplotlib figure to a PNG, written atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def geneval_panels(frame: pd.DataFrame, path: str | os.PathLike, title: str, xlabel: str, **kwargs) -> Path:
    """`geneval_figure` written to `path`."""
    return save(geneval_figure(frame, title, xlabel, **kwargs), path)


def geneval_figure(frame: pd.DataFrame, title: str, xlabel: str, *, series: str | None = None, logx: bool = False,
                   extra: tuple[str, str] | None = None, note: str = INTERVALS):
    """Overall and the six tags against column `x`, one 0–1 panel each, error bars from the `<tag>_ci_low/high`
    columns, one line per value of column `series`. `extra` = (column, label): an eighth panel on its own
    labelled linear axis (FID, context gain)."""
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, no global backend state

    fig = Figure(figsize=(14, 6.4), layout="constrained")
    axes = fig.subplots(2, 4, sharex=True).ravel()
    groups = list(frame.groupby(series, sort=False)) if series else [("", frame)]
    shown = [*PANELS, extra[0]] if extra else PANELS
    for ax, y in zip(axes, shown):
        for name, g in groups:
            g = g.sort_values("x")
            ax.errorbar(g["x"].to_numpy(), g[y].to_numpy(float), yerr=_errors(g, y), marker="o", capsize=3,
                        lw=2.2 if y == "overall" else 1.5, label=str(name) if series else None)
        ax.set_title(SCORES.get(y) or extra[1], fontsize=11, fontweight="bold" if y == "overall" else None)
        if y in SCORES:
            ax.set_ylim(-0.03, 1.03)
            ax.set_yticks([0, 0.25, 0.5, 0.75, 1])
        else:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 5))
        ax.grid(alpha=0.3)
    if logx:
        axes[0].set_xscale("log")
    if not extra:
        axes[-1].axis("off")
        axes[3].tick_params(labelbottom=True)
        axes[3].set_xlabel(xlabel)
    for ax in axes[4:len(shown)]:
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel("GenEval score")
    axes[4].set_ylabel("GenEval score")
    if series:
        axes[0].legend(fontsize="small", title=series)
    fig.suptitle(f"{title}\n{note}", fontsize=11)
    return fig


def probe_panels(frame: pd.DataFrame, path: str | os.PathLike, title: str, xlabel: str, logx: bool = False) -> Path:
    """Context and text gain (`lightgen.probe`) against column `x`, each on its own labelled linear axis with
    the zero line drawn (a gain can be slightly negative: the condition is not used at all)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    labels = {"context_gain": "context gain: visible tokens swapped", "text_gain": "text gain: caption dropped"}
    for ax, (y, label) in zip(fig.subplots(1, 2), labels.items()):
        g = frame.sort_values("x")
        ax.plot(g["x"].to_numpy(), g[y].to_numpy(float), marker="o")
        ax.axhline(0, color="grey", lw=0.8)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 5))
        ax.set(title=label, xlabel=xlabel, ylabel="masked-token loss increase", xscale="log" if logx else "linear")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    return save(fig, path)
