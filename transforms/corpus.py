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

Inputs. Local patterns are expanded before the job by ``core.globs.expand_inputs``
(symlinked directories followed; FIFOs, devices and dangling symlinks refused);
URL patterns are matched when the job runs. Compression comes from the name
(``.gz``, ``.bz2``, ``.tgz``) or else from the first bytes (gzip, bzip2), so a
gzipped ``notes.txt`` is read as text. A tar archive (``.tar``, ``.tar.gz``,
``.tgz``, or tar data under any name) is read member by member: each regular
member is a source of its own, ``ARCHIVE!/MEMBER``, in the format its own
name gives (with ``--input_format auto``). A physical line longer than
``4 * max_chars + 1 KiB`` bytes (text) or ``12 * max_chars + 1 MiB`` (JSON
Lines, CSV/TSV: escapes and other fields) is dead-lettered ``too_long`` as it
streams past, its first KiB kept as ``raw``. Whole-file mistakes are an
InputError naming the file, failing the job: zip, xz or zstd data, a Parquet
member of an archive, a JSON array given as JSON Lines, a --text_field or
--id_field missing from a file or naming two of its CSV columns.
"""
from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import os
import sys
import tarfile
import zlib
from typing import BinaryIO, Iterable, Iterator, NamedTuple

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import CompressionTypes, FileSystems
from apache_beam.metrics import Metrics

from core import deadletter as dl
from core import files
from core.errors import InputError
from core.globs import expand_inputs
from core.logs import Progress
from core.textnorm import normalize, text_id
from transforms.runner import count_worker

FORMATS = ("text", "csv", "tsv", "jsonl", "parquet")
_EXTENSIONS = {".txt": "text", ".text": "text", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl",
               ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
_COMPRESSIONS = {".gz": ".gz", ".bz2": ".bz2", ".tgz": ".gz"}
_UNSUPPORTED_COMPRESSIONS = (".deflate", ".zst", ".zstd", ".xz", ".lz4", ".snappy", ".zip")
_ARCHIVES = (".tar", ".tar.gz", ".tar.bz2", ".tgz")
# First bytes of containers that are refused (by content, whatever the name says).
_REFUSED_MAGIC = {b"PK\x03\x04": "zip", b"PK\x05\x06": "zip", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
DEAD = "dead"
NAMESPACE = "embed"
_CHUNK = 1 << 16
# Bytes asked of a stream at a time, kept small: tarfile drops a whole read that meets a truncated archive.
_READ = 1 << 13
_RAW_HEAD = 1024  # bytes of an over-long line kept in its dead letter
# What reading a damaged file raises, besides EOFError (a compressed stream that ends early).
_FILE_ERRORS = (OSError, ValueError, zlib.error, pa.ArrowException, tarfile.TarError)


def detect_format(pattern: str) -> str:
    """The format implied by a pattern's extension (a compression extension skipped); text otherwise."""
    root, ext = os.path.splitext(pattern.lower())
    if ext in _COMPRESSIONS or ext in _UNSUPPORTED_COMPRESSIONS:
        ext = os.path.splitext(root)[1]
    return _EXTENSIONS.get(ext, "text")


def compression_of(path: str) -> str | None:
    """``.gz``, ``.bz2`` or None (uncompressed), by extension; other compressions are an InputError."""
    ext = os.path.splitext(path.lower())[1]
    if ext in _UNSUPPORTED_COMPRESSIONS:
        raise InputError(f"{path}: {ext} compression is not supported; decompress it or use .gz or .bz2")
    return _COMPRESSIONS.get(ext)


def _is_archive(name: str) -> bool:
    return name.lower().endswith(_ARCHIVES)


def _format_for(name: str, input_format: str, text_field: str | None, id_field: str | None,
                metadata_fields: tuple[str, ...] = ()) -> str:
    """The format to read ``name`` in: ``input_format`` or, when that is "auto", the one its name gives
    ("auto" for a tar archive: each member's own). InputError for flags that do not fit it."""
    if input_format == "auto" and _is_archive(name):
        return "auto"
    fmt = detect_format(name) if input_format == "auto" else input_format
    if fmt not in FORMATS:
        raise InputError(f"unknown input format {fmt!r}; choose one of {FORMATS}")
    if compression_of(name) and fmt == "parquet":
        raise InputError(f"{name}: Parquet files compress internally; decompress the file")
    if fmt != "text" and not text_field:
        raise InputError(f"{name}: format {fmt} needs --text_field (the column or field holding sentences)")
    for flag, value in (("--text_field", text_field), ("--id_field", id_field),
                        ("--metadata_field", metadata_fields)):
        if fmt == "text" and value:
            raise InputError(f"{flag} needs a CSV/TSV, JSON Lines or Parquet input; {name} is read as text")
    return fmt


