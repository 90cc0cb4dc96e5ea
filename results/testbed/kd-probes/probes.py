"""Why KD stalls on the testbed: three probes of the trunk's use of context (README, "Why KD stalls").

Run from the repo root (each KD probe distils its own 16,000 renders, the demo's data for seed 0):

    python results/testbed/kd-probes/probes.py sincos   # MAE's 2-D sin-cos table as the position init
    python results/testbed/kd-probes/probes.py grid     # a token-aligned world (box edges on the 4-px grid)
    python results/testbed/kd-probes/probes.py copy     # flat one-colour images: how soon is context used?

Each appends one JSON line (scores, probe, config, versions, commit) to results.jsonl beside this file.
These are diagnostics, not product features, so they patch the library from the outside.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from bench.experiment import DataSpec, EvalSpec, cached, distilled, evaluate, run_record, run_training, train_config
from bench.testbed.world import MARGIN, sample_scene
from lightgen.config import LightGenConfig
from lightgen.mar import LightGen
from lightgen.probe import probe, probe_pipeline
from lightgen.train import param_groups

HERE = Path(__file__).resolve().parent
DATA = DataSpec(n=16000)  # the demo's data
STEPS, CFGS = 500, (4.0, 1.0)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table (1, grid², dim): half the channels encode the row, half the column."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    axis = torch.arange(grid, dtype=torch.float64)[:, None] * omega
    axis = torch.cat([axis.sin(), axis.cos()], dim=1)
    rows, cols = axis[:, None].expand(grid, grid, -1), axis[None].expand(grid, grid, -1)
    return torch.cat([rows, cols], dim=-1).reshape(1, grid * grid, dim).float()


def use_sincos_init() -> None:
    original = LightGen._init_weights

    def init(self):
        original(self)
        table = sincos_2d(self.config.pos_grid, self.config.width)
        for p in (self.encoder_pos_embed_learned, self.decoder_pos_embed_learned, self.last_pos_embed_learned):
            p.data.copy_(table)
    LightGen._init_weights = init


class TokenGridRng:
    """Wraps the world's rng so `world.sample_scene` (its rejection sampling unchanged) draws box sides and
    edges on the 4-px token grid of a 32-px image: a scalar `uniform(lo, hi)` is a side, a pair is a centre."""

    def __init__(self, rng):
        self.rng, self.unit = rng, 4 / 32

    def choice(self, *args, **kwargs):
        return self.rng.choice(*args, **kwargs)

    def uniform(self, low, high, size=None):
        u = self.unit
        if size is None:  # a side: a multiple of the token size in [low - 1.5 px, high] (two objects: 8 or 12 px)
            return u * self.rng.integers(math.ceil((low - 1.5 / 32) / u), math.floor(high / u + 1e-9) + 1)
        half = low - MARGIN  # a centre: edges (centre - side/2) on the grid, inside the margins
        edges = self.rng.integers(math.ceil(MARGIN / u - 1e-9), math.floor((high - half) / u + 1e-9) + 1, size)
        return edges * u + half


def use_token_aligned_world() -> None:
    import bench.testbed.teacher as teacher

    teacher.sample_scene = lambda spec, rng: sample_scene(spec, TokenGridRng(rng))


def kd_probe(name: str, data: Path) -> dict:
    """500 KD steps at the committed KD config, then the probe and testbed GenEval at CFG 4 and 1."""
    cfg = train_config("eval_configs/train/testbed_kd.yaml", {"steps": STEPS}, out=f"runs/kd-probes/{name}")
    cfg.cache = str(cached(data, cfg))
    pipe = run_training(cfg)
    out = {"probe": probe_pipeline(pipe, cfg.cache, completion_images=48)}
    for c in CFGS:
        s = evaluate(pipe, Path(f"runs/kd-probes/{name}/eval-cfg{c:g}"), EvalSpec(steps=32, cfg=c, fid=False))
        out[f"cfg{c:g}"] = {"overall": s["overall"], **{t: v["score"] for t, v in s["tasks"].items()}}
    return out


def copy_task(lr: float, head_lr: float, steps: int = 300, every: int = 25, seed: int = 0) -> dict:
    """Images of one random flat colour under a constant caption: context is the only information, so the
    context gain measures how soon the trunk learns to read the visible tokens at all."""
    torch.manual_seed(seed)
    model = LightGen(LightGenConfig.from_preset("testbed"))
    groups = param_groups(model, weight_decay=0.02, head_lr_scale=head_lr / lr)  # the trainer's split
    for group in groups:
        group["lr"] = lr * group.pop("lr_scale")
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.95))
    text = torch.randn(1, model.config.max_length, model.config.caption_channels)

    def batch(n: int) -> torch.Tensor:
        return (torch.rand(n, 3, 1, 1) * 2 - 1).expand(n, 3, 32, 32).contiguous()

    curve = []
    for step in range(steps + 1):
        if step % every == 0:
            p = probe(model, batch(128), text.expand(128, -1, -1))
            curve.append({"step": step, "loss": p.loss, "context_gain": p.context_gain})
            print(curve[-1], flush=True)
        if step < steps:
            loss = model(batch(64), text.expand(64, -1, -1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
            opt.step()
    return {"lr": lr, "head_lr": head_lr, "curve": curve}


def main(kind: str) -> None:
    started = time.perf_counter()
    if kind == "sincos":
        use_sincos_init()
        result = kd_probe("sincos", distilled(Path("runs/kd-probes"), DATA))
    elif kind == "grid":
        use_token_aligned_world()
        result = kd_probe("grid", distilled(Path("runs/kd-probes/grid-world"), DATA))
    elif kind == "copy":
        result = {"runs": [copy_task(2e-4, 4e-3), copy_task(1e-3, 4e-3)]}
    else:
        raise SystemExit(f"probe: expected sincos, grid or copy, got {kind!r}")
    record = {"kind": kind, **result, **run_record(["python", *sys.argv], {"kind": kind, "steps": STEPS}, started)}
    with open(HERE / "results.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
