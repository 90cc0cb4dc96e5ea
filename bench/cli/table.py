"""`lightgen-bench table`: our GenEval summaries beside the paper's rows, as markdown, LaTeX or CSV."""
from __future__ import annotations

import time
from pathlib import Path

import click

from bench.cli.group import POSITIVE, main


@main.command(epilog="""\b
Examples:
  lightgen-bench table runs/geneval-demo --paper-table 1
  lightgen-bench table runs/kd/summary.json runs/dpo --name "ours (KD)" --name "ours (DPO)" \\
      --paper-table 2 --format latex --output table.tex
  lightgen-bench table results/testbed/data-scale --format csv   # one row per summary.json below
  lightgen-bench table --paper-table 3                             # the paper's rows alone
""")
@click.argument("results", nargs=-1, type=click.Path())
@click.option("--baselines", type=click.Path(dir_okay=False), default=None,
              help="Baseline rows, .yaml or .csv (default with --paper-table: the paper's, "
                   "eval_configs/baselines/paper_tables.yaml).")
@click.option("--paper-table", type=int, default=None,
              help="Only this table's baseline rows: 1 (256 px), 2 (512 px), 3 (quoted from other papers).")
@click.option("--name", "names", multiple=True, help="Row name per summary, in order (default: its folder name).")
@click.option("--format", "fmt", type=click.Choice(["md", "latex", "csv"]), default=None,
              help="Output format (default: from the --output suffix .md/.tex/.csv, else md).")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Write here (atomically), not stdout.")
def table(results, baselines, paper_table, names, fmt, output):
    """Paper-style GenEval table: per-tag scores and overall, best per column in bold, and a Source
    column (our detector, image size and image count, or the paper's table). Paper rows come first."""
    from bench.tables import FORMATS, PAPER_TABLES, build_table, load_baselines, load_results, render, write_table
    from lightgen.errors import InputError
    from lightgen.files import check_output_file

    if output:
        check_output_file(output, "--output")
        by_suffix = next((f for f, s in FORMATS.items() if s == Path(output).suffix), None)
        if fmt and by_suffix and fmt != by_suffix:
            raise InputError(f"--format {fmt}: {output} names a {by_suffix} file; drop --format or rename the file")
        if not (fmt or by_suffix):
            raise InputError(f"--output {output}: expected a .md, .tex or .csv name, or --format")

    rows = load_baselines(baselines or PAPER_TABLES, paper_table) if baselines or paper_table is not None else []
    rows += load_results(results, names)
    if not rows:
        raise InputError("RESULTS: expected summary.json files or directories, or --baselines / --paper-table")
    frame = build_table(rows)
    if output:
        click.echo(f"wrote {write_table(frame, output, fmt)}")
    else:
        click.echo(render(frame, fmt or "md"), nl=False)


@main.command(epilog="""\b
Examples:
  lightgen-bench compare runs/dpo-eval runs/kd-eval                 # does DPO beat KD on these prompts?
  lightgen-bench compare results/testbed/diversity/points/d36780 \\
      results/testbed/diversity/points/d30 --output d.json   # two committed ablation points
""")
@click.argument("a", type=click.Path(exists=True))
@click.argument("b", type=click.Path(exists=True))
@click.option("--resamples", type=POSITIVE, default=2000, show_default=True, help="Bootstrap replicates.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Bootstrap seed (same seed, same interval).")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Also write the comparison as JSON (with the command, versions and git commit).")
@click.pass_obj
def compare(command_line, a, b, resamples, seed, output):
    """Paired difference A − B of two GenEval results scored on the same prompts: per task and overall,
    with a 95 % bootstrap interval (the same prompt draw for both; seeds of multi-seed points drawn too)."""
    import json

    from bench.geneval.compare import compare as compare_results
    from bench.geneval.compare import format_comparison
    from bench.geneval.stats import Bootstrap
    from bench.provenance import run_record
    from lightgen.files import check_output_file, write_text

    if output:
        check_output_file(output, "--output")
    started = time.perf_counter()
    result = compare_results(a, b, Bootstrap(resamples=resamples, seed=seed))
    click.echo(format_comparison(result))
    if output:
        record = run_record(command_line, {"a": a, "b": b, "resamples": resamples, "seed": seed}, started)
        write_text(output, json.dumps({**result, "provenance": record}, indent=2) + "\n")
