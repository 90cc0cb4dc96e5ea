"""Generate GenEval images in the official layout: any generator, sharded and resumable.

A generator is any object with `name` and `__call__(prompts, seeds) -> list[PIL.Image]` (one image
per (prompt, seed) pair). Each image's seed comes from (base seed, prompt index, sample index), so
the images do not depend on batch size, sharding or resumption.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from bench.geneval.layout import is_complete, write_prompt
from lightgen.distill import SeededPipeline, sample_seed
from lightgen.distill import Teacher as Generator  # the same protocol: (prompts, seeds) -> one image each
from lightgen.errors import InputError


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
    if sum(map(bool, (ckpt, pipeline, testbed))) != 1:
        raise InputError("generator: expected exactly one of --ckpt DIR, --pipeline ID, --testbed")
    if testbed:
        from bench.testbed.teacher import TestbedTeacher
        return TestbedTeacher(**({"resolution": resolution} if resolution else {}))
    kwargs = sampling_kwargs(steps, guidance_scale, resolution)
    if ckpt:
        from lightgen.pipeline import LightGenPipeline
        if temperature is not None:
            kwargs["temperature"] = temperature
        return SeededPipeline(LightGenPipeline.from_pretrained(ckpt), device or "cpu", f"lightgen:{ckpt}", **kwargs)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return SeededPipeline(pipeline, device, f"diffusers:{pipeline}", dtype, **kwargs)


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
