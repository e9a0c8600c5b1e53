"""A hostile corpus of >100,000 records in every input format, every record accounted for (slow).

Files: .txt (UTF-8 BOM, CRLF, lone CR, UTF-16 LE/BE), .txt.gz and .txt.bz2 (whole, truncated, corrupt),
.csv (BOM, quoted multi-line fields, stray quotes, UTF-16), .csv.gz (whole, truncated), .tsv, .jsonl
(BOM, lone CRs, bad ids, lone surrogates), .jsonl.gz (whole, truncated) and .parquet (invalid UTF-8,
nulls, wrong types, a damaged row group). Every record is planted with the outcome it must get: a
sentence with its id, or a dead-letter reason. Plain text and the structured formats (which take
--text_field/--id_field) need one job each.

The same ledger is checked twice: against ReadCorpus directly, and through the embed job (which also
deduplicates and dead-letters conflicting ids). Per input file: read = embedded + duplicate +
dead-lettered (nothing is already_embedded here), with the expected reason for each planted record.
"""
from __future__ import annotations

import bz2
import glob
import gzip
import json
import random
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from core import deadletter as dl
from core.textnorm import normalize, text_id
from pipelines import sample_corpus
from tests.hub_models import save_text_encoder
from transforms.corpus import DEAD, ReadCorpus
from transforms.runner import counter_values, create_pipeline, run_and_wait

MAX_CHARS = 2000
STRUCTURED = ("text", "id")  # --text_field, --id_field of the structured job
ZERO_WIDTH = ["\u200b", " \u200d ", "\u2060\ufeff", "\u202e\t\u202c", "\u200b\u200c\u200d\u2066\u2069"]
ODD = ["\U0001F469\u200d\U0001F4BB codes at night {n}", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 {n}",
       "Bell\x07and\x1bescape {n}", "\u65e5\u672c\u8a9e\u306e\u6587 {n}", "abc \u202eright to left\u202c {n}"]
# kind -> weight: good, dup(licate) and odd texts are embedded, the others dead-lettered
TEXT_KINDS = {"good": 70, "dup": 8, "odd": 4, dl.EMPTY: 3, "zero_width": 3, dl.CONTAINS_NUL: 3,
              dl.INVALID_UTF8: 3, "surrogate": 3, dl.TOO_LONG: 0.2}


class Ledger:
    """Planted records per file: ``("ok", id, sentence)`` or ``("dead", reason)``, in file order."""

    def __init__(self):
        self.files: dict[str, list[tuple]] = {}

    def plant(self, path: Path, outcomes: list[tuple]) -> None:
        self.files[str(path)] = outcomes

    def resolved(self) -> dict[str, list[tuple]]:
        """Outcomes after the embed job's deduplication: an id reused for another sentence keeps the
        smallest one; the others are dead-lettered ``conflicting_id``."""
        kept: dict[str, str] = {}
        for outcomes in self.files.values():
            for o in outcomes:
                if o[0] == "ok":
                    kept[o[1]] = min(kept.get(o[1], o[2]), o[2])
        return {f: [("dead", dl.CONFLICTING_ID) if o[0] == "ok" and kept[o[1]] != o[2] else o for o in outcomes]
                for f, outcomes in self.files.items()}


