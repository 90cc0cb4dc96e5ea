"""The product a newcomer meets first: `demo` (the whole paper loop) and `ablate` (paper ablations)."""
from __future__ import annotations

from pathlib import Path

import click

from bench.cli.group import POSITIVE, main, threads_option


@main.command(epilog="""\b
Examples:
  lightgen-bench demo                      # the whole loop on CPU cores: runs/demo/results/
  lightgen-bench demo --quick              # a smoke version of the same loop: runs/demo-quick/results/
  lightgen-bench demo --output results/demo   # refresh the committed results deliberately
""")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Demo config (default: eval_configs/demo.yaml).")
@click.option("--quick", is_flag=True, help="Tiny sizes: a smoke run of every step.")
@click.option("--output", default=None, help="Results folder (default: WORK/results; the committed one is results/demo).")
@click.option("--work", default=None, help="Data, caches, checkpoints (default: runs/demo[-quick]).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@threads_option
@click.pass_obj
def demo(command_line, config_path, quick, output, work, seed):
    """Distil → KD → DPO → GenEval + FID → paper-style table, on the testbed. Resumable."""
    import json

    from bench.demo import load_demo_config, run_demo

    work = Path(work or ("runs/demo-quick" if quick else "runs/demo"))
    output = Path(output or work / "results")
    from bench.provenance import environment

    summary = run_demo(load_demo_config(config_path, quick), output, work, seed, command_line)
    click.echo((output / "table.md").read_text())
    click.echo(json.dumps(summary["runs"], indent=2))
    env = environment()
    click.echo(f"machine: {env['cpu']}; precision: {env['auto_precision']} (what 'auto' runs as on this CPU); "
               f"torch threads: {env['torch_threads']}")
    click.echo(f"wall time {summary['wall_s'] / 60:.1f} min; results in {output}")


@main.command(epilog="""\b
Examples:
  lightgen-bench ablate data-scale --config eval_configs/ablations/data-scale.yaml
  lightgen-bench ablate diversity --config eval_configs/ablations/diversity.yaml --dry-run
  lightgen-bench ablate steps --config eval_configs/ablations/steps.yaml --launcher accelerate
  lightgen-bench ablate steps --config eval_configs/ablations/steps-unet.yaml --threads 1   # the UNet student
  lightgen-bench ablate guidance --threads 1
""")
@click.argument("kind", type=click.Choice(["data-scale", "diversity", "steps", "resolution", "dpo", "guidance"]))
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Ablation config (default: eval_configs/ablations/KIND.yaml).")
@click.option("--output", default=None, help="Results folder (default: WORK/results; the committed one is "
              "results/testbed/<kind>).")
@click.option("--work", default=None, help="Data, caches, checkpoints (default: runs/ablate/<config name>).")
@click.option("--dry-run", is_flag=True, help="Print the plan and an estimated time, run nothing.")
@click.option("--launcher", type=click.Choice(["local", "accelerate"]), default="local", show_default=True,
              help="'accelerate': each training runs under `accelerate launch` (several processes/GPUs).")
@threads_option
@click.pass_obj
def ablate(command_line, kind, config_path, output, work, dry_run, launcher):
    """Run an ablation grid; finished points are skipped on rerun."""
    from bench.ablate import AblationConfig, describe, measured_step_seconds, run_ablation

    root = Path(__file__).resolve().parents[2]
    config_path = Path(config_path or root / "eval_configs" / "ablations" / f"{kind}.yaml")
    ab = AblationConfig.load(config_path, kind)
    work = Path(work or f"runs/ablate/{config_path.stem}")
    if dry_run:
        click.echo(describe(ab, work, measured_step_seconds(ab)))
        return
    output = Path(output or work / "results")
    result = run_ablation(ab, output, work, command_line, None if launcher == "local" else launcher)
    click.echo((output / "table.md").read_text())
    for p in result["points"]:
        click.echo(f"{p['label']:>24}: overall {p['overall']:.3f}")


@main.command("probe-kd", epilog="""\b
Examples:
  lightgen-bench probe-kd sincos --threads 1   # MAE's 2-D sin-cos table as the position init
  lightgen-bench probe-kd grid --threads 1     # a token-aligned world (box edges on the 4-px grid)
  lightgen-bench probe-kd copy                 # flat one-colour images: how soon is context used?
  lightgen-bench probe-kd curve --name eps --set model.prediction=epsilon --threads 1   # a recipe's curve
""")
@click.argument("kind", type=click.Choice(["curve", "sincos", "grid", "copy"]))
@click.option("--work", default="runs/kd-probes", show_default=True, help="Data, caches, checkpoints.")
@click.option("--output", default=None, help="Records file (default: WORK/results.jsonl; the committed one is "
              "results/testbed/kd-probes/results.jsonl).")
@click.option("--name", default="kd", show_default=True, help="curve: the recipe's name (its run folder).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="curve: override a KD config key (model.FIELD for the model).")
@click.option("--steps", type=POSITIVE, default=1000, show_default=True, help="curve: KD steps.")
@click.option("--every", type=POSITIVE, default=250, show_default=True, help="curve: snapshot interval.")
@click.option("--limit", type=POSITIVE, default=120, show_default=True, help="curve: testbed prompts per snapshot.")
@threads_option
@click.pass_obj
def probe_kd(command_line, kind, work, output, name, overrides, steps, every, limit):
    """Why KD stalls on the testbed: probes of the trunk's use of context (about 15 min each on 1 CPU
    thread; a curve longer); appends its record to the results file."""
    import json

    from bench.config import parse_overrides
    from bench.kd_probes import run_probe

    curve = dict(name=name, overrides=parse_overrides(overrides), steps=steps, every=every, limit=limit)
    record = run_probe(kind, Path(work), Path(output or Path(work) / "results.jsonl"), command_line, curve)
    click.echo(json.dumps({k: v for k, v in record.items() if k not in ("versions", "config")}, indent=2))
