"""Every Beam job on Beam's portable runner and translated for Dataflow, offline.

- Portable: a local Job API server and an SDK worker pool run as separate
  processes (the submission path of a Flink or Spark cluster); embed, fit-pca
  and reduce are submitted with ``--runner PortableRunner --environment_type
  EXTERNAL`` and must produce what DirectRunner produces.
- Dataflow: each job's graph is translated with ``--dry_run=True`` (nothing
  is submitted, no network), with gs:// paths, and the translated pipeline
  proto is checked: our transforms are there and no local path leaked in.
"""
from __future__ import annotations

import re
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from core.dataset import EmbeddingDataset
from core.reducers import load_reducer
from pipelines import embed, fit_codec, fit_pca, reduce
from tests.fixtures import correlated_vectors, read_records, write_embedding_dataset, write_linear_reducer
from tests.hub_models import save_text_encoder
from tests.portable import portable_cluster
from transforms.embedding import EncoderModelHandler

REPO = Path(__file__).resolve().parents[1]
SENTENCES = [f"Company {c} reported {m} up {p}% in the quarter." for c in "ABCDEFGH"
             for m in ("revenue", "profit", "sales") for p in (3, 7)]


def _vectors(out) -> dict[str, np.ndarray]:
    return {r["id"]: r["embedding"] for r in read_records(out)}


@pytest.mark.slow  # separate processes (runner/crash): make test-slow
def test_jobs_on_the_portable_runner_match_direct_runner(tmp_path):
    hub = save_text_encoder(str(tmp_path / "hub"), 512)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    direct, portable = tmp_path / "direct", tmp_path / "portable"
    common = ["--encoder", f"tfhub:{hub}"]

    embed.main(["--input", str(corpus), "--output", str(direct / "emb"), *common])
    fit_pca.main(["--input", str(direct / "emb"), "--output", str(direct / "pca"), "--output_dim", "8"])
    reduce.main(["--input", str(direct / "emb"), "--reducer", str(direct / "pca"), "--output", str(direct / "red")])

    with portable_cluster(tmp_path) as cluster:
        jobs = [("pipelines.embed", "--input", str(corpus), "--output", str(portable / "emb"), *common),
                ("pipelines.fit_pca", "--input", str(portable / "emb"), "--output", str(portable / "pca"),
                 "--output_dim", "8", "--temp_dir", str(tmp_path / "tft_tmp")),
                ("pipelines.reduce", "--input", str(portable / "emb"), "--reducer", str(portable / "pca"),
                 "--output", str(portable / "red"))]
        for module, *args in jobs:
            result = cluster.run_module(module, *args, timeout=240)
            assert result.returncode == 0, f"{module} failed:\n{result.stderr[-4000:]}"

    a, b = _vectors(direct / "emb"), _vectors(portable / "emb")
    assert a.keys() == b.keys() and len(a) == len(SENTENCES)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    probe = correlated_vectors(20, 512, seed=5)
    np.testing.assert_allclose(np.abs(load_reducer(str(direct / "pca"))(probe)),
                               np.abs(load_reducer(str(portable / "pca"))(probe)), atol=1e-4)
    ra, rb = _vectors(direct / "red"), _vectors(portable / "red")
    assert ra.keys() == a.keys() and rb.keys() == a.keys()
    assert all(np.allclose(np.abs(ra[k]), np.abs(rb[k]), atol=1e-4) for k in ra)


def _dataflow_options() -> PipelineOptions:
    # --dry_run is a TestOptions flag: translate the job, submit nothing. (Any
    # value, even "False", parses as true, so it is only ever passed as True.)
    # --setup_file is the real one: workers would install this package from it.
    return PipelineOptions(["--runner=DataflowRunner", "--dry_run=True", "--project=fake-project",
                            "--region=us-central1", "--temp_location=gs://fake-bucket/tmp",
                            f"--setup_file={REPO / 'setup.py'}"])


def _translated(p: beam.Pipeline):
    p.run()
    proto = p.runner.proto_pipeline
    names = {t.unique_name for t in proto.components.transforms.values()}
    return names, proto.SerializeToString()


def _assert_no_local_paths(blob: bytes, *local_dirs) -> None:
    for d in local_dirs:
        assert str(d).encode() not in blob, f"local path {d} leaked into the Dataflow job"
    assert re.search(rb"gs://fake-bucket/", blob)


