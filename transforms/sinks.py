"""Where unusable records go: one dead-letter counter helper and one dead-letter writer for every job."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from core import deadletter as dl
from core import files

DEAD = "dead"
DEADLETTER_DIR = "deadletter"


class DeadLetterCounter:
    """Counts dead letters (``dead_letter`` and ``dead_letter_<reason>``) and tags them for the dead output.

    Create it in a DoFn's ``setup``; ``output`` returns the tagged dead letter to yield.
    """

    def __init__(self, namespace: str):
        self.namespace = namespace
        self.total = Metrics.counter(namespace, "dead_letter")
        self.by_reason: dict[str, object] = {}

    def count(self, reason: str, n: int = 1) -> None:
        if reason not in self.by_reason:
            self.by_reason[reason] = Metrics.counter(self.namespace, f"dead_letter_{reason}")
        self.by_reason[reason].inc(n)
        self.total.inc(n)

    def output(self, reason: str, source: str, raw, **kwargs) -> beam.pvalue.TaggedOutput:
        self.count(reason)
        return beam.pvalue.TaggedOutput(DEAD, dl.dead_letter(reason, source, raw, **kwargs))


class WriteDeadLetters(beam.PTransform):
    """Every dead-letter PCollection -> ``OUTPUT/deadletter/deadletter-*.jsonl``."""

    def __init__(self, output_dir: str):
        super().__init__()
        self.prefix = files.join(output_dir, DEADLETTER_DIR, "deadletter")

    def expand(self, dead_collections):
        return (dead_collections
                | "FlattenDeadLetters" >> beam.Flatten()
                | "WriteDeadLetters" >> beam.io.WriteToText(self.prefix, file_name_suffix=".jsonl"))


def reconcile(counts: dict[str, int], read_key: str, outcome_keys: tuple[str, ...]) -> dict[str, int]:
    """All counts, zero-filled; raises unless ``read`` equals the sum of the outcomes (nothing lost)."""
    full = {k: counts.get(k, 0) for k in (read_key, *outcome_keys)}
    full.update({k: v for k, v in counts.items() if k.startswith("dead_letter_")})
    accounted = sum(full[k] for k in outcome_keys)
    if full[read_key] != accounted:
        raise RuntimeError(f"counts do not reconcile: {read_key} {full[read_key]} != "
                           f"{' + '.join(outcome_keys)} = {accounted} ({full})")
    return full
