"""Where a path really is: inside an output directory or not, and whether an output overlaps its inputs.

Every path a job deletes, and every relative path it reads back from disk
(a manifest's file list, a pending record), passes through here first.
Local paths are compared after resolving ``..`` and symlinks (of the parent
directory: a symlink inside the output is itself inside, its target need
not be); URLs after normalising ``..``.
"""
from __future__ import annotations

import os
import posixpath
import re

from apache_beam.io.filesystem import FileSystem

from core import files
from core.errors import ArtifactError, InputError

_GLOB = re.compile(r"[*?\[]")


def canonical(path: str) -> str:
    """A local path with symlinks and ``..`` resolved; a URL with ``..`` and repeated slashes normalised."""
    path = str(path)
    if files.is_url(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{posixpath.normpath('/' + rest).lstrip('/')}"
    return os.path.realpath(path)


def safe_relative(rel: object) -> bool:
    """Whether ``rel`` (read from disk) is a plain relative path below its directory: no ``..``, not absolute."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel or rel.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/")) and not files.is_url(rel)


def is_inside(path: str, directory: str) -> bool:
    """Whether ``path`` lies below ``directory`` once resolved (its parent's symlinks followed, not its own)."""
    path = str(path)
    if files.is_url(path) != files.is_url(directory):
        return False
    parent, name = path.rstrip("/").rsplit("/", 1) if "/" in path.rstrip("/") else (".", path)
    where, base = canonical(parent), canonical(directory).rstrip("/")
    return name not in ("", ".", "..") and (where == base or where.startswith(base + "/"))


def resolve_listed(directory: str, rel: object, source: str) -> str:
    """The absolute path of a file a manifest or pending record lists; ArtifactError if it points elsewhere."""
    if not safe_relative(rel) or not is_inside(files.join(directory, rel), directory):
        raise ArtifactError(f"{source} is corrupt: it lists {rel!r}, which is not a file inside {directory}; "
                            "nothing was deleted. Remove that file by hand if the output is yours")
    return files.join(directory, rel)


def _overlap(a: str, b: str) -> bool:
    a, b = canonical(a).rstrip("/"), canonical(b).rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _glob_parts(pattern: str) -> tuple[str, str]:
    """(the directory before the first wildcard, the rest of the pattern)."""
    head, slash, _ = _GLOB.split(pattern, 1)[0].rpartition("/")
    if not slash:
        return ".", pattern
    return head or "/", pattern[len(head) + 1:]


def _matches_inside(pattern: str, output: str, probes: list[str]) -> bool:
    """Whether the glob could match a file the job writes below ``output`` (probes are relative names)."""
    head, tail = _glob_parts(pattern)
    regex = re.compile(FileSystem.translate_pattern(canonical(head).rstrip("/") + "/" + tail))
    out = canonical(output).rstrip("/")
    return any(regex.fullmatch(f"{out}/{probe}") for probe in probes)


def check_separate(output: str, reads: list[str], probes: list[str], flag: str = "--output") -> None:
    """Refuse, before any work, an output that equals, holds or lies inside something the job reads.

    ``reads`` are directories, files or glob patterns; a glob also overlaps
    when it could match one of the job's own files (``probes``, relative to
    the output: its lock, manifest, shards...) or a file already there.
    """
    existing = [files.relative(p, output) for p in files.list_tree(output)] if files.exists(output) else []
    for read in reads:
        if read is None:
            continue
        if _GLOB.search(read):
            head = _glob_parts(read)[0]
            clash = _overlap(head, output) and (
                canonical(head).rstrip("/").startswith(canonical(output).rstrip("/") + "/")
                or canonical(head) == canonical(output)
                or _matches_inside(read, output, [*probes, *existing]))
        else:
            clash = _overlap(read, output)
        if clash:
            raise InputError(f"{flag} {output} overlaps the input {read}: a job never writes where it reads "
                             "(it could destroy the input or read its own output); choose an output outside "
                             "every input")


def check_files_outside(output: str, paths: list[str], flag: str = "--output") -> None:
    """Refuse input files that resolve (symlinks followed) to inside the output: the job would read itself."""
    inside = [p for p in paths if _overlap(p, output) and canonical(p).startswith(canonical(output).rstrip("/") + "/")]
    if inside:
        raise InputError(f"{flag} {output} overlaps the input: {inside[0]} resolves to inside it (through a "
                         "symbolic link?); a job never reads its own output. Choose an output outside every input")
