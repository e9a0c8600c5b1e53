"""The STS benchmark: parse local or remote copies, or download the official archive once.

Loaders return plain Python lists, so the evaluate job, the benchmarks and
the tests share them without Beam or TF.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

from core.evaluation.textfiles import is_file, join, read_bytes

STS_SPLITS = ("train", "dev", "test")
STS_URL = "http://ixa2.si.ehu.eus/stswiki/images/4/48/Stsbenchmark.tar.gz"
# SHA-256 of the three split files of the official release (computed from the
# files as distributed; no digest of the archive itself is published). Every
# copy read, downloaded or given with --sts_dir, is checked against them.
STS_SHA256 = {"train": "0f71910b59aa1ad973c5897f0791f3b0965a92b8f82b1a95f3eea9f4162fda82",
              "dev": "5d7e944d8b02734b07bfdb5df67db3420c64bed153fcaa1ba47ad03480cf4234",
              "test": "affe45928a66ee5a708531233c95b7dacbbdc57f974f002a3d32ea0180cf816a"}
ARCHIVE = "Stsbenchmark.tar.gz"
# Downloads go here; USE_SHRINK_CACHE moves it (e.g. where HOME is read-only).
DEFAULT_CACHE_DIR = Path(os.environ.get("USE_SHRINK_CACHE") or Path.home() / ".cache" / "use-shrink")

StsPair = tuple[str, str, float]


class DataUnavailableError(RuntimeError):
    """Evaluation data is not available locally and cannot be fetched; the message says how to provide it."""


class ChecksumError(RuntimeError):
    """A copy of the data does not have the pinned SHA-256: damaged, or not the official release."""


def _sts_help(reason: str) -> str:
    return (f"STS benchmark unavailable ({reason}). Provide it with --sts_dir DIR, a directory holding "
            f"sts-train.csv, sts-dev.csv and sts-test.csv (extract {STS_URL}), or put the archive "
            f"{ARCHIVE} in {DEFAULT_CACHE_DIR}/, or run once with network access to download it.")


def parse_sts_lines(lines, source: str) -> list[StsPair]:
    """Parse STS benchmark rows: genre, file, year, id, score, sentence1, sentence2[, licence fields].

    Fields are tab-separated with no quoting (sentences contain quote marks,
    so csv readers must not be used). Bad rows raise with file and line.
    """
    pairs = []
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 7:
            raise ValueError(f"{source}:{n}: expected >= 7 tab-separated fields, got {len(fields)}")
        try:
            score = float(fields[4])
        except ValueError:
            raise ValueError(f"{source}:{n}: score {fields[4]!r} is not a number") from None
        if not 0.0 <= score <= 5.0:
            raise ValueError(f"{source}:{n}: score {score} outside [0, 5]")
        s1, s2 = fields[5].strip(), fields[6].strip()
        if not s1 or not s2:
            raise ValueError(f"{source}:{n}: empty sentence")
        pairs.append((s1, s2, score))
    return pairs


def parse_split(data: bytes, name: str, where: str, verify: bool = True) -> list[StsPair]:
    """One split's pairs from its file's bytes, checked against the pinned digest when ``verify``."""
    if verify and hashlib.sha256(data).hexdigest() != STS_SHA256[name]:
        raise ChecksumError(f"{where}: sts-{name}.csv is not the official STS benchmark file (SHA-256 "
                            f"{hashlib.sha256(data).hexdigest()[:16]}..., expected {STS_SHA256[name][:16]}...)")
    return parse_sts_lines(io.StringIO(data.decode("utf-8"), newline=None), f"{where}/sts-{name}.csv")


def read_sts_dir(directory: str | os.PathLike, verify: bool = True) -> dict[str, list[StsPair]]:
    """Read ``sts-{train,dev,test}.csv`` from ``directory`` (or its ``stsbenchmark/`` subfolder).

    ``directory`` is a local path or a URL of any filesystem Beam supports.
    """
    if not is_file(join(directory, "sts-test.csv")) and is_file(join(directory, "stsbenchmark", "sts-test.csv")):
        directory = join(directory, "stsbenchmark")
    splits = {}
    for name in STS_SPLITS:
        path = join(directory, f"sts-{name}.csv")
        if not is_file(path):
            raise DataUnavailableError(_sts_help(f"{path} not found"))
        splits[name] = parse_split(read_bytes(path), name, str(directory), verify)
    return splits


def read_sts_archive(archive: str | os.PathLike, verify: bool = True) -> dict[str, list[StsPair]]:
    """Read the splits straight from the official ``.tar.gz`` (nothing is extracted to disk)."""
    splits = {}
    with tarfile.open(archive, "r:*") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        for name in STS_SPLITS:
            member = members.get(f"sts-{name}.csv")
            if member is None:
                raise ChecksumError(f"{archive} holds no sts-{name}.csv: not the STS benchmark archive")
            splits[name] = parse_split(tar.extractfile(member).read(), name, str(archive), verify)
    return splits


def download(cache_dir: str | os.PathLike, url: str = STS_URL) -> Path:
    """The archive in ``cache_dir``, downloaded once with Keras's ``get_file`` (atomic, resumable)."""
    import keras

    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)  # else get_file silently falls back to /tmp/.keras
        return Path(keras.utils.get_file(ARCHIVE, origin=url, cache_dir=str(cache_dir), cache_subdir="."))
    except Exception as e:  # noqa: BLE001 - get_file wraps network errors in Exception
        raise DataUnavailableError(_sts_help(f"download from {url} failed: {e}")) from e


def load_sts(directory: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
             download_missing: bool = True, url: str = STS_URL) -> dict[str, list[StsPair]]:
    """STS benchmark splits ``{"train"|"dev"|"test": [(sentence1, sentence2, score 0..5), ...]}``.

    Order of preference: ``directory`` when given (an error if it is not a
    valid copy); else the archive cached in ``cache_dir``; else download it
    once from ``url`` (when ``download_missing``). Every copy must match the
    pinned digests; a downloaded archive that does not is deleted. Raises
    DataUnavailableError, whose message says how to provide the data, when
    none of these works.
    """
    if directory is not None:
        return read_sts_dir(directory)
    archive = Path(cache_dir) / ARCHIVE
    if not archive.exists():
        if not download_missing:
            raise DataUnavailableError(_sts_help(f"no {archive} and downloading is off"))
        archive = download(cache_dir, url)
    try:
        return read_sts_archive(archive)
    except (ChecksumError, tarfile.TarError, EOFError) as e:
        archive.unlink(missing_ok=True)
        raise ChecksumError(f"{e} (the cached archive was deleted; the next run downloads it again)") from e


def sts_sentences(splits: dict[str, list[StsPair]], names=("train", "dev")) -> list[str]:
    """Unique sentences of the given splits in first-seen order (training text for reducers)."""
    seen = dict.fromkeys(s for name in names for s1, s2, _ in splits[name] for s in (s1, s2))
    return list(seen)


# --------------------------------------------------------------------------- financial corpus
