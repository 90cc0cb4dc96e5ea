"""The `lightgen-bench` click group, on which every command module registers its commands.

Exit codes: 0 ok, 1 failure, 2 bad input (click usage errors and `InputError`). The context's `obj` is
the command line as typed (or as passed to `main` in-process); commands that write a run record pass it on.
"""
from __future__ import annotations

import functools
import sys

import click

from lightgen.errors import InputError


class _Group(click.Group):
    def main(self, args=None, *a, **kw):
        kw.setdefault("obj", ["lightgen-bench", *(sys.argv[1:] if args is None else args)])
        return super().main(args, *a, **kw)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except InputError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lightgen-bench")
def main() -> None:
    """LightGen reference model + benchmark harness (GenEval, FID, ablations).

    Every command runs on the embedded testbed world by default, on a CPU.
    """


def threads_option(command):
    """`--threads N` for a heavy command (`bench.threads.use_threads`: default the free cores), set before the
    command runs, so its run record (`torch_threads`) holds it."""
    @click.option("--threads", type=click.IntRange(min=1), default=None,
                  help="torch intra-op threads (default: the free cores, i.e. cores − 1-min load average, ≥ 1).")
    @functools.wraps(command)
    def wrapper(*args, threads, **kwargs):
        from bench.threads import use_threads
        use_threads(threads)
        return command(*args, **kwargs)
    return wrapper
