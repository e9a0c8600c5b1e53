"""Read a corpus of sentences from text, CSV/TSV, JSON Lines or Parquet files.

``ReadCorpus`` turns file patterns into ``(id, (text, source))`` pairs of
normalized sentences plus a dead-letter output for every record that cannot
be used. Line-based formats (text, JSON Lines) are read with Beam's
splittable text source; CSV/TSV (quoted fields may span lines) and Parquet are
read a file at a time.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from typing import Iterable

import apache_beam as beam
from apache_beam import coders
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.textio import ReadFromTextWithFilename
from apache_beam.metrics import Metrics

from pipelines.common import deadletter as dl
from pipelines.common.beam_runner import ProgressLog
from pipelines.common.textnorm import normalize, text_id

FORMATS = ("text", "csv", "tsv", "jsonl", "parquet")
_EXTENSIONS = {".txt": "text", ".text": "text", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl",
               ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
DEAD = "dead"
NAMESPACE = "embed"


def detect_format(pattern: str) -> str:
    """The format implied by a pattern's extension (``.gz``/``.bz2`` ignored); text otherwise."""
    root, ext = os.path.splitext(pattern.lower())
    if ext in (".gz", ".bz2", ".deflate", ".zst"):
        ext = os.path.splitext(root)[1]
    return _EXTENSIONS.get(ext, "text")


def check_patterns(patterns: Iterable[str]) -> None:
    """Fail before the job starts if a pattern matches no file (a typo, not an empty corpus)."""
    for pattern in patterns:
        if not FileSystems.match([pattern])[0].metadata_list:
            raise FileNotFoundError(f"input pattern {pattern!r} matches no files")


class _Counters:
    """Counters of one parsing DoFn; created in setup(), not at module level."""

    def __init__(self):
        self.read = Metrics.counter(NAMESPACE, "read")
        self.dead = Metrics.counter(NAMESPACE, "dead_letter")
        self.by_reason: dict[str, object] = {}
        self.progress = ProgressLog("records read")

    def dead_letter(self, reason: str, *args, **kwargs) -> beam.pvalue.TaggedOutput:
        if reason not in self.by_reason:
            self.by_reason[reason] = Metrics.counter(NAMESPACE, f"dead_letter_{reason}")
        self.by_reason[reason].inc()
        self.dead.inc()
        return beam.pvalue.TaggedOutput(DEAD, dl.dead_letter(reason, *args, **kwargs))


class _ParseBase(beam.DoFn):
    def __init__(self, text_field: str | None, id_field: str | None, max_chars: int):
        self.text_field, self.id_field, self.max_chars = text_field, id_field, max_chars

    def setup(self):
        self.counters = _Counters()

    def _sentence(self, raw: bytes | str, source: str, user_id: str | None):
        """Validate and normalize one sentence; a keyed record or a dead letter."""
        c = self.counters
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return c.dead_letter(dl.INVALID_UTF8, source, raw, id_=user_id, detail=str(e))
        else:
            text = raw
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:  # surrogate-escaped bytes from a CSV file
                return c.dead_letter(dl.INVALID_UTF8, source, text.encode("utf-8", "surrogateescape"),
                                     id_=user_id, detail=str(e))
        if "\x00" in text:
            return c.dead_letter(dl.CONTAINS_NUL, source, text, id_=user_id)
        sentence = normalize(text)
        if not sentence:
            return c.dead_letter(dl.EMPTY, source, text, id_=user_id)
        if len(sentence) > self.max_chars:
            return c.dead_letter(dl.TOO_LONG, source, text, id_=user_id,
                                 detail=f"{len(sentence)} characters > --max_chars {self.max_chars}")
        return (user_id if user_id is not None else text_id(sentence), (sentence, source))

    def _from_mapping(self, obj, source: str, raw):
        """The sentence (and optional id) of a JSON object, CSV row or Parquet row."""
        c = self.counters
        if not isinstance(obj, dict):
            return c.dead_letter(dl.INVALID_JSON, source, raw, detail="not a JSON object")
        user_id = None
        if self.id_field:
            value = obj.get(self.id_field)
            if value is None or value == "":
                return c.dead_letter(dl.MISSING_FIELD, source, raw, detail=f"no id field {self.id_field!r}")
            user_id = str(value)
        value = obj.get(self.text_field)
        if value is None:
            return c.dead_letter(dl.MISSING_FIELD, source, raw, id_=user_id,
                                 detail=f"no text field {self.text_field!r}")
        if not isinstance(value, str):
            return c.dead_letter(dl.NOT_A_STRING, source, raw, id_=user_id,
                                 detail=f"field {self.text_field!r} is {type(value).__name__}")
        return self._sentence(value, source, user_id)


