"""Model commands: sample images, convert official checkpoints."""
from __future__ import annotations


import click

from bench.cli.group import NON_NEGATIVE, POSITIVE, POSITIVE_FLOAT, main, threads_option
from lightgen.errors import InputError


@main.command(epilog="""\b
Examples:
  lightgen-bench sample --preset testbed --prompt "two red circles" --out samples/
  lightgen-bench sample --ckpt runs/demo/dpo/pipeline --prompt "a blue square" -n 4 --seed 0 --out samples/
""")
@click.option("--ckpt", type=click.Path(exists=True, file_okay=False), help="LightGen pipeline directory.")
@click.option("--preset", default="testbed", show_default=True,
              help="Random-init model of this preset when no --ckpt is given (a smoke test of the sampler).")
@click.option("--prompt", "prompts", multiple=True, required=True, help="Prompt (repeatable).")
@click.option("-n", "--num-images", type=click.IntRange(min=1), default=1, show_default=True, help="Images per prompt.")
@click.option("--steps", type=POSITIVE, default=64, show_default=True, help="Autoregressive steps.")
@click.option("--guidance-scale", type=NON_NEGATIVE, default=4.0, show_default=True, help="Guidance scale (1 = off).")
@click.option("--cfg-schedule", type=click.Choice(["constant", "linear"]), default="constant", show_default=True)
@click.option("--temperature", type=POSITIVE_FLOAT, default=1.0, show_default=True)
@click.option("--resolution", type=POSITIVE, default=None, help="Image side in pixels (default: the model's).")
@click.option("--weights", type=click.Choice(["model", "model_ema"]), default=None,
              help="Weights to sample with (default: the directory's choice).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Image k of the run uses seed + k.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "--output", "out", type=click.Path(file_okay=False), required=True)
@threads_option
def sample(ckpt, preset, prompts, num_images, steps, guidance_scale, cfg_schedule, temperature, resolution, weights, seed,
           device, out):
    """Generate images from prompts and write them as PNGs."""
    from lightgen.pipeline import LightGenPipeline, build_text_encoder
    from lightgen.codecs import build_codec
    from lightgen.config import LightGenConfig
    from lightgen.mar import LightGen

    from lightgen.files import atomic_path, check_writable

    if not all(p.strip() for p in prompts):
        raise InputError("--prompt: expected a non-empty prompt")
    out = check_writable(out, "--out")
    if ckpt:
        pipe = LightGenPipeline.from_pretrained(ckpt, weights=weights, device=device)
    else:
        config = LightGenConfig.from_preset(preset)
        pipe = LightGenPipeline(LightGen(config), build_text_encoder(config), build_codec(config)).to(device)
    images = pipe(prompt=list(prompts), num_images_per_prompt=num_images, num_inference_steps=steps,
                  guidance_scale=guidance_scale, cfg_schedule=cfg_schedule, temperature=temperature, height=resolution,
                  width=resolution, seed=seed).images
    out.mkdir(parents=True, exist_ok=True)
    for k, im in enumerate(images):
        with atomic_path(out / f"{k:04d}.png") as tmp:
            im.save(tmp, format="PNG")
    click.echo(f"wrote {len(images)} images to {out}")


@main.command("convert-official", epilog="""\b
Example:
  lightgen-bench convert-official fluid_dpo/checkpoint-last.pth pipelines/lightgen-0.7b
""")
@click.argument("ckpt", type=click.Path(exists=True, dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--preset", default="lightgen-0.7b", show_default=True)
def convert_official_cmd(ckpt, out_dir, preset):
    """Convert an official LightGen checkpoint (.pth) into a pipeline directory.

    The pickle is read with weights_only=True and an allow-list; anything else is refused.
    """
    from lightgen.files import check_writable
    from lightgen.pipeline import convert_official

    out = check_writable(out_dir, "OUT_DIR")
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"OUT_DIR: {out} is not empty; convert into a new or empty folder")
    out = convert_official(ckpt, out_dir, preset)
    click.echo(f"converted {ckpt} -> {out}")
