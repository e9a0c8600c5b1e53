"""Read a corpus of sentences from text, CSV/TSV, JSON Lines or Parquet files.

``ReadCorpus`` turns file patterns into ``(id, (text, source))`` pairs of
normalized sentences plus a dead-letter output for every record that cannot
be used. Every format is read a whole file at a time (files, not byte ranges,
are spread over workers): a file's encoding (UTF-8, or UTF-16 with a byte-order
mark) is known from its start, a CSV record may span lines, and a truncated
``.gz``/``.bz2`` file is only noticed at its end.

Every record read is counted once in ``read`` and comes out either as a record
or as exactly one dead letter. A file that cannot be read to its end adds one
file-level dead letter (``truncated_file`` or ``unreadable_file``, also
counted in ``read``) after the records read before the problem.
"""
from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import gzip
import io
import json
import os
import sys
import zlib
from typing import BinaryIO, Iterable, Iterator, NamedTuple

import apache_beam as beam
import pyarrow as pa
from apache_beam.io import fileio
from apache_beam.io.filesystems import CompressionTypes, FileSystems
from apache_beam.metrics import Metrics

from core import deadletter as dl
from core.logs import Progress
from core.errors import InputError
from core.textnorm import normalize, text_id

FORMATS = ("text", "csv", "tsv", "jsonl", "parquet")
_EXTENSIONS = {".txt": "text", ".text": "text", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl",
               ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
_COMPRESSIONS = (".gz", ".bz2")
_UNSUPPORTED_COMPRESSIONS = (".deflate", ".zst", ".zstd", ".xz", ".lz4", ".snappy", ".zip")
DEAD = "dead"
NAMESPACE = "embed"
_CHUNK = 1 << 16
# What reading a damaged file raises, besides EOFError (a compressed stream that ends early).
_FILE_ERRORS = (OSError, ValueError, zlib.error, pa.ArrowException)


def detect_format(pattern: str) -> str:
    """The format implied by a pattern's extension (a compression extension skipped); text otherwise."""
    root, ext = os.path.splitext(pattern.lower())
    if ext in _COMPRESSIONS + _UNSUPPORTED_COMPRESSIONS:
        ext = os.path.splitext(root)[1]
    return _EXTENSIONS.get(ext, "text")


def compression_of(path: str) -> str | None:
    """``.gz``, ``.bz2`` or None (uncompressed), by extension; other compressions are an InputError."""
    ext = os.path.splitext(path.lower())[1]
    if ext in _UNSUPPORTED_COMPRESSIONS:
        raise InputError(f"{path}: {ext} compression is not supported; decompress it or use .gz or .bz2")
    return ext if ext in _COMPRESSIONS else None


def check_patterns(patterns: Iterable[str]) -> None:
    """Fail before the job starts if a pattern matches no file (a typo, not an empty corpus)."""
    for pattern in patterns:
        if not FileSystems.match([pattern])[0].metadata_list:
            raise FileNotFoundError(f"input pattern {pattern!r} matches no files")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _describe(error: BaseException) -> str:
    """``module.Class: message`` on one line (``zlib.error``, not a bare ``error``)."""
    cls = type(error)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    return _one_line(f"{name}: {error}")


# ---------------------------------------------------------------- byte streams

class _RawReader(io.RawIOBase):
    """Any object with ``read(n)`` as a raw stream, so io.BufferedReader can wrap Beam's file handles."""

    def __init__(self, f):
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._f.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


@contextlib.contextmanager
def _open_bytes(readable: fileio.ReadableFile, compression: str | None) -> Iterator[BinaryIO]:
    """The file's decompressed bytes, as a peekable stream. Decompressing here (not with Beam's
    CompressedFile) makes a truncated stream raise EOFError instead of ending quietly."""
    with readable.open(compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        if compression == ".gz":
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                yield f
        elif compression == ".bz2":
            with bz2.BZ2File(raw) as f:
                yield f
        else:
            yield io.BufferedReader(_RawReader(raw), _CHUNK)


def _take_bom(stream: BinaryIO) -> str:
    """Consume a leading byte-order mark and return the file's encoding: UTF-8 unless it is UTF-16."""
    head = stream.peek(_CHUNK)
    if head.startswith(codecs.BOM_UTF8):
        stream.read(len(codecs.BOM_UTF8))
        return "utf-8"
    for bom, codec in ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if head.startswith(bom) and _looks_like_utf16(head[len(bom):], codec):
            stream.read(len(bom))
            return codec
    return "utf-8"


def _looks_like_utf16(head: bytes, codec: str) -> bool:
    """A UTF-16 BOM could also be the invalid first bytes of a UTF-8 line: trust it if its line
    breaks are UTF-16 line breaks (or the start of the file has none at all)."""
    text = head[:len(head) // 2 * 2].decode(codec, "replace")
    return "\n" in text or "\r" in text or not (b"\n" in head or b"\r" in head)


def _physical_lines(stream: BinaryIO) -> Iterator[bytes]:
    """The lines of a text file as UTF-8 bytes (invalid bytes kept, to be dead-lettered per line).

    ``\\n``, ``\\r\\n`` and a lone ``\\r`` all end a line. A compressed stream
    that ends early raises EOFError before its cut-off last line is returned.
    """
    encoding = _take_bom(stream)
    if encoding == "utf-8":  # latin-1 maps bytes 1:1, so each line's bytes come back unchanged
        for line in io.TextIOWrapper(stream, "latin-1", newline=None):
            yield line.rstrip("\n").encode("latin-1")
    else:  # lone surrogates become invalid UTF-8 bytes, dead-lettered like any other
        for line in io.TextIOWrapper(stream, encoding, errors="surrogatepass", newline=None):
            yield line.rstrip("\n").encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------- CSV records

class _CsvRecord(NamedTuple):
    fields: list[str] | None  # None: malformed
    raw: str  # the record's lines, or only its first line when malformed
    problem: str | None = None


class _Malformed(Exception):
    pass


class _LineFeed:
    """The physical lines csv.reader pulls, remembering those of the current record so that a
    malformed record can be read again from its second line."""

    def __init__(self, lines: Iterator[str], max_chars: int):
        self._source, self._max_chars = lines, max_chars
        self._again: list[str] = []  # lines to read again, last one first
        self.new_record()

    def new_record(self) -> None:
        self.record: list[str] = []
        self.chars, self.at_end = 0, False

    def read_again(self, lines: list[str]) -> None:
        self._again.extend(reversed(lines))

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        line = self._again.pop() if self._again else next(self._source, None)
        if line is None:
            self.at_end = True
            raise StopIteration
        self.record.append(line)
        self.chars += len(line)
        if len(self.record) > 1 and self.chars > self._max_chars:
            raise _Malformed(f"a quoted field runs over {len(self.record)} lines and more than "
                             f"{self._max_chars} characters")
        return line


def _csv_records(lines: Iterator[str], delimiter: str, max_chars: int) -> Iterator[_CsvRecord]:
    """CSV records, without letting one stray quote swallow the rest of the file.

    A record still inside a quoted field at the end of the file, or spanning
    several lines and more than ``max_chars`` characters, comes back as
    malformed (with its first line only), and parsing restarts at its second
    line. Blank lines are no records and are skipped.
    """
    feed = _LineFeed(lines, max_chars)
    reader = csv.reader(feed, delimiter=delimiter, strict=False)
    line_no = 1
    while True:
        feed.new_record()
        try:
            fields = next(reader)
            problem = "a quoted field is never closed" if feed.at_end else None
        except StopIteration:
            return
        except (_Malformed, csv.Error) as e:
            fields, problem = None, _one_line(str(e))
        if problem:
            yield _CsvRecord(None, feed.record[0].rstrip("\n"), f"line {line_no}: {problem}")
            feed.read_again(feed.record[1:])
            line_no += 1
        else:
            if fields:
                yield _CsvRecord(fields, "".join(feed.record).rstrip("\n"))
            line_no += len(feed.record)


# ---------------------------------------------------------------- field values

class _Invalid(Exception):
    """A record that must be dead-lettered: its reason and a one-line detail."""

    def __init__(self, reason: str, detail: str | None = None):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _as_text(value: bytes | str, what: str) -> str:
    """``value`` as valid Unicode; invalid UTF-8 bytes or lone surrogates are ``invalid_utf8``."""
    try:
        if isinstance(value, bytes):
            return value.decode("utf-8")
        value.encode("utf-8")
        return value
    except UnicodeError as e:
        raise _Invalid(dl.INVALID_UTF8, _one_line(f"{what}: {e}")) from None


def _id_of(value, field: str) -> str:
    """A user id: a non-empty string, or an integer as its decimal string (never a bool or float)."""
    if value is None or value == "" or value == b"":
        raise _Invalid(dl.MISSING_FIELD, f"no id field {field!r}")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, (str, bytes)):
        raise _Invalid(dl.INVALID_ID, f"id field {field!r} is {type(value).__name__}, not a string or integer")
    return _as_text(value, f"id field {field!r}")


def _text_of(value, field: str | None) -> str:
    """The sentence's text: a string (or UTF-8 bytes)."""
    if value is None:
        raise _Invalid(dl.MISSING_FIELD, f"no text field {field!r}")
    if not isinstance(value, (str, bytes)):
        raise _Invalid(dl.NOT_A_STRING, f"field {field!r} is {type(value).__name__}")
    return _as_text(value, f"text field {field!r}" if field else "line")


def _sentence_of(text: str, max_chars: int) -> str:
    """The normalized sentence, or why there is none."""
    if "\x00" in text:
        raise _Invalid(dl.CONTAINS_NUL)
    sentence = normalize(text)
    if not sentence:
        raise _Invalid(dl.EMPTY)
    if len(sentence) > max_chars:
        raise _Invalid(dl.TOO_LONG, f"{len(sentence)} characters > --max_chars {max_chars}")
    return sentence


def _missing_columns(path: str, wanted: dict[str, str | None], found: list[str], where: str) -> None:
    """InputError if a --text_field/--id_field names a column this file does not have at all
    (a typo in a flag, not a bad record)."""
    for flag, name in wanted.items():
        if name and name not in found:
            raise InputError(f"{path}: {flag} {name!r} {where}: {found}")


def _json_raw(row: dict) -> str:
    """A Parquet row as dead-letter ``raw``: JSON, bytes shown with ``\\xNN`` escapes."""
    return json.dumps({k: dl.printable(v) if isinstance(v, bytes) else v for k, v in row.items()},
                      ensure_ascii=False, default=str)


# ---------------------------------------------------------------- the reader

class _Counters:
    """Counters of one parsing DoFn; created in setup(), not at module level."""

    def __init__(self):
        self.read = Metrics.counter(NAMESPACE, "read")
        self.dead = Metrics.counter(NAMESPACE, "dead_letter")
        self.by_reason: dict[str, object] = {}
        self.progress = Progress("records read")

    def dead_letter(self, reason: str, *args, **kwargs) -> beam.pvalue.TaggedOutput:
        if reason not in self.by_reason:
            self.by_reason[reason] = Metrics.counter(NAMESPACE, f"dead_letter_{reason}")
        self.by_reason[reason].inc()
        self.dead.inc()
        return beam.pvalue.TaggedOutput(DEAD, dl.dead_letter(reason, *args, **kwargs))


class ReadFile(beam.DoFn):
    """One whole file -> keyed sentences and dead letters (one output per record read)."""

    def __init__(self, fmt: str, text_field: str | None, id_field: str | None, max_chars: int):
        self.fmt, self.text_field, self.id_field, self.max_chars = fmt, text_field, id_field, max_chars

    def setup(self):
        self.counters = _Counters()
        csv.field_size_limit(sys.maxsize // 2)

    def process(self, readable: fileio.ReadableFile):
        path = readable.metadata.path
        compression = compression_of(path)
        if self.fmt == "parquet" and compression:
            raise InputError(f"{path}: Parquet files compress internally; decompress the file")
        done = 0
        try:
            for output in self._outputs(readable, path, compression):
                done += 1
                self.counters.read.inc()
                self.counters.progress.add()
                yield output
        except EOFError:
            yield self._file_dead_letter(dl.TRUNCATED_FILE, path, f"{path}: compressed data ends early "
                                         f"(truncated file?); {done} complete records read before the cut")
        except _FILE_ERRORS as e:
            yield self._file_dead_letter(dl.UNREADABLE_FILE, path, f"{path}: unreadable after {done} records: "
                                         f"{_describe(e)}")

    def _file_dead_letter(self, reason: str, path: str, detail: str) -> beam.pvalue.TaggedOutput:
        self.counters.read.inc()
        return self.counters.dead_letter(reason, path, None, detail=detail)

    def _outputs(self, readable: fileio.ReadableFile, path: str, compression: str | None):
        if self.fmt == "parquet":
            with readable.open(compression_type=CompressionTypes.UNCOMPRESSED) as f:
                yield from self._parquet(f, path)
            return
        with _open_bytes(readable, compression) as stream:
            lines = _physical_lines(stream)
            if self.fmt == "text":
                yield from (self._record(path, line, line) for line in lines)
            elif self.fmt == "jsonl":
                yield from self._jsonl(lines, path)
            else:
                yield from self._csv(lines, path)

    def _record(self, path: str, raw: bytes | str, text: object, id_: object = None):
        """A keyed sentence, or the dead letter saying why there is none."""
        user_id = None
        try:
            if self.id_field:
                user_id = _id_of(id_, self.id_field)
            sentence = _sentence_of(_text_of(text, self.text_field), self.max_chars)
        except _Invalid as bad:
            return self.counters.dead_letter(bad.reason, path, raw, id_=user_id, detail=bad.detail)
        return (user_id if user_id is not None else text_id(sentence), (sentence, path))

    def _jsonl(self, lines: Iterator[bytes], path: str):
        """JSON objects, one per line; InputError if not one of them has a field the flags name."""
        first_keys, seen = None, {"--text_field": False, "--id_field": not self.id_field}
        for line in lines:
            try:
                obj = json.loads(_as_text(line, "line"))
            except _Invalid as bad:
                yield self.counters.dead_letter(dl.INVALID_UTF8, path, line, detail=bad.detail)
                continue
            except (ValueError, RecursionError) as e:  # RecursionError: "[[[[..." nested too deep
                yield self.counters.dead_letter(dl.INVALID_JSON, path, line, detail=_one_line(str(e)))
                continue
            if not isinstance(obj, dict):
                yield self.counters.dead_letter(dl.INVALID_JSON, path, line, detail="not a JSON object")
                continue
            first_keys = list(obj) if first_keys is None else first_keys
            seen["--text_field"] |= self.text_field in obj
            seen["--id_field"] |= self.id_field in obj
            yield self._record(path, line, obj.get(self.text_field), obj.get(self.id_field))
        if first_keys is not None:
            wanted = {"--text_field": self.text_field, "--id_field": self.id_field}
            _missing_columns(path, {f: wanted[f] for f, ok in seen.items() if not ok}, first_keys,
                             "is in none of its JSON objects; the first one's keys are")

    def _csv(self, lines: Iterator[bytes], path: str):
        """Rows of a CSV/TSV file with a header; a malformed record is dead-lettered alone."""
        text_lines = (line.decode("utf-8", "surrogateescape") + "\n" for line in lines)
        records = _csv_records(text_lines, "\t" if self.fmt == "tsv" else ",", self.max_chars)
        header = next(records, None)
        if header is None:
            return
        if header.fields is None:
            raise ValueError(f"malformed header: {header.problem}")
        columns = [dl.printable(name) for name in header.fields]
        _missing_columns(path, {"--text_field": self.text_field, "--id_field": self.id_field}, columns,
                         "is not a column of its header; its columns are")
        for record in records:
            if record.fields is None:
                yield self.counters.dead_letter(dl.MALFORMED_CSV, path, record.raw, detail=record.problem)
                continue
            row = dict(zip(columns, record.fields))
            yield self._record(path, record.raw, row.get(self.text_field), row.get(self.id_field))

    def _parquet(self, f: BinaryIO, path: str):
        """Parquet rows; string columns are read as bytes so one invalid value loses only its row."""
        import pyarrow.parquet as pq

        pfile = pq.ParquetFile(f)
        _missing_columns(path, {"--text_field": self.text_field, "--id_field": self.id_field},
                         pfile.schema_arrow.names, "is not a column of its schema; its columns are")
        columns = [c for c in (self.text_field, self.id_field) if c]
        for group in range(pfile.num_row_groups):  # a damaged row group loses no rows of earlier ones
            for batch in pfile.iter_batches(columns=columns, batch_size=4096, row_groups=[group]):
                values = [_unvalidated(batch.column(c)).to_pylist() for c in columns]
                for row in zip(*values):
                    row = dict(zip(columns, row))
                    yield self._record(path, _json_raw(row), row[self.text_field], row.get(self.id_field))


def _unvalidated(column: pa.Array) -> pa.Array:
    """A string column as binary (no UTF-8 check), so each value is decoded, and judged, alone."""
    if pa.types.is_dictionary(column.type):  # e.g. written from a pandas category
        column = column.dictionary_decode()
    for is_type, binary in ((pa.types.is_string, pa.binary()), (pa.types.is_large_string, pa.large_binary()),
                            (pa.types.is_string_view, pa.binary_view())):
        if is_type(column.type):
            return column.cast(binary)
    return column


class ReadCorpus(beam.PTransform):
    """File patterns -> ``{'records': (id, (sentence, source)), 'dead': json line}``."""

    def __init__(self, patterns: list[str], fmt: str = "auto", text_field: str | None = None,
                 id_field: str | None = None, max_chars: int = 10_000):
        super().__init__()
        self.patterns, self.fmt = list(patterns), fmt
        self.text_field, self.id_field, self.max_chars = text_field, id_field, max_chars
        self.formats = [self._format_of(pattern) for pattern in self.patterns]

    def _format_of(self, pattern: str) -> str:
        """The pattern's format; InputError for flags that do not fit it."""
        fmt = detect_format(pattern) if self.fmt == "auto" else self.fmt
        if fmt not in FORMATS:
            raise InputError(f"unknown input format {fmt!r}; choose one of {FORMATS}")
        if compression_of(pattern) and fmt == "parquet":
            raise InputError(f"{pattern}: Parquet files compress internally; decompress the file")
        if fmt != "text" and not self.text_field:
            raise InputError(f"{pattern}: format {fmt} needs --text_field (the column or field holding sentences)")
        for flag, value in (("--text_field", self.text_field), ("--id_field", self.id_field)):
            if fmt == "text" and value:
                raise InputError(f"{flag} needs a CSV/TSV, JSON Lines or Parquet input; {pattern} is read as text")
        return fmt

    def expand(self, pbegin):
        outputs = []
        for i, (pattern, fmt) in enumerate(zip(self.patterns, self.formats)):
            parsed = (pbegin
                      | f"Pattern{i}" >> beam.Create([pattern])
                      | f"Match{i}" >> fileio.MatchAll()
                      | f"Open{i}" >> fileio.ReadMatches()
                      | f"Spread{i}" >> beam.Reshuffle()
                      | f"Parse{i}" >> beam.ParDo(ReadFile(fmt, self.text_field, self.id_field, self.max_chars))
                      .with_outputs(DEAD, main="records"))
            outputs.append(parsed)
        return {
            "records": [o.records for o in outputs] | "FlattenRecords" >> beam.Flatten(),
            DEAD: [o[DEAD] for o in outputs] | "FlattenDead" >> beam.Flatten(),
        }
