"""Embedding sentences in Beam: the encoder model handler, vector checks and record serialization.

Shared by the embed job and by reduce's raw-text input. ``EmbedSentences``
runs ``RunInference`` (batched with ``BatchElements``, one model per worker
process, loaded in ``setup``) and dead-letters vectors that are not finite
or of the wrong size; ``EmbedCorpus`` is the whole corpus -> vectors chain.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from core import deadletter as dl
from core.encoders import DEFAULT_PRECISION, Encoder, load_encoder, validate_spec
from core.errors import InputError
from core.logs import Progress
from core.machine import worker_threads
from transforms.corpus import DEAD, NAMESPACE, ReadCorpus
from transforms.dedupe import Deduplicate
from transforms.sinks import DeadLetterCounter, reconcile

log = logging.getLogger(__name__)


def _encode_checked(model: Encoder, batch: Sequence[str]) -> np.ndarray:
    vectors = model.encode(batch)
    if vectors.ndim != 2 or vectors.shape[0] != len(batch):
        raise ValueError(f"encoder returned shape {vectors.shape} for a batch of {len(batch)}")
    return vectors


def _encode_one(model: Encoder, text: str) -> PredictionResult:
    """A sentence's vector, or (as ``inference``) the error message it caused."""
    try:
        return PredictionResult(text, _encode_checked(model, [text])[0])
    except Exception as e:  # noqa: BLE001 - reported per sentence as a dead letter
        return PredictionResult(text, f"{type(e).__name__}: {e}")


class EncoderModelHandler(ModelHandler[str, PredictionResult, Encoder]):
    """RunInference handler: one encoder per worker process, batches of sentences.

    ``threads`` None means "this process's share of the machine's cores",
    computed on the worker from ``processes_per_machine``. A batch that makes
    the encoder raise is retried sentence by sentence; a sentence that fails
    on its own comes back with its error message as ``inference``.
    """

    def __init__(self, spec: str, max_batch_size: int, threads: int | None = None, processes_per_machine: int = 1,
                 min_batch_size: int = 64, precision: str = DEFAULT_PRECISION):
        super().__init__()
        self.spec, self.precision = validate_spec(spec), precision
        self.threads, self.processes_per_machine = threads, processes_per_machine
        self._batch_kwargs = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

    def load_model(self) -> Encoder:
        threads = self.threads or worker_threads(self.processes_per_machine)
        encoder = load_encoder(self.spec, threads, self.precision)
        log.info("loaded encoder %s (precision %s) with %d thread(s)", self.spec,
                 getattr(encoder, "precision", "of the model"), threads)
        return encoder

    def run_inference(self, batch: Sequence[str], model: Encoder,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        try:
            vectors = _encode_checked(model, batch)
        except Exception:  # noqa: BLE001 - find the sentence(s) at fault instead of losing the batch
            log.warning("encoder failed on a batch of %d; retrying one sentence at a time", len(batch))
            return [_encode_one(model, text) for text in batch]
        return [PredictionResult(text, vec) for text, vec in zip(batch, vectors)]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return self._batch_kwargs

    def get_metrics_namespace(self) -> str:
        return "encoder"


class _Progress(beam.DoFn):
    """Passes sentences on to the encoder, logging count, rate and ETA.

    It runs fused with ``RunInference``, which blocks on each full batch, so
    its count runs at most one batch ahead of the sentences embedded. The
    total (a side input) is known once the corpus has been read and deduplicated.
    """

    def __init__(self, share: int | None):
        self.share = share
        self.progress = None

    def process(self, element, total: int):
        if self.progress is None:
            self.progress = Progress("sentences embedded", total, self.share)
        self.progress.add()
        yield element


class _CheckVector(beam.DoFn):
    """Keeps finite vectors of the expected dimension; dead-letters the rest."""

    def __init__(self, dim: int):
        self.dim = dim

    def setup(self):
        self.embedded = Metrics.counter(NAMESPACE, "embedded")
        self.dead = DeadLetterCounter(NAMESPACE)

    def process(self, element):
        (id_, metadata), result = element
        text, vector = result.example, result.inference
        if isinstance(vector, str):
            yield self.dead.output(dl.ENCODER_ERROR, "encoder", text, id_=id_, detail=vector)
        elif vector.shape != (self.dim,):
            yield self.dead.output(dl.WRONG_DIMENSION, "encoder", text, id_=id_,
                                   detail=f"shape {vector.shape}, expected ({self.dim},)")
        elif not np.all(np.isfinite(vector)):
            yield self.dead.output(dl.NON_FINITE, "encoder", text, id_=id_, detail="NaN or Inf in the vector")
        else:
            self.embedded.inc()
            yield id_, text, vector, metadata


class EmbedSentences(beam.PTransform):
    """``((id, metadata), sentence)`` -> ``{'vectors': (id, sentence, vector, metadata), 'dead': json line}``.

    ``share``: local worker processes splitting the work (for the ETA), None when unknown.
    """

    def __init__(self, handler: EncoderModelHandler, dim: int, share: int | None = 1):
        super().__init__()
        self.handler, self.dim, self.share = handler, dim, share

    def expand(self, unique):
        total = unique | "CountSentences" >> beam.combiners.Count.Globally()
        results = (unique
                   | "Progress" >> beam.ParDo(_Progress(self.share), total=beam.pvalue.AsSingleton(total))
                   | "Encode" >> RunInference(KeyedModelHandler(self.handler)))
        checked = results | "CheckVectors" >> beam.ParDo(_CheckVector(self.dim)).with_outputs(DEAD, main="vectors")
        return {"vectors": checked.vectors, DEAD: checked[DEAD]}


class EmbedCorpus(beam.PTransform):
    """Corpus files -> ``{'vectors': (id, sentence, vector, metadata), 'dead': json lines}``: read, dedupe, embed.

    ``previous`` (a PCollection of ids and sentences embedded by earlier runs)
    turns on incremental mode (see ``Deduplicate``).
    """

    def __init__(self, read: ReadCorpus, handler: EncoderModelHandler, dim: int, previous=None,
                 share: int | None = 1):
        super().__init__()
        self.read, self.handler, self.dim, self.previous, self.share = read, handler, dim, previous, share

    def expand(self, pbegin):
        corpus = pbegin | "ReadCorpus" >> self.read
        deduped = corpus["records"] | "Deduplicate" >> Deduplicate(self.previous)
        embedded = deduped.unique | "Embed" >> EmbedSentences(self.handler, self.dim, self.share)
        dead = (corpus[DEAD], deduped[DEAD], embedded[DEAD]) | "EmbedDeadLetters" >> beam.Flatten()
        return {"vectors": embedded["vectors"], DEAD: dead}




EMBED_OUTCOMES = ("embedded", "duplicate", "already_embedded", "dead_letter")
PARTIAL_FILE_REASONS = (dl.TRUNCATED_FILE, dl.UNREADABLE_FILE)


def reconcile_embedding(counts: dict[str, int], allow_partial_files: bool, deadletter_dir: str) -> dict[str, int]:
    """The corpus counts, reconciled; fails (unless allowed) when input files ended early or were unreadable."""
    full = reconcile(counts, "read", EMBED_OUTCOMES)
    partial = {r: full.get(f"dead_letter_{r}", 0) for r in PARTIAL_FILE_REASONS}
    if any(partial.values()) and not allow_partial_files:
        raise InputError(
            f"{sum(partial.values())} input file(s) ended early or could not be read ({partial}); the records read "
            f"before the damage were kept and the files are listed in {deadletter_dir}. Repair the files, or pass "
            "--allow_partial_files to keep what could be read")
    return full
