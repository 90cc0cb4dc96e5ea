"""Generate GenEval images in the official layout: any generator, sharded and resumable.

A generator is any object with `name` and `__call__(prompts, seeds) -> list[PIL.Image]` (one image
per (prompt, seed) pair). Each image's seed comes from (base seed, prompt index, sample index), so
the images do not depend on batch size, sharding or resumption.
"""
from __future__ import annotations

import os
from typing import Protocol, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from bench.geneval.layout import is_complete, write_prompt
from lightgen.errors import InputError


class Generator(Protocol):
    name: str

    def __call__(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]: ...


def sample_seed(base_seed: int, prompt_index: int, sample_index: int) -> int:
    """A 32-bit seed from numpy's SeedSequence hash of the three integers."""
    return int(np.random.SeedSequence([base_seed, prompt_index, sample_index]).generate_state(1)[0])


def sampling_kwargs(steps: int | None, guidance: float | None, resolution: int | None) -> dict:
    """diffusers-style sampling arguments; unset ones keep the pipeline's defaults."""
    kw = dict(num_inference_steps=steps, guidance_scale=guidance, height=resolution, width=resolution)
    return {k: v for k, v in kw.items() if v is not None}


class LightGenGenerator:
    """A LightGen pipeline directory (`lightgen.pipeline.LightGenPipeline`)."""

    def __init__(self, path: str, *, steps: int | None = None, guidance: float | None = None,
                 resolution: int | None = None, device: str | None = None, temperature: float | None = None):
        from lightgen.pipeline import LightGenPipeline
        self.name = f"lightgen:{path}"
        self.pipe = LightGenPipeline.from_pretrained(path, device=device)
        self.kwargs = sampling_kwargs(steps, guidance, resolution)
        if temperature is not None:
            self.kwargs["temperature"] = temperature

    def __call__(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        return self.pipe(prompts, seed=seeds, **self.kwargs)


class DiffusersGenerator:
    """Any diffusers text-to-image pipeline: a hub id, a local path or a pipeline object."""

    def __init__(self, pipeline, *, steps: int | None = None, guidance: float | None = None,
                 resolution: int | None = None, device: str | None = None, dtype: torch.dtype | None = None):
        if isinstance(pipeline, (str, os.PathLike)):
            from diffusers import DiffusionPipeline
            self.name = f"diffusers:{pipeline}"
            pipeline = DiffusionPipeline.from_pretrained(str(pipeline), **({"torch_dtype": dtype} if dtype else {}))
        else:
            self.name = f"diffusers:{type(pipeline).__name__}"
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.pipe = pipeline.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.kwargs = sampling_kwargs(steps, guidance, resolution)

    def __call__(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        generators = [torch.Generator(self.device).manual_seed(s) for s in seeds]
        return self.pipe(prompt=prompts, generator=generators, output_type="pil", **self.kwargs).images


def get_generator(*, ckpt: str | None = None, pipeline: str | None = None, testbed: bool = False,
                  **kw) -> Generator:
    """Exactly one of: a LightGen directory, a diffusers pipeline id/path, the testbed teacher."""
    if sum(map(bool, (ckpt, pipeline, testbed))) != 1:
        raise InputError("generator: expected exactly one of --ckpt DIR, --pipeline ID, --testbed")
    if ckpt:
        return LightGenGenerator(ckpt, **kw)
    if pipeline:
        return DiffusersGenerator(pipeline, **kw)
    from bench.testbed.teacher import TestbedTeacher
    return TestbedTeacher(**({"resolution": kw["resolution"]} if kw.get("resolution") else {}))


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
