"""Claiming an output directory: a lock, and deleting only what this tool wrote there.

Rules every job follows (``OutputDir``):
- a job takes ``.shrink.lock`` (host, pid, start time, command) before
  touching its output; a second run into the same directory fails at once.
  A lock left by a process that is provably gone (same host, pid not
  running) is taken over with a warning; any other lock is reported with
  the command that clears it;
- it deletes only files that a manifest it wrote lists, or that match the
  file patterns its own interrupted run recorded in ``.shrink.pending``;
  a non-empty directory holding neither is refused, naming the files;
- ``--overwrite`` only allows replacing a finished output of different
  parameters; files the tool did not write are never deleted;
- the manifest, listing every file written, is written atomically and last.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import socket
import sys
import time

from core import files, manifests
from core.errors import ArtifactError

log = logging.getLogger(__name__)
LOCK = ".shrink.lock"
PENDING = ".shrink.pending"
TEMP_PATTERNS = ("beam-temp-*", "*.tmp")  # Beam sinks' and our atomic writes' temporary files
_SHOWN = 10


class OutputDir:
    """One job's output directory, claimed for the duration of a run (use as a context manager).

    ``owned`` are glob patterns, relative to the directory, of the files the
    job writes (``data-*``, ``deadletter/*``, ``head/*``...). ``claim`` makes
    the directory ready, ``commit`` writes the manifest and lets it go; an
    exception inside the ``with`` block releases the lock and temp files but
    keeps ``.shrink.pending``, so the next run knows the leftovers are ours.
    """

    def __init__(self, directory: str, kind: str, fingerprint: str, owned: tuple[str, ...]):
        self.directory, self.kind, self.fingerprint = directory, kind, fingerprint
        self.owned = tuple(owned) + TEMP_PATTERNS
        self.lock_path = files.join(directory, LOCK)
        self.pending_path = files.join(directory, PENDING)
        self._foreign: set[str] = set()
        self._locked = False

    def path(self, *parts: str) -> str:
        return files.join(self.directory, *parts)

    def claim(self, overwrite: bool = False, resume: bool = False) -> OutputDir:
        """Lock and clear the directory; with ``resume``, an interrupted run of the same parameters is kept."""
        files.makedirs(self.directory)
        _acquire(self.lock_path)
        self._locked = True
        try:
            pending = self._pending_record()
            if resume and pending and (pending.get("kind"), pending.get("fingerprint")) == (self.kind, self.fingerprint):
                log.info("resuming the interrupted run in %s", self.directory)
                self._foreign = {self.path(rel) for rel in pending.get("foreign", [])}
                return self
            self._clear(overwrite)
            files.write_text(self.pending_path, json.dumps(
                {"kind": self.kind, "fingerprint": self.fingerprint, "owned": list(self.owned),
                 "foreign": sorted(self._rel(p) for p in self._foreign)}))
        except BaseException:
            self.release()
            raise
        return self

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._locked:
            self.release()

    def commit(self, body: dict) -> dict:
        """Write the manifest (with the list of files written) and let the directory go."""
        self._delete_temp()
        files.remove_empty_dirs(self.directory)
        written = [files.relative(p, self.directory) for p in self._ours_now()]
        manifest = manifests.write(self.directory, self.kind,
                                   {**body, "fingerprint": self.fingerprint, "files": written})
        files.delete([self.pending_path])
        self.release()
        return manifest

    def release(self) -> None:
        """Drop temp files and the lock (after a failure the pending record stays)."""
        self._delete_temp()
        if self._locked:
            files.delete([self.lock_path])
            self._locked = False

    def _ours_now(self) -> list[str]:
        internal = {self.lock_path, self.pending_path, manifests.path(self.directory)}
        return [p for p in files.list_tree(self.directory) if p not in internal and p not in self._foreign]

    def _delete_temp(self) -> None:
        files.delete([p for p in files.list_tree(self.directory) if _matches(self._rel(p), TEMP_PATTERNS)])

    def _rel(self, path: str) -> str:
        return files.relative(path, self.directory)

    def _clear(self, overwrite: bool) -> None:
        present = [p for p in files.list_tree(self.directory) if p != self.lock_path]
        ours = self._previous_files(overwrite) | self._pending_files(present)
        ours |= {p for p in present if _matches(self._rel(p), TEMP_PATTERNS)}
        foreign = [p for p in present if p not in ours]
        if foreign and not (files.exists(manifests.path(self.directory)) or files.exists(self.pending_path)):
            names = ", ".join(self._rel(p) for p in foreign[:_SHOWN]) + (" ..." if len(foreign) > _SHOWN else "")
            raise ArtifactError(f"{self.directory} holds {len(foreign)} file(s) this tool did not write ({names}); "
                                "choose an empty or new output directory")
        if foreign:
            log.warning("%s: leaving %d file(s) this tool did not write untouched (%s)", self.directory,
                        len(foreign), ", ".join(self._rel(p) for p in foreign[:_SHOWN]))
        self._foreign = set(foreign)
        if ours:
            log.info("clearing %d file(s) of an earlier run in %s", len(ours), self.directory)
            files.delete(sorted(ours))
            files.remove_empty_dirs(self.directory)

    def _previous_files(self, overwrite: bool) -> set[str]:
        """Files a finished earlier run listed in its manifest (refused unless the same run or ``overwrite``)."""
        if not files.exists(manifests.path(self.directory)):
            return set()
        try:
            previous = manifests.read(self.directory)
        except ArtifactError as e:
            raise ArtifactError(f"{e}; delete {manifests.path(self.directory)} by hand if the output is yours") \
                from e
        same = (previous["kind"], previous.get("fingerprint")) == (self.kind, self.fingerprint)
        if not same and not overwrite:
            raise ArtifactError(
                f"{self.directory} already holds the output of a different run ({previous['kind']}, fingerprint "
                f"{previous.get('fingerprint')}; this run: {self.kind}, {self.fingerprint}); choose another output "
                "or pass --overwrite")
        listed = {self.path(rel) for rel in previous.get("files", [])}
        return {p for p in listed if files.exists(p)} | {manifests.path(self.directory)}

    def _pending_record(self) -> dict | None:
        """What the interrupted run recorded in the directory (kind, fingerprint, patterns), if any."""
        if not files.exists(self.pending_path):
            return None
        try:
            record = json.loads(files.read_text(self.pending_path))
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def _pending_files(self, present: list[str]) -> set[str]:
        """Leftovers of an interrupted run: files matching the patterns it recorded."""
        if not files.exists(self.pending_path):
            return set()
        record = self._pending_record() or {}
        owned, foreign = record.get("owned"), set(record.get("foreign", []))
        if not isinstance(owned, list):
            raise ArtifactError(f"{self.pending_path} is damaged; delete it and the files of the interrupted run "
                                "by hand")
        return {p for p in present if _matches(self._rel(p), owned) and self._rel(p) not in foreign} | \
            {self.pending_path}


def _matches(rel: str, patterns) -> bool:
    """Whether a relative path matches one of the patterns, by its full path or its top-level entry."""
    top = rel.split("/", 1)[0]
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(top, p) for p in patterns)


def _acquire(lock_path: str) -> None:
    """Create the lock exclusively, or fail naming its holder; a provably dead local holder is replaced."""
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
                         "started_utc": manifests.now_utc(), "command": " ".join(sys.argv)[:300]})
    for _ in range(2):
        if _create_exclusive(lock_path, record):
            return
        holder = _read_lock(lock_path)
        if not _is_stale(holder):
            raise ArtifactError(
                f"{os.path.dirname(lock_path) or lock_path} is in use by another run (host {holder.get('host')}, "
                f"pid {holder.get('pid')}, since {holder.get('started_utc')}: {holder.get('command')}); if that run "
                f"is gone, delete {lock_path} and run again")
        log.warning("taking over %s: its process (pid %s on this host) is no longer running", lock_path,
                    holder.get("pid"))
        files.delete([lock_path])
    raise ArtifactError(f"cannot take {lock_path}: another run keeps taking it")


def _create_exclusive(path: str, text: str) -> bool:
    """Atomic create-if-absent on local disks; on object stores, write then read back our own record."""
    if not files.is_url(path):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True
    if files.exists(path):
        return False
    files.write_text(path, text)
    time.sleep(0.05)  # best effort: a racing writer's object replaces ours, and we see it here
    return files.read_text(path) == text


def _read_lock(path: str) -> dict:
    try:
        value = json.loads(files.read_text(path))
        return value if isinstance(value, dict) else {}
    except (ValueError, OSError, UnicodeDecodeError):
        return {}


def _is_stale(holder: dict) -> bool:
    """True only when the holder ran on this host and its process is gone (or the pid was reused)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    start = _process_start(holder["pid"])
    return start is None or (holder.get("pid_start") is not None and start != holder["pid_start"])


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), None when no such process runs."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):  # not Linux: fall back to "is a process with that pid alive"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0


@contextlib.contextmanager
def locked(directory: str):
    """Hold ``directory``'s lock (e.g. a run's work directory) for the duration of the block."""
    files.makedirs(directory)
    lock_path = files.join(directory, LOCK)
    _acquire(lock_path)
    try:
        yield
    finally:
        files.delete([lock_path])


def remove_output(directory: str) -> None:
    """Delete a finished output of this tool: the files its manifest lists and the manifest, nothing else."""
    if not files.exists(manifests.path(directory)):
        return
    listed = manifests.read(directory).get("files", [])
    files.delete([files.join(directory, rel) for rel in listed] + [manifests.path(directory)])
    files.remove_empty_dirs(directory)
    files.remove_if_empty(directory)
