"""A job killed with SIGKILL mid-way, then re-run, gives the output of an uninterrupted run.

Outputs are committed atomically: Beam's file sinks write to temporary files
and rename them at the end, and our manifest is written last, so a killed
run leaves no manifest and downstream jobs refuse its directory; the re-run
clears the leftovers before writing.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from core import manifests
from core.errors import ArtifactError
from core.reducers import load_reducer
from pipelines import embed, fit_pca, reduce, sample_corpus
from tests.fixtures import correlated_vectors, read_records, write_embedding_dataset
from tests.hub_models import save_text_encoder

pytestmark = pytest.mark.slow  # SIGKILLed subprocesses: make test-slow


def kill_when(marker: str, args: list[str], delay: float = 0.0, timeout: float = 240) -> None:
    """Start ``python -m args``, SIGKILL its process group ``delay`` s after ``marker`` appears in its log."""
    env = {**os.environ, "SHRINK_LOG_LEVEL": "DEBUG"}  # Beam's own progress lines are the markers
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=env)
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stderr:
            if marker in line:
                time.sleep(delay)
                break
            if time.monotonic() > deadline:
                break
        else:
            pytest.fail(f"{args[0]} ended before logging {marker!r}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _assert_killed_midway(out) -> None:
    assert not (out / manifests.MANIFEST).exists(), "the job finished before it was killed"
    with pytest.raises(ArtifactError, match="incomplete"):
        manifests.read(str(out))


def _vectors(out):
    return {r["id"]: r["embedding"] for r in read_records(out)}


def test_embed_killed_midway_then_rerun(tmp_path):
    corpus = tmp_path / "corpus.txt"
    sample_corpus.write(str(corpus), 40_000, seed=2)
    hub = save_text_encoder(str(tmp_path / "hub"), 512)  # the model is not the point here: a fast test encoder
    args = ["--input", str(corpus), "--encoder", f"tfhub:{hub}"]
    kill_when("loading encoder", ["pipelines.embed", *args, "--output", str(tmp_path / "killed")], delay=1)
    _assert_killed_midway(tmp_path / "killed")
    assert (tmp_path / "killed" / ".shrink.lock").exists()  # left by the killed process: taken over below
    resumed = embed.main([*args, "--output", str(tmp_path / "killed")])
    clean = embed.main([*args, "--output", str(tmp_path / "clean")])
    assert resumed["counts"] == clean["counts"] and resumed["files"] == clean["files"]
    a, b = _vectors(tmp_path / "killed"), _vectors(tmp_path / "clean")
    assert a.keys() == b.keys() and len(a) == 40_000
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    directory = tmp_path_factory.mktemp("emb")
    write_embedding_dataset(directory, correlated_vectors(20_000, 512, seed=4), num_shards=4)
    return directory


def test_fit_pca_killed_midway_then_rerun(tmp_path, dataset):
    args = ["--input", str(dataset), "--output_dim", "16"]
    kill_when("Creating state cache", ["pipelines.fit_pca", *args, "--output", str(tmp_path / "killed")])
    _assert_killed_midway(tmp_path / "killed")
    fit_pca.main([*args, "--output", str(tmp_path / "killed")])
    fit_pca.main([*args, "--output", str(tmp_path / "clean")])
    probe = correlated_vectors(50, 512, seed=8)
    np.testing.assert_allclose(load_reducer(str(tmp_path / "killed"))(probe),
                               load_reducer(str(tmp_path / "clean"))(probe), atol=1e-5)


def test_reduce_killed_midway_then_rerun(tmp_path, dataset):
    from tests.fixtures import write_linear_reducer

    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(512, 512)))[0][:, :64]
    reducer = write_linear_reducer(tmp_path / "pca", np.zeros(512), basis)
    args = ["--input", str(dataset), "--reducer", reducer, "--batch_size", "64"]
    kill_when("Creating state cache", ["pipelines.reduce", *args, "--output", str(tmp_path / "killed")])
    _assert_killed_midway(tmp_path / "killed")
    reduce.main([*args, "--output", str(tmp_path / "killed")])
    reduce.main([*args, "--output", str(tmp_path / "clean")])
    a, b = _vectors(tmp_path / "killed"), _vectors(tmp_path / "clean")
    assert a.keys() == b.keys() and len(a) == 20_000
    assert all(np.array_equal(a[k], b[k]) for k in a)
