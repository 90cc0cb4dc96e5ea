"""The `lightgen-bench` command line: a thin layer over importable functions (group in `bench.cli.group`)."""
from bench.cli import experiments, geneval, model, perf, plot, race, table, testbed, train  # noqa: F401  (register commands)
from bench.cli.group import main

__all__ = ["main"]
