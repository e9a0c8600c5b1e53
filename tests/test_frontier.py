"""The frontier: choosing the representation within a budget, and the plot."""
from __future__ import annotations

import io

import pytest

from core.errors import InputError
from core.evaluation import frontier


def _rows():
    return [
        {"name": "raw float32", "family": "raw", "bytes_per_vector": 2048, "recall@10": 1.0, "sts_fidelity": 1.0},
        {"name": "raw int8", "family": "raw", "bytes_per_vector": 512, "recall@10": 0.995, "sts_fidelity": 0.9999},
        {"name": "PCA-256 int8", "family": "PCA", "bytes_per_vector": 256, "recall@10": 0.86},
        {"name": "OPQ128", "family": "PQ", "bytes_per_vector": 128, "recall@10": 0.87, "sts_fidelity": 0.97},
        {"name": "PCA-128 f32", "family": "PCA", "bytes_per_vector": 512, "recall@10": 0.995, "sts_fidelity": 0.99},
        {"name": "OPQ64", "family": "PQ", "bytes_per_vector": 64, "recall@10": 0.77, "sts_fidelity": 0.95},
    ]


def test_choose_best_recall_within_budget_and_tie_breaks():
    rows = _rows()
    assert frontier.choose(rows, 4096)["name"] == "raw float32"
    assert frontier.choose(rows, 600)["name"] == "raw int8"  # recall tie with PCA-128 f32: higher fidelity
    assert frontier.choose(rows, 300)["name"] == "OPQ128"  # 0.87 beats PCA-256's 0.86
    assert frontier.choose(rows, 64)["name"] == "OPQ64"  # budget is inclusive
    rows[1]["sts_fidelity"] = rows[4]["sts_fidelity"]
    rows[4]["bytes_per_vector"] = 500  # now a full tie but for bytes: fewer wins
    assert frontier.choose(rows, 600)["name"] == "PCA-128 f32"
    rows[4]["sts_fidelity"] = None  # a missing fidelity loses a recall tie
    assert frontier.choose(rows, 600)["name"] == "raw int8"


def test_choose_nothing_fits_names_the_smallest():
    with pytest.raises(InputError, match="fits 32 bytes per vector; the smallest is OPQ64 at 64 bytes"):
        frontier.choose(_rows(), 32)
    with pytest.raises(InputError):
        frontier.choose([], 1000)


def test_plot_frontier_writes_a_png(tmp_path):
    from matplotlib import image

    path = tmp_path / "frontier.png"
    frontier.plot_frontier(_rows(), "OPQ128", str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.imread(str(path)).shape[:2] == (500, 800)
    buffer = io.BytesIO()
    frontier.plot_frontier(_rows(), "raw int8", buffer)
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n" and buffer.getvalue() != data
    with pytest.raises(ValueError, match="not among the rows"):
        frontier.plot_frontier(_rows(), "PCA-512", io.BytesIO())
