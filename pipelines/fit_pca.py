"""fit-pca: fit the PCA reducer on an embedding dataset with tf.Transform.

    shrink fit-pca --input out/embeddings --output out/pca --output_dim 128

Streams the shards as Arrow record batches (TFXIO) into
``tft_beam.AnalyzeDataset`` -- never ``AnalyzeAndTransformDataset``, which
holds the whole input in memory -- and writes a reducer artifact:
``transform_fn/`` and ``transformed_metadata/`` (tf.Transform), ``head/`` (a
plain SavedModel, see pipelines.reducers) built from the analyzer results read
back out of the transform_fn, and ``manifest.json`` (written last).

Centering: ``tft.pca`` returns eigenvectors of the *centered* covariance but
multiplying them with raw ``x`` keeps the mean's projection in every output.
``--center`` (default) subtracts ``tft.mean`` first, the textbook PCA.
Measured on STS-B with USE (fit on train+dev sentences, test pairs; see
benchmarks/RESULTS.md): at 128 dims centering keeps the human-score Spearman
at 0.798 vs 0.789 uncentered (raw 512-d: 0.801) while fidelity to the raw
cosines is 0.984 vs 0.985; at 64 dims centering wins both (fidelity 0.954 vs
0.947). ``--no-center`` reproduces plain ``tft.pca`` usage.

Query-aware fit: when the corpus will be searched with another kind of text
than it holds (questions against report paragraphs), ``--query_input`` adds an
embedded sample of such queries, repeated so that they carry ``--query_share``
of the fit's rows. PCA then keeps the directions the queries vary along too.
Measured on TAT-QA (benchmarks/RESULTS.md): the share picked on held-out dev
queries (0.5) turns PCA-128's global nDCG@10 loss from 2.4% into a gain.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import tempfile
import time

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tensorflow_transform.beam as tft_beam
from apache_beam.metrics import Metrics
from tensorflow_transform.tf_metadata import schema_utils
from threadpoolctl import threadpool_limits
from tfx_bsl.public import tfxio

from pipelines.common import artifacts, records, reducers
from pipelines.common.artifacts import ArtifactError
from pipelines.common.beam_runner import counter_values, create_pipeline, parse_job_args, run_and_wait
from transforms import pca as pca_transform

log = logging.getLogger(__name__)
NAMESPACE = "fit_pca"
TRANSFORM_FN = "transform_fn"
TRANSFORMED_METADATA = "transformed_metadata"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="shrink fit-pca", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="embedding dataset directory (shards, schema, manifest)")
    parser.add_argument("--extra_input", action="append", default=[],
                        help="more embedding datasets fitted on together with --input (e.g. a corpus's increments)")
    parser.add_argument("--query_input", help="embedding dataset of sample queries the corpus will serve "
                                              "(e.g. questions), fitted on with weight --query_share")
    parser.add_argument("--query_share", type=float, default=0.5,
                        help="share of the fit's rows the repeated --query_input rows make up, in (0, 1)")
    parser.add_argument("--output", required=True, help="reducer artifact directory to write")
    parser.add_argument("--output_dim", type=int, default=128, help="kept components, 1..input dim")
    parser.add_argument("--center", action=argparse.BooleanOptionalAction, default=True,
                        help="subtract the mean before projecting (default: on)")
    parser.add_argument("--l2_normalize", action="store_true", help="scale reduced vectors to unit length")
    sample = parser.add_mutually_exclusive_group()
    sample.add_argument("--sample_fraction", type=float, help="fit on about this fraction of the rows")
    sample.add_argument("--sample_count", type=int,
                        help="fit on about this many rows (fraction = count / rows in the input manifest)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed: same seed, same rows")
    parser.add_argument("--batch_size", type=int, default=1000, help="rows per Arrow record batch")
    parser.add_argument("--temp_dir", help="tf.Transform temp dir (default: a local temp dir, removed after)")
    parser.add_argument("--overwrite", action="store_true", help="replace an output holding a different run")
    return parser


def shard_pattern(directory: str) -> str:
    return artifacts.join(directory, "data-*.tfrecord*")


def input_shards(directory: str) -> list[str]:
    shards = artifacts.list_files(shard_pattern(directory))
    if not shards:
        raise ArtifactError(f"{directory} holds no data-*.tfrecord shards")
    return shards


def sample_fraction(opts: argparse.Namespace, source: dict) -> float:
    if opts.sample_fraction is not None:
        if not 0 < opts.sample_fraction <= 1:
            raise ValueError(f"--sample_fraction must be in (0, 1], got {opts.sample_fraction}")
        return opts.sample_fraction
    if opts.sample_count is not None:
        total = (source.get("counts") or {}).get("embedded")
        if not total:
            raise ValueError(f"--sample_count needs the input manifest's counts.embedded; use --sample_fraction")
        if opts.sample_count < 1:
            raise ValueError("--sample_count must be positive")
        return min(1.0, opts.sample_count / total)
    return 1.0


class _Sample(beam.DoFn):
    """Keeps a record when a seeded hash of its bytes falls below ``fraction``: reproducible, streaming."""

    def __init__(self, fraction: float, seed: int):
        self.threshold = int(fraction * 2 ** 64)
        self.key = seed.to_bytes(8, "little", signed=True)

    def setup(self):
        self.read = Metrics.counter(NAMESPACE, "read")

    def process(self, record: bytes):
        self.read.inc()
        digest = hashlib.blake2b(record, digest_size=8, key=self.key).digest()
        if int.from_bytes(digest, "little") < self.threshold:
            yield record


class _CountRows(beam.DoFn):
    """Counts analyzed rows per Arrow record batch (one counter update per batch, not per row)."""

    def setup(self):
        self.analyzed = Metrics.counter(NAMESPACE, "rows_analyzed")

    def process(self, batch):
        self.analyzed.inc(batch.num_rows)
        yield batch


def query_repeats(share: float, corpus_rows: int, query_rows: int) -> int:
    """How many times each query row is fitted on so that queries make up ``share`` of all rows."""
    if not 0 < share < 1:
        raise ValueError(f"--query_share must be in (0, 1), got {share}")
    if corpus_rows < 1 or query_rows < 1:
        raise ValueError("--query_input needs row counts (counts.embedded) in both manifests")
    return max(1, round(share / (1 - share) * corpus_rows / query_rows))


def build(p: beam.Pipeline, patterns: list[str], input_dim: int, opts: argparse.Namespace, fraction: float,
          temp_dir: str, query_pattern: str | None = None, query_repeat: int = 0) -> None:
    # A schema of the embedding alone: the decoder then skips ids and texts.
    schema = schema_utils.schema_from_feature_spec(
        {records.EMBEDDING: tf.io.FixedLenFeature([input_dim], tf.float32)})
    # One glob, not the list of shards: TFXIO reads each pattern separately and
    # flattens, and a local runner then buffers every record before the flatten.
    source = tfxio.TFExampleRecord(file_pattern=patterns, schema=schema,
                                   telemetry_descriptors=["use-shrink", "fit-pca"])
    # TFXIO's own RawRecordBeamSource validates the pattern while the graph is
    # built (a storage round trip on the launcher); the job checked the input.
    reads = [p | f"ReadRecords{i}" >> beam.io.ReadFromTFRecord(pattern, coder=beam.coders.BytesCoder(),
                                                                validate=False)
             for i, pattern in enumerate(patterns)]
    if query_pattern:
        reads.append(p | "ReadQueries" >> beam.io.ReadFromTFRecord(query_pattern, coder=beam.coders.BytesCoder(),
                                                                   validate=False)
                     | "RepeatQueries" >> beam.FlatMap(lambda record: [record] * query_repeat))
    raw = reads[0] if len(reads) == 1 else reads | "FlattenInputs" >> beam.Flatten()
    if fraction < 1:
        raw = raw | "Sample" >> beam.ParDo(_Sample(fraction, opts.seed))
    batches = (raw
               | "ToRecordBatches" >> source.RawRecordToRecordBatch(opts.batch_size)
               | "CountRows" >> beam.ParDo(_CountRows()))
    preprocessing_fn = pca_transform.make_preprocessing_fn(opts.output_dim, opts.center, opts.l2_normalize)
    # TF1 graph mode: the written transform_fn is one graph whose named analyzer
    # results (transforms.pca) can be read back to build the plain head.
    with tft_beam.Context(temp_dir=temp_dir, force_tf_compat_v1=True):
        transform_fn = (batches, source.TensorAdapterConfig()) | "Analyze" >> tft_beam.AnalyzeDataset(
            preprocessing_fn)
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(opts.output)


def read_transform_fn(transform_fn_dir: str, probe: np.ndarray) -> tuple[dict, np.ndarray]:
    """The named analyzer results in a written transform_fn, and its output for ``probe`` rows."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.load(session, ["transform"], transform_fn_dir)
        signature = next(iter(meta.signature_def.values()))
        names = {}
        for wanted in (pca_transform.MEAN, pca_transform.MATRIX, pca_transform.COVARIANCE):
            found = [op.name for op in graph.get_operations() if op.name.split("/")[-1] == wanted]
            if len(found) != 1:
                raise ArtifactError(f"{transform_fn_dir}: expected one '{wanted}' tensor, found {found}")
            names[wanted] = found[0] + ":0"
        values = session.run(names)
        feed = {signature.inputs[pca_transform.EMBEDDING].name: probe}
        output = session.run(signature.outputs[pca_transform.REDUCED].name, feed_dict=feed)
    return values, output


