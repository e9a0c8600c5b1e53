"""Shared fixtures, and a trustworthy exit code for the whole suite.

Test workers share this machine's cores: ``import core`` first, which sets
OpenMP's passive wait policy that test modules importing faiss before the
library would otherwise miss, and under pytest-xdist one BLAS thread per
worker. Spinning BLAS/OpenMP threads in one worker were seen to make a Beam
job in the other worker, whose threads hand work to each other, 10-40x slower.

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

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import core  # noqa: F401,E402 - before any test module loads faiss

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


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch):
    """Run in an empty current directory, so that a ``ram://`` path leaked to local file operations (a literal
    ``ram:`` folder) is seen."""
    monkeypatch.chdir(tmp_path)
    yield
    assert not os.path.exists("ram:"), "a ram:// path was written with local file operations"
