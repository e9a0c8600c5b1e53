"""Duplicates, conflicting ids and incremental mode: one record per id still to embed."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from core import deadletter as dl
from core.dataset import EmbeddingDataset
from transforms.datasets import Columns, ReadDataset
from transforms.sinks import DEAD, DeadLetterCounter

NAMESPACE = "embed"
PREVIOUS = "<previous run>"  # the source of records embedded by an earlier run


class _Resolve(beam.DoFn):
    def setup(self):
        self.duplicate = Metrics.counter(NAMESPACE, "duplicate")
        self.already = Metrics.counter(NAMESPACE, "already_embedded")
        self.dead = DeadLetterCounter(NAMESPACE)

    def process(self, element):
        id_, values = element
        new = [v for v in values if v[1] != PREVIOUS]
        earlier = [sentence for sentence, source, _ in values if source == PREVIOUS]
        kept = earlier[0] if earlier else min(sentence for sentence, _, _ in new)
        for sentence, source, _ in new:
            if sentence != kept:
                detail = ("id already embedded by a previous run for another sentence" if earlier
                          else "id already used by another sentence")
                yield self.dead.output(dl.CONFLICTING_ID, source, sentence, id_=id_, detail=detail)
        same = [metadata or "" for sentence, _, metadata in new if sentence == kept]
        if earlier:
            self.already.inc(len(same))
        elif same:
            self.duplicate.inc(len(same) - 1)
            yield (id_, min(same) or None), kept  # the metadata travels in the key, as RunInference keeps keys


class Deduplicate(beam.PTransform):
    """``(id, (sentence, source, metadata))`` -> one ``((id, metadata), sentence)`` per id still to embed.

    Records repeating an id with the same sentence are counted as duplicates.
    Records reusing an id for a different sentence (only possible with
    ``--id_field``) are dead-lettered as conflicts; the smallest sentence is
    kept so that re-runs agree. With ``previous`` (ids and sentences embedded
    by earlier runs, incremental mode), ids already embedded are counted as
    ``already_embedded`` and not embedded again.
    """

    def __init__(self, previous: beam.PCollection | None = None):
        super().__init__()
        self.previous = previous

    def expand(self, keyed):
        if self.previous is not None:
            keyed = (keyed, self.previous) | "WithPrevious" >> beam.Flatten()
        return (keyed
                | "GroupById" >> beam.GroupByKey()
                | "Resolve" >> beam.ParDo(_Resolve()).with_outputs(DEAD, main="unique"))


def _previous_records(columns: Columns):
    for id_, text in zip(columns.ids, columns.texts):
        yield id_, (text, PREVIOUS, None)


class ReadPrevious(beam.PTransform):
    """Ids and sentences of earlier embedding outputs, keyed like new records (counter ``previous/read``)."""

    def __init__(self, datasets: list[EmbeddingDataset]):
        super().__init__()
        self.datasets = datasets

    def expand(self, pbegin):
        read = pbegin | "ReadPreviousDatasets" >> ReadDataset(self.datasets, "previous", with_text=True, finite=False)
        return read["columns"] | "IdsAndTexts" >> beam.FlatMap(_previous_records)
