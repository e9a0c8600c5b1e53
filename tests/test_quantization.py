"""Dense precision codecs: hand-worked int8 codes, exact clip counts, calibration reference, float16."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core import quantization as qz


def _random(n=500, k=16, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, k)).astype(np.float32)


def test_int8_hand_values_and_round_half_to_even():
    # dim 0: [0, 255] -> scale 1; dim 1: [-10, 117.5] -> scale 0.5
    codec = qz.Int8Codec(np.array([0.0, -10.0]), np.array([255.0, 117.5]))
    x = np.array([[0.0, -10.0], [255.0, 117.5], [2.5, -9.74], [3.5, 0.0]], dtype=np.float32)
    codes, clipped = codec.encode(x)
    assert codes.dtype == np.int8 and clipped == 0
    # 2.5 and 3.5 are halfway: rint rounds to even (2, 4); -9.74 -> 0.26 / 0.5 = 0.52 -> 1; 0 -> 20 steps
    np.testing.assert_array_equal(codes, [[-128, -128], [127, 127], [-126, -127], [-124, -108]])
    np.testing.assert_array_equal(codec.decode(codes), [[0, -10], [255, 117.5], [2, -9.5], [4, 0]])


def test_int8_round_trip_error_is_at_most_half_a_step():
    x = _random()
    codec = qz.Int8Codec(*qz.calibrate(x))
    codes, clipped = codec.encode(x)
    assert clipped == 0
    assert codes.min() == -128 and codes.max() == 127
    err = np.abs(codec.decode(codes) - x)
    assert (err <= codec.scale / 2 * (1 + 1e-5) + 1e-7).all()
    assert err.max() > codec.scale.min() / 10  # a real quantization, not a pass-through


def test_int8_clipping_is_counted_exactly_and_clipped_to_the_range():
    codec = qz.Int8Codec(np.array([-1.0, 0.0, 5.0]), np.array([1.0, 2.0, 6.0]))
    x = np.array([[-1.0, 2.0, 5.5],     # on the bounds: not clipped
                  [-1.5, 3.0, 4.0],     # three values outside
                  [1.0001, -0.1, 6.0]], dtype=np.float32)  # two outside
    codes, clipped = codec.encode(x)
    assert clipped == 5
    decoded = codec.decode(codes)
    np.testing.assert_allclose(decoded[1], [-1.0, 2.0, 5.0], atol=1e-6)
    np.testing.assert_allclose(decoded[2, :2], [1.0, 0.0], atol=1e-6)


def test_int8_zero_width_range_decodes_to_the_constant():
    codec = qz.Int8Codec(np.array([3.0, 0.0]), np.array([3.0, 1.0]))
    codes, clipped = codec.encode(np.array([[3.0, 0.5], [4.0, 0.5]], dtype=np.float32))
    assert clipped == 1  # the 4.0 in the constant dimension
    decoded = codec.decode(codes)
    assert np.isfinite(decoded).all()
    np.testing.assert_array_equal(decoded[:, 0], [3.0, 3.0])


@pytest.mark.parametrize("lo, hi", [([0.0, 1.0], [1.0]), ([[0.0]], [[1.0]]), ([], []),
                                    ([1.0], [0.0]), ([np.nan], [1.0])])
def test_int8_rejects_bad_ranges(lo, hi):
    with pytest.raises(ValueError):
        qz.Int8Codec(np.array(lo), np.array(hi))


def test_int8_validates_shapes_and_values():
    codec = qz.Int8Codec(np.zeros(4), np.ones(4))
    with pytest.raises(ValueError, match="4 dimensions"):
        codec.encode(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="2-d"):
        codec.encode(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(np.full((1, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="int8"):
        codec.decode(np.zeros((1, 4), np.uint8))


@pytest.mark.parametrize("codec", [qz.Int8Codec(np.array([-0.1234567, 0.0]), np.array([0.98765432, 1e-3])),
                                   qz.Float16Codec(), qz.Float32Codec()])
def test_to_dict_is_json_and_round_trips(codec):
    x = np.random.default_rng(1).uniform(-0.2, 1.0, size=(50, 2)).astype(np.float32)
    restored = qz.codec_from_dict(json.loads(json.dumps(codec.to_dict())))
    assert type(restored) is type(codec)
    a, b = codec.encode(x), restored.encode(x)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    np.testing.assert_array_equal(codec.decode(a[0]), restored.decode(b[0]))


@pytest.mark.parametrize("d", [{}, {"precision": "int4"}, {"precision": "int8", "lo": [0.0]}, "int8"])
def test_codec_from_dict_rejects_bad_descriptions(d):
    with pytest.raises(ValueError):
        qz.codec_from_dict(d)


def test_calibrate_minmax_is_the_column_extremes():
    x = _random()
    lo, hi = qz.calibrate(x)
    np.testing.assert_array_equal(lo, x.min(axis=0))
    np.testing.assert_array_equal(hi, x.max(axis=0))
    assert lo.dtype == np.float32


def test_float16_round_trip_and_overflow_clipping():
    x = _random()
    codes, clipped = qz.Float16Codec().encode(x)
    assert codes.dtype == np.float16 and clipped == 0
    decoded = qz.Float16Codec().decode(codes)
    assert decoded.dtype == np.float32
    assert (np.abs(decoded - x) <= np.abs(x) * 2.0 ** -11 + 2.0 ** -25).all()
    assert (decoded != x).any()
    big = np.array([[1e5, -7e4, 65504.0, 1.0]], dtype=np.float32)
    codes, clipped = qz.Float16Codec().encode(big)
    assert clipped == 2
    np.testing.assert_array_equal(qz.Float16Codec().decode(codes), [[65504, -65504, 65504, 1]])


def test_float32_is_an_identity_that_copies():
    x = _random()
    codes, clipped = qz.Float32Codec().encode(x)
    assert clipped == 0 and codes.dtype == np.float32
    codes[0, 0] += 1
    assert codes[0, 0] != x[0, 0]
    np.testing.assert_array_equal(qz.Float32Codec().decode(codes[1:]), x[1:])


def test_bytes_per_vector():
    assert [qz.bytes_per_vector(512, p) for p in qz.PRECISIONS] == [2048, 1024, 512]
    assert qz.bytes_per_vector(128, "int8") == 128
    with pytest.raises(ValueError):
        qz.bytes_per_vector(128, "int4")
    with pytest.raises(ValueError):
        qz.bytes_per_vector(0, "int8")


def test_fit_codec_calibrates_int8_only():
    x = _random()
    assert isinstance(qz.fit_codec("float16"), qz.Float16Codec)
    codec = qz.fit_codec("int8", x)
    np.testing.assert_array_equal(codec.lo, x.min(axis=0))
    with pytest.raises(ValueError):
        qz.fit_codec("int8")
