"""The `lightgen-bench` click group: a thin layer over importable functions.

Exit codes: 0 ok, 1 failure, 2 bad input (click usage errors and `InputError`).
"""
from __future__ import annotations

import sys

import click

from lightgen.errors import InputError


class _Group(click.Group):
    invocation: list[str] = []  # the raw arguments, recorded in every result file

    def main(self, args=None, *a, **kw):
        _Group.invocation = list(sys.argv[1:] if args is None else args)
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


# Command modules register themselves on `main` when imported.
from bench.cli import model  # noqa: E402,F401
from bench.cli import train  # noqa: E402,F401
from bench.cli import perf  # noqa: E402,F401
from bench.cli import experiments  # noqa: E402,F401
from bench.cli import geneval  # noqa: E402,F401
from bench.cli import testbed  # noqa: E402,F401
from bench.cli import table  # noqa: E402,F401
