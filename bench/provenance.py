"""What every result file records about how it was made: the command, package versions, git commit, CPU model,
precision, threads, wall and CPU time (the same code gives other float sums on another CPU, precision or thread
count, so a number names all three)."""
from __future__ import annotations

import json
import platform
import resource
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from lightgen.errors import InputError

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


INVOCATION_KEYS = ("command", "git_commit", "cpu", "torch_threads", "wall_s", "cpu_s")


def earlier_invocations(previous: Path) -> list[dict]:
    """The invocations recorded in a results folder's `run.json` (one for a record made before the list
    existed), read before a resumed job starts so that a bad file stops it at once, not after its work."""
    if not previous.is_file():
        return []
    try:
        old = json.loads(previous.read_text())
        earlier = old.get("invocations") or [{k: old.get(k) for k in INVOCATION_KEYS}]
        float(sum(i["cpu_s"] for i in earlier))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise InputError(f"{previous}: expected the run.json of an earlier invocation ({e!r}); move it away "
                         f"to start the record afresh") from None
    return earlier


def with_invocations(record: dict, earlier: list[dict]) -> dict:
    """`record` (this invocation's run_record) with `invocations`, the earlier ones plus this one, and their
    `total_cpu_s`: what a resumed job cost in all. An invocation killed before it wrote run.json is not
    counted."""
    invocations = [*earlier, {k: record.get(k) for k in INVOCATION_KEYS}]
    return {**record, "invocations": invocations, "total_cpu_s": sum(i["cpu_s"] for i in invocations)}


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