class Hostile:
    """Writes the files and fills the ledger. Rows are built as UTF-8 bytes (invalid ones included);
    UTF-16 files are transcoded at the end (they hold lone surrogates, never invalid bytes)."""

    def __init__(self, root: Path, seed: int = 0):
        self.root, self.rng, self.ledger = root, random.Random(seed), Ledger()
        self.pool = iter(sample_corpus.generate(100_000, seed=seed + 7))
        self.used: list[str] = []  # planted good sentences, for duplicates
        self.n = 0  # makes generated values unique
        self.ids: list[tuple[str, str]] = []  # (id, text) planted in structured files, for reuse

    def _next(self) -> int:
        self.n += 1
        return self.n

    def ok_text(self, plain: bool = False) -> str:
        """A new good sentence; ``plain``: without commas (rows near a stray quote need no quoting)."""
        value = next(self.pool).replace(",", "") if plain else next(self.pool)
        self.used.append(value)
        return value

    def text(self, plain: bool = False, utf16: bool = False) -> tuple[str | bytes, str | None]:
        """A text value (bytes where invalid UTF-8) and the dead-letter reason it must get (None: embedded)."""
        kind = self.rng.choices(list(TEXT_KINDS), weights=list(TEXT_KINDS.values()))[0]
        n = self._next()
        if kind == "good" or (kind == "dup" and not self.used):
            return self.ok_text(plain), None
        if kind == "dup":
            return self.rng.choice(self.used).replace(",", "") if plain else self.rng.choice(self.used), None
        if kind == "odd":
            return self.rng.choice(ODD).format(n=n), None
        if kind in (dl.EMPTY, "zero_width"):
            return self.rng.choice(["", " \t "] if kind == dl.EMPTY else ZERO_WIDTH), dl.EMPTY
        if kind == dl.CONTAINS_NUL:
            return f"nul\x00byte {n}", dl.CONTAINS_NUL
        if kind == dl.TOO_LONG:
            return "long " * (MAX_CHARS // 4), dl.TOO_LONG
        if kind == "surrogate" or utf16:  # a lone surrogate: invalid UTF-8 bytes once written
            return f"lone \ud800 surrogate {n}", dl.INVALID_UTF8
        return b"\xff\xfe broken %d" % n, dl.INVALID_UTF8

    def write(self, name: str, data: bytes, outcomes: list[tuple], compress=None, cut: float | None = None,
              header: int = 0, encoding: str = "utf-8", bom: bytes = b"") -> None:
        """Write (transcoded, compressed, cut short) and plant the records a reader can get from it."""
        if encoding != "utf-8":
            data = data.decode("utf-8", "surrogatepass").encode(encoding, "surrogatepass")
        data = bom + data
        if compress:
            data = compress(data)
        if cut is not None:  # the complete lines before the cut are read, then one truncated_file
            data = data[:int(len(data) * cut)]
            lines = _decompressible(data, compress).count(b"\n") - header
            outcomes = outcomes[:lines] + [("dead", dl.TRUNCATED_FILE)]
        (self.root / name).write_bytes(data)
        self.ledger.plant(self.root / name, outcomes)

    # ------------------------------------------------------------ plain text

    def lines(self, n: int, newline: bytes = b"\n", utf16: bool = False) -> tuple[bytes, list[tuple]]:
        lines, outcomes = [], []
        for _ in range(n):
            value, reason = self.text(utf16=utf16)
            lines.append(_utf8(value))
            outcomes.append(("dead", reason) if reason else ("ok", text_id(normalize(value)), normalize(value)))
        return newline.join(lines) + newline, outcomes

    def text_files(self) -> None:
        self.write("bom.txt", *self.lines(12_000), bom=b"\xef\xbb\xbf")
        self.write("crlf.txt", *self.lines(5_000, b"\r\n"))
        self.write("mac.txt", *self.lines(4_000, b"\r"))
        self.write("le16.txt", *self.lines(2_000, utf16=True), encoding="utf-16-le", bom=b"\xff\xfe")
        self.write("be16.txt", *self.lines(2_000, b"\r\n", utf16=True), encoding="utf-16-be", bom=b"\xfe\xff")
        self.write("whole.txt.gz", *self.lines(6_000), compress=gzip.compress)
        self.write("cut.txt.gz", *self.lines(8_000), compress=gzip.compress, cut=0.6)
        self.write("whole.txt.bz2", *self.lines(4_000), compress=bz2.compress)
        self.write("cut.txt.bz2", *self.lines(10_000), compress=lambda d: bz2.compress(d, 1), cut=0.7)
        data, outcomes = self.lines(1_000)
        self.write("badcrc.txt.gz", data, outcomes + [("dead", dl.UNREADABLE_FILE)],
                   compress=lambda d: _bad_crc(gzip.compress(d)))  # every line is read, then the CRC fails
        self.write("notgzip.txt.gz", b"plain text\n", [("dead", dl.UNREADABLE_FILE)])
        self.write("notbz2.txt.bz2", b"BZh9" + bytes(64), [("dead", dl.UNREADABLE_FILE)])

    # ------------------------------------------------------------ structured records

    def record(self, plain: bool = False, utf16: bool = False) -> tuple[object, str | bytes, tuple]:
        """(id, text, outcome): mostly fresh string ids, some integers, some reused (a duplicate when the
        text is the same, a conflict when not)."""
        text, reason = self.text(plain, utf16)
        n, r = self._next(), self.rng.random()
        if reason:
            return f"id-{n}", text, ("dead", reason)
        if r < 0.01 and self.ids:
            id_value, earlier = self.rng.choice(self.ids)
            text = earlier if self.rng.random() < 0.5 and not (plain and "," in earlier) else text
        else:
            id_value = 10**9 + n if r < 0.05 else f"id-{n}"
            self.ids.append((str(id_value), text))
        return id_value, text, ("ok", str(id_value), normalize(text))

    def rows(self, n: int, sep: bytes = b",", newline: bytes = b"\n", multiline: bool = False,
             strays: int = 0, utf16: bool = False) -> tuple[bytes, list[tuple]]:
        """CSV/TSV ``id<sep>text`` rows: bad ids, short rows, quoted multi-line fields and stray quotes planted.

        A stray (never closed) quote loses only its own line; ``strays`` of them are spread over the
        file, one near its end, with no other quote within --max_chars after them.
        """
        rows, outcomes = [b"id" + sep + b"text"], []
        stray_at = {n * (k + 1) // (strays + 1) for k in range(strays)} | ({n - 3} if strays else set())
        for i in range(n):
            id_value, text, outcome = self.record(plain=bool(strays), utf16=utf16)
            id_b, text_b, r = str(id_value).encode(), _utf8(text), self.rng.random()
            if i in stray_at:
                row, outcome = id_b + sep + b'"' + text_b, ("dead", dl.MALFORMED_CSV)
            elif r < 0.01:
                row, outcome = id_b, ("dead", dl.MISSING_FIELD)  # a short row: no text column
            elif r < 0.02:
                row, outcome = sep + _quote(self.ok_text(bool(strays)).encode(), sep), ("dead", dl.MISSING_FIELD)
            elif r < 0.03 and not utf16:
                row = b"\xff" + id_b + sep + _quote(self.ok_text(bool(strays)).encode(), sep)
                outcome = ("dead", dl.INVALID_UTF8)
            elif r < 0.05 and multiline and outcome[0] == "ok":
                first, second = self.ok_text(), self.ok_text()
                row = id_b + sep + _quote(f"{first}\n{second}".encode(), sep)
                outcome = ("ok", outcome[1], normalize(f"{first} {second}"))
            else:
                row = id_b + sep + _quote(text_b, sep)
            rows.append(row)
            outcomes.append(outcome)
        return newline.join(rows) + newline, outcomes

    def objects(self, n: int, newline: bytes = b"\n") -> tuple[bytes, list[tuple]]:
        """JSON objects with good and bad ids and texts, and lines that are no JSON object at all."""
        bad_ids = [(True, dl.INVALID_ID), (1.5, dl.INVALID_ID), ({"x": 1}, dl.INVALID_ID), ([7], dl.INVALID_ID),
                   (None, dl.MISSING_FIELD), ("", dl.MISSING_FIELD), ("\udc80", dl.INVALID_UTF8)]
        lines, outcomes = [], []
        for _ in range(n):
            id_value, text, outcome = self.record()
            obj, r = {"id": id_value, "text": text}, self.rng.random()
            if r < 0.03:
                (obj["id"], reason), obj["text"] = bad_ids[int(r / 0.03 * len(bad_ids))], self.ok_text()
                outcome = ("dead", reason)
            elif r < 0.035:
                obj, outcome = {"id": f"x{self._next()}", "other": self.ok_text()}, ("dead", dl.MISSING_FIELD)
            elif r < 0.04:
                obj["text"], outcome = self._next(), ("dead", dl.NOT_A_STRING)
            if 0.04 <= r < 0.05:
                line = self.rng.choice([b'{"id": "x", "text": "unterminated', b"[1, 2]"])
                outcome = ("dead", dl.INVALID_JSON)
            elif isinstance(obj.get("text"), bytes):  # invalid UTF-8 in the line itself
                line = json.dumps({**obj, "text": "@@"}).encode().replace(b"@@", obj["text"])
            else:
                line = json.dumps(obj).encode()
            lines.append(line)
            outcomes.append(outcome)
        return newline.join(lines) + newline, outcomes

    def parquet_files(self) -> None:
        ids, texts, outcomes = [], [], []
        for _ in range(8_000):
            id_value, text, outcome = self.record()
            r = self.rng.random()
            if r < 0.01:
                id_value, outcome = None, ("dead", dl.MISSING_FIELD)
            elif r < 0.02:
                text, outcome = None, ("dead", dl.MISSING_FIELD)
            ids.append(None if id_value is None else str(id_value))
            texts.append(None if text is None else _utf8(text))
            outcomes.append(outcome)
        _write_parquet(self.root / "mixed.parquet", ids, texts)
        self.ledger.plant(self.root / "mixed.parquet", outcomes)

        rows = [(f"pq-{self._next()}", self.ok_text()) for _ in range(3_000)]
        _write_parquet(self.root / "broken.parquet", [i for i, _ in rows], [t.encode() for _, t in rows])
        _damage_row_group(self.root / "broken.parquet", 2)  # rows of groups 0 and 1 are read
        self.ledger.plant(self.root / "broken.parquet",
                          [("ok", i, normalize(t)) for i, t in rows[:2000]] + [("dead", dl.UNREADABLE_FILE)])

        int_ids, texts = [10**12 + self._next() for _ in range(500)], [self.ok_text() for _ in range(500)]
        pq.write_table(pa.table({"id": int_ids, "text": texts}), self.root / "intid.parquet")
        self.ledger.plant(self.root / "intid.parquet", [("ok", str(i), normalize(t)) for i, t in zip(int_ids, texts)])
        pq.write_table(pa.table({"id": [1.5] * 100, "text": [self.ok_text() for _ in range(100)]}),
                       self.root / "floatid.parquet")
        self.ledger.plant(self.root / "floatid.parquet", [("dead", dl.INVALID_ID)] * 100)
        pq.write_table(pa.table({"id": [f"n-{self._next()}" for _ in range(100)], "text": list(range(100))}),
                       self.root / "inttext.parquet")
        self.ledger.plant(self.root / "inttext.parquet", [("dead", dl.NOT_A_STRING)] * 100)

    def structured_files(self) -> None:
        self.write("bom.csv", *self.rows(12_000, multiline=True), bom=b"\xef\xbb\xbf")
        self.write("stray.csv", *self.rows(6_000, strays=20))
        self.write("wide.csv", *self.rows(2_000, newline=b"\r\n", utf16=True), encoding="utf-16-le", bom=b"\xff\xfe")
        self.write("whole.csv.gz", *self.rows(5_000), compress=gzip.compress)
        self.write("cut.csv.gz", *self.rows(6_000), compress=gzip.compress, cut=0.5, header=1)
        self.write("crlf.tsv", *self.rows(6_000, sep=b"\t", newline=b"\r\n", multiline=True))
        self.write("bom.jsonl", *self.objects(10_000), bom=b"\xef\xbb\xbf")
        self.write("mac.jsonl", *self.objects(3_000, b"\r"))
        self.write("whole.jsonl.gz", *self.objects(4_000), compress=gzip.compress)
        self.write("cut.jsonl.gz", *self.objects(6_000), compress=gzip.compress, cut=0.4)
        self.parquet_files()


def _utf8(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")


def _quote(field: bytes, sep: bytes) -> bytes:
    """A CSV field, quoted where it holds the separator, a quote or a line break."""
    if any(c in field for c in (sep, b'"', b"\n", b"\r")):
        return b'"' + field.replace(b'"', b'""') + b'"'
    return field


def _bad_crc(gz: bytes) -> bytes:
    return gz[:-8] + bytes([gz[-8] ^ 0xFF]) + gz[-7:]


def _decompressible(data: bytes, compress) -> bytes:
    """What can be decompressed from the start of a cut-short .gz/.bz2 file."""
    if compress is gzip.compress:
        return zlib.decompressobj(wbits=31).decompress(data)
    return bz2.BZ2Decompressor().decompress(data)


def _write_parquet(path: Path, ids: list, texts: list[bytes | None]) -> None:
    """Row groups of 1000; a string text column holding the given bytes unchecked (invalid UTF-8 included)."""
    text = pa.array(texts, pa.binary()).view(pa.string())
    pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "text": text}), path, row_group_size=1000)


