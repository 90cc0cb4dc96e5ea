"""Data distillation (paper §4.3): captions -> teacher images, in text-to-image-2M's folder layout.

Layout: `<out>/<shard>/<name>.png` + `<name>.json` (key "prompt"), `<out>/index.txt` with one
`<shard>/<name>` per line (the official `generate_txt.py` output), and `<out>/meta.json` recording
the teacher, seed and versions. Sample i always gets the caption `captions[i % len(captions)]` and
the seed derived from (seed, i), so a run is independent of batch size and resumable: complete
samples are skipped, and every file is written to a temporary name and renamed into place.
"""
from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import platform
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from lightgen.files import (TEMP_RE, atomic_write, check_writable, open_rgb, read_json, remove_stale_temps,
                            writable_dir)
from lightgen.errors import InputError

SHARD_SIZE = 1000
IMAGE_EXTS = (".png", ".jpg", ".jpeg")  # text-to-image-2M itself ships .jpg


class Teacher(Protocol):
    """Anything that renders captions: `name`, optional `resolution`, and one image per (prompt, seed)."""

    name: str

    def __call__(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]: ...


def read_captions(path: str | os.PathLike) -> list[str]:
    """A captions file: one caption per line, blank lines skipped."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: expected a UTF-8 text file with one caption per line ({e})") from None
    captions = [ln for ln in lines if ln]
    if not captions:
        raise InputError(f"{path}: expected one caption per line, found none")
    return captions


def sample_seed(seed: int, *indices: int) -> int:
    """Per-image seed from the run seed and the image's indices (distillation: sample; GenEval: prompt,
    sample), through numpy's SeedSequence hash: decorrelated, < 2**32, independent of batching."""
    return int(np.random.SeedSequence([seed, *indices]).generate_state(1)[0])


def sample_key(index: int) -> str:
    return f"{index // SHARD_SIZE:05d}/{index:08d}"


def _atomic_write(path: Path, data: bytes | str) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data.encode() if isinstance(data, str) else data))


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _versions() -> dict[str, str]:
    import PIL
    from importlib.metadata import PackageNotFoundError, version
    try:
        ours = version("lightgen-bench")
    except PackageNotFoundError:
        ours = "unknown"
    return {"lightgen-bench": ours, "python": platform.python_version(), "torch": torch.__version__,
            "pillow": PIL.__version__, "numpy": np.__version__}


def _complete(out: Path, keys: list[str]) -> set[str]:
    """Keys whose json exists (it is renamed into place after its image, so the pair is complete)."""
    done = set()
    for shard in {k.split("/")[0] for k in keys}:
        if (out / shard).is_dir():
            done |= {f"{shard}/{f[:-5]}" for f in os.listdir(out / shard) if f.endswith(".json")}
    return done


def _check_resumable(out: Path, meta: dict) -> None:
    """`out` is missing, empty, or a distillation with the same settings (`meta`); else an InputError."""
    meta_path = out / "meta.json"
    if meta_path.exists():
        old = read_json(meta_path, "distillation record")
        diff = [k for k in meta if old.get(k) != meta[k]]
        if diff:
            raise InputError(f"{meta_path}: {out} holds another distillation (different "
                             f"{', '.join(f'{k}: {old.get(k)!r}, now {meta[k]!r}' for k in diff)}); "
                             "use a new --out folder")
    elif out.is_dir() and any(not TEMP_RE.fullmatch(p.name) for p in out.iterdir()):
        raise InputError(f"out: {out} holds other files and no distillation meta.json; use a new or empty folder")


def distill(teacher: Teacher, captions: Iterable[str], out_dir: str | os.PathLike, n: int | None = None,
            seed: int = 0, batch_size: int = 16, extra: dict[str, Any] | None = None) -> Path:
    """Render `n` samples (default: one per caption) of `captions` with `teacher` into `out_dir`.

    `extra` goes into meta.json (e.g. the caption diversity). Rerunning with the same teacher,
    captions and seed resumes; anything else in the same folder is refused.
    """
    captions = list(captions)
    if not captions:
        raise InputError("captions: expected at least one caption, got none")
    bad = [i for i, c in enumerate(captions) if not isinstance(c, str) or not c.strip()]
    if bad:
        raise InputError(f"captions: expected non-empty strings, line {bad[0] + 1} is {captions[bad[0]]!r}")
    n = len(captions) if n is None else n
    if n < 1 or batch_size < 1:
        raise InputError(f"n, batch_size: expected >= 1, got {n}, {batch_size}")
    if hasattr(teacher, "check"):  # refuse captions it cannot render before anything is written
        teacher.check(sorted(set(captions[: n])))
    meta = {"teacher": teacher.name, "resolution": getattr(teacher, "resolution", None), "seed": seed,
            "captions": len(captions), "captions_sha256": hashlib.sha256("\n".join(captions).encode()).hexdigest(),
            **(extra or {})}
    out = check_writable(out_dir, "out")
    _check_resumable(out, meta)
    out = writable_dir(out, "out")
    meta_path = out / "meta.json"
    _atomic_write(meta_path, json.dumps({**meta, "count": None, "complete": False}, indent=1))

    keys = [sample_key(i) for i in range(n)]
    done = _complete(out, keys)
    for shard in {k.split("/")[0] for k in keys}:
        if (out / shard).is_dir():
            remove_stale_temps(out / shard)
    todo = [i for i in range(n) if keys[i] not in done]
    with tqdm(total=n, initial=n - len(todo), desc=f"distill {teacher.name}", unit="img") as bar:
        for start in range(0, len(todo), batch_size):
            idx = todo[start:start + batch_size]
            prompts = [captions[i % len(captions)] for i in idx]
            images = teacher(prompts, [sample_seed(seed, i) for i in idx])
            if len(images) != len(idx):
                raise InputError(f"teacher {teacher.name}: expected {len(idx)} images, got {len(images)}")
            for i, prompt, img in zip(idx, prompts, images):
                base = out / keys[i]
                base.parent.mkdir(exist_ok=True)
                _atomic_write(base.with_suffix(".png"), _png(img))
                _atomic_write(base.with_suffix(".json"), json.dumps({"prompt": prompt}))
            bar.update(len(idx))
    _atomic_write(out / "index.txt", "".join(k + "\n" for k in keys))
    meta.update(count=n, complete=True, versions=_versions())
    _atomic_write(meta_path, json.dumps(meta, indent=1))
    return out


