"""Generate GenEval images in the official layout: any generator, sharded and resumable.

A generator is any object with `name` and `__call__(prompts, seeds) -> list[PIL.Image]` (one image
per (prompt, seed) pair). Each image's seed comes from (base seed, prompt index, sample index), so
the images do not depend on batch size, sharding or resumption.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from bench.geneval.layout import is_complete, read_layout, write_prompt
from lightgen.distill import SeededPipeline, sample_seed
from lightgen.distill import Teacher as Generator  # the same protocol: (prompts, seeds) -> one image each
from lightgen.errors import InputError
from lightgen.files import files_sha256, write_text

GENERATION_RECORD = "generation.json"  # the settings the folder's images were made with


def sampling_kwargs(steps: int | None, guidance_scale: float | None, resolution: int | None) -> dict:
    """diffusers-style sampling arguments; unset ones keep the pipeline's defaults."""
    kw = dict(num_inference_steps=steps, guidance_scale=guidance_scale, height=resolution, width=resolution)
    return {k: v for k, v in kw.items() if v is not None}


def get_generator(*, ckpt: str | None = None, pipeline: str | None = None, testbed: bool = False,
                  steps: int | None = None, guidance_scale: float | None = None, resolution: int | None = None,
                  device: str | None = None, dtype: torch.dtype | None = None,
                  temperature: float | None = None) -> Generator:
    """Exactly one of: a LightGen pipeline directory (on `device`, default CPU), a diffusers pipeline id/path
    (default device: CUDA if available), the testbed teacher. Both pipelines sample through the same
    diffusers call, one seeded generator per image."""
    check_generator_choice(ckpt, pipeline, testbed)
    if testbed:
        from bench.testbed.teacher import TestbedTeacher
        return TestbedTeacher(**({"resolution": resolution} if resolution else {}))
    kwargs = sampling_kwargs(steps, guidance_scale, resolution)
    if ckpt:
        from lightgen.pipeline import LightGenPipeline
        if temperature is not None:
            kwargs["temperature"] = temperature
        from bench.provenance import auto_precision
        generator = SeededPipeline(LightGenPipeline.from_pretrained(ckpt), device or "cpu", f"lightgen:{ckpt}", **kwargs)
        generator.precision = auto_precision(generator.device)  # LightGen samples in "auto": bf16 only where native
    else:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        generator = SeededPipeline(pipeline, device, f"diffusers:{pipeline}", dtype, **kwargs)
        generator.dtype = str(dtype) if dtype else None
    generator.checkpoint_sha256 = dir_sha256(ckpt or pipeline)
    return generator


def check_generator_choice(ckpt: str | None, pipeline: str | None, testbed: bool) -> None:
    if sum(map(bool, (ckpt, pipeline, testbed))) != 1:
        raise InputError("generator: expected exactly one of --ckpt DIR, --pipeline ID, --testbed")


def dir_sha256(path: str | os.PathLike) -> str | None:
    """Content hash of a local pipeline directory (file names and bytes), None for a hub id: a retrained
    checkpoint at the same path is another generator."""
    path = Path(path)
    return files_sha256(path, (p for p in path.rglob("*") if p.is_file())) if path.is_dir() else None


def settings(generator: Generator, seed: int) -> dict:
    """Everything that shapes an image besides its prompt: generator, weights, sampling arguments, seed."""
    kwargs = {k: v for k, v in getattr(generator, "call_kwargs", {}).items() if k != "output_type"}
    return {"generator": generator.name, "checkpoint_sha256": getattr(generator, "checkpoint_sha256", None),
            "resolution": getattr(generator, "resolution", None), "dtype": getattr(generator, "dtype", None),
            "precision": getattr(generator, "precision", None),
            **kwargs, "seed": seed}


def check_outdir(outdir: Path, prompts: Sequence[dict], record: dict) -> None:
    """Refuse an `outdir` whose images would be mixed with these: made with other settings (`record`, kept in
    generation.json), or holding prompt folders that are not this prompt set's."""
    from lightgen.files import read_json
    made = outdir / GENERATION_RECORD
    if made.is_file():
        old = read_json(made, "generation settings")
        diff = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in record.items() if old.get(k) != v]
        if diff:
            raise InputError(f"{made}: {outdir} holds images generated with other settings ({'; '.join(diff)}); "
                             f"use a new --outdir, or delete {outdir} to start clean")
    stale = [f.path.name for f in read_layout(outdir) if int(f.path.name) >= len(prompts)
             or f.metadata not in (None, prompts[int(f.path.name)])] if outdir.is_dir() else []
    if stale:
        raise InputError(f"{outdir}: holds {len(stale)} prompt folder(s) of another prompt set or --limit "
                         f"({', '.join(stale[:5])}{', ...' if len(stale) > 5 else ''}); use a new --outdir, or the "
                         f"--prompts/--limit it was made with")


def shard_of(shard: tuple[int, int] = (0, 1)) -> tuple[int, int]:
    """`--shard i/n` combined with the process rank under `accelerate launch` (world size W)."""
    i, n = shard
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if not (0 <= i < n):
        raise InputError(f"--shard {i}/{n}: expected 0 <= i < n")
    return i * world + rank, n * world


def generate(generator: Generator, prompts: Sequence[dict], outdir: str | os.PathLike, *, n_samples: int = 4,
             batch_size: int = 4, seed: int = 0, shard: tuple[int, int] = (0, 1), grid: bool = False,
             progress: bool = True) -> int:
    """Fill `outdir` with this shard's prompts (index % n == i); complete folders are skipped,
    partial ones redone. Returns the number of prompt folders written."""
    part, parts = shard_of(shard)
    outdir, record = Path(outdir), settings(generator, seed)
    check_outdir(outdir, prompts, record)
    write_text(outdir / GENERATION_RECORD, json.dumps(record, indent=1) + "\n")
    todo = [i for i in range(part, len(prompts), parts) if not is_complete(outdir, i, prompts[i], n_samples)]
    items = [(i, k) for i in todo for k in range(n_samples)]
    pending: dict[int, dict[int, Image.Image]] = {}
    with tqdm(total=len(items), desc=f"generate {part}/{parts}", unit="img", disable=not progress) as bar:
        for b in range(0, len(items), batch_size):
            chunk = items[b: b + batch_size]
            images = generator([prompts[i]["prompt"] for i, _ in chunk], [sample_seed(seed, i, k) for i, k in chunk])
            if len(images) != len(chunk):
                raise RuntimeError(f"{generator.name}: returned {len(images)} images for {len(chunk)} prompts")
            for (i, k), im in zip(chunk, images):
                pending.setdefault(i, {})[k] = im
                if len(pending[i]) == n_samples:
                    done = pending.pop(i)
                    write_prompt(outdir, i, prompts[i], [done[j] for j in range(n_samples)], grid=grid)
            bar.update(len(chunk))
    return len(todo)