def _damage_row_group(path: Path, group: int) -> None:
    """Overwrite the text column's page headers in one row group: reading stops there."""
    column = pq.ParquetFile(path).metadata.row_group(group).column(1)
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + 5:start + 45] = b"\x5a" * 40
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, Ledger, Ledger]:
    """Two corpora (plain text; structured) and their ledgers."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "text").mkdir()
    (root / "structured").mkdir()
    text, structured = Hostile(root / "text", seed=1), Hostile(root / "structured", seed=2)
    text.text_files()
    structured.structured_files()
    total = sum(len(o) for h in (text, structured) for o in h.ledger.files.values())
    assert total >= 100_000
    return root, text.ledger, structured.ledger


def _patterns(directory: Path) -> list[str]:
    return sorted(str(p) for p in directory.iterdir())


def _check_per_file(ledger: dict[str, list[tuple]], embedded: dict[str, str], dead: list[dict]) -> dict:
    """Per file: the planted dead-letter reasons, the planted sentences under their ids, and
    read = embedded + duplicate + dead-lettered. Returns the totals."""
    dead_by_file: dict[str, Counter] = defaultdict(Counter)
    for d in dead:
        dead_by_file[d["source"]][d["reason"]] += 1
    assert set(dead_by_file) <= set(ledger), set(dead_by_file) - set(ledger)
    seen, totals = set(), Counter()
    for path, outcomes in ledger.items():
        expected_dead = Counter(o[1] for o in outcomes if o[0] == "dead")
        assert dead_by_file[path] == expected_dead, path
        ok = [o for o in outcomes if o[0] == "ok"]
        for _, id_, sentence in ok:
            assert embedded.get(id_) == sentence, (path, id_, sentence)
        first = {id_ for _, id_, _ in ok} - seen
        seen |= first
        counts = {"read": len(outcomes), "embedded": len(first), "duplicate": len(ok) - len(first),
                  "dead_letter": sum(dead_by_file[path].values())}
        assert counts["read"] == counts["embedded"] + counts["duplicate"] + counts["dead_letter"], (path, counts)
        totals.update(counts)
    assert seen == set(embedded)  # nothing embedded that was not planted
    return totals


def _read_directly(patterns: list[str], out: Path, fields: tuple[str, str] | tuple = ()) -> tuple[list, list, dict]:
    p = create_pipeline(PipelineOptions([]))
    corpus = p | ReadCorpus(patterns, text_field=fields[0] if fields else None,
                            id_field=fields[1] if fields else None, max_chars=MAX_CHARS)
    _ = (corpus["records"] | beam.Map(lambda r: json.dumps([r[0], r[1][0], r[1][1]]))
         | "WriteRecords" >> beam.io.WriteToText(str(out / "records")))
    _ = corpus[DEAD] | "WriteDead" >> beam.io.WriteToText(str(out / "dead"))
    counts = counter_values(run_and_wait(p), "embed")
    records = [json.loads(l) for f in glob.glob(str(out / "records*")) for l in Path(f).read_text().splitlines()]
    dead = [json.loads(l) for f in glob.glob(str(out / "dead*")) for l in Path(f).read_text().splitlines()]
    return records, dead, counts


@pytest.mark.slow
def test_hostile_corpus_read_directly(hostile, tmp_path):
    """ReadCorpus alone: each file's records and dead letters are exactly the planted ones."""
    root, text_ledger, structured_ledger = hostile
    for name, ledger, fields in (("text", text_ledger, ()), ("structured", structured_ledger, STRUCTURED)):
        records, dead, counts = _read_directly(_patterns(root / name), tmp_path / name, fields)
        assert counts["read"] == len(records) + len(dead) == sum(len(o) for o in ledger.files.values())
        records_by_file, dead_by_file = defaultdict(Counter), defaultdict(Counter)
        for id_, sentence, source in records:
            records_by_file[source][id_, sentence] += 1
        for d in dead:
            dead_by_file[d["source"]][d["reason"]] += 1
        for path, outcomes in ledger.files.items():
            assert records_by_file[path] == Counter((o[1], o[2]) for o in outcomes if o[0] == "ok"), path
            assert dead_by_file[path] == Counter(o[1] for o in outcomes if o[0] == "dead"), path


