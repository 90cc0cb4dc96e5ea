"""How many torch threads a heavy command uses: on a shared CPU, intra-op threads that outnumber the free
cores spin against the other jobs and a run gets many times slower (issue 19: 360 testbed images took 13.6
min beside one other job, 1.6 min idle), so commands take the free cores, not all of them."""
from __future__ import annotations

import os
import sys


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_threads() -> tuple[int, str]:
    """The cores not busy with other work (all cores minus the 1-minute load average, at least 1), and why."""
    n, load = cores(), os.getloadavg()[0]
    return max(1, min(n, n - round(load))), f"{n} cores, 1-min load {load:.2f}"


def use_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count and say it once on stderr: `threads`, else a positive
    `OMP_NUM_THREADS` (the user already chose), else `auto_threads()`."""
    import torch

    why, omp = "--threads", os.environ.get("OMP_NUM_THREADS", "")
    if threads is None and omp.isdigit() and int(omp) > 0:
        threads, why = int(omp), "OMP_NUM_THREADS"
    elif threads is None:
        threads, why = auto_threads()
        why += "; --threads N to override"
    torch.set_num_threads(threads)
    print(f"torch threads: {threads} ({why})", file=sys.stderr)
    return threads

