"""The quality-per-byte frontier: choosing the representation to store within a budget, and plotting it."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import IO

from core.errors import InputError


def _fidelity(row: Mapping) -> float:
    value = row.get("sts_fidelity")
    return -math.inf if value is None or math.isnan(value) else float(value)


def choose(rows: Sequence[Mapping], budget_bytes: float) -> Mapping:
    """The representation to store within ``budget_bytes`` per vector.

    Highest ``recall@10`` among rows with ``bytes_per_vector <= budget_bytes``;
    ties go to the higher ``sts_fidelity`` (a missing one loses), then to fewer
    bytes, then to the earlier row. InputError naming the smallest representation
    when none fits.
    """
    if not rows:
        raise InputError("no representations were evaluated, so none can be chosen")
    fits = [r for r in rows if r["bytes_per_vector"] <= budget_bytes]
    if not fits:
        smallest = min(rows, key=lambda r: r["bytes_per_vector"])
        raise InputError(f"no representation fits {budget_bytes:g} bytes per vector; the smallest is "
                         f"{smallest['name']} at {smallest['bytes_per_vector']:g} bytes per vector")
    return max(fits, key=lambda r: (r["recall@10"], _fidelity(r), -r["bytes_per_vector"]))


def plot_frontier(rows: Sequence[Mapping], chosen_name: str, path_or_fileobj: str | IO[bytes]) -> None:
    """PNG of recall@10 against bytes per vector (log axis), one line per family, the chosen row marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    chosen = [r for r in rows if r["name"] == chosen_name]
    if not chosen:
        raise ValueError(f"chosen representation {chosen_name!r} is not among the rows")
    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for family in sorted({r["family"] for r in rows}):
        points = sorted((r["bytes_per_vector"], r["recall@10"]) for r in rows if r["family"] == family)
        ax.plot(*zip(*points), marker="o", label=family)
    best = chosen[0]
    ax.scatter([best["bytes_per_vector"]], [best["recall@10"]], s=250, marker="*", color="black", zorder=3,
               label="chosen")
    ax.annotate(f"{best['name']}\n{best['bytes_per_vector']:g} B, recall@10 {best['recall@10']:.3f}",
                (best["bytes_per_vector"], best["recall@10"]), textcoords="offset points", xytext=(10, -28))
    ax.set_xscale("log", base=2)
    sizes = [r["bytes_per_vector"] for r in rows]
    ticks = [2 ** i for i in range(math.floor(math.log2(min(sizes))), math.ceil(math.log2(max(sizes))) + 1)]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("bytes per vector (log scale)")
    ax.set_ylabel("recall@10 vs raw-512 exact top-10")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path_or_fileobj, format="png")
