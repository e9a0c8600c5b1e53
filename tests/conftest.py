"""Shared fixtures, one core per test worker, and a trustworthy exit code for the whole suite.

Under pytest-xdist each worker process is pinned to its own share of the
cores before anything starts a thread pool: BLAS, OpenMP (faiss) and
TensorFlow size their pools from the affinity mask, and two workers whose
pools each span both cores of this machine spend much of their time waiting
on each other.

Processes that ran a tf.Transform pipeline can segfault at interpreter exit
(exit code 139) after every test passed. pytest has printed its summary by
``pytest_unconfigure``, so we leave there with pytest's own exit status and
skip the interpreter teardown that crashes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


def _pin_xdist_worker() -> None:
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if count > 1 and len(cores) >= count:
        os.sched_setaffinity(0, cores[int(worker[2:]) % count::count])


_pin_xdist_worker()
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
_EXIT = {"status": 0}


def pytest_sessionfinish(session, exitstatus):
    _EXIT["status"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT["status"])


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public evaluation data not found at {SHARED_DATA}")
    return SHARED_DATA