def make_head(values: dict, opts: argparse.Namespace, input_dim: int) -> reducers.LinearHead:
    mean = values[pca_transform.MEAN] if opts.center else np.zeros(input_dim)
    return reducers.LinearHead(mean, values[pca_transform.MATRIX], opts.l2_normalize)


def run(argv: list[str] | None = None) -> dict:
    opts, options = parse_job_args(make_parser(), argv)
    source = artifacts.read_manifest(opts.input, kind="embeddings")
    input_dim = records.schema_dim(records.read_schema(opts.input))
    if not 1 <= opts.output_dim <= input_dim:
        raise ValueError(f"--output_dim must be in 1..{input_dim} (the input dimension), got {opts.output_dim}")
    extra = [artifacts.read_manifest(d, kind="embeddings") for d in opts.extra_input]
    for d, m in zip(opts.extra_input, extra):
        if (m.get("encoder"), records.schema_dim(records.read_schema(d))) != (source.get("encoder"), input_dim):
            raise ArtifactError(f"--extra_input {d} was not embedded like {opts.input} (encoder or dimension)")
    inputs = [opts.input, *opts.extra_input]
    shards = [shard for d in inputs for shard in input_shards(d)]
    total = sum((m.get("counts") or {}).get("embedded", 0) for m in [source, *extra])
    fraction = sample_fraction(opts, {"counts": {"embedded": total}})
    query, repeat = None, 0
    if opts.query_input:
        query = artifacts.read_manifest(opts.query_input, kind="embeddings")
        if (query.get("encoder"), records.schema_dim(records.read_schema(opts.query_input))) != \
                (source.get("encoder"), input_dim):
            raise ArtifactError(f"--query_input {opts.query_input} was not embedded like {opts.input} "
                                "(encoder or dimension)")
        repeat = query_repeats(opts.query_share, total, (query.get("counts") or {}).get("embedded", 0))
        input_shards(opts.query_input)  # fails clearly when it holds no shards
    params = {"input": opts.input, "input_fingerprint": source.get("fingerprint"), "output_dim": opts.output_dim,
              "center": opts.center, "l2_normalize": opts.l2_normalize, "sample_fraction": fraction,
              "seed": opts.seed}
    if extra:  # absent for a single input, so those fingerprints are unchanged
        params["extra_input"] = [[d, m.get("fingerprint")] for d, m in zip(opts.extra_input, extra)]
    if query:  # likewise absent without queries
        params["query_input"] = [opts.query_input, query.get("fingerprint"), opts.query_share, repeat]
    fp = artifacts.fingerprint(params)
    artifacts.prepare_output(opts.output, fp, opts.overwrite)

    temp_dir = opts.temp_dir or tempfile.mkdtemp(prefix="fit-pca-")
    start = time.monotonic()
    try:
        p = create_pipeline(options)
        build(p, [shard_pattern(d) for d in inputs], input_dim, opts, fraction, temp_dir,
              shard_pattern(opts.query_input) if query else None, repeat)
        # One BLAS thread: the analyzers' float64 x'x and eigh share the cores
        # with Beam's and TensorFlow's threads; more threads measured slower
        # (benchmarks/RESULTS.md). Applies to the local, in-process runner.
        with threadpool_limits(limits=1, user_api="blas"):
            result = run_and_wait(p)
    finally:
        if not opts.temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
    elapsed = time.monotonic() - start
    counts = counter_values(result, NAMESPACE)
    rows = counts.get("rows_analyzed", 0)
    if rows == 0:
        raise ValueError(f"no rows analyzed from {opts.input} (empty dataset or sample)")
    if rows <= opts.output_dim:
        log.warning("only %d rows analyzed for %d components: the trailing components are noise",
                    rows, opts.output_dim)

    probe = np.random.default_rng(opts.seed).normal(size=(8, input_dim)).astype(np.float32)
    values, expected = read_transform_fn(artifacts.join(opts.output, TRANSFORM_FN), probe)
    head = make_head(values, opts, input_dim)
    got = head(tf.constant(probe)).numpy()
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
        raise RuntimeError(f"the head disagrees with the transform_fn (max diff {np.abs(got - expected).max()})")
    reducers.save_head(head, opts.output, input_dim)

    ratio = pca_transform.explained_variance_ratio(values[pca_transform.COVARIANCE], values[pca_transform.MATRIX])
    eigenvalues = np.diag(values[pca_transform.MATRIX].T @ values[pca_transform.COVARIANCE]
                          @ values[pca_transform.MATRIX])
    manifest = artifacts.write_manifest(opts.output, "pca", {
        **params, "fingerprint": fp, "input_dim": input_dim,
        "rows_read": counts.get("read", rows), "rows_analyzed": rows, "explained_variance_ratio": [round(float(r), 8) for r in ratio],
        "explained_variance_total": float(ratio.sum()), "eigenvalues": [float(v) for v in eigenvalues],
        "source_shards": shards, "transform_fn": TRANSFORM_FN, "transformed_metadata": TRANSFORMED_METADATA,
        "head": reducers.HEAD_DIR, "seconds": round(elapsed, 2),
    })
    log.info("PCA %d -> %d on %d rows keeps %.1f%% of the variance (%.1fs) -> %s",
             input_dim, opts.output_dim, rows, 100 * ratio.sum(), elapsed, opts.output)
    return manifest


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.fit_pca")
