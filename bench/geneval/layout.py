"""The official GenEval image-folder layout, so official scripts read our outputs and we read theirs.

    <outdir>/<index:05d>/metadata.jsonl   one JSON object: the prompt's metadata line
                        /samples/<k:04d>.png
                        /grid.png          optional, ignored by scorers

The evaluator accepts any digit-only folder name and any sample name matching `re.match(r"\\d+\\.png")`
(4 or 5 digits alike; `.jpg` is skipped). Files are written atomically; `metadata.jsonl` comes
last, so a folder without it is unfinished.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from lightgen.files import atomic_path, remove_stale_temps, write_text
from lightgen.errors import InputError

EVAL_CONFIGS = Path(__file__).resolve().parents[2] / "eval_configs"
OFFICIAL_PROMPTS = EVAL_CONFIGS / "geneval" / "evaluation_metadata.jsonl"
TESTBED_PROMPTS = EVAL_CONFIGS / "testbed" / "geneval_testbed.jsonl"
OBJECT_NAMES = tuple((EVAL_CONFIGS / "geneval" / "object_names.txt").read_text().splitlines())
SAMPLE_RE = re.compile(r"\d+\.png")  # used with .match: anchored at the start only, as officially


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: expected UTF-8 text (byte {e.start}: {e.reason})") from None


def read_prompts(path: str | os.PathLike) -> list[dict]:
    """One metadata object per line (the official `evaluation_metadata.jsonl` format)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: prompt metadata file not found")
    prompts = []
    for i, line in enumerate(_read_utf8(path).splitlines(), 1):
        if line.strip():
            try:
                prompts.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{i}: expected one JSON object per line ({e})") from None
            if not isinstance(prompts[-1], dict):
                raise InputError(f"{path}:{i}: expected one JSON object per line, got {type(prompts[-1]).__name__}")
    return prompts


@dataclass
class PromptFolder:
    path: Path
    metadata: dict | None  # None: metadata.jsonl missing (unfinished folder)
    samples: list[Path]


def prompt_dir(outdir: str | os.PathLike, index: int) -> Path:
    return Path(outdir) / f"{index:05d}"


def sample_names(n: int) -> list[str]:
    return [f"{k:04d}.png" for k in range(n)]


def list_samples(folder: Path) -> list[Path]:
    d = folder / "samples"
    return sorted(p for p in d.iterdir() if SAMPLE_RE.match(p.name)) if d.is_dir() else []


def read_metadata(folder: Path) -> dict | None:
    f = folder / "metadata.jsonl"
    if not f.is_file():
        return None
    try:
        meta = json.loads(_read_utf8(f))
    except json.JSONDecodeError as e:
        raise InputError(f"{f}: expected one JSON object ({e})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{f}: expected one JSON object")
    return meta


def read_layout(outdir: str | os.PathLike) -> list[PromptFolder]:
    """All digit-named prompt folders (numeric order) with their metadata and sample files."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        raise InputError(f"{outdir}: expected a GenEval image folder")
    dirs = sorted((p for p in outdir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: (int(p.name), p.name))
    return [PromptFolder(d, read_metadata(d), list_samples(d)) for d in dirs]


def is_complete(outdir: str | os.PathLike, index: int, metadata: dict, n_samples: int) -> bool:
    """True if the folder holds exactly this prompt and exactly samples 0000..n-1."""
    d = prompt_dir(outdir, index)
    return read_metadata(d) == metadata and [p.name for p in list_samples(d)] == sample_names(n_samples)


def make_grid(images: Sequence[Image.Image], cols: int | None = None) -> Image.Image:
    cols = cols or min(len(images), 4)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, -(-len(images) // cols) * h))
    for k, im in enumerate(images):
        grid.paste(im.convert("RGB"), ((k % cols) * w, (k // cols) * h))
    return grid


def write_prompt(outdir: str | os.PathLike, index: int, metadata: dict, images: Sequence[Image.Image],
                 grid: bool = False) -> Path:
    """Write one prompt folder; stale samples beyond `len(images)` are removed, metadata last."""
    d = prompt_dir(outdir, index)
    (d / "metadata.jsonl").unlink(missing_ok=True)
    for folder in (d, d / "samples"):  # temporary files of a killed earlier attempt
        if folder.is_dir():
            remove_stale_temps(folder)
    keep = set(sample_names(len(images)))
    for p in list_samples(d):
        if p.name not in keep:
            p.unlink()
    for name, im in zip(sample_names(len(images)), images):
        with atomic_path(d / "samples" / name) as tmp:
            im.save(tmp, format="PNG")
    if grid:
        with atomic_path(d / "grid.png") as tmp:
            make_grid(images).save(tmp, format="PNG")
    write_text(d / "metadata.jsonl", json.dumps(metadata) + "\n")
    return d
