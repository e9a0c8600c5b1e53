"""Claiming an output directory: a lock, and deleting only what this tool provably wrote there.

Rules every job follows (``OutputDir``):
- before any work, the output must not overlap anything the job reads
  (``containment.check_separate``);
- the job takes ``.shrink.lock`` (host, boot, pid namespace, pid, start
  time, command); a second run into the same directory fails at once. A lock
  is taken over only when its process is provably gone: same host, same
  boot, same pid namespace, and the pid not running (or reused);
- it deletes only files that (a) its previous manifest or its interrupted
  run's pending record lists, (b) resolve to inside the directory and
  (c) carry a name that kind of output writes (``core.layouts``); a listing
  that names anything else is corrupt and the job stops, deleting nothing;
- at commit it lists the files with its own names that appeared since it
  claimed the directory; anything else (a user's file) is left alone;
- ``--overwrite`` only allows replacing a finished output of different
  parameters; the manifest, listing every file written, is written last.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time

from core import containment, files, layouts, manifests
from core.errors import ArtifactError

log = logging.getLogger(__name__)
_SHOWN = 10


class OutputDir:
    """One job's output directory, claimed for the duration of a run (use as a context manager).

    ``claim`` makes the directory ready, ``commit`` writes the manifest and
    lets it go; an exception inside the ``with`` block releases the lock and
    temp files but keeps ``.shrink.pending``, so the next run can clear the
    leftovers it can prove are ours.
    """

    def __init__(self, directory: str, kind: str, fingerprint: str, reads: tuple[str, ...] | list[str] = ()):
        if kind not in layouts.KINDS:
            raise ValueError(f"unknown output kind {kind!r}")
        self.directory, self.kind, self.fingerprint = directory, kind, fingerprint
        self.reads = [r for r in reads if r]
        self.lock_path = files.join(directory, layouts.LOCK)
        self.pending_path = files.join(directory, layouts.PENDING)
        self._foreign: set[str] = set()
        self._locked = False

    def path(self, *parts: str) -> str:
        return files.join(self.directory, *parts)

    def check(self) -> OutputDir:
        """Refuse an output that overlaps what the job reads (call it before any work; ``claim`` calls it too)."""
        containment.check_separate(self.directory, self.reads, layouts.probes())
        links = files.symlinks(self.directory) if files.exists(self.directory) else []
        if links:
            names = ", ".join(self._rel(p) for p in links[:3])
            raise ArtifactError(f"{self.directory} holds symbolic links ({names}); "
                                "a job writes only into plain directories, never through a link: remove them or "
                                "choose another output")
        return self

    def claim(self, overwrite: bool = False, resume: bool = False) -> OutputDir:
        """Check, lock and clear the directory; with ``resume``, an interrupted run of the same parameters is kept."""
        self.check()
        files.makedirs(self.directory)
        acquire(self.lock_path)
        self._locked = True
        try:
            pending = read_pending(self.directory)
            if pending and pending["kind"] != self.kind:
                raise ArtifactError(f"{self.directory} holds the leftovers of an interrupted '{pending['kind']}' run; "
                                    f"run that job again to finish or clear it, or delete {self.pending_path} and "
                                    "its files by hand")
            if resume and pending and (pending["kind"], pending["fingerprint"]) == (self.kind, self.fingerprint):
                log.info("resuming the interrupted run in %s", self.directory)
                self._foreign = {self.path(rel) for rel in pending["foreign"]}
                return self
            self._clear(overwrite, pending)
            files.write_text(self.pending_path, json.dumps(
                {"kind": self.kind, "fingerprint": self.fingerprint,
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
        """Write the manifest (listing the files this run wrote) and let the directory go."""
        self._delete_temp()
        written = [self._rel(p) for p in files.list_tree(self.directory)
                   if p not in self._foreign and layouts.owns(self.kind, self._rel(p))]
        manifest = manifests.write(self.directory, self.kind, {**body, "fingerprint": self.fingerprint}, written)
        files.delete([self.pending_path])
        self.release()
        return manifest

    def written_shards(self) -> list[str]:
        """The data shards this run wrote (``data-SSSSS-of-NNNNN.*``), sorted; a user's look-alike is not one."""
        return sorted(p for p in files.list_tree(self.directory)
                      if p not in self._foreign and layouts.is_shard(self._rel(p)))

    def release(self) -> None:
        """Drop temp files and the lock (after a failure the pending record stays)."""
        self._delete_temp()
        if self._locked:
            files.delete([self.lock_path])
            self._locked = False

    def _delete_temp(self) -> None:
        delete_contained(self.directory, [p for p in files.list_tree(self.directory)
                                          if p not in self._foreign and layouts.temporary(self._rel(p))])

    def _rel(self, path: str) -> str:
        return files.relative(path, self.directory)

    def _clear(self, overwrite: bool, pending: dict | None) -> None:
        present = [p for p in files.list_tree(self.directory) if p != self.lock_path]
        ours = self._previous_files(overwrite) | _pending_files(self.directory, pending, present)
        ours |= {p for p in present if layouts.temporary(self._rel(p))}
        foreign = [p for p in present if p not in ours]
        if foreign and not (files.exists(manifests.path(self.directory)) or pending):
            names = ", ".join(self._rel(p) for p in foreign[:_SHOWN]) + (" ..." if len(foreign) > _SHOWN else "")
            raise ArtifactError(f"{self.directory} holds {len(foreign)} file(s) this tool did not write ({names}); "
                                "choose an empty or new output directory")
        if foreign:
            log.warning("%s: leaving %d file(s) this tool did not write untouched (%s)", self.directory,
                        len(foreign), ", ".join(self._rel(p) for p in foreign[:_SHOWN]))
        self._foreign = set(foreign)
        if ours:
            log.info("clearing %d file(s) of an earlier run in %s", len(ours), self.directory)
            delete_contained(self.directory, sorted(ours))

    def _previous_files(self, overwrite: bool) -> set[str]:
        """Files a finished earlier run listed (refused unless the same run or ``overwrite``), and its manifest."""
        if not files.exists(manifests.path(self.directory)):
            return set()
        try:
            previous = manifests.read(self.directory, verify="none")
        except ArtifactError as e:
            raise ArtifactError(f"{e}; delete {manifests.path(self.directory)} by hand if the output is yours") \
                from e
        same = (previous["kind"], previous.get("fingerprint")) == (self.kind, self.fingerprint)
        if not same and not overwrite:
            raise ArtifactError(
                f"{self.directory} already holds the output of a different run ({previous['kind']}, fingerprint "
                f"{previous.get('fingerprint')}; this run: {self.kind}, {self.fingerprint}); choose another output "
                "or pass --overwrite")
        listed = owned_listing(self.directory, previous["kind"], [e["path"] for e in previous["files"]],
                               manifests.path(self.directory))
        return {p for p in listed if files.exists(p)} | {manifests.path(self.directory)}