class T2IFolder(Dataset):
    """(PIL RGB image, caption) pairs of a text-to-image-2M style folder, validated on opening."""

    def __init__(self, root: str | os.PathLike, transform: Callable[[Image.Image], Any] | None = None):
        self.root, self.transform = Path(root), transform
        index = self.root / "index.txt"
        if not index.is_file():
            raise InputError(f"{index}: missing; expected one '<shard>/<name>' per line")
        keys = [line.strip() for line in index.read_text().splitlines() if line.strip()]
        if not keys:
            raise InputError(f"{index}: empty dataset, no samples listed")
        listing: dict[Path, set[str]] = {}
        self.items: list[tuple[Path, Path]] = []
        for k in keys:
            base = self.root / k
            if base.parent not in listing:
                listing[base.parent] = set(os.listdir(base.parent)) if base.parent.is_dir() else set()
            have = listing[base.parent]
            image = next((base.name + e for e in IMAGE_EXTS if base.name + e in have), None)
            if base.name + ".json" not in have:
                raise InputError(f"{base}.json: missing; index.txt lists {k!r} but it has no caption file")
            if image is None:
                raise InputError(f"{base}.json: caption without image (expected {base.name}"
                                 f"{' or '.join(IMAGE_EXTS)} beside it)")
            self.items.append((base.parent / image, base.with_name(base.name + ".json")))

    def __len__(self) -> int:
        return len(self.items)

    def caption(self, i: int) -> str:
        path = self.items[i][1]
        try:
            prompt = json.loads(path.read_text()).get("prompt")
        except (OSError, ValueError, AttributeError) as e:
            raise InputError(f"{path}: expected a JSON object with a 'prompt' key ({e})") from None
        if not isinstance(prompt, str):
            raise InputError(f"{path}: field 'prompt': expected a string, got {prompt!r}")
        return prompt

    def __getitem__(self, i: int) -> tuple[Any, str]:
        path = self.items[i][0]
        image = open_rgb(path, path)
        return (self.transform(image) if self.transform else image), self.caption(i)


def _has_caption_cleaner() -> bool:
    """Whether IF-style pipelines' `clean_caption` can run (it needs beautifulsoup4 and ftfy)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("bs4", "ftfy"))


class SeededPipeline:
    """A diffusers-style text-to-image pipeline as a `Teacher`: a diffusers hub id or local path, or an object
    called as `pipe(prompt=[...], generator=[...]).images` (a diffusers pipeline, a `LightGenPipeline`).

    Each image gets its own `torch.Generator` seeded with its sample seed, so an image does not depend on
    the batch it was rendered in. `call_kwargs` go to every call (e.g. num_inference_steps, guidance_scale,
    height, width).
    """

    def __init__(self, pipeline: Any, device: str = "cpu", name: str | None = None, dtype: torch.dtype | None = None,
                 **call_kwargs: Any):
        if isinstance(pipeline, (str, os.PathLike)):
            from diffusers import DiffusionPipeline

            try:
                pipe = DiffusionPipeline.from_pretrained(str(pipeline), **({"torch_dtype": dtype} if dtype else {}))
            except (OSError, ValueError) as e:
                raise InputError(f"teacher: cannot load a diffusers pipeline from {str(pipeline)!r} ({e})") from None
            name = name or str(pipeline)
        else:
            pipe, name = pipeline, name or type(pipeline).__name__
        self.pipe = pipe.to(device)
        if hasattr(self.pipe, "set_progress_bar_config"):  # diffusers' per-call progress bars
            self.pipe.set_progress_bar_config(disable=True)
        if "clean_caption" in inspect.signature(self.pipe.__call__).parameters and not _has_caption_cleaner():
            # DeepFloyd IF-style pipelines fall back to raw captions without bs4/ftfy, with a warning per call
            call_kwargs.setdefault("clean_caption", False)
        self.name, self.device, self.call_kwargs = name, device, call_kwargs
        self.resolution = call_kwargs.get("height")

    def __call__(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        if len(prompts) != len(seeds):
            raise InputError(f"seeds: expected one per prompt ({len(prompts)}), got {len(seeds)}")
        generators = [torch.Generator(self.device).manual_seed(int(s)) for s in seeds]
        out = self.pipe(prompt=list(prompts), generator=generators, **{"output_type": "pil", **self.call_kwargs})
        return list(out.images)
