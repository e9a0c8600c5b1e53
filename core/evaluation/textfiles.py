"""Text files from a local path or a URL of any filesystem Beam supports (gs://...).

The evaluation loaders read small files (STS splits, golden sets). Local
paths use the standard library; URLs go through the shared filesystem layer,
imported only when a URL needs it.
"""
from __future__ import annotations

import io
import os
from pathlib import Path


def is_url(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def join(directory: str | os.PathLike, *parts: str) -> str:
    if is_url(directory):
        from core import files  # Beam's FileSystems, only where a URL needs them

        return files.join(str(directory), *parts)
    return str(Path(directory, *parts))


def is_file(path: str) -> bool:
    if is_url(path):
        from core import files

        return files.exists(path)
    return Path(path).is_file()


def open_text(path: str, encoding: str = "utf-8") -> io.TextIOBase:
    """A text file from a local path or any filesystem Beam supports (gs://, s3://...)."""
    if is_url(path):
        from core import files

        return io.StringIO(files.read_bytes(path).decode(encoding), newline=None)  # newlines as open() reads them
    return open(path, encoding=encoding)



def read_bytes(path: str) -> bytes:
    if is_url(path):
        from core import files

        return files.read_bytes(path)
    return Path(path).read_bytes()