def _bucket_dataset(name: str) -> EmbeddingDataset:
    """A dataset on a bucket that does not exist: only its manifest and shard list are needed to translate."""
    manifest = {"kind": "embeddings", "dim": 512, "records": 10, "encoder": "use-m3", "has_text": True}
    return EmbeddingDataset(f"gs://fake-bucket/{name}", manifest, (f"gs://fake-bucket/{name}/data-00000-of-00001.tfrecord",))


def test_embed_translates_for_dataflow(tmp_path):
    p = beam.Pipeline(options=_dataflow_options())
    config = embed.EmbedConfig(input=("gs://fake-bucket/in/*.txt",), output="gs://fake-bucket/emb")
    embed.build(p, config, EncoderModelHandler("use-m3", 1024), 4, [_bucket_dataset("old")])
    names, blob = _translated(p)
    assert {"EmbedCorpus/ReadCorpus", "EmbedCorpus/Deduplicate", "EmbedCorpus/Embed", "WriteDataset/WriteShard",
            "DeadLetters/WriteDeadLetters", "Previous"} <= names
    _assert_no_local_paths(blob, tmp_path)


def test_fit_pca_translates_for_dataflow(tmp_path):
    tft_temp = tmp_path / "tft_temp"  # tf.Transform's own temp dir stays local in a dry run
    p = beam.Pipeline(options=_dataflow_options())
    config = fit_pca.FitPcaConfig(input="gs://fake-bucket/emb", output="gs://fake-bucket/pca")
    fit_pca.build(p, fit_pca.FitInputs([_bucket_dataset("emb")], 0.5, None), config, str(tft_temp))
    names, blob = _translated(p)
    assert {"FitRows/ReadDataset/ReadShard", "FitRows/Sample", "Analyze/AnalyzeDataset",
            "Analyze/WriteTransformFn"} <= names
    _assert_no_local_paths(blob.replace(str(tft_temp).encode(), b""), tmp_path)


@pytest.mark.parametrize("codec", ["int8", "pq"])
def test_fit_codec_translates_for_dataflow(tmp_path, codec):
    tft_temp = tmp_path / "tft_temp"
    reducer = write_linear_reducer(tmp_path / "pca", np.zeros(512), np.eye(512)[:, :128])
    p = beam.Pipeline(options=_dataflow_options())
    config = fit_codec.FitCodecConfig(input="gs://fake-bucket/emb", output="gs://fake-bucket/codec", codec=codec,
                                      reducer=reducer)
    fit_codec.build(p, [_bucket_dataset("emb")], config, 0.5, str(tft_temp), load_reducer(reducer))
    names, blob = _translated(p)
    step = "Analyze/AnalyzeDataset" if codec == "int8" else "TrainPQ"
    assert {"FitRows/ReadDataset/ReadShard", "FitRows/Sample", step, "DeadLetters/WriteDeadLetters"} <= names
    _assert_no_local_paths(blob.replace(str(tft_temp).encode(), b"").replace(reducer.encode(), b""), tmp_path)


@pytest.mark.parametrize("fmt", ["tfrecord", "parquet"])
def test_reduce_translates_for_dataflow(tmp_path, fmt):
    reducer = write_linear_reducer(tmp_path / "pca", np.zeros(512), np.eye(512)[:, :128])
    p = beam.Pipeline(options=_dataflow_options())
    config = reduce.ReduceConfig(reducer="gs://fake-bucket/pca", input="gs://fake-bucket/emb",
                                 output="gs://fake-bucket/red", format=fmt)
    reduce.build(p, config, _bucket_dataset("emb"), 512, True, _dataflow_options())
    names, blob = _translated(p)
    assert {"ReadDataset/ReadShard", "Reduce", "WriteDataset/WriteShard", "DeadLetters/WriteDeadLetters"} <= names
    _assert_no_local_paths(blob, reducer)


