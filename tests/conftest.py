"""Shared fixtures, and a trustworthy exit code for the whole suite.

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
