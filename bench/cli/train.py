"""Training commands: feature cache, KD pretraining, DPO pairs and Diffusion-DPO."""
from __future__ import annotations

import click

from bench.cli.group import NON_NEGATIVE, POSITIVE, FiniteFloat, main, threads_option
from bench.config import load_train_config
from lightgen.errors import InputError


_SET = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key.")


@main.command(epilog="""\b
Example:
  lightgen-bench cache data/testbed-5k --out data/testbed-5k.cache --config eval_configs/train/testbed_kd.yaml
""")
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "--output", "out", required=True, type=click.Path(file_okay=False))
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Training config whose preset/model the cache is for.")
@_SET
@click.option("--device", default="cpu", show_default=True)
@threads_option
def cache(data, out, config_path, overrides, device):
    """Precompute codec moments (+ flipped copy) and text states of a text-to-image dataset."""
    from lightgen.cache import build_cache
    from lightgen.codecs import build_codec
    from lightgen.distill import T2IFolder
    from lightgen.pipeline import build_text_encoder

    cfg = load_train_config(config_path, overrides)
    config = cfg.model_config()
    resolution = cfg.resolution or config.resolution
    path = build_cache(T2IFolder(data), out, config, build_codec(config).to(device),
                       build_text_encoder(config).to(device), resolution, source=str(data))
    click.echo(f"cache ready: {path}")


def _train(config_path, overrides, resume):
    from lightgen.train import train

    cfg = load_train_config(config_path, overrides)
    final = train(cfg, resume=None if resume == "none" else resume)
    click.echo(f"pipeline written to {final}")


_RESUME = click.option("--resume", default="auto", show_default=True,
                       help="'auto' (latest good checkpoint in OUT/checkpoints), a checkpoint directory, or 'none'.")


@main.command("train", epilog="""\b
Examples (the cache from `lightgen-bench cache`, see its --help):
  lightgen-bench train --config eval_configs/train/testbed_kd.yaml --set cache=data/t2i.cache
  lightgen-bench train --config eval_configs/train/testbed_kd.yaml --set cache=data/t2i.cache --set steps=200 \\
      --set out=runs/short
  accelerate launch --num_processes 2 -m bench.cli train --config eval_configs/train/testbed_kd.yaml \\
      --set cache=data/t2i.cache
""")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False))
@_SET
@_RESUME
@threads_option
def train_cmd(config_path, overrides, resume):
    """Knowledge-distillation pretraining on a feature cache (resumable)."""
    _train(config_path, overrides, resume)


@main.command("dpo", epilog="""\b
Example (winner and loser caches from `dpo-pairs` and `cache`, the reference from `train`):
  lightgen-bench dpo --config eval_configs/train/testbed_dpo.yaml --set init_from=runs/kd/pipeline \\
      --set cache=data/pairs/winner.cache --set loser_cache=data/pairs/loser.cache
""")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False))
@_SET
@_RESUME
@threads_option
def dpo_cmd(config_path, overrides, resume):
    """Diffusion-DPO from a pipeline (the frozen reference) on winner/loser caches (resumable)."""
    if load_train_config(config_path, overrides).objective != "dpo":
        raise InputError(f"{config_path}: objective: expected 'dpo' for `lightgen-bench dpo`")
    _train(config_path, overrides, resume)


@main.command("dpo-pairs", epilog="""\b
Examples:
  lightgen-bench dpo-pairs --ckpt runs/kd/pipeline --teacher testbed --captions captions.txt --out data/pairs
  lightgen-bench dpo-pairs --ckpt pipelines/lightgen-0.7b --reference data/laion-aesthetic --out data/pairs
""")
@click.option("--ckpt", required=True, type=click.Path(exists=True, file_okay=False), help="Current model.")
@click.option("--teacher", default=None, help="'testbed' or a diffusers id/path: renders the winners.")
@click.option("--captions", type=click.Path(exists=True, dir_okay=False), help="One caption per line (with --teacher).")
@click.option("--reference", type=click.Path(exists=True, file_okay=False),
              help="A text-to-image dataset whose images are the winners (official builder).")
@click.option("--out", "--output", "out", required=True, type=click.Path(file_okay=False))
@click.option("--n", type=POSITIVE, default=None, help="Number of pairs (default: all captions).")
@click.option("--steps", type=POSITIVE, default=64, show_default=True)
@click.option("--guidance-scale", type=NON_NEGATIVE, default=4.0, show_default=True,
              help="Guidance scale of the losers' samples.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@threads_option
def dpo_pairs(ckpt, teacher, captions, reference, out, n, steps, guidance_scale, seed, device):
    """Preference pairs: winner = reference/teacher image, loser = the model's own sample."""
    from lightgen.distill import read_captions
    from lightgen.dpo import build_pairs

    if (teacher is None) == (reference is None):
        raise InputError("dpo-pairs: give exactly one of --teacher (with --captions) or --reference")
    if teacher and not captions:
        raise InputError("dpo-pairs: --teacher needs --captions")
    winners = reference or _teacher(teacher, ckpt)
    caption_list = None if reference else read_captions(captions)
    path = build_pairs(ckpt, out, winners=winners, captions=caption_list, n=n, seed=seed, steps=steps,
                       guidance_scale=guidance_scale,
                       device=device)
    click.echo(f"pairs written to {path} (winner/ and loser/)")


@main.command(epilog="""\b
Example:
  lightgen-bench probe runs/demo/kd/pipeline --cache runs/demo/data-n16000-d36780-r32-s0.cache-a3d2b926e6
  lightgen-bench probe runs/demo/kd/pipeline --cache runs/demo/data-n16000-d36780-r32-s0.cache-a3d2b926e6 --completion 48
""")
@click.argument("ckpt", type=click.Path(exists=True, file_okay=False))
@click.option("--cache", required=True, type=click.Path(exists=True, file_okay=False),
              help="Feature cache of the model's training data.")
@click.option("--n", type=POSITIVE, default=256, show_default=True, help="Images probed.")
@click.option("--masked", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=0.5, show_default=True,
              help="Fraction of tokens masked.")
@click.option("--weights", type=click.Choice(["model", "model_ema"]), default=None)
@click.option("--completion", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also regenerate the right half of this many of the probed images (evenly spaced) from their "
                   "own / another image's left half (ratio of errors ~1: sampling ignores what is already drawn). "
                   "0 = off.")
@threads_option
def probe(ckpt, cache, n, masked, weights, completion):
    """How much the model uses the visible tokens (context) and the caption (text): loss increase
    when each is replaced. A context gain near 0 means tokens are sampled independently."""
    import json

    from lightgen.probe import probe_pipeline

    click.echo(json.dumps(probe_pipeline(ckpt, cache, n, masked, weights, completion_images=completion), indent=2))


def _teacher(name: str, ckpt: str):
    """Winner renderer at the model's resolution."""
    if name == "testbed":
        from bench.testbed.teacher import TestbedTeacher
        from lightgen.dpo import model_resolution
        return TestbedTeacher(resolution=model_resolution(ckpt))
    from lightgen.distill import SeededPipeline
    return SeededPipeline(name)
