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
import logging
import time
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions
from threadpoolctl import threadpool_limits

from core import config as cfg
from core import files, manifests, reducers, transform_fn
from core import pca as pca_math
from core.config import option
from core.dataset import EmbeddingDataset, open_all
from core.errors import ArtifactError, DataError, InputError
from core.outputs import OutputDir
from pipelines.cli import job_parser, parse_config
from transforms import pca as pca_transform
from transforms.analyze import Analyze
from transforms.fitting import FitRows
from transforms.runner import counter_values, create_pipeline, run_and_wait, worker_processes
from transforms.sinks import DEAD, WriteDeadLetters

log = logging.getLogger(__name__)
NAMESPACE = "fit_pca"
TRANSFORM_FN = "transform_fn"
TRANSFORMED_METADATA = "transformed_metadata"
ANALYZED = "analyzed"  # where tf.Transform writes, in the job's own temporary directory


@dataclass(frozen=True)
class FitPcaConfig:
    input: str = option(help="embedding dataset directory (output of `shrink embed`)")
    output: str = option(help="reducer artifact directory (new, empty, or an earlier fit)")
    extra_input: tuple[str, ...] = option((), "more embedding datasets fitted on together with --input (e.g. a "
                                              "corpus's increments)")
    query_input: str | None = option(None, "embedding dataset of sample queries the corpus will serve (e.g. "
                                           "questions), fitted on with weight --query_share")
    query_share: float = option(0.5, "share of the fit's rows the repeated --query_input rows make up, in (0, 1)")
    output_dim: int = option(128, "kept components, 1..input dim")
    center: bool = option(True, "subtract the mean before projecting")
    l2_normalize: bool = option(False, "scale reduced vectors to unit length")
    sample_fraction: float | None = option(None, "fit on about this fraction of the rows")
    sample_count: int | None = option(None, "fit on about this many rows (instead of --sample_fraction)")
    seed: int = option(0, "sampling seed: same seed, same rows")
    batch_size: int = option(1000, "rows per batch read")
    temp_dir: str | None = option(None, "where tf.Transform's temporary files go (default: the system temp dir); "
                                        "a fresh subdirectory is made there and removed after the fit")
    overwrite: bool = option(False, "replace an earlier fit of different parameters in --output")

    def params(self) -> dict:
        return cfg.params(self, exclude=("input", "output", "extra_input", "query_input", "sample_fraction",
                                         "sample_count", "batch_size", "temp_dir", "overwrite"))


def make_parser() -> argparse.ArgumentParser:
    return job_parser("shrink fit-pca", __doc__, FitPcaConfig)


def sample_fraction(config: FitPcaConfig, total: int) -> float:
    """The share of rows to fit on, from --sample_fraction or --sample_count (1 without either)."""
    if config.sample_fraction is not None and config.sample_count is not None:
        raise InputError("give --sample_fraction or --sample_count, not both")
    if config.sample_fraction is not None:
        if not 0 < config.sample_fraction <= 1:
            raise InputError(f"--sample_fraction must be in (0, 1], got {config.sample_fraction}")
        return config.sample_fraction
    if config.sample_count is not None:
        if config.sample_count < 1:
            raise InputError("--sample_count must be positive")
        return min(1.0, config.sample_count / max(total, 1))
    return 1.0


def query_repeats(share: float, corpus_rows: int, query_rows: int) -> int:
    """How many times each query row is fitted on so that queries make up ``share`` of all rows."""
    if not 0 < share < 1:
        raise InputError(f"--query_share must be in (0, 1), got {share}")
    if corpus_rows < 1 or query_rows < 1:
        raise InputError("--query_input needs rows in both the corpus and the query dataset")
    return max(1, round(share / (1 - share) * corpus_rows / query_rows))


@dataclass(frozen=True)
class FitInputs:
    """What a fit reads, checked before any work: datasets, sample fraction and query weighting."""
    datasets: list[EmbeddingDataset]
    fraction: float
    queries: tuple[EmbeddingDataset, int] | None

    @property
    def dim(self) -> int:
        return self.datasets[0].dim

    def params(self) -> dict:
        out = {"inputs": [d.digest for d in self.datasets], "sample_fraction": self.fraction}
        if self.queries:
            out["query_input"] = [self.queries[0].digest, self.queries[1]]
        return out


def open_inputs(config: FitPcaConfig) -> FitInputs:
    datasets = open_all([config.input, *config.extra_input])
    total = sum(d.records for d in datasets)
    if total == 0:
        raise InputError(f"{config.input} holds no vectors to fit on")
    if not 1 <= config.output_dim <= datasets[0].dim:
        raise InputError(f"--output_dim must be in 1..{datasets[0].dim} (the input dimension), "
                         f"got {config.output_dim}")
    queries = None
    if config.query_input:
        [query] = open_all([config.query_input])
        if (query.encoder, query.dim) != (datasets[0].encoder, datasets[0].dim):
            raise ArtifactError(f"--query_input {config.query_input} was not embedded like {config.input} "
                                "(encoder or dimension)")
        queries = (query, query_repeats(config.query_share, total, query.records))
    return FitInputs(datasets, sample_fraction(config, total), queries)


