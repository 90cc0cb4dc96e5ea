"""Testbed commands (render, dataset, prompts, grid) and the generic `distill` command."""
from __future__ import annotations


import click

from bench.cli.group import POSITIVE, main, threads_option


@main.group(epilog="""\b
Examples:
  lightgen-bench testbed render "two red circles" out.png
  lightgen-bench testbed dataset --n 5000 --diversity 200 --resolution 32 --out data/testbed-5k
""")
def testbed() -> None:
    """The testbed world: a procedural teacher, its caption grammar and evaluation prompts."""


@testbed.command(epilog="""\b
Examples:
  lightgen-bench testbed render "two red circles" out.png
  lightgen-bench testbed render "a photo of a blue square left of a triangle" out.png --resolution 64 --seed 3
""")
@click.argument("caption")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--resolution", type=POSITIVE, default=32, show_default=True, help="Image side in pixels (>= 32).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Layout and unstated colours.")
def render(caption, out, resolution, seed):
    """Render one caption of the testbed grammar to a PNG."""
    from bench.testbed.teacher import render as render_caption
    from lightgen.files import atomic_path, check_output_file

    check_output_file(out, "OUT")
    image = render_caption(caption, resolution, seed)
    with atomic_path(out) as tmp:
        image.save(tmp, format="PNG")
    click.echo(f"wrote {out}")


@testbed.command(epilog="""\b
Examples:
  lightgen-bench testbed dataset --n 5000 --diversity 200 --resolution 32 --out data/testbed-5k
  lightgen-bench testbed dataset --n 5000 --diversity 5000 --out data/testbed-5k-div5k --seed 1
""")
@click.option("--n", "n", type=POSITIVE, default=5000, show_default=True, help="Images (volume).")
@click.option("--diversity", type=POSITIVE, default=200, show_default=True, help="Distinct captions they are drawn from.")
@click.option("--resolution", type=POSITIVE, default=32, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Caption pool, caption order and per-image seeds.")
@click.option("--batch-size", type=POSITIVE, default=256, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@threads_option
def dataset(n, diversity, resolution, seed, batch_size, out):
    """Distil a text-to-image-2M style dataset from the testbed teacher (resumable)."""
    from bench.testbed.captions import sample_captions
    from bench.testbed.teacher import TestbedTeacher
    from lightgen.distill import distill

    teacher = TestbedTeacher(resolution)
    captions = sample_captions(n, diversity, seed)
    distill(teacher, captions, out, seed=seed, batch_size=batch_size, extra={"diversity": diversity})
    click.echo(f"wrote {n} images ({diversity} distinct captions) to {out}")


@testbed.command(epilog="""\b
Examples:
  lightgen-bench testbed prompts   # runs/testbed/geneval_testbed.jsonl; diff it with the committed one
  lightgen-bench testbed prompts --out eval_configs/testbed/geneval_testbed.jsonl   # refresh it deliberately
""")
@click.option("--out", type=click.Path(dir_okay=False), default="runs/testbed/geneval_testbed.jsonl", show_default=True,
              help="Output .jsonl (the committed one is eval_configs/testbed/geneval_testbed.jsonl).")
def prompts(out):
    """Regenerate the testbed's GenEval prompts (official metadata schema)."""
    from bench.testbed.prompts import write_prompts
    from lightgen.files import check_output_file

    path = write_prompts(check_output_file(out, "--out"))
    click.echo(f"wrote {sum(1 for _ in path.open())} prompts to {path}")


@testbed.command(epilog="""\b
Examples:
  lightgen-bench testbed grid   # runs/testbed/teacher_grid.png
  lightgen-bench testbed grid --out results/testbed/teacher_grid.png   # refresh the committed one deliberately
""")
@click.option("--out", type=click.Path(dir_okay=False), default="runs/testbed/teacher_grid.png", show_default=True,
              help="Output PNG (the committed one is results/testbed/teacher_grid.png).")
@click.option("--resolution", type=POSITIVE, default=32, show_default=True)
def grid(out, resolution):
    """Regenerate the grid of teacher renders, one row per GenEval tag."""
    from bench.testbed.grid import teacher_grid
    from lightgen.files import atomic_path, check_output_file

    path = check_output_file(out, "--out")
    image = teacher_grid(resolution)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    click.echo(f"wrote {path}")


@main.command(epilog="""\b
Examples:
  lightgen-bench distill --teacher testbed --captions captions.txt --out data/distilled --n 10000
  lightgen-bench distill --teacher stabilityai/sdxl-turbo --captions captions.txt --out data/sdxl \\
      --resolution 512 --steps 4
""")
@click.option("--teacher", required=True, help="'testbed', or a diffusers pipeline id or local path.")
@click.option("--captions", required=True, type=click.Path(dir_okay=False),
              help="Text file, one caption per line (cycled when --n exceeds it).")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--n", "n", type=POSITIVE, default=None, help="Images (default: one per caption).")
@click.option("--resolution", type=POSITIVE, default=None, help="Image side (default: 32 for testbed, else the pipeline's).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Per-image seeds derive from (seed, index).")
@click.option("--steps", type=POSITIVE, default=None, help="Diffusers: num_inference_steps.")
@click.option("--batch-size", type=POSITIVE, default=16, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="Diffusers: torch device.")
@threads_option
def distill(teacher, captions, out, n, resolution, seed, steps, batch_size, device):
    """Render captions with a teacher into the text-to-image-2M layout (resumable)."""
    from lightgen.distill import SeededPipeline, distill as run, read_captions

    if teacher == "testbed":
        from bench.testbed.teacher import TestbedTeacher
        model = TestbedTeacher(resolution or 32)
    else:
        kwargs = {k: v for k, v in dict(height=resolution, width=resolution, num_inference_steps=steps).items()
                  if v is not None}
        model = SeededPipeline(teacher, device=device, **kwargs)
    run(model, read_captions(captions), out, n=n, seed=seed, batch_size=batch_size)
    click.echo(f"wrote {out}")
