"""What every result file records about how it was made: the command, package versions, git commit, CPU model,
precision, threads, wall and CPU time (the same code gives other float sums on another CPU, precision or thread
count, so a number names all three)."""
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


def cpu_name() -> str:
    """The CPU model (for result files), e.g. 'Intel(R) Xeon(R) ...'."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def auto_precision(device: str = "cpu") -> str:
    """What precision "auto" samples and trains in on `device`: bf16 autocast where bf16 matmuls are native
    (AMX / AVX512-BF16 CPUs, GPUs), else fp32."""
    from lightgen.precision import native_bf16

    return "bf16-autocast" if native_bf16(device) else "fp32"


def environment() -> dict:
    """Installed versions of the packages that shape results, the git commit, the CPU model, what "auto" precision
    means on it and torch's thread count (which shapes timings and float sums)."""
    import torch

    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = version(p)
        except PackageNotFoundError:
            pass
    return {"versions": versions, "git_commit": git_commit(), "cpu": cpu_name(), "auto_precision": auto_precision(),
            "torch_threads": torch.get_num_threads()}


def run_record(command: list[str], config: dict, started: float) -> dict:
    """A results folder's `run.json`: the command line, config, versions, git commit, wall and CPU time (the
    CPU time says what a run costs on a shared machine, where its wall time depends on the other jobs)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return {"command": " ".join(command), "config": config, "wall_s": time.perf_counter() - started,
            "cpu_s": sum(u.ru_utime + u.ru_stime for u in usage),  # this process and its finished children
            "python": platform.python_version(), **environment()}


def setting_difference(old: dict, new: dict) -> str:
    """The first setting of `new` that `old` records otherwise, as `name old -> new` (nested sections by the
    inner name), or "" when none differs: what a refusal to reuse results names."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(old.get(k), dict):
            inner = setting_difference(old[k], v)
            if inner:
                return inner
        elif old.get(k) != v:
            return f"{k} {old.get(k)!r} -> {v!r}"
    return ""