@pytest.mark.slow  # separate processes (runner/crash): make test-slow
def test_fit_pca_and_reduce_in_multi_processing_mode_match_in_memory(tmp_path):
    data = tmp_path / "emb"
    write_embedding_dataset(data, correlated_vectors(600, 512, seed=3), num_shards=3)
    mp = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    for name, extra in (("mem", []), ("mp", mp)):
        fit_pca.main(["--input", str(data), "--output", str(tmp_path / f"pca_{name}"), "--output_dim", "8", *extra])
    probe = correlated_vectors(20, 512, seed=5)
    np.testing.assert_allclose(load_reducer(str(tmp_path / "pca_mem"))(probe),
                               load_reducer(str(tmp_path / "pca_mp"))(probe), atol=1e-5)
    for name, extra in (("mem", []), ("mp", mp)):
        reduce.main(["--input", str(data), "--reducer", str(tmp_path / "pca_mem"),
                    "--output", str(tmp_path / f"red_{name}"), *extra])
    a, b = _vectors(tmp_path / "red_mem"), _vectors(tmp_path / "red_mp")
    assert a.keys() == b.keys() and len(a) == 600
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_local_embedding_uses_a_worker_process_per_core_for_large_inputs(tmp_path, monkeypatch):
    from apache_beam.options.pipeline_options import DirectOptions

    from transforms import runner as beam_runner

    monkeypatch.setattr(beam_runner, "available_cores", lambda: 2)
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    small.write_text("a\n")
    big.write_bytes(b"x\n" * (beam_runner.PARALLEL_MIN_BYTES // 2))

    def mode(options, paths):
        direct = beam_runner.with_local_workers(options, [str(p) for p in paths]).view_as(DirectOptions)
        return direct.direct_running_mode, direct.direct_num_workers

    assert mode(PipelineOptions([]), [small]) == ("in_memory", 1)
    assert mode(PipelineOptions([]), [big]) == ("multi_processing", 2)
    assert mode(PipelineOptions(["--direct_running_mode", "multi_threading"]), [big]) == ("multi_threading", 1)
    assert mode(PipelineOptions(["--direct_num_workers", "1"]), [big]) == ("in_memory", 1)
    assert mode(PipelineOptions(["--runner", "DataflowRunner"]), [big]) == ("in_memory", 1)
    assert mode(PipelineOptions([]), [big, "ram://corpus/a.txt"]) == ("in_memory", 1)
    monkeypatch.setattr(beam_runner, "available_cores", lambda: 1)
    assert mode(PipelineOptions([]), [big]) == ("in_memory", 1)


@pytest.mark.slow  # separate worker processes: make test-slow
def test_every_beam_job_runs_its_bundles_in_two_worker_processes(tmp_path):
    """embed, fit-pca, fit-codec (int8 and PQ) and reduce with --direct_num_workers=2: both processes do work
    (each job counts the processes its DoFns ran in), and the results equal the one-process run's."""
    hub = save_text_encoder(str(tmp_path / "hub"), 64)
    for i in range(6):  # 288 sentences: enough rows for a PQ codec's 256 centroids
        (tmp_path / f"part-{i}.txt").write_text("\n".join(f"{s} (part {i})" for s in SENTENCES) + "\n")
    mp = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    emb = embed.main(["--input", str(tmp_path / "part-*.txt"), "--output", str(tmp_path / "emb"), "--embedding_dim",
                      "64", "--encoder", f"tfhub:{hub}", "--num_shards", "4", *mp])
    pca = fit_pca.main(["--input", str(tmp_path / "emb"), "--output", str(tmp_path / "pca"), "--output_dim", "8",
                        "--batch_size", "16", *mp])
    int8 = fit_codec.main(["--input", str(tmp_path / "emb"), "--output", str(tmp_path / "i8"), "--codec", "int8",
                           "--batch_size", "16", *mp])
    pq = fit_codec.main(["--input", str(tmp_path / "emb"), "--output", str(tmp_path / "pq"), "--codec", "pq",
                         "--m", "8", "--no-opq", "--batch_size", "16", *mp])
    red = reduce.main(["--input", str(tmp_path / "emb"), "--reducer", str(tmp_path / "pca"), "--output",
                       str(tmp_path / "red"), "--batch_size", "16", *mp])
    assert [m["worker_processes"] for m in (emb, pca, int8, pq, red)] == [2] * 5
    one = reduce.main(["--input", str(tmp_path / "emb"), "--reducer", str(tmp_path / "pca"), "--output",
                       str(tmp_path / "red1"), "--batch_size", "16", "--direct_num_workers=1"])
    assert one["worker_processes"] == 1
    for shard in sorted((tmp_path / "red").glob("data-*")):
        assert shard.read_bytes() == (tmp_path / "red1" / shard.name).read_bytes()