def check_patterns(patterns: Iterable[str]) -> list[str]:
    """Fail before the job starts if a pattern matches no file (a typo, not an empty corpus) or matches
    something that is not a regular file; returns the files."""
    return expand_inputs(list(patterns))


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


def _decompressed(stream: BinaryIO, name: str, compression: str | None) -> BinaryIO:
    """The stream's data, decompressed by ``compression`` (from the name) or else by its first bytes,
    layer after layer. Decompressing here (not with Beam's CompressedFile) makes a truncated stream
    raise EOFError instead of ending quietly. InputError for zip, xz or zstd data."""
    head = stream.peek(8)[:8]
    for magic, kind in _REFUSED_MAGIC.items():
        if head.startswith(magic):
            raise InputError(f"{name} holds {kind} data, which cannot be read; unpack it, or compress it "
                             "with gzip (.gz) or bzip2 (.bz2)")
    compression = compression or _compression_by_magic(head)
    if compression is None:
        return stream
    inner = gzip.GzipFile(fileobj=stream, mode="rb") if compression == ".gz" else bz2.BZ2File(stream)
    return _decompressed(inner, name, None)


def _compression_by_magic(head: bytes) -> str | None:
    """gzip (1f 8b, deflate) or bzip2 ("BZh" and a block size) by the first bytes; no text starts so."""
    if head.startswith(b"\x1f\x8b\x08"):
        return ".gz"
    if head.startswith(b"BZh") and head[3:4].isdigit() and head[3:4] != b"0":
        return ".bz2"
    return None


def _is_tar(stream: BinaryIO, name: str) -> bool:
    """A tar archive by its name, or by the POSIX magic "ustar" in its first header."""
    return _is_archive(name) or stream.peek(512)[257:262] == b"ustar"


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


class _LongLine(NamedTuple):
    """A physical line over the byte limit: only its start is kept, however long it is."""
    head: bytes
    size: int
    limit: int

    @property
    def detail(self) -> str:
        return (f"a line of {self.size} bytes, over the {self.limit}-byte line limit that --max_chars sets; "
                f"raw holds its first {len(self.head)} bytes")


def _line_limit(fmt: str, max_chars: int) -> int:
    """Bytes a physical line may have: a text line is one sentence (UTF-8: at most 4 bytes a character);
    a JSON or CSV line also holds escapes (``\\uXXXX\\uXXXX``: 12 bytes a character) and other fields."""
    return 4 * max_chars + 1024 if fmt == "text" else 12 * max_chars + (1 << 20)


def _physical_lines(stream: BinaryIO, limit: int) -> Iterator[bytes | _LongLine]:
    """The lines of a text file as UTF-8 bytes (invalid bytes kept, to be dead-lettered per line).

    ``\\n``, ``\\r\\n`` and a lone ``\\r`` all end a line; one over ``limit`` bytes comes
    back as a _LongLine. A compressed stream that ends early raises EOFError
    before its cut-off last line is returned.
    """
    encoding = _take_bom(stream)
    chunks = _chunks(stream)
    return _split_lines(chunks if encoding == "utf-8" else _transcoded(chunks, encoding), limit)


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    """The stream piece by piece; ``read1`` hands over what a truncated stream held before it fails."""
    while chunk := stream.read1(_READ):
        yield chunk


def _transcoded(chunks: Iterator[bytes], encoding: str) -> Iterator[bytes]:
    """UTF-16 chunks as UTF-8; lone surrogates become invalid UTF-8 bytes, dead-lettered like any other."""
    decoder = codecs.getincrementaldecoder(encoding)("surrogatepass")
    for chunk in chunks:
        if text := decoder.decode(chunk):
            yield text.encode("utf-8", "surrogatepass")
    if text := decoder.decode(b"", final=True):  # an odd last byte raises UnicodeDecodeError
        yield text.encode("utf-8", "surrogatepass")


def _split_lines(chunks: Iterable[bytes], limit: int) -> Iterator[bytes | _LongLine]:
    """Lines of at most ``limit`` bytes; a longer one as a _LongLine, never held whole."""
    line, size, after_cr = b"", 0, False
    for chunk in chunks:
        if after_cr and chunk.startswith(b"\n"):  # the \n of a \r\n cut between two chunks
            chunk = chunk[1:]
        after_cr = chunk.endswith(b"\r")
        for piece in chunk.splitlines(keepends=True):  # bytes split on \n, \r\n and \r only
            body = piece.rstrip(b"\r\n")
            size += len(body)
            line = line + body if size <= limit else (line + body[:_RAW_HEAD])[:_RAW_HEAD]
            if len(body) < len(piece):
                yield line if size <= limit else _LongLine(line, size, limit)
                line, size = b"", 0
    if size:
        yield line if size <= limit else _LongLine(line, size, limit)


