"""Logging for people: the tool's own lines by default, everything with ``-v`` or SHRINK_LOG_LEVEL.

Default output is this project's INFO lines ("HH:MM:SS message") plus
warnings and errors from the libraries. Known-benign library chatter is
dropped: TensorFlow's CUDA probing on a machine without an NVIDIA device
(printed by C++ code before any logging is set up, so the first import of
TensorFlow runs with file descriptor 2 captured and replays only lines not
known to be benign), deprecation notices, and Beam's per-stage INFO lines.
``shrink -v <command>`` (or SHRINK_LOG_LEVEL=DEBUG) shows all of it.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
import time

OWN = ("pipelines", "transforms", "trainer", "core")
BENIGN = ("Could not find cuda drivers", "All log messages before absl::InitializeLog", "cpu_feature_guard",
          "To enable the following instructions", "failed call to cuInit", "Resource module is not available",
          "Discarding unparseable args", "Tensorflow Transform is running in tf.compat.v1 mode",
          "TFRecordDataset `buffer_size` is unspecified", "MLIR V1 optimization pass is not enabled",
          "No semi_persistent_directory found", "oneDNN custom operations are on")


_WORKER_MESSAGE = re.compile(r'message: "((?:[^"\\]|\\.)*)"')
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN_LOCATION = re.compile('log_location: "%s/(?:%s)/' % (re.escape(_REPO), "|".join(OWN)))


class _ForPeople(logging.Filter):
    """Keeps this project's lines and libraries' warnings; drops known-benign lines.

    Beam forwards log records of multi-process workers as a whole log-entry
    proto (``Worker: severity: INFO timestamp {...} message: "..." log_location:
    "..."``) through the root logger: only the message is kept, and INFO ones
    only when they come from this project's code (progress lines).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        own = record.name.split(".")[0] in OWN
        if message.startswith("Worker: severity:"):
            found = _WORKER_MESSAGE.search(message)
            own = bool(_OWN_LOCATION.search(message))
            if found:
                record.msg, record.args = found.group(1) if own else f"worker: {found.group(1)}", None
                message = record.msg
        if record.levelno < (logging.getLogger(OWN[0]).getEffectiveLevel() if own else logging.WARNING):
            return False
        return not any(b in message for b in BENIGN)


def setup(verbose: bool = False) -> None:
    """Configure logging for a command; call before anything imports TensorFlow."""
    level = os.environ.get("SHRINK_LOG_LEVEL", "DEBUG" if verbose else "INFO").upper()
    verbose = verbose or level == "DEBUG"
    logging.basicConfig(format="%(asctime)s %(message)s" if not verbose else
                        "%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", level=logging.INFO, force=True)
    for name in OWN:
        logging.getLogger(name).setLevel(level)
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ForPeople())
    for name in ("tensorflow", "absl", "tensorflow_transform", "tfx_bsl"):
        logging.getLogger(name).setLevel(logging.ERROR)  # deprecation notices and graph-mode chatter
    quiet = any(isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path)
    if not has_nvidia_device() and "tensorflow" not in sys.modules and not quiet:
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def has_nvidia_device() -> bool:
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``tensorflow`` (and lets it probe devices) with fd 2 captured; replays non-benign lines."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with _captured_stderr():
            self._loader.exec_module(module)
            module.config.list_physical_devices()  # the CUDA probe happens here, while captured


class _captured_stderr:
    """Redirects file descriptor 2 to a temp file; on exit writes back the lines that are not benign."""

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._file = tempfile.TemporaryFile(mode="w+b")
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        lines = self._file.read().decode("utf-8", "replace").splitlines()
        self._file.close()
        kept = [line for line in lines if line.strip() and not any(b in line for b in BENIGN)]
        if kept:
            sys.stderr.write("\n".join(kept) + "\n")
        return False


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 04 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Logs a count, rate and (when the total is known) an ETA, at most every ``every_s`` seconds.

    One per worker process: with ``share`` processes splitting ``total``
    items, this one expects about ``total / share`` of them. ``total`` or
    ``share`` None (a remote runner, an unknown corpus size): count and rate only.
    """

    def __init__(self, what: str, total: int | None = None, share: int | None = 1, every_s: float = 10.0):
        self.what = what if not share or share == 1 else f"{what} (one of {share} workers)"
        self.every_s = every_s
        self.expected = total / share if total and share else None
        self.count = 0
        self._start = self._last = time.monotonic()

    def add(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            logging.getLogger("pipelines.progress").info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self._start, 1e-9)
        rate = self.count / elapsed
        if not self.expected:
            return f"{self.what}: {self.count:,} ({rate:,.0f}/s)"
        left = max(self.expected - self.count, 0)
        eta = duration(left / rate) if rate > 0 else "unknown"
        share = 100 * min(self.count / self.expected, 1)
        return (f"{self.what}: {self.count:,} of ~{self.expected:,.0f} ({share:.0f}%, "
                f"{rate:,.0f}/s), ETA {eta}")
