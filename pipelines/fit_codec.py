"""fit-codec: fit an int8 or product-quantization codec on an embedding dataset.

    shrink fit-codec --input out/emb --output out/raw-int8 --codec int8                     # raw 512-d, 512 B
    shrink fit-codec --input out/emb --output out/pca-int8 --codec int8 --reducer out/pca   # PCA-128, 128 B
    shrink fit-codec --input out/emb --output out/pq64 --codec pq --m 64                    # OPQ + PQ, 64 B
    shrink fit-codec --input out/emb --output out/lpq64 --codec pq --m 64 --fine_tune_steps 400  # learned PQ

int8: the reducer's outputs (``--reducer``, default ``identity``: the raw
vectors) are calibrated per dimension with tf.Transform analyzers
(``tft.min``/``tft.max``) over every row; values outside the range are
clipped (and counted) when coding. The artifact's ``head/`` SavedModel has
``quantize``/``dequantize`` signatures beside ``serving_default``.

pq: faiss OPQ + PQ (``--m`` sub-quantizers of 8 bits = ``m`` bytes per
vector) trained on a seeded sample of ``--sample_count`` rows (default
{sample}, see benchmarks/RESULTS.md), never the whole corpus in memory.
With ``--fine_tune_steps``, the OPQ rotation and codebooks are then
fine-tuned on the same sample to keep rankings rather than reconstruct
vectors (learned PQ, ``core/learned_pq.py``), and the codec scores by inner
product.
Reads exactly the shards the input manifests list; writes ``manifest.json`` last.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from core import codecs, files, manifests, quantization, reducers, transform_fn
from core import config as cfg
from core.config import option
from core.dataset import EmbeddingDataset, open_all
from core.errors import DataError, InputError
from core.outputs import OutputDir
from pipelines.cli import job_parser, parse_config
from transforms import codec_fitting
from transforms.analyze import Analyze
from transforms.fitting import FitRows
from transforms.runner import counter_values, create_pipeline, run_and_wait, worker_processes
from transforms.sinks import DEAD, WriteDeadLetters

log = logging.getLogger(__name__)
NAMESPACE = "fit_codec"
DEFAULT_PQ_SAMPLE = 50_000  # financial slice: 100,000 rows add +0.003 (OPQ64) / +0.002 (OPQ128) recall@10
__doc__ = __doc__.format(sample=f"{DEFAULT_PQ_SAMPLE:,}")


@dataclass(frozen=True)
class FitCodecConfig:
    input: str = option(help="embedding dataset directory (output of `shrink embed`)")
    output: str = option(help="codec artifact directory (new, empty, or an earlier fit)")
    codec: str = option(help="int8 (calibrated ranges) or pq (OPQ + product quantization)", choices=codecs.CODE_KINDS)
    reducer: str = option(reducers.IDENTITY, "int8: the reducer whose outputs are coded (a fit-pca or train "
                                             "output, or 'identity')")
    extra_input: tuple[str, ...] = option((), "more embedding datasets to fit on")
    m: int = option(64, "pq: bytes per vector (sub-quantizers of 8 bits); must divide the dimension")
    opq: bool = option(True, "pq: learn an OPQ rotation first (better recall, slower training)")
    fine_tune_steps: int = option(0, "pq: then fine-tune rotation and codebooks this many steps by label-free "
                                     "ranking distillation (learned PQ; 400 measured, see docs/fit-codec.md)")
    sample_count: int | None = option(None, f"rows to fit on, a seeded uniform sample (pq default "
                                            f"{DEFAULT_PQ_SAMPLE:,}; int8: all rows)")
    seed: int = option(0, "sampling and training seed")
    batch_size: int = option(1000, "rows per batch read")
    temp_dir: str | None = option(None, "int8: where tf.Transform's temporary files go (removed after)")
    overwrite: bool = option(False, "replace an earlier fit of different parameters in --output")

    def params(self) -> dict:
        return cfg.params(self, exclude=("input", "output", "extra_input", "reducer", "batch_size", "temp_dir",
                                         "overwrite"))


def make_parser() -> argparse.ArgumentParser:
    return job_parser("shrink fit-codec", __doc__, FitCodecConfig)


def sample_fraction(config: FitCodecConfig, total: int) -> float:
    count = config.sample_count if config.sample_count is not None else (
        DEFAULT_PQ_SAMPLE if config.codec == "pq" else None)
    if count is None:
        return 1.0
    if count < 1:
        raise InputError("--sample_count must be positive")
    return min(1.0, count / max(total, 1))


def build(p: beam.Pipeline, datasets: list[EmbeddingDataset], config: FitCodecConfig, fraction: float,
          temp_dir: str, reducer) -> None:
    """read (counted, non-finite out) -> sample -> calibrate (int8) or train (pq)."""
    dim = datasets[0].dim
    rows = p | "FitRows" >> FitRows(datasets, NAMESPACE, fraction, config.seed, batch_size=config.batch_size)
    _ = (rows[DEAD],) | "DeadLetters" >> WriteDeadLetters(config.output)
    if config.codec == "pq":
        _ = (rows["vectors"]
             | "Gather" >> beam.combiners.ToList()
             | "TrainPQ" >> beam.ParDo(codec_fitting.TrainPQ(files.join(config.output, codecs.PQ_INDEX), dim,
                                                              config.m, config.opq, config.seed, NAMESPACE,
                                                              config.fine_tune_steps)))
        return
    _ = (rows["vectors"]
         | "Reduce" >> beam.ParDo(codec_fitting.Reduce(config.reducer, dim, reducer.digest))
         | "Analyze" >> Analyze(codec_fitting.preprocessing_fn, codec_fitting.REDUCED, reducer.output_dim, temp_dir,
                                os.path.join(temp_dir, "analyzed")))


def check_counts(result, datasets: list[EmbeddingDataset]) -> dict:
    counts = counter_values(result, NAMESPACE)
    expected = sum(d.records for d in datasets)
    if counts.get("read", 0) != expected:
        raise DataError(f"fit-codec read {counts.get('read', 0)} records, the input manifests list {expected}: "
                        "a dataset is damaged; re-create it")
    return counts


def run(config: FitCodecConfig, options: PipelineOptions) -> dict:
    """Fit the codec into ``config.output``; returns the manifest."""
    datasets = open_all([config.input, *config.extra_input])
    reducer = codecs.load_reducer(config.reducer, datasets[0].dim)
    if config.codec == "pq" and (config.m < 1 or datasets[0].dim % config.m):
        raise InputError(f"--m must divide the vector dimension {datasets[0].dim}, got {config.m}")
    if config.fine_tune_steps < 0 or (config.fine_tune_steps and config.codec != "pq"):
        raise InputError("--fine_tune_steps is a step count (>= 0) for --codec pq")
    fraction = sample_fraction(config, sum(d.records for d in datasets))
    params = {**config.params(), "inputs": [d.digest for d in datasets], "reducer_digest": reducer.digest,
              "sample_fraction": fraction}
    reads = [config.input, *config.extra_input] + ([config.reducer] if config.reducer != reducers.IDENTITY else [])
    out = OutputDir(config.output, codecs.KIND, manifests.fingerprint(params), reads)
    with out.claim(config.overwrite):
        start = time.monotonic()
        with transform_fn.workspace(config.temp_dir, "fit-codec") as temp_dir:
            p = create_pipeline(options)
            build(p, datasets, config, fraction, temp_dir, reducer)
            result = run_and_wait(p)
            counts = check_counts(result, datasets)
            workers = worker_processes(result)
            body = _finish(config, reducer, datasets[0].dim, counts, temp_dir)
        manifest = out.commit({**params, **body, "seconds": round(time.monotonic() - start, 2),
                               "rows_read": counts["read"], "worker_processes": workers,
                               "rows_non_finite": counts.get("dead_letter_non_finite", 0)})
    log.info("%s codec (%d bytes/vector) fitted in %.1fs -> %s", manifest["name"], manifest["bytes_per_vector"],
             manifest["seconds"], config.output)
    return manifest


def _finish(config: FitCodecConfig, reducer, input_dim: int, counts: dict, temp_dir: str) -> dict:
    """The codec's files beside the manifest (int8 head) and its manifest fields."""
    family = codecs.family_of(reducer)
    if config.codec == "pq":
        codec = codecs.load_pq(config.output, input_dim)
        family = codecs.LEARNED_PQ if config.fine_tune_steps else "pq"
        return {"codec": "pq", "family": family, "name": codecs.name_of(family, codec.code_size, "pq"),
                "input_dim": input_dim, "dim": input_dim, "m": codec.m, "nbits": codec.nbits, "metric": codec.metric,
                "opq_trained": codec.opq,
                "bytes_per_vector": codec.code_size, "sample_rows": counts.get("sample_rows", 0),
                "train_seconds": round(counts.get("train_ms", 0) / 1000, 2)}
    if counts.get("rows_analyzed", 0) == 0:
        raise InputError(f"no rows to calibrate on in {config.input}")
    values = transform_fn.read(os.path.join(temp_dir, "analyzed", "transform_fn"),
                               (codec_fitting.LO, codec_fitting.HI))
    codec = quantization.Int8Codec(values[codec_fitting.LO], values[codec_fitting.HI])
    saved = codecs.save_int8(config.output, reducer, codec)
    return {"codec": "int8", "family": family, "name": codecs.name_of(family, codec.dim, "int8"),
            "input_dim": input_dim, "dim": codec.dim, "bytes_per_vector": codec.dim, **saved,
            "serving_head": reducers.HEAD_DIR, "reducer": reducer.summary(), "rows_analyzed": counts["rows_analyzed"]}


def main(argv: list[str] | None = None) -> dict:
    return run(*parse_config(make_parser(), FitCodecConfig, argv))


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.fit_codec")
