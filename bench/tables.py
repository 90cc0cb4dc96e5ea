"""Paper-style GenEval tables (our runs beside the LightGen paper's Tables 1-3) and Fig. 6-style curves.

A row is a plain dict keyed by `COLUMNS` (scores under our GenEval tag keys), so the paper's rows
(`eval_configs/baselines/paper_tables.yaml`) and rows made from our `summary.json` files mix freely.
Our rows also carry each score's bootstrap 95 % interval (`<tag>_ci_low` / `_ci_high`): markdown and
LaTeX print `0.62 ± 0.02`, CSV keeps the interval's ends as numbers.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from bench.geneval.layout import EVAL_CONFIGS
from lightgen.errors import InputError
from lightgen.files import atomic_path, write_text

PAPER_TABLES = EVAL_CONFIGS / "baselines" / "paper_tables.yaml"
SCORES = {"single_object": "Single Obj.", "two_object": "Two Obj.", "colors": "Colors", "counting": "Counting",
          "position": "Position", "color_attr": "Color Attri.", "overall": "Overall"}
COLUMNS = {"model": "Model", "params": "#Params", "data": "Pre-train Data", **SCORES, "source": "Source"}
CI_COLUMNS = {f"{k}_ci_{end}": f"{v} CI {end}" for k, v in SCORES.items() for end in ("low", "high")}
FORMATS = {"md": ".md", "latex": ".tex", "csv": ".csv"}
_MD = str.maketrans({"|": r"\|"})
_TEX = str.maketrans({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                      "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"})


def load_baselines(path: str | os.PathLike = PAPER_TABLES, table: int | None = None) -> list[dict]:
    """Rows of a baselines file: YAML (`rows:` list) or CSV (field keys or our display column names,
    so a table written with `--format csv` can serve as the baselines of the next one)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: baselines file not found")
    try:
        if path.suffix == ".csv":
            frame = pd.read_csv(path).rename(columns={v: k for k, v in {**COLUMNS, **CI_COLUMNS}.items()})
            rows = [{k: v for k, v in r.items() if not pd.isna(v)} for r in frame.to_dict("records")]
        else:
            doc = yaml.safe_load(path.read_text())
            rows = doc.get("rows") if isinstance(doc, dict) else doc
    except (ValueError, yaml.YAMLError) as e:  # pandas' parser errors are ValueErrors
        raise InputError(f"{path}: expected YAML rows or a CSV table ({e})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and r.get("model") for r in rows):
        raise InputError(f"{path}: expected a list of rows (under `rows:`), each with a `model`")
    if table is None:
        return rows
    picked = [r for r in rows if r.get("table") == table]
    if not picked:
        have = sorted({r["table"] for r in rows if "table" in r})
        raise InputError(f"{path}: no rows for table {table}; expected one of: {', '.join(map(str, have)) or 'none'}")
    return picked


def _natural(path: Path) -> list:
    """Sort key in which digit runs compare as numbers: n1000 < n4000 < n16000 (as text: n1000, n16000, n4000)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def find_summaries(path: str | os.PathLike) -> list[Path]:
    """A summary file itself; for a directory its summary.json, else every (*.)summary.json below it
    (an ablation's output folder, one per grid point)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [path / "summary.json"] if (path / "summary.json").is_file() else sorted(
            (p for p in path.rglob("*summary.json") if p.name == "summary.json" or p.name.endswith(".summary.json")),
            key=_natural)
        if found:
            return found
        raise InputError(f"{path}: no summary.json in this directory or below")
    raise InputError(f"{path}: expected a GenEval summary.json or a directory holding one")


def _image_side(summary: Mapping) -> int | None:
    """Side of the first scored image (header read only): the summary records no generation resolution."""
    from PIL import Image
    try:
        with open(summary["results"]) as f:
            with Image.open(json.loads(f.readline())["filename"]) as im:
                return im.width if im.width == im.height else None
    except (KeyError, OSError, ValueError, TypeError):
        return None


def score_fields(summary: Mapping, where: str = "summary") -> dict[str, float]:
    """Scores of a GenEval summary under our tag keys (+ "overall"), and each one's interval ends
    (`<key>_ci_low` / `_ci_high`) where the summary has them."""
    tasks = summary.get("tasks")
    if not isinstance(tasks, Mapping) or not tasks:
        raise InputError(f"{where}: `tasks` missing or empty; expected a GenEval summary.json")
    try:
        scores = {t: float(tasks[t]["score"]) for t in SCORES if t in tasks}
        scores["overall"] = float(summary["overall"])
        cis = {t: tasks[t].get("ci") for t in SCORES if t in tasks}
        cis["overall"] = summary.get("overall_ci")
        scores |= {f"{t}_ci_{end}": float(ci[i]) for t, ci in cis.items() if ci
                   for i, end in enumerate(("low", "high"))}
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise InputError(f"{where}: expected `overall` and a numeric `score` (and `ci` [low, high]) per task "
                         f"({e!r})") from None
    return scores


def result_row(summary: Mapping, name: str, *, params: str | None = None, data: str | None = None,
               resolution: int | None = None, source: str | None = None, where: str = "summary") -> dict:
    """One table row from a GenEval summary (`bench.geneval.summary.summarize` + scorer provenance).

    The default source says how the numbers were obtained: detector, image side and number of images,
    since our rows differ from the paper's exactly there. `params`/`data` fall back to the summary's keys
    of those names, for runners that record them. `where` names the input in error messages.
    """
    scores = score_fields(summary, where)
    if source is None:
        resolution = resolution or summary.get("resolution") or _image_side(summary)
        detector = f"{summary.get('detector') or 'unknown'} detector"
        if summary.get("image_size"):
            detector += f" ({summary['image_size']} px input)"
        parts = [detector, f"{resolution} px" if resolution else None, f"{summary.get('images', '?')} images"]
        source = "ours: " + ", ".join(p for p in parts if p)
    return {"model": name, "params": params or summary.get("params"), "data": data or summary.get("data"),
            **scores, "source": source}


def _default_name(arg: Path, summary: Path) -> str:
    """`runs/a/summary.json` -> a; `x.summary.json` -> x; inside an ablation folder: the point's subpath."""
    stem = summary.name.removesuffix("summary.json").rstrip(".")
    rel = str(summary.parent.relative_to(arg)) if arg.is_dir() and summary.parent != arg else ""
    return "/".join(p for p in (rel, stem) if p) or summary.parent.resolve().name


def load_results(paths: Sequence[str | os.PathLike], names: Sequence[str] = ()) -> list[dict]:
    """Rows for summary files or directories (see `find_summaries`); default names: the `row_name` an
    ablation point records, else folder names."""
    found = [(Path(p), s) for p in paths for s in find_summaries(p)]
    if names and len(names) != len(found):
        raise InputError(f"--name: expected one name per result ({len(found)}: "
                         f"{', '.join(str(s) for _, s in found)}), got {len(names)}")
    rows = []
    for i, (arg, s) in enumerate(found):
        try:
            summary = json.loads(s.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{s}: expected a readable JSON summary ({e})") from None
        if not isinstance(summary, dict):
            raise InputError(f"{s}: expected a JSON object (a GenEval summary)")
        name = names[i] if names else summary.get("row_name") or _default_name(arg, s)
        rows.append(result_row(summary, name, where=str(s)))
    return rows


def build_table(rows: Iterable[Mapping]) -> pd.DataFrame:
    """The paper's columns in its order, then the interval columns any row has; scores as floats (NaN
    where a row has none)."""
    rows = list(rows)
    columns = list(COLUMNS) + [c for c in CI_COLUMNS if any(r.get(c) is not None for r in rows)]
    frame = pd.DataFrame([{k: r.get(k) for k in columns} for r in rows], columns=columns)
    numeric = [c for c in columns if c in SCORES or c in CI_COLUMNS]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce").astype(float)
    return frame.rename(columns={**COLUMNS, **CI_COLUMNS})


def best_mask(frame: pd.DataFrame, decimals: int = 2) -> pd.DataFrame:
    """True where a score equals its column's best as printed, so rows that print alike are bolded alike."""
    scores = frame[[c for c in SCORES.values() if c in frame]].round(decimals)
    return scores.eq(scores.max())


def _cells(frame: pd.DataFrame, decimals: int, na: str, bold: str, pm: str, escape: dict) -> list[list[str]]:
    """Printed cells of the printed columns: scores rounded (best ones through the `bold` template, then
    ` ± half-interval` through `pm` where the row has an interval), text escaped, gaps as `na`."""
    shown = [c for c in frame.columns if c not in CI_COLUMNS.values()]
    best = best_mask(frame, decimals).reindex(columns=shown, fill_value=False)
    low, high = ({c: frame.get(f"{c} CI {end}") for c in SCORES.values()} for end in ("low", "high"))

    def cell(i: int, col: str, v, is_best: bool) -> str:
        if pd.isna(v):
            return na
        if col not in SCORES.values():
            return str(v).translate(escape)
        text = bold.format(f"{v:.{decimals}f}") if is_best else f"{v:.{decimals}f}"
        if low[col] is not None and not pd.isna(low[col].iloc[i]):
            text += pm.format(f"{(high[col].iloc[i] - low[col].iloc[i]) / 2:.{decimals}f}")
        return text
    # positional, not by label: a concatenated frame's index may repeat
    return [[cell(i, *c) for c in zip(shown, row, flags, strict=True)] for i, (row, flags) in
            enumerate(zip(frame[shown].itertuples(index=False), best.itertuples(index=False), strict=True))]


def render(frame: pd.DataFrame, fmt: str = "md", decimals: int = 2) -> str:
    """Markdown or LaTeX (booktabs) with the best per score column in bold and `± half-interval` where
    a row has one; CSV keeps full-precision numbers (interval ends in their own columns), no markup."""
    if fmt == "csv":
        return frame.to_csv(index=False, lineterminator="\n")
    shown = [c for c in frame.columns if c not in CI_COLUMNS.values()]
    numeric = [c in SCORES.values() for c in shown]
    if fmt == "md":
        lines = [[c.translate(_MD) for c in shown], ["---:" if n else "---" for n in numeric],
                 *_cells(frame, decimals, "–", "**{}**", " ± {}", _MD)]
        return "".join("| " + " | ".join(line) + " |\n" for line in lines)
    if fmt == "latex":
        body = _cells(frame, decimals, "--", r"\textbf{{{}}}", r" $\pm$ {}", _TEX)
        spec = "".join("r" if n else "l" for n in numeric)
        head = " & ".join(c.translate(_TEX) for c in shown)
        lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", head + r" \\", r"\midrule",
                 *(" & ".join(r) + r" \\" for r in body), r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    raise InputError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")


def write_table(frame: pd.DataFrame, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Atomic write; the format defaults from the suffix (.md, .tex, .csv)."""
    path = Path(path)
    fmt = fmt or next((f for f, s in FORMATS.items() if s == path.suffix), None)
    if fmt is None:
        raise InputError(f"{path}: expected a .md, .tex or .csv name (or an explicit format)")
    write_text(path, render(frame, fmt))
    return path


def line_plot(data: pd.DataFrame | pd.Series, x: str | None, ys: Sequence[str] | None, path: str | os.PathLike,
              title: str = "", xlabel: str | None = None, ylabel: str = "GenEval score", logx: bool = False,
              symlogy: float | None = None) -> Path:
    """Fig. 6-style curves (score vs data scale, diversity, steps, β, ...) to one PNG, written atomically.

    `x` is a column (None: the index); `ys` are columns, tag keys or display names (None: every
    numeric column); a y with columns `<y>_ci_low` and `<y>_ci_high` gets error bars to those ends. Numeric x
    is sorted, so points appended as they finish still draw as a curve.
    `symlogy`: symmetric-log y axis, linear within ± this value (quantities spanning decades, any sign).
    """
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, no global backend state

    frame = data.to_frame(data.name or "score") if isinstance(data, pd.Series) else data
    xs = frame.index.to_series() if x is None else frame[x]
    if pd.api.types.is_numeric_dtype(xs):
        order = xs.argsort(kind="stable").to_numpy()
        frame, xs = frame.iloc[order], xs.iloc[order]
    ys = list(ys) if ys is not None else [c for c in frame.select_dtypes("number").columns
                                          if c != x and "_ci_" not in str(c)]
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for y in ys:
        overall = y in ("overall", "Overall")
        v, lo, hi = frame[y].to_numpy(dtype=float), f"{y}_ci_low", f"{y}_ci_high"
        err = np.vstack([v - frame[lo].to_numpy(dtype=float), frame[hi].to_numpy(dtype=float) - v]) \
            if lo in frame and hi in frame else None
        ax.errorbar(xs.to_numpy(), v, yerr=err, marker="o", capsize=3, lw=2.5 if overall else 1.5,
                    label=SCORES.get(y, y), zorder=3 if overall else 2)
    if logx:
        ax.set_xscale("log")
    if symlogy:
        ax.set_yscale("symlog", linthresh=symlogy)
    ax.set(title=title, xlabel=xlabel if xlabel is not None else (x or frame.index.name or ""), ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(ys) > 1:
        ax.legend(fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    return Path(path)