def owned_listing(directory: str, kind: str, relative: list, source: str) -> list[str]:
    """Absolute paths of listed files, each proven inside ``directory`` and named as ``kind`` names its files.

    Anything else means the listing is corrupt or planted: ArtifactError, and nothing is deleted.
    """
    paths = [containment.resolve_listed(directory, rel, source) for rel in relative]
    strange = [rel for rel in relative if not (layouts.owns(kind, rel) or layouts.temporary(rel))]
    if strange:
        raise ArtifactError(f"{source} is corrupt: it lists {strange[:3]!r}, which a '{kind}' output never "
                            "writes; nothing was deleted. Remove the output by hand if it is yours")
    return paths


def read_pending(directory: str) -> dict | None:
    """The interrupted run's record (kind, fingerprint, foreign files), checked; None when there is none."""
    where = files.join(directory, layouts.PENDING)
    if not files.exists(where):
        return None
    try:
        record = json.loads(files.read_text(where))
    except (ValueError, UnicodeDecodeError):
        record = None
    ok = (isinstance(record, dict) and record.get("kind") in layouts.KINDS
          and isinstance(record.get("fingerprint"), str) and isinstance(record.get("foreign"), list)
          and all(containment.safe_relative(rel) for rel in record["foreign"]))
    if not ok:
        raise ArtifactError(f"{where} is damaged; nothing was deleted. Delete it and the files of the interrupted "
                            "run by hand")
    return record