class ParseLine(_ParseBase):
    """One line of a text or JSON Lines file -> a keyed sentence or a dead letter."""

    def __init__(self, fmt: str, text_field: str | None, id_field: str | None, max_chars: int):
        super().__init__(text_field, id_field, max_chars)
        self.fmt = fmt

    def process(self, element: tuple[str, bytes]):
        source, raw = element
        self.counters.read.inc()
        self.counters.progress.add()
        if self.fmt == "text":
            yield self._sentence(raw, source, None)
            return
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            yield self.counters.dead_letter(dl.INVALID_JSON, source, raw, detail=str(e))
            return
        yield self._from_mapping(obj, source, raw)


class ParseFile(_ParseBase):
    """A whole CSV/TSV or Parquet file -> keyed sentences and dead letters."""

    def __init__(self, fmt: str, text_field: str, id_field: str | None, max_chars: int):
        super().__init__(text_field, id_field, max_chars)
        self.fmt = fmt

    def setup(self):
        super().setup()
        csv.field_size_limit(sys.maxsize // 2)

    def process(self, readable: fileio.ReadableFile):
        source = readable.metadata.path
        rows = self._parquet_rows(readable) if self.fmt == "parquet" else self._csv_rows(readable)
        try:
            for row, raw in rows:
                self.counters.read.inc()
                self.counters.progress.add()
                yield self._from_mapping(row, source, raw)
        except (csv.Error, OSError, ValueError) as e:
            # The rest of the file cannot be parsed: say so instead of dropping it silently.
            self.counters.read.inc()
            yield self.counters.dead_letter(dl.UNREADABLE_FILE, source, None,
                                            detail=f"stopped parsing: {type(e).__name__}: {e}")

    def _csv_rows(self, readable):
        with readable.open() as f:
            text = io.TextIOWrapper(f, encoding="utf-8", errors="surrogateescape", newline="")
            reader = csv.DictReader(text, delimiter="\t" if self.fmt == "tsv" else ",")
            for row in reader:
                yield row, json.dumps(row, ensure_ascii=False)

    def _parquet_rows(self, readable):
        import pyarrow.parquet as pq

        columns = [c for c in (self.text_field, self.id_field) if c]
        with readable.open() as f:
            pfile = pq.ParquetFile(f)
            missing = [c for c in columns if c not in pfile.schema_arrow.names]
            if missing:
                raise ValueError(f"parquet file has no column(s) {missing}; it has {pfile.schema_arrow.names}")
            for batch in pfile.iter_batches(columns=columns, batch_size=4096):
                for row in batch.to_pylist():
                    yield row, json.dumps(row, ensure_ascii=False, default=str)


class ReadCorpus(beam.PTransform):
    """File patterns -> ``{'records': (id, (sentence, source)), 'dead': json line}``."""

    def __init__(self, patterns: list[str], fmt: str = "auto", text_field: str | None = None,
                 id_field: str | None = None, max_chars: int = 10_000):
        super().__init__()
        self.patterns, self.fmt = list(patterns), fmt
        self.text_field, self.id_field, self.max_chars = text_field, id_field, max_chars

    def _format_of(self, pattern: str) -> str:
        fmt = detect_format(pattern) if self.fmt == "auto" else self.fmt
        if fmt not in FORMATS:
            raise ValueError(f"unknown input format {fmt!r}; choose one of {FORMATS}")
        if fmt != "text" and not self.text_field:
            raise ValueError(f"{pattern}: format {fmt} needs --text_field (the column or field holding sentences)")
        if fmt == "text" and self.id_field:
            raise ValueError("--id_field needs a CSV/TSV, JSON Lines or Parquet input")
        return fmt

    def expand(self, pbegin):
        outputs = []
        for i, pattern in enumerate(self.patterns):
            fmt = self._format_of(pattern)
            if fmt in ("text", "jsonl"):
                lines = pbegin | f"ReadLines{i}" >> ReadFromTextWithFilename(
                    pattern, coder=coders.BytesCoder(), validate=False)
                parsed = lines | f"Parse{i}" >> beam.ParDo(
                    ParseLine(fmt, self.text_field, self.id_field, self.max_chars)).with_outputs(DEAD, main="records")
            else:
                files = (pbegin
                         | f"Pattern{i}" >> beam.Create([pattern])
                         | f"Match{i}" >> fileio.MatchAll()
                         | f"Open{i}" >> fileio.ReadMatches()
                         | f"Spread{i}" >> beam.Reshuffle())
                parsed = files | f"Parse{i}" >> beam.ParDo(
                    ParseFile(fmt, self.text_field, self.id_field, self.max_chars)).with_outputs(DEAD, main="records")
            outputs.append(parsed)
        return {
            "records": [o.records for o in outputs] | "FlattenRecords" >> beam.Flatten(),
            DEAD: [o[DEAD] for o in outputs] | "FlattenDead" >> beam.Flatten(),
        }
