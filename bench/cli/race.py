"""`lightgen-bench race`: students' learning curves against training CPU time (bench.race)."""
from __future__ import annotations

from pathlib import Path

import click

from bench.cli.group import main


@main.command(epilog="""\b
Examples (each student a `steps` ablation, one thread each, on the same box; then the picture):
  lightgen-bench ablate steps --config eval_configs/ablations/race-unet.yaml --work runs/race --threads 1 \\
      --output results/testbed/race/unet
  lightgen-bench ablate steps --config eval_configs/ablations/race-lightgen.yaml --work runs/race-lightgen \\
      --threads 1 --output results/testbed/race/lightgen
  lightgen-bench race results/testbed/race/lightgen results/testbed/race/unet --name LightGen --name UNet \\
      --output results/testbed/race
""")
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", "names", multiple=True, help="One display name per folder (default: folder names).")
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where race.png, table.{md,csv} and run.json go.")
@click.pass_obj
def race(command_line, folders, names, output):
    """Overall and every GenEval tag against training CPU minutes, one curve per student, with 95 % CIs; prints
    where the first student's overall curve reaches each other's."""
    import json

    from bench.race import race as run_race
    from lightgen.errors import InputError

    if names and len(names) != len(folders):
        raise InputError(f"--name: expected one per folder ({len(folders)}), got {len(names)}")
    result = run_race(list(folders), list(names or [f.name for f in folders]), output, command_line)
    click.echo((output / "table.md").read_text())
    click.echo(json.dumps(result, indent=2))


@main.command(epilog="""\b
Examples:
  lightgen-bench forced --ckpt runs/race-lightgen/train/r32/pipeline --keep 0.5 --outdir runs/forced
""")
@click.option("--ckpt", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A LightGen pipeline directory.")
@click.option("--keep", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.5, show_default=True,
              help="Fraction of the teacher's tokens kept (the rest regenerated).")
@click.option("--outdir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--steps", type=click.IntRange(min=1), default=32, show_default=True, help="AR steps.")
@click.option("--guidance-scale", type=click.FloatRange(min=0.0), default=1.0, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evenly spaced testbed prompts (default all).")
@click.pass_obj
def forced(command_line, ckpt, keep, outdir, steps, guidance_scale, limit):
    """Teacher-forced completions: testbed GenEval of the model filling in a teacher render with `keep` of its
    tokens kept, beside the control that paints the same tokens with the background."""
    import json

    import time

    from bench.forced import forced_scores
    from bench.provenance import run_record
    from lightgen.files import write_text

    started = time.perf_counter()
    result = forced_scores(ckpt, outdir, keep, steps, guidance_scale, limit)
    config = {"ckpt": str(ckpt), "keep": keep, "steps": steps, "guidance_scale": guidance_scale, "limit": limit}
    write_text(outdir / f"forced-keep{keep:g}.json",
               json.dumps({**result, **run_record(command_line, config, started)}, indent=2))
    click.echo(json.dumps(result, indent=2))
