"""Input patterns -> the files a job reads, checked before the job starts.

Local patterns keep Beam's glob rules (``*`` and ``?`` stay within one path
segment, ``**`` crosses ``/``, a pattern ending in ``/`` means every file
directly in that directory) but, unlike Beam's local filesystem, also see
files under symlinked directories; a directory is never entered again below
itself, so ``**`` cannot loop. A file reached by several paths is listed once,
under the first of them in sorted order. A match that is not a regular file
(a FIFO, socket, device or directory) or is a dangling symlink is an
InputError naming it: opening a FIFO blocks forever, and skipping it would
lose its records silently. URL patterns (``gs://``, ``ram://``, ...) are
matched by Beam's FileSystems.
"""
from __future__ import annotations

import os
import re
import stat
from typing import Iterator

from apache_beam.io.filesystem import FileSystem

from core import files
from core.errors import InputError

_GLOB = re.compile(r"[\[*?]")
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
_SHOWN = 5  # problems named in one error


def expand_inputs(patterns: list[str]) -> list[str]:
    """Every file the patterns match, once each: sorted absolute paths (URLs as Beam lists them).

    FileNotFoundError for a pattern matching nothing (a typo, not an empty corpus).
    """
    unique: dict[str, str] = {}
    for path in sorted({path for pattern in patterns for path in _matches(pattern)}):
        unique.setdefault(path if files.is_url(path) else os.path.realpath(path), path)
    return sorted(unique.values())


def _matches(pattern: str) -> list[str]:
    paths = files.list_files(pattern) if files.is_url(pattern) else _match_local(pattern)
    if not paths:
        raise FileNotFoundError(f"input pattern {pattern!r} matches no files")
    return paths


def _match_local(pattern: str) -> list[str]:
    """Beam's LocalFileSystem.match, following symlinked directories; InputError for what cannot be read."""
    pattern = os.path.abspath(pattern + "*" if pattern.endswith("/") else pattern)
    paths = _glob(pattern) if _GLOB.search(pattern) else [pattern] if os.path.lexists(pattern) else []
    _refuse_irregular(pattern, paths)
    return paths


def _glob(pattern: str) -> list[str]:
    """Paths matching Beam's regular expression for ``pattern``, walked from its last fixed directory."""
    top = os.path.dirname(pattern[:_GLOB.search(pattern).start()])
    if not os.path.isdir(top):
        return []
    # Without ``**``, a match lies exactly as many levels down as the pattern: ``?`` never matches ``/``.
    depth = None if "**" in pattern else pattern.count("/") - top.rstrip("/").count("/") - 1
    regex = re.compile(FileSystem.translate_pattern(pattern))
    return [path for path in _walk(top, depth, frozenset()) if regex.match(path)]


def _walk(directory: str, depth: int | None, ancestors: frozenset) -> Iterator[str]:
    """Every non-directory entry ``depth`` levels below ``directory`` (any depth when None), through
    symlinked directories too, but never into a directory that is its own ancestor (a loop)."""
    ancestors = ancestors | {_identity(directory)}
    for entry in _entries(directory):
        if not entry.is_dir():  # files, and what is_dir cannot follow: FIFOs, dangling symlinks, ...
            if depth is None or depth == 0:
                yield entry.path
        elif depth != 0 and _identity(entry.path) not in ancestors:
            yield from _walk(entry.path, None if depth is None else depth - 1, ancestors)


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _entries(directory: str) -> list[os.DirEntry]:
    """The directory's entries, sorted; InputError if it cannot be listed (its files would be skipped silently)."""
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError as e:
        raise InputError(f"cannot list {directory}: {e.strerror}") from None


def _refuse_irregular(pattern: str, paths: list[str]) -> None:
    """InputError naming every match that is not a regular file (checked before any is opened)."""
    problems = [f"{path} is {kind}" for path in paths if (kind := _irregular(path))]
    if problems:
        more = f" and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise InputError(f"input pattern {pattern!r} matches what is not a regular file: "
                         f"{'; '.join(problems[:_SHOWN])}{more}. Remove them or narrow the pattern")


def _irregular(path: str) -> str | None:
    """What ``path`` is when it is not a regular file; None when it is one."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if os.path.islink(path):
            return f"a dangling symlink (to {os.readlink(path)}: {e.strerror})"
        return f"unreadable ({e.strerror})"
    if stat.S_ISREG(mode):
        return None
    return next((kind for is_kind, kind in _KINDS if is_kind(mode)), "not a regular file")
