"""FID feature extractor for the testbed: a small CNN trained on teacher renders to read the scene
(how many of each shape, which colours), whose penultimate features play Inception's role.

Training is seeded and single-threaded (about a minute on this CPU); the weights are cached under
`cache_dir` (or $LIGHTGEN_BENCH_CACHE, else ~/.cache/lightgen-bench) keyed by a hash of the training
recipe and the world, and retrained automatically when missing or unreadable.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from bench.testbed.world import COLOURS, MAX_OBJECTS, SHAPES, ObjSpec, SceneSpec, render_scene, sample_scene

INPUT = 32  # every image is resized to this; the world is defined at this scale


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the weights; its hash (with the world's) names the cache file."""

    images: int = 12000
    steps: int = 2000
    batch: int = 128
    lr: float = 3e-3
    seed: int = 0
    width: int = 16
    features: int = 64
    noise: float = 0.05  # max std of the training noise, in [0, 1] pixel units

    def key(self) -> str:
        world = {"shapes": SHAPES, "colours": COLOURS, "version": 1}
        blob = json.dumps({"recipe": asdict(self), "world": world}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


class SceneNet(nn.Module):
    """Conv stack -> 4x4 map -> `features`-d embedding (kept spatial, so layout counts) -> heads for
    per-shape counts (0..4) and per-colour presence. `forward` returns the embedding before its
    ReLU: no dead dimensions, so the FID covariance stays full rank."""

    def __init__(self, width: int = 16, features: int = 64):
        super().__init__()
        w = width
        def block(i, o, s):
            return [nn.Conv2d(i, o, 3, s, 1), nn.BatchNorm2d(o), nn.ReLU()]
        self.body = nn.Sequential(*block(3, w, 2), *block(w, 2 * w, 2), *block(2 * w, 4 * w, 2),
                                  nn.Flatten(), nn.Linear(4 * w * 16, features))
        self.counts = nn.Sequential(nn.ReLU(), nn.Linear(features, len(SHAPES) * (MAX_OBJECTS + 1)))
        self.colours = nn.Sequential(nn.ReLU(), nn.Linear(features, len(COLOURS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1], any size -> (B, features)."""
        if x.shape[-2:] != (INPUT, INPUT):
            # Area averaging is how the teacher anti-aliases, so a 64 px render shrinks to its 32 px one.
            down = min(x.shape[-2:]) > INPUT
            x = F.interpolate(x, size=(INPUT, INPUT), mode="area" if down else "bilinear",
                              **({} if down else {"align_corners": False}))
        return self.body((x - 0.5) / 0.25)


def _data(recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Renders of random scenes with their targets (shape counts, colour presence)."""
    rng = np.random.default_rng(recipe.seed)
    imgs = np.empty((recipe.images, INPUT, INPUT, 3), np.uint8)
    counts = np.zeros((recipe.images, len(SHAPES)), np.int64)
    colours = np.zeros((recipe.images, len(COLOURS)), np.float32)
    names = list(COLOURS)
    for i in range(recipe.images):
        n = int(rng.integers(1, MAX_OBJECTS + 1))
        spec = SceneSpec(tuple(ObjSpec(str(rng.choice(SHAPES)), str(rng.choice(names))) for _ in range(n)))
        for o in spec.objects:
            counts[i, SHAPES.index(o.shape)] += 1
            colours[i, names.index(o.colour)] = 1
        imgs[i] = np.asarray(render_scene(sample_scene(spec, rng), INPUT))
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    return x, torch.from_numpy(counts), torch.from_numpy(colours)


def train_extractor(recipe: Recipe = Recipe()) -> SceneNet:
    """Deterministic training: seeded data, init and batch order, and one thread, so reductions run
    in the same order on every machine (and tiny convs are faster on one thread anyway)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(recipe)
    finally:
        torch.set_num_threads(threads)


def _train(recipe: Recipe) -> SceneNet:
    torch.manual_seed(recipe.seed)
    x, counts, colours = _data(recipe)
    net = SceneNet(recipe.width, recipe.features)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=recipe.steps)
    gen = torch.Generator().manual_seed(recipe.seed)
    net.train()
    for _ in range(recipe.steps):
        idx = torch.randint(len(x), (recipe.batch,), generator=gen)
        # Mild pixel noise on half the batch: features should describe the scene, not be swamped
        # by the slight noise every generator leaves (FID still grows with noise beyond it).
        sigma = recipe.noise * torch.rand(recipe.batch, 1, 1, 1, generator=gen)
        sigma *= torch.rand(recipe.batch, 1, 1, 1, generator=gen) < 0.5
        xb = x[idx]
        h = net(xb + sigma * torch.randn(xb.shape, generator=gen))
        logits = net.counts(h).view(-1, MAX_OBJECTS + 1)
        loss = F.cross_entropy(logits, counts[idx].view(-1)) + F.binary_cross_entropy_with_logits(
            net.colours(h), colours[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or os.environ.get("LIGHTGEN_BENCH_CACHE") or Path.home() / ".cache" / "lightgen-bench")


def load_extractor(cache_dir: str | os.PathLike | None = None, recipe: Recipe = Recipe()) -> SceneNet:
    """The trained extractor in eval mode (trained and cached on first use). `name` identifies it."""
    path = cache_root(cache_dir) / f"testbed_extractor_{recipe.key()}.safetensors"
    if path.exists():
        try:
            net = SceneNet(recipe.width, recipe.features)
            net.load_state_dict(load_file(path))
            return _named(net, recipe)
        except (RuntimeError, SafetensorError) as e:
            warnings.warn(f"{path}: unreadable ({e}); retraining the testbed extractor", stacklevel=2)
    net = train_extractor(recipe)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp)
    os.replace(tmp, path)
    return _named(net, recipe)


def _named(net: SceneNet, recipe: Recipe) -> SceneNet:
    net.name = f"testbed-scenenet-{recipe.key()}"
    return net.eval().requires_grad_(False)