def _embedded(out: Path) -> dict[str, str]:
    import tensorflow as tf

    rows = {}
    for record in tf.data.TFRecordDataset(sorted(glob.glob(str(out / "data-*")))).as_numpy_iterator():
        feature = tf.train.Example.FromString(record).features.feature
        rows[feature["id"].bytes_list.value[0].decode()] = feature["text"].bytes_list.value[0].decode()
    return rows


@pytest.mark.slow
def test_hostile_corpus_through_the_embed_job(hostile, tmp_path):
    from pipelines import embed

    root, text_ledger, structured_ledger = hostile
    hub = save_text_encoder(str(tmp_path / "hub"), 512)
    for name, ledger, fields in (("text", text_ledger, ()), ("structured", structured_ledger, STRUCTURED)):
        out = tmp_path / f"out-{name}"
        argv = [a for pattern in _patterns(root / name) for a in ("--input", pattern)]
        argv += ["--output", str(out), "--encoder", f"tfhub:{hub}", "--max_chars", str(MAX_CHARS),
                 "--allow_partial_files"]
        if fields:
            argv += ["--text_field", fields[0], "--id_field", fields[1]]
        manifest = embed.main(argv)
        dead = [json.loads(l) for f in sorted((out / "deadletter").glob("*.jsonl")) for l in f.read_text().splitlines()]
        resolved = ledger.resolved()
        totals = _check_per_file(resolved, _embedded(out), dead)
        counts = manifest["counts"]
        assert counts.get("already_embedded", 0) == 0
        for key in ("read", "embedded", "duplicate", "dead_letter"):
            assert counts[key] == totals[key], key
        planted = Counter(o[1] for outcomes in resolved.values() for o in outcomes if o[0] == "dead")
        assert {k[len("dead_letter_"):]: v for k, v in counts.items() if k.startswith("dead_letter_") and v} == planted