def _pending_files(directory: str, pending: dict | None, present: list[str]) -> set[str]:
    """Leftovers of an interrupted run: present files named as its kind names files, not there before it."""
    if pending is None:
        return set()
    foreign = set(pending["foreign"])
    rel = {p: files.relative(p, directory) for p in present}
    ours = [p for p in present if rel[p] not in foreign and layouts.owns(pending["kind"], rel[p])
            and containment.is_inside(p, directory)]
    return set(ours) | {files.join(directory, layouts.PENDING)}


def delete_contained(directory: str, paths: list[str]) -> None:
    """Delete files, each checked once more to lie inside ``directory`` (the last line of defence)."""
    outside = [p for p in paths if not containment.is_inside(p, directory)]
    if outside:
        raise ArtifactError(f"refusing to delete {outside[0]}: it is not inside {directory}")
    try:
        files.delete(paths)
    except IsADirectoryError as e:
        raise ArtifactError(f"{e}; nothing more was deleted") from None
    files.prune_dirs(paths, directory)


def remove_output(directory: str) -> None:
    """Delete a finished output of this tool: the files its manifest lists and the manifest, nothing else."""
    if not files.exists(manifests.path(directory)):
        return
    manifest = manifests.read(directory, verify="none")
    listed = owned_listing(directory, manifest["kind"], [e["path"] for e in manifest["files"]],
                           manifests.path(directory))
    delete_contained(directory, listed + [manifests.path(directory)])
    files.remove_if_empty(directory)


# ---------------------------------------------------------------- locks

def _identity() -> dict:
    """Who holds a lock: host, kernel boot, pid namespace, pid and its start time, when, and the command."""
    return {"host": socket.gethostname(), "boot_id": _read_first_line("/proc/sys/kernel/random/boot_id"),
            "pid_namespace": _pid_namespace(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
            "started_utc": manifests.now_utc(), "command": " ".join(sys.argv)[:300]}


def acquire(lock_path: str) -> None:
    """Create the lock exclusively, or fail naming its holder; a provably dead local holder is replaced."""
    record = json.dumps(_identity())
    for _ in range(2):
        if _create_exclusive(lock_path, record):
            return
        holder = _read_lock(lock_path)
        if not holder:
            raise ArtifactError(f"{lock_path} is damaged (not a lock this tool wrote); if no run is using "
                                f"{os.path.dirname(lock_path) or lock_path}, delete it and run again")
        if not _is_stale(holder):
            raise ArtifactError(
                f"{os.path.dirname(lock_path) or lock_path} is in use by another run (host {holder.get('host')}, "
                f"pid {holder.get('pid')}, since {holder.get('started_utc')}: {holder.get('command')}); it may run "
                f"on another machine or container. If that run is gone, delete {lock_path} and run again")
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
    """True only when the holder ran in this kernel boot and pid namespace of this host and its process is gone."""
    me = _identity()
    if any(holder.get(key) != me[key] or me[key] is None for key in ("host", "boot_id", "pid_namespace")):
        return False
    if not isinstance(holder.get("pid"), int):
        return False
    start = _process_start(holder["pid"])
    return start is None or (holder.get("pid_start") is not None and start != holder["pid_start"])


def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.readline().strip() or None
    except OSError:
        return None


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


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
def locked(directory: str, reads: list[str] = (), probes: tuple[str, ...] = ("",)):
    """Hold ``directory``'s lock (e.g. a run's work directory) for the block; it must not overlap ``reads``."""
    containment.check_separate(directory, list(reads), layouts.probes(probes), flag="--workdir")
    files.makedirs(directory)
    lock_path = files.join(directory, layouts.LOCK)
    acquire(lock_path)
    try:
        yield
    finally:
        files.delete([lock_path])
