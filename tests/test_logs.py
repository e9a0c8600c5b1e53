"""Logs for people: this project's lines, libraries' warnings, and worker lines reduced to their message."""
from __future__ import annotations

import logging

import pytest

from core import logs


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def _worker(severity: str, location: str, message: str) -> str:
    return (f'Worker: severity: {severity} timestamp {{ seconds: 1 }} message: "{message}" '
            f'log_location: "{location}:12" thread: "7"')


@pytest.fixture
def keep(monkeypatch):
    monkeypatch.setattr(logging.getLogger("pipelines"), "level", logging.INFO)  # as logs.setup() sets it
    return logs._ForPeople().filter


def test_own_info_passes_library_info_does_not(keep):
    assert keep(_record("pipelines.embed", logging.INFO, "embedded 10 sentences"))
    assert not keep(_record("apache_beam.runners", logging.INFO, "Running stage 3"))
    assert keep(_record("apache_beam.io", logging.WARNING, "a real warning"))
    assert not keep(_record("tensorflow", logging.ERROR, "failed call to cuInit: CUDA error"))


def test_worker_progress_from_our_code_is_kept_as_its_message(keep):
    record = _record("root", logging.INFO, _worker("INFO", f"{logs._REPO}/core/logs.py",
                                                   "sentences embedded: 10 of ~20 (50%)"))
    assert keep(record) and record.getMessage() == "sentences embedded: 10 of ~20 (50%)"


def test_worker_library_lines_are_dropped_unless_warnings(keep):
    beam_util = "/venv/lib/python3.11/site-packages/apache_beam/transforms/util.py"  # 'transforms/' is not ours
    assert not keep(_record("root", logging.INFO, _worker("INFO", beam_util, "BatchElements statistics: ...")))
    warning = _record("root", logging.WARNING, _worker("WARN", beam_util, "something odd"))
    assert keep(warning) and warning.getMessage() == "worker: something odd"
    assert not keep(_record("root", logging.WARNING, _worker("WARN", beam_util, "No semi_persistent_directory found")))


def test_worker_lines_follow_the_chosen_level(keep, monkeypatch):
    monkeypatch.setattr(logging.getLogger("pipelines"), "level", logging.WARNING)
    assert not keep(_record("root", logging.INFO, _worker("INFO", f"{logs._REPO}/transforms/embedding.py", "x")))


def test_progress_line_has_count_rate_and_eta_of_this_workers_share():
    progress = logs.Progress("sentences embedded", total=1000, share=2)
    progress.add(100)
    line = progress.line(progress._start + 10)
    assert line == "sentences embedded (one of 2 workers): 100 of ~500 (20%, 10/s), ETA 40 s"
    assert logs.Progress("rows", total=None).line().startswith("rows: 0 (")
