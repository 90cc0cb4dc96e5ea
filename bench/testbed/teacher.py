"""The testbed's "SOTA teacher": renders any caption of the grammar, deterministically from a seed."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from bench.testbed.captions import parse
from bench.testbed.world import MIN_RESOLUTION, Scene, SceneSpec, TokenGridRng, render_scene, sample_scene
from lightgen.errors import InputError

_parse = lru_cache(maxsize=65536)(parse)  # training captions repeat: parse each once


def render(caption_or_scene: str | SceneSpec | Scene, resolution: int = 32, seed: int = 0,
           token_grid: int | None = None) -> Image.Image:
    """Render a caption, scene constraints or a placed scene. The layout and unstated colours come
    from `seed` and do not depend on `resolution`, so one seed gives the same scene at 32 and 64 px.
    `token_grid` = N puts every box edge on an N × N grid (a token-aligned world; default: anywhere)."""
    scene = caption_or_scene
    if isinstance(scene, str):
        scene = _parse(scene)
    if isinstance(scene, SceneSpec):
        rng = np.random.default_rng(seed)
        scene = sample_scene(scene, TokenGridRng(rng, token_grid) if token_grid else rng)
    return render_scene(scene, resolution)


class TestbedTeacher:
    """Teacher protocol of `lightgen.distill`: name, resolution, __call__(prompts, seeds). `token_grid` = N:
    the token-aligned world (box edges on an N × N grid), named apart in the data it distils."""

    def __init__(self, resolution: int = 32, token_grid: int | None = None):
        if resolution < MIN_RESOLUTION:
            raise InputError(f"resolution: expected >= {MIN_RESOLUTION} px (the detector's minimum), got {resolution}")
        if token_grid is not None and token_grid < 1:
            raise InputError(f"token_grid: expected a number of tokens per side >= 1, got {token_grid}")
        self.resolution, self.token_grid = resolution, token_grid
        self.name = "testbed-teacher" + (f"-grid{token_grid}" if token_grid else "")

    def check(self, prompts: list[str]) -> None:
        """Raise the InputError of the first caption outside the grammar (distill calls this before writing)."""
        for p in prompts:
            _parse(p)

    def __call__(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        if len(prompts) != len(seeds):
            raise InputError(f"seeds: expected one per prompt ({len(prompts)}), got {len(seeds)}")
        return [render(p, self.resolution, s, self.token_grid) for p, s in zip(prompts, seeds)]