# ---------------------------------------------------------------- CSV records

class _CsvRecord(NamedTuple):
    fields: list[str] | None  # None: dead-lettered
    raw: str | bytes  # the record's lines; only its first line (or an over-long line's start) when dead
    problem: str | None = None
    reason: str = dl.MALFORMED_CSV


class _Malformed(Exception):
    pass


class _Overlong(Exception):
    """The CSV reader ran into a line over the byte limit."""

    def __init__(self, line: _LongLine):
        super().__init__(line.detail)
        self.line = line


class _LineFeed:
    """The physical lines csv.reader pulls, remembering those of the current record so that a
    malformed record can be read again from its second line."""

    def __init__(self, lines: Iterator[str | _LongLine], max_chars: int):
        self._source, self._max_chars = lines, max_chars
        self._again: list[str | _LongLine] = []  # lines to read again, last one first
        self.new_record()

    def new_record(self) -> None:
        self.record: list[str | _LongLine] = []
        self.chars, self.at_end = 0, False

    def read_again(self, lines: list[str | _LongLine]) -> None:
        self._again.extend(reversed(lines))

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        line = self._again.pop() if self._again else next(self._source, None)
        if line is None:
            self.at_end = True
            raise StopIteration
        self.record.append(line)
        if isinstance(line, _LongLine):
            raise _Overlong(line)
        self.chars += len(line)
        if len(self.record) > 1 and self.chars > self._max_chars:
            raise _Malformed(f"a quoted field runs over {len(self.record)} lines and more than "
                             f"{self._max_chars} characters")
        return line


