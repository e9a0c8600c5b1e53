"""Dense precision codecs: float32, float16 and calibrated int8, behind one interface.

Every codec has ``encode(x float32 [n, k]) -> (codes, clipped)`` and
``decode(codes) -> float32 [n, k]``, and ``to_dict()`` with plain JSON-able
values (``codec_from_dict`` reads any of them back), so the jobs treat every
precision alike and store the codec in a JSON manifest or a SavedModel.

int8 is a per-dimension affine code over a calibrated range ``[lo_j, hi_j]``
using all 256 levels -128..127 (float32 arithmetic, round half to even, as
``np.rint`` and ``tf.round`` both do)::

    scale_j = (hi_j - lo_j) / 255              (1 where hi_j == lo_j)
    code    = rint((clip(x, lo_j, hi_j) - lo_j) / scale_j) - 128
    decoded = (code + 128) * scale_j + lo_j

so ``lo_j`` and ``hi_j`` decode exactly; values outside the range are clipped
to it and counted.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

PRECISIONS = ("float32", "float16", "int8")
_BYTES = {"float32": 4, "float16": 2, "int8": 1}
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_LEVELS = 255  # int8 steps between lo and hi


def bytes_per_vector(dim: int, precision: str) -> int:
    """Stored bytes of one ``dim``-dimensional vector at ``precision``."""
    if precision not in _BYTES:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return dim * _BYTES[precision]


def _as_matrix(x: np.ndarray, dim: int | None, name: str = "x") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array [n, dim], got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has {x.shape[1]} columns, the codec has {dim} dimensions")
    return x


def _finite_float32(x: np.ndarray, dim: int | None) -> np.ndarray:
    x = _as_matrix(x, dim).astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or inf; only finite vectors can be encoded")
    return x


class Float32Codec:
    """Identity: full precision (4 bytes per value), never clips."""

    precision = "float32"

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        return _finite_float32(x, None).copy(), 0

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return _as_matrix(codes, None, "codes").astype(np.float32)

    def to_dict(self) -> dict:
        return {"precision": self.precision}


class Float16Codec:
    """IEEE half precision; values beyond +-65504 (float16's largest) are clipped and counted."""

    precision = "float16"

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        x = _finite_float32(x, None)
        clipped = int(np.count_nonzero(np.abs(x) > _FLOAT16_MAX))
        return np.clip(x, -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16), clipped

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = _as_matrix(codes, None, "codes")
        if codes.dtype != np.float16:
            raise ValueError(f"float16 codes must have dtype float16, got {codes.dtype}")
        return codes.astype(np.float32)

    def to_dict(self) -> dict:
        return {"precision": self.precision}


class Int8Codec:
    """Per-dimension affine int8 over calibrated ranges ``[lo, hi]`` (see the module docstring)."""

    precision = "int8"

    def __init__(self, lo: np.ndarray, hi: np.ndarray):
        lo = np.asarray(lo, dtype=np.float32)
        hi = np.asarray(hi, dtype=np.float32)
        if lo.ndim != 1 or lo.size == 0 or lo.shape != hi.shape:
            raise ValueError(f"lo and hi must be non-empty 1-d arrays of equal length, got {lo.shape} and {hi.shape}")
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise ValueError("lo and hi must be finite")
        if (hi < lo).any():
            j = int(np.flatnonzero(hi < lo)[0])
            raise ValueError(f"range of dimension {j} is inverted: lo {lo[j]} > hi {hi[j]}")
        self.lo, self.hi = lo, hi
        width = hi - lo
        # A zero-width range (a constant dimension) decodes every code to lo.
        self.scale = np.where(width > 0, width / np.float32(_LEVELS), np.float32(1)).astype(np.float32)

    @property
    def dim(self) -> int:
        return self.lo.size

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """(int8 codes [n, dim], number of values outside [lo, hi] that were clipped)."""
        x = _finite_float32(x, self.dim)
        clipped = int(np.count_nonzero((x < self.lo) | (x > self.hi)))
        steps = np.rint((np.clip(x, self.lo, self.hi) - self.lo) / self.scale)  # 0 .. 255
        return (steps - 128).astype(np.int8), clipped

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = _as_matrix(codes, self.dim, "codes")
        if codes.dtype != np.int8:
            raise ValueError(f"int8 codes must have dtype int8, got {codes.dtype}")
        return (codes.astype(np.float32) + np.float32(128)) * self.scale + self.lo

    def to_dict(self) -> dict:
        return {"precision": self.precision, "lo": self.lo.tolist(), "hi": self.hi.tolist()}


DenseCodec = Float32Codec | Float16Codec | Int8Codec


def codec_from_dict(d: Mapping) -> DenseCodec:
    """The codec a ``to_dict()`` described (ValueError naming what is wrong otherwise)."""
    precision = d.get("precision") if isinstance(d, Mapping) else None
    if precision == "float32":
        return Float32Codec()
    if precision == "float16":
        return Float16Codec()
    if precision == "int8":
        if not isinstance(d.get("lo"), list) or not isinstance(d.get("hi"), list):
            raise ValueError("an int8 codec needs 'lo' and 'hi' lists")
        return Int8Codec(np.array(d["lo"], dtype=np.float64), np.array(d["hi"], dtype=np.float64))
    raise ValueError(f"unknown codec precision {precision!r}; expected one of {', '.join(PRECISIONS)}")


def calibrate(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension int8 range ``(lo, hi)`` (float32 [k] each): the column minimum and maximum of ``x``
    (``tft.min`` / ``tft.max``, as fit-codec computes them), so nothing in ``x`` clips."""
    x = _finite_float32(x, None)
    if x.shape[0] == 0:
        raise ValueError("calibration needs at least one row")
    return x.min(axis=0), x.max(axis=0)


def fit_codec(precision: str, x: np.ndarray | None = None) -> DenseCodec:
    """A codec for ``precision``; int8 is calibrated on the rows of ``x``."""
    if precision == "float32":
        return Float32Codec()
    if precision == "float16":
        return Float16Codec()
    if precision == "int8":
        if x is None:
            raise ValueError("an int8 codec needs calibration rows x")
        return Int8Codec(*calibrate(x))
    raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
