"""`lightgen-bench perf`: benchmark a workload beside the official code or our reference path."""
from __future__ import annotations

import json

import click

from bench.cli.group import NON_NEGATIVE, POSITIVE, main, threads_option


@main.command(epilog="""\b
Examples:
  lightgen-bench perf --preset testbed --what sample --batch 64 --steps 16
  lightgen-bench perf --preset testbed --what train --batch 64 --output results/perf/cpu_train.json
  lightgen-bench perf --preset lightgen-0.7b --what train --batch 64 --resolution 256 --device cuda
  lightgen-bench perf --what fid
  lightgen-bench perf --official ../LightGen --set pos_grid=16 --set clip_sample=null --threads 1
""")
@click.option("--preset", default="testbed", show_default=True)
@click.option("--what", type=click.Choice(["train", "sample", "fid"]), default="sample", show_default=True)
@click.option("--batch", type=POSITIVE, default=32, show_default=True, help="Images per step / per sampling call.")
@click.option("--resolution", type=POSITIVE, default=None, help="Pixels (default: the preset's).")
@click.option("--steps", type=POSITIVE, default=64, show_default=True, help="AR steps (sample).")
@click.option("--guidance-scale", type=NON_NEGATIVE, default=4.0, show_default=True, help="Guidance scale (sample).")
@click.option("--iters", type=POSITIVE, default=3, show_default=True, help="Timed repetitions (median reported).")
@click.option("--reference/--no-reference", default=True, show_default=True,
              help="Also time the unoptimised reference path and print the ratio.")
@click.option("--official", type=click.Path(file_okay=False), default=None,
              help="A checkout of the official LightGen code: time its FLUID class (same weights, inputs and "
                   "batch) instead of our reference path. Needs a config with pos_grid 16 and clip_sample null.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Model config override.")
@click.option("--output", "out", type=click.Path(dir_okay=False), default=None, help="Write the JSON record here.")
@click.option("--note", default=None, help="Free text kept in the record (e.g. how busy the machine was).")
@threads_option
@click.pass_obj
def perf(command_line, preset, what, batch, resolution, steps, guidance_scale, iters, reference, official, device,
         overrides, out, note):
    """Images/s, step time, peak memory (and FLOPs / MFU on a GPU), ours vs a baseline, interleaved; with one
    thread on a CPU the clock is process CPU time."""
    from bench.config import parse_overrides
    from bench.perf import run_perf

    record = run_perf(preset, what, batch, resolution, device, iters=iters, steps=steps,
                      guidance_scale=guidance_scale, reference=reference, out=out,
                      overrides=parse_overrides(overrides), official=official, command=" ".join(command_line),
                      note=note)
    click.echo(json.dumps(record["results"], indent=2))
    if "speedup" in record["results"]:
        click.echo(f"speedup vs {record['baseline']} ({record['clock']} time): {record['results']['speedup']:.2f}x")
