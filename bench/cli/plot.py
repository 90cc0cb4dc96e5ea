"""`lightgen-bench plot DIR`: redraw a results folder's plots from its committed records (nothing is rerun)."""
from __future__ import annotations

from pathlib import Path

import click

from bench.cli.group import main


@main.command(epilog="""\b
Examples:
  lightgen-bench plot results/testbed/steps   # an ablation: plot.png, probe.png from points/
  lightgen-bench plot results/testbed/kd-probes          # probe-kd curves: curves.png from results.jsonl
  lightgen-bench plot results/testbed/data-scale   # ablation folders of one kind inside: one plot of all
""")
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
def plot(folders):
    """Redraw plots from the records a run left (an ablation's run.json and points/*/summary.json, or
    probe-kd's results.jsonl), e.g. after a change of the plotting code, without retraining."""
    from bench import ablate, kd_probes

    for folder in map(Path, folders):
        paths = kd_probes.replot(folder) if (folder / "results.jsonl").is_file() else ablate.replot(folder)
        for path in paths:
            click.echo(f"wrote {path}")
