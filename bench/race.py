"""`lightgen-bench race`: students' learning curves against training CPU time, on one picture.

Each input is a `steps` ablation folder (one student: snapshots of one training run, each scored with
testbed GenEval); its points record the training process's CPU seconds up to the snapshot (`train_cpu_s`,
from the run's metrics.csv). The race compares recipes at equal compute on the box that ran them, which is
what matters on a CPU: steps of different students cost different amounts.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.plots import PANELS as TAGS
from bench.plots import geneval_panels
from bench.provenance import run_record
from bench.tables import build_table, result_row, write_table
from lightgen.errors import InputError
from lightgen.files import write_text


def student_params(folder: Path) -> str | None:
    """The trained network's size, from the ablation's run.json (its training config and overrides); None when
    the folder has no record."""
    from bench.config import train_config
    from bench.experiment import parameter_count
    from lightgen.files import read_json

    record = folder / "run.json"
    if not record.is_file():
        return None
    config = read_json(record, "ablation record").get("config")
    if not isinstance(config, dict) or not config.get("train_config"):
        raise InputError(f"{record}: expected an ablation's record (config.train_config and config.train)")
    return f"{parameter_count(train_config(config['train_config'], config.get('train') or {})) / 1e6:.1f}M"


def load_curve(folder: Path) -> pd.DataFrame:
    """One student's points (steps, training CPU minutes, every score and its interval) from an ablation folder."""
    rows, found, params = [], sorted(Path(folder).glob("points/*/summary.json")), student_params(Path(folder))
    for f in found:
        s = json.loads(f.read_text())
        if s.get("train_cpu_s") is None:  # a snapshot between two logged rows: no time to draw it at
            continue
        n, images = s["point"]["data"]["n"], s["images"] // s["prompts"]
        rows.append({"student": s.get("student"), "steps": s["point"]["x"], "train_cpu_min": s["train_cpu_s"] / 60,
                     "renders": n, "prompts": s["prompts"], "images": images,
                     "eval": json.dumps(s.get("eval"), sort_keys=True),
                     **result_row(s, s.get("row_name"), params=params, data=f"{n:,} renders", where=str(f),
                                  source=f"ours: testbed detector, {s['prompts']} prompts × {images} images")})
    if not found:
        raise InputError(f"{folder}: expected a `steps` ablation folder (points/*/summary.json), found none")
    if not rows:
        raise InputError(f"{folder}: no point records train_cpu_s (made before training CPU time was logged, or "
                         "snapshots off the log_every grid); rerun the ablation")
    return pd.DataFrame(rows).sort_values("train_cpu_min", ignore_index=True)


def crossing(a: pd.DataFrame, b: pd.DataFrame, tag: str = "overall") -> float | None:
    """The first training CPU minute at which curve `a` reaches curve `b` (both piecewise linear over their
    common range; exact at the union of their points), or None if it never does there."""
    lo, hi = max(a.train_cpu_min.min(), b.train_cpu_min.min()), min(a.train_cpu_min.max(), b.train_cpu_min.max())
    xs = np.unique(np.concatenate([a.train_cpu_min, b.train_cpu_min, [lo, hi]]))
    xs = xs[(xs >= lo) & (xs <= hi)]
    diff = np.interp(xs, a.train_cpu_min, a[tag]) - np.interp(xs, b.train_cpu_min, b[tag])
    for i, d in enumerate(diff):
        if d >= 0:
            return float(xs[i]) if i == 0 else float(xs[i - 1] + (xs[i] - xs[i - 1]) * -diff[i - 1] / (d - diff[i - 1]))
    return None


def race(folders: list[Path], names: list[str], output: Path, command: list[str]) -> dict:
    """Table, plot, crossing points and run record of the students in `folders` (named `names`)."""
    started = time.perf_counter()
    curves = {n: load_curve(f) for n, f in zip(names, folders)}
    table = pd.concat([c.assign(student=n) for n, c in curves.items()], ignore_index=True)
    write_text(output / "curves.csv", table.to_csv(index=False))
    rows = table.assign(model=[f"{r.student}, {r.steps} steps, {r.train_cpu_min:.1f} training CPU-min"
                               for r in table.itertuples()])
    for ext in ("md", "tex", "csv"):
        write_table(build_table(rows.to_dict("records")), output / f"table.{ext}")
    sizes = lambda col: "/".join(f"{v:,}" for v in sorted(table[col].unique()))  # noqa: E731
    title = (f"Testbed GenEval against training CPU time ({' vs '.join(names)}; {sizes('renders')} teacher renders; "
             f"{sizes('prompts')} prompts × {sizes('images')} images)")
    geneval_panels(table.assign(x=table.train_cpu_min), output / "race.png", title, "training CPU minutes",
                   series="student")
    first, *rest = names
    result = {"students": {n: {"folder": str(f), "max_train_cpu_min": float(curves[n].train_cpu_min.max())}
                           for n, f in zip(names, folders)},
              "crossing_cpu_min": {f"{first} reaches {o}": crossing(curves[first], curves[o]) for o in rest}}
    write_text(output / "run.json", json.dumps({**result, **run_record(command, {"folders": [str(f) for f in folders],
                                                                               "names": names}, started)}, indent=2))
    return result