def _csv_records(lines: Iterator[str | _LongLine], delimiter: str, max_chars: int) -> Iterator[_CsvRecord]:
    """CSV records, without letting one stray quote swallow the rest of the file.

    A record still inside a quoted field at the end of the file, or spanning
    several lines and more than ``max_chars`` characters or into an over-long
    line, comes back as malformed (with its first line only), and parsing
    restarts at its second line. An over-long line starting a record is one
    ``too_long`` record. Blank lines are no records and are skipped.
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
        except _Overlong as e:
            if len(feed.record) == 1:
                yield _CsvRecord(None, e.line.head, e.line.detail, dl.TOO_LONG)
                line_no += 1
                continue
            fields, problem = None, "a quoted field runs into a line over the byte limit"
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
    """InputError if a --text_field/--id_field/--metadata_field names a column this file does not have at all
    (a typo in a flag, not a bad record). Keys are flags, possibly followed by a space and the field."""
    for flag, name in wanted.items():
        if name and name not in found:
            raise InputError(f"{path}: {flag.split(' ')[0]} {name!r} {where}: {found}")


def _doubled_columns(path: str, wanted: dict[str, str | None], columns: list[str]) -> None:
    """InputError if a --text_field/--id_field names two columns of a header: which one holds the
    data would be a guess."""
    for flag, name in wanted.items():
        if name and columns.count(name) > 1:
            raise InputError(f"{path}: {flag.split(' ')[0]} {name!r} names {columns.count(name)} columns of its header "
                             f"{columns}; rename all but one")


def _starts_content(path: str, line: bytes | _LongLine) -> bool:
    """Whether a JSON Lines line has content; InputError when the first that has opens a JSON array
    (a JSON document, not one object per line)."""
    start = (line.head if isinstance(line, _LongLine) else line).lstrip()
    if start.startswith(b"["):
        raise InputError(f"{path} holds a JSON array; give JSON Lines (one JSON object per line)")
    return bool(start)


def _json_object(line: bytes) -> dict:
    """The JSON object a line holds, or why there is none."""
    try:
        obj = json.loads(_as_text(line, "line"))
    except (ValueError, RecursionError) as e:  # RecursionError: "[[[[..." nested too deep
        raise _Invalid(dl.INVALID_JSON, _one_line(str(e))) from None
    if not isinstance(obj, dict):
        raise _Invalid(dl.INVALID_JSON, "not a JSON object")
    return obj


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

    def __init__(self, input_format: str, text_field: str | None, id_field: str | None, max_chars: int,
                 metadata_fields: tuple[str, ...] = ()):
        self.input_format, self.text_field, self.id_field = input_format, text_field, id_field
        self.metadata_fields = tuple(metadata_fields)
        self.max_chars = max_chars

    def setup(self):
        self.counted = False
        self.counters = _Counters()
        csv.field_size_limit(sys.maxsize // 2)

    def process(self, item: tuple[str, str]):
        self.counted = self.counted or count_worker()
        path, fmt = item
        if fmt == "parquet" and compression_of(path):
            raise InputError(f"{path}: Parquet files compress internally; decompress the file")
        done = 0
        try:
            for output in self._outputs(path, fmt):
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

    def _outputs(self, path: str, fmt: str):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            if fmt == "parquet":
                yield from self._parquet(f, path)
            else:
                yield from self._stream(io.BufferedReader(_RawReader(f), _CHUNK), path, fmt)

    def _stream(self, stream: BinaryIO, name: str, fmt: str):
        """Records of one byte stream: decompressed, unpacked if a tar archive, else parsed as ``fmt``."""
        stream = _decompressed(stream, name, compression_of(name))
        if _is_tar(stream, name):
            yield from self._members(stream, name)
            return
        lines = _physical_lines(stream, _line_limit(fmt, self.max_chars))
        if fmt == "text":
            yield from (self._record(name, line, line) if isinstance(line, bytes) else self._too_long(name, line)
                        for line in lines)
        elif fmt == "jsonl":
            yield from self._jsonl(lines, name)
        else:
            yield from self._csv(lines, name, "\t" if fmt == "tsv" else ",")

    def _members(self, stream: BinaryIO, archive: str):
        """Each regular member of a tar archive as a source of its own, read as the archive streams past
        (links and directories hold no data of their own). When the archive is cut short, the records
        of the last ~20 KiB before the cut are lost with it: tarfile drops a read that meets the end."""
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = f"{archive}!/{member.name}"
                fmt = _format_for(name, self.input_format, self.text_field, self.id_field, self.metadata_fields)
                if fmt == "parquet":
                    raise InputError(f"{name}: a Parquet file needs random access; extract it from the archive")
                yield from self._stream(tar.extractfile(member), name, fmt)

    def _record(self, path: str, raw: bytes | str, text: object, id_: object = None, row: dict | None = None):
        """A keyed sentence ``(id, (sentence, source, metadata JSON or None))``, or the dead letter saying why
        there is none."""
        user_id = None
        try:
            if self.id_field:
                user_id = _id_of(id_, self.id_field)
            sentence = _sentence_of(_text_of(text, self.text_field), self.max_chars)
        except _Invalid as bad:
            return self.counters.dead_letter(bad.reason, path, raw, id_=user_id, detail=bad.detail)
        return (user_id if user_id is not None else text_id(sentence), (sentence, path, self._metadata(row)))

    def _metadata(self, row: dict | None) -> str | None:
        """The chosen fields of a record as one JSON object (missing ones null), carried with its vector."""
        if not self.metadata_fields:
            return None
        values = {f: dl.printable(row.get(f)) if isinstance(row.get(f), bytes) else row.get(f)
                  for f in self.metadata_fields}
        return json.dumps(values, sort_keys=True, ensure_ascii=False, default=str)

    def _too_long(self, path: str, line: _LongLine) -> beam.pvalue.TaggedOutput:
        return self.counters.dead_letter(dl.TOO_LONG, path, line.head, detail=line.detail)

    def _jsonl(self, lines: Iterator[bytes | _LongLine], path: str):
        """JSON objects, one per line; InputError if not one of them has a field the flags name."""
        first_keys, seen = None, {"--text_field": False, "--id_field": not self.id_field}
        started = False
        for line in lines:
            started = started or _starts_content(path, line)
            if isinstance(line, _LongLine):
                yield self._too_long(path, line)
                continue
            try:
                obj = _json_object(line)
            except _Invalid as bad:
                yield self.counters.dead_letter(bad.reason, path, line, detail=bad.detail)
                continue
            first_keys = list(obj) if first_keys is None else first_keys
            seen["--text_field"] |= self.text_field in obj
            seen["--id_field"] |= self.id_field in obj
            for field in self.metadata_fields:
                seen[f"--metadata_field {field}"] = seen.get(f"--metadata_field {field}", False) or field in obj
            yield self._record(path, line, obj.get(self.text_field), obj.get(self.id_field), obj)
        if first_keys is not None:
            wanted = {"--text_field": self.text_field, "--id_field": self.id_field,
                      **{f"--metadata_field {f}": f for f in self.metadata_fields}}
            _missing_columns(path, {f: wanted[f] for f, ok in seen.items() if not ok}, first_keys,
                             "is in none of its JSON objects; the first one's keys are")

    def _csv(self, lines: Iterator[bytes | _LongLine], path: str, delimiter: str):
        """Rows of a CSV/TSV file with a header; a malformed or over-long record is dead-lettered alone."""
        text_lines = (line if isinstance(line, _LongLine) else line.decode("utf-8", "surrogateescape") + "\n"
                      for line in lines)
        records = _csv_records(text_lines, delimiter, self.max_chars)
        header = next(records, None)
        if header is None:
            return
        if header.fields is None:
            raise ValueError(f"malformed header: {header.problem}")
        columns = [dl.printable(name) for name in header.fields]
        wanted = {"--text_field": self.text_field, "--id_field": self.id_field,
                  **{f"--metadata_field {f}": f for f in self.metadata_fields}}
        _missing_columns(path, wanted, columns, "is not a column of its header; its columns are")
        _doubled_columns(path, wanted, columns)
        for record in records:
            if record.fields is None:
                yield self.counters.dead_letter(record.reason, path, record.raw, detail=record.problem)
                continue
            row = dict(zip(columns, record.fields))
            yield self._record(path, record.raw, row.get(self.text_field), row.get(self.id_field), row)

    def _parquet(self, f: BinaryIO, path: str):
        """Parquet rows; string columns are read as bytes so one invalid value loses only its row."""
        import pyarrow.parquet as pq

        pfile = pq.ParquetFile(f)
        _missing_columns(path, {"--text_field": self.text_field, "--id_field": self.id_field,
                                **{f"--metadata_field {f}": f for f in self.metadata_fields}},
                         pfile.schema_arrow.names, "is not a column of its schema; its columns are")
        columns = list(dict.fromkeys(c for c in (self.text_field, self.id_field, *self.metadata_fields) if c))
        for group in range(pfile.num_row_groups):  # a damaged row group loses no rows of earlier ones
            for batch in pfile.iter_batches(columns=columns, batch_size=4096, row_groups=[group]):
                values = [_unvalidated(batch.column(c)).to_pylist() for c in columns]
                for row in zip(*values):
                    row = dict(zip(columns, row))
                    yield self._record(path, _json_raw(row), row[self.text_field], row.get(self.id_field), row)


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
    """File patterns -> ``{'records': (id, (sentence, source, metadata)), 'dead': json line}``.

    ``metadata_fields`` (CSV/TSV, JSON Lines, Parquet) are carried with each sentence as one JSON object.

    Local patterns are expanded here, when the pipeline is built (failing on what cannot be read);
    URL patterns when it runs, so that building needs no access to remote storage.
    """

    def __init__(self, patterns: list[str], fmt: str = "auto", text_field: str | None = None,
                 id_field: str | None = None, max_chars: int = 10_000, metadata_fields: tuple[str, ...] = ()):
        super().__init__()
        self.patterns, self.fmt = list(patterns), fmt
        self.text_field, self.id_field, self.max_chars = text_field, id_field, max_chars
        self.metadata_fields = tuple(metadata_fields)
        formats = [_format_for(pattern, fmt, text_field, id_field, self.metadata_fields) for pattern in self.patterns]
        self.inputs = _inputs(self.patterns, formats)

    def expand(self, pbegin):
        parsed = (pbegin
                  | "Inputs" >> beam.Create(self.inputs)
                  | "Match" >> beam.FlatMap(_files)
                  | "Spread" >> beam.Reshuffle()
                  | "Parse" >> beam.ParDo(ReadFile(self.fmt, self.text_field, self.id_field, self.max_chars,
                                                 self.metadata_fields))
                  .with_outputs(DEAD, main="records"))
        return {"records": parsed.records, DEAD: parsed[DEAD]}


def _inputs(patterns: list[str], formats: list[str]) -> list[tuple[str, str, bool]]:
    """``(path, format, False)`` for each local file, once (as the first pattern matching it has it),
    and ``(pattern, format, True)`` for each URL pattern, matched when the job runs."""
    local: dict[str, tuple[str, str]] = {}  # real path -> (path, format)
    for pattern, fmt in zip(patterns, formats):
        if not files.is_url(pattern):
            for path in expand_inputs([pattern]):
                local.setdefault(os.path.realpath(path), (path, fmt))
    remote = [(pattern, fmt, True) for pattern, fmt in zip(patterns, formats) if files.is_url(pattern)]
    return [(path, fmt, False) for path, fmt in sorted(local.values())] + remote


def _files(item: tuple[str, str, bool]) -> list[tuple[str, str]]:
    """An input's ``(path, format)`` pairs: a URL pattern's matches, or the local file itself."""
    name, fmt, is_pattern = item
    return [(path, fmt) for path in expand_inputs([name])] if is_pattern else [(name, fmt)]
