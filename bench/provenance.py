"""What every result file records about how it was made: the command, package versions, git commit, wall and CPU
time."""
from __future__ import annotations

import platform
import resource
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("lightgen-bench", "torch", "torchvision", "transformers", "open_clip_torch", "numpy", "pillow",
            "opencv-python-headless", "mmdet", "mmcv")
REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str | None:
    """HEAD, with `+dirty` when tracked files differ from it outside `results/`, or when code under
    `results/` (a `.py`, tracked or not) does: a run that rewrites its own committed results is still a
    run of that commit, a run of edited code is not."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD") or None
        if commit and (git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
                       or git("status", "--porcelain", "--untracked-files=all", "--", ":(glob)results/**/*.py")):
            commit += "+dirty"
    except (OSError, subprocess.SubprocessError):
        commit = None
    return commit


def environment() -> dict:
    """Installed versions of the packages that shape results, the git commit and torch's thread count (which
    shapes timings and float sums)."""
    import torch

    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = version(p)
        except PackageNotFoundError:
            pass
    return {"versions": versions, "git_commit": git_commit(), "torch_threads": torch.get_num_threads()}


def run_record(command: list[str], config: dict, started: float) -> dict:
    """A results folder's `run.json`: the command line, config, versions, git commit, wall and CPU time (the
    CPU time says what a run costs on a shared machine, where its wall time depends on the other jobs)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return {"command": " ".join(command), "config": config, "wall_s": time.perf_counter() - started,
            "cpu_s": sum(u.ru_utime + u.ru_stime for u in usage),  # this process and its finished children
            "python": platform.python_version(), **environment()}