def build(p: beam.Pipeline, inputs: FitInputs, config: FitPcaConfig, temp_dir: str) -> None:
    """rows (sampled, queries repeated, non-finite out) -> tf.Transform analyzers -> transform_fn."""
    rows = p | "FitRows" >> FitRows(inputs.datasets, NAMESPACE, inputs.fraction, config.seed, inputs.queries,
                                    config.batch_size)
    preprocessing_fn = pca_transform.make_preprocessing_fn(config.output_dim, config.center, config.l2_normalize)
    _ = rows["vectors"] | "Analyze" >> Analyze(preprocessing_fn, pca_transform.EMBEDDING, inputs.dim, temp_dir,
                                               files.join(temp_dir, ANALYZED))
    _ = (rows[DEAD],) | "DeadLetters" >> WriteDeadLetters(config.output)


def make_head(values: dict, config: FitPcaConfig) -> reducers.Head:
    return reducers.Head.pca(values[pca_transform.MEAN], values[pca_transform.MATRIX], config.center,
                             config.l2_normalize)


def check_rows(result, inputs: FitInputs, config: FitPcaConfig) -> dict:
    """Every listed record was read; at least one row was fitted on."""
    counts = counter_values(result, NAMESPACE)
    read = counts.get("read", 0)
    if read != sum(d.records for d in inputs.datasets):
        raise DataError(f"fit-pca read {read} records, the input manifests list "
                        f"{sum(d.records for d in inputs.datasets)}: a dataset is damaged; re-create it")
    if inputs.queries:
        inputs.queries[0].check_count(counter_values(result, f"{NAMESPACE}_queries").get("read", 0), "fit-pca")
    if counts.get("rows_analyzed", 0) == 0:
        raise InputError(f"no rows to fit on in {config.input} (empty sample, or every vector non-finite)")
    if counts["rows_analyzed"] <= config.output_dim:
        log.warning("only %d rows analyzed for %d components: the trailing components are noise",
                    counts["rows_analyzed"], config.output_dim)
    return counts


def export_head(config: FitPcaConfig, input_dim: int, analyzed: str) -> tuple[dict, np.ndarray, dict]:
    """The head as arrays (checked against the transform_fn in ``analyzed``) and its serving export; analyzer
    values, ratios, and the manifest's ``head`` entry. The transform_fn is copied into the output, file by file."""
    for name in (TRANSFORM_FN, TRANSFORMED_METADATA):
        files.copy_tree(files.join(analyzed, name), files.join(config.output, name))
    probe = np.random.default_rng(config.seed).normal(size=(8, input_dim)).astype(np.float32)
    values = transform_fn.read(files.join(analyzed, TRANSFORM_FN), pca_transform.NAMES,
                               (pca_transform.EMBEDDING, pca_transform.REDUCED, probe))
    expected = values[pca_transform.REDUCED]
    head = make_head(values, config)
    got = head(probe)
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
        raise RuntimeError(f"the head disagrees with the transform_fn (max diff {np.abs(got - expected).max()})")
    entry = head.save(config.output)
    head.export_saved_model(files.join(config.output, reducers.HEAD_DIR))
    ratio = pca_math.explained_variance_ratio(values[pca_transform.COVARIANCE], values[pca_transform.MATRIX])
    return values, ratio, entry


def run(config: FitPcaConfig, options: PipelineOptions) -> dict:
    """Fit PCA on the inputs into ``config.output``; returns the manifest."""
    inputs = open_inputs(config)
    params = {**config.params(), **inputs.params()}
    reads = [config.input, *config.extra_input, config.query_input]
    out = OutputDir(config.output, "pca", manifests.fingerprint(params), reads)
    with out.claim(config.overwrite):
        start = time.monotonic()
        with transform_fn.workspace(config.temp_dir, "fit-pca") as temp_dir:
            p = create_pipeline(options)
            build(p, inputs, config, temp_dir)
            # One BLAS thread: the analyzers' float64 x'x and eigh share the cores
            # with Beam's and TensorFlow's threads; more threads measured slower
            # (benchmarks/RESULTS.md). Applies to the local, in-process runner.
            with threadpool_limits(limits=1, user_api="blas"):
                result = run_and_wait(p)
                counts = check_rows(result, inputs, config)
                workers = worker_processes(result)
            elapsed = time.monotonic() - start
            values, ratio, head = export_head(config, inputs.dim, files.join(temp_dir, ANALYZED))
        eigenvalues = np.diag(values[pca_transform.MATRIX].T @ values[pca_transform.COVARIANCE]
                              @ values[pca_transform.MATRIX])
        manifest = out.commit({
            **params, "worker_processes": workers, "input_dim": inputs.dim, "output_dim": config.output_dim,
            "rows_read": counts.get("read", 0), "rows_analyzed": counts["rows_analyzed"],
            "rows_non_finite": counts.get("dead_letter_non_finite", 0),
            "explained_variance_ratio": [round(float(r), 8) for r in ratio],
            "explained_variance_total": float(ratio.sum()), "eigenvalues": [float(v) for v in eigenvalues],
            "transform_fn": TRANSFORM_FN, "transformed_metadata": TRANSFORMED_METADATA,
            "head": head, "serving_head": reducers.HEAD_DIR, "seconds": round(elapsed, 2)})
    log.info("PCA %d -> %d on %d rows keeps %.1f%% of the variance (%.1fs) -> %s", inputs.dim, config.output_dim,
             counts["rows_analyzed"], 100 * ratio.sum(), elapsed, config.output)
    return manifest


def main(argv: list[str] | None = None) -> dict:
    return run(*parse_config(make_parser(), FitPcaConfig, argv))


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.fit_pca")
