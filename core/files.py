"""The one filesystem layer: every job reads and writes through these helpers.

Paths may be local or URLs (gs://, s3://, ...). URLs go through Beam's
FileSystems; local paths use the standard library where it gives something
Beam's layer cannot (exclusive create, directory walks, atomic rename).
"""
from __future__ import annotations

import os
import posixpath
import uuid
from typing import BinaryIO

from apache_beam.io.filesystems import FileSystems


def is_url(path: str) -> bool:
    return "://" in str(path)


def join(directory: str, *parts: str) -> str:
    return FileSystems.join(str(directory), *parts)


def absolute(path: str) -> str:
    """A local path made absolute; a URL (``scheme://``) already is, and ``os.path`` would mangle it."""
    return str(path) if is_url(path) else os.path.abspath(path)


def relative(path: str, directory: str) -> str:
    """``path`` relative to ``directory`` (which must contain it), with ``/`` separators."""
    path, directory = absolute(path), absolute(directory).rstrip("/")
    if not path.startswith(directory + "/"):
        raise ValueError(f"{path} is not inside {directory}")
    return path[len(directory) + 1:]


def relative_path(path: str, directory: str) -> str | None:
    """``path`` relative to ``directory`` (``..`` allowed), or None when they are on different filesystems."""
    if is_url(path) != is_url(directory):
        return None
    if not is_url(path):
        return os.path.relpath(os.path.abspath(path), os.path.abspath(directory))
    (scheme_a, rest_a), (scheme_b, rest_b) = (str(p).split("://", 1) for p in (path, directory))
    root_a, root_b = rest_a.split("/", 1)[0], rest_b.split("/", 1)[0]
    if (scheme_a, root_a) != (scheme_b, root_b):
        return None
    return posixpath.relpath("/" + rest_a, "/" + rest_b)


def exists(path: str) -> bool:
    return FileSystems.exists(str(path))


def list_files(pattern: str) -> list[str]:
    """Files matching a glob, sorted."""
    return sorted(m.path for m in FileSystems.match([str(pattern)])[0].metadata_list)


def list_tree(directory: str) -> list[str]:
    """Every file below ``directory`` (any depth), sorted; empty when it does not exist."""
    if not is_url(directory):
        return sorted(os.path.join(root, name) for root, _, names in os.walk(directory) for name in names)
    prefix = directory.rstrip("/") + "/"
    return [p for p in list_files(prefix + "**") if p.startswith(prefix)]


def symlinks(directory: str) -> list[str]:
    """Every symbolic link below a local ``directory`` (to files or directories), sorted; none for URLs."""
    if is_url(directory):
        return []
    found = []
    for root, dirs, names in os.walk(directory):
        found += [os.path.join(root, n) for n in dirs + names if os.path.islink(os.path.join(root, n))]
    return sorted(found)


def sizes(paths: list[str]) -> dict[str, int | None]:
    """Size in bytes of each path, None for a missing one."""
    out: dict[str, int | None] = {}
    for path in paths:
        found = FileSystems.match([path])[0].metadata_list if exists(path) else []
        out[path] = int(found[0].size_in_bytes) if found else None
    return out


def makedirs(directory: str) -> None:
    """Create ``directory`` unless it exists (object stores have no directories: nothing to do there)."""
    if not exists(directory):
        FileSystems.mkdirs(str(directory))


def create(path: str) -> BinaryIO:
    """A binary file opened for writing, on any filesystem."""
    return FileSystems.create(str(path))


def open_read(path: str) -> BinaryIO:
    """A binary file opened for reading, as stored (no decompression by extension)."""
    from apache_beam.io.filesystem import CompressionTypes

    return FileSystems.open(str(path), compression_type=CompressionTypes.UNCOMPRESSED)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(str(path)) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` aside, then rename it over ``path``: a crash or a full disk never leaves half a file.

    Local renames are atomic; object stores copy then delete, so a reader
    sees either the old object or the whole new one.
    """
    head, name = path.rsplit("/", 1) if "/" in path else (".", path)
    tmp = f"{head}/.{uuid.uuid4().hex[:8]}.{name}.tmp"  # never a prefix of ``path`` (object stores match prefixes)
    try:
        with create(tmp) as f:
            f.write(data)
        rename(tmp, path)
    finally:
        if exists(tmp):
            FileSystems.delete([tmp])


def rename(source: str, target: str) -> None:
    """Move a file over ``target`` (atomic on local disks)."""
    if is_url(target):
        delete([target])
        FileSystems.rename([source], [target])
    else:
        os.replace(source, target)


def write_text(path: str, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def delete(paths: list[str]) -> None:
    """Delete these files, never a directory (Beam's local delete would remove a whole tree); missing ones are
    ignored."""
    local = [p for p in paths if not is_url(p)]
    for path in local:
        if os.path.isdir(path) and not os.path.islink(path):
            raise IsADirectoryError(f"refusing to delete {path}: it is a directory, not a file this tool wrote")
    for path in local:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    remote = [p for p in paths if is_url(p) and exists(p)]
    if remote:
        FileSystems.delete(remote)


def copy_tree(source: str, target: str) -> list[str]:
    """Copy every file below ``source`` to the same place below ``target``; the files written."""
    written = []
    for path in list_tree(source):
        destination = join(target, relative(path, source))
        if not is_url(destination):
            os.makedirs(os.path.dirname(destination), exist_ok=True)
        with open_read(path) as f, create(destination) as g:
            while chunk := f.read(1 << 22):
                g.write(chunk)
        written.append(destination)
    return written


def prune_dirs(paths: list[str], root: str) -> None:
    """Remove the now empty directories that held ``paths``, up to (not including) ``root`` (local paths)."""
    if is_url(root):
        return
    root = os.path.abspath(root)
    parents = sorted({os.path.dirname(os.path.abspath(p)) for p in paths}, key=len, reverse=True)
    for parent in parents:
        while parent.startswith(root + os.sep) and os.path.isdir(parent) and not os.path.islink(parent):
            try:
                os.rmdir(parent)
            except OSError:
                break  # not empty
            parent = os.path.dirname(parent)


def remove_if_empty(directory: str) -> None:
    """Remove ``directory`` when no file is left below it (object stores: its entry, where one exists)."""
    if list_tree(directory):
        return
    if is_url(directory):
        if exists(directory):
            FileSystems.delete([directory])
    elif os.path.isdir(directory) and not os.listdir(directory):
        os.rmdir(directory)
