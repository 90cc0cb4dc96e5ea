"""The `lightgen-bench` click group, on which every command module registers its commands.

Exit codes: 0 ok, 1 failure, 2 bad input (click usage errors and `InputError`). The context's `obj` is
the command line as typed (or as passed to `main` in-process); commands that write a run record pass it on.
"""
from __future__ import annotations

import functools
import math
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
        except (InputError, OSError, UnicodeDecodeError) as e:
            message = input_error(e)
            if message is None:
                raise
            click.echo(f"Error: {message}", err=True)
            sys.exit(2)


def input_error(e: Exception) -> str | None:
    """The one line for a bad input: an InputError's message; a file the user named that cannot be read or
    written (missing, a directory, no permission, read-only disk: the OS error names the path); undecodable
    text. None for anything else (a bug: its traceback is kept)."""
    if isinstance(e, InputError):
        return str(e)
    if isinstance(e, UnicodeDecodeError):
        return f"expected UTF-8 text ({e.reason} at byte {e.start})"
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}" + (f" -> {e.filename2}" if e.filename2 else "")
    return None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lightgen-bench")
def main() -> None:
    """LightGen reference model + benchmark harness (GenEval, FID, ablations).

    Every command runs on the embedded testbed world by default, on a CPU.
    """


class FiniteFloat(click.FloatRange):
    """A float range that also refuses nan and ±inf (which compare False with any bound)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return value


POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = FiniteFloat(min=0)
POSITIVE_FLOAT = FiniteFloat(min=0, min_open=True)


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
