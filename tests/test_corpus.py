"""ReadCorpus against hostile input: truncated and corrupt compressed files, bad CSV quoting,
bad Parquet values, lone surrogates, BOMs, UTF-16, zero-width-only lines, lone CRs, bad ids.

Each test runs one small in-process pipeline over several files and checks that every record
read comes out once, as a record or as one dead letter with the expected reason.
"""
from __future__ import annotations

import bz2
import gzip
import json
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from core import deadletter as dl
from core import textnorm
from core.errors import InputError
from core.textnorm import normalize, text_id
from transforms.corpus import DEAD, ReadCorpus
from transforms.runner import counter_values, create_pipeline, run_and_wait


@dataclass
class Read:
    records: list[tuple[str, str, str]]  # (id, sentence, source)
    dead: list[dict]
    counts: dict[str, int]

    def texts(self, name: str) -> list[str]:
        """Sentences from sources of this file name (tar members included, ``ARCHIVE!/dir/name``)."""
        return [s for _, s, source in self.records if Path(source).name == name]

    def ids(self, name: str) -> dict[str, str]:
        return {i: s for i, s, source in self.records if Path(source).name == name}

    def dead_in(self, name: str) -> list[dict]:
        return [d for d in self.dead if Path(d["source"]).name == name]

    def reasons(self, name: str) -> Counter:
        return Counter(d["reason"] for d in self.dead_in(name))


def read_corpus(tmp_path: Path, patterns: list[str], **kwargs) -> Read:
    """Run ReadCorpus in a small pipeline; check that every record read is accounted for once."""
    out = tmp_path / "out"
    p = create_pipeline(PipelineOptions([]))
    corpus = p | ReadCorpus(patterns, **kwargs)
    _ = (corpus["records"] | beam.Map(lambda r: json.dumps([r[0], r[1][0], r[1][1]]))
         | "WriteRecords" >> beam.io.WriteToText(str(out / "records"), shard_name_template=""))
    _ = corpus[DEAD] | "WriteDead" >> beam.io.WriteToText(str(out / "dead"), shard_name_template="")
    counts = counter_values(run_and_wait(p), "embed")
    result = Read([tuple(json.loads(l)) for l in (out / "records").read_text().splitlines()],
                  [json.loads(l) for l in (out / "dead").read_text().splitlines()], counts)
    assert counts.get("read", 0) == len(result.records) + len(result.dead)
    assert counts.get("dead_letter", 0) == len(result.dead)
    assert {k[len("dead_letter_"):]: v for k, v in counts.items() if k.startswith("dead_letter_")} == \
        Counter(d["reason"] for d in result.dead)
    for d in result.dead:  # every detail fits on one line; file-level ones name the file
        assert "\n" not in d.get("detail", "")
        if d["reason"] in (dl.TRUNCATED_FILE, dl.UNREADABLE_FILE):
            assert d["source"] in d["detail"]
    return result


def cut(data: bytes) -> bytes:
    return data[:len(data) // 2]


def numbered(n: int, what: str = "Sentence") -> list[str]:
    return [f"{what} number {i} is complete." for i in range(n)]


def test_text_files(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    forty, many = numbered(40), numbered(2000)
    (d / "cut.txt.gz").write_bytes(cut(gzip.compress("\n".join(forty).encode() + b"\n")))
    (d / "cut.txt.bz2").write_bytes(cut(bz2.compress("\n".join(many).encode() + b"\n")))
    (d / "whole.txt.gz").write_bytes(gzip.compress(b"Zipped one.\nZipped two.\n"))
    (d / "whole.txt.bz2").write_bytes(bz2.compress(b"Bzipped one.\nBzipped two"))
    corrupt = bytearray(gzip.compress("\n".join(many).encode()))
    corrupt[40:80] = bytes(40)
    (d / "corrupt.txt.gz").write_bytes(bytes(corrupt))
    (d / "notgzip.txt.gz").write_bytes(b"plain text, not gzip\n")
    (d / "bom.txt").write_bytes(b"\xef\xbb\xbfSame sentence.\nOther.\n")
    (d / "plain.txt").write_bytes(b"Same sentence.\n")
    le = "\ufeffCaf\u00e9 au lait.\r\n\u65e5\u672c\u8a9e\nlast\ud800"  # ends in a lone surrogate, no newline
    (d / "le.txt").write_bytes(le.encode("utf-16-le", "surrogatepass"))
    (d / "be.txt").write_bytes("\ufeffBig endian.\n\u0420\u0443\u0441\u0441\u043a\u0438\u0439\n".encode("utf-16-be"))
    (d / "notutf16.txt").write_bytes(b"\xff\xfe starts like a UTF-16 BOM\nA UTF-8 line.\n")
    (d / "mac.txt").write_bytes(b"Old Mac one.\rOld Mac two.\r\rOld Mac three.\r")
    zero_width = ["\u200b", " \u200d \u2060 ", "\ufeff", "\u202e\t", "\u200b\u200c\u200d\u2066\u2069"]
    kept = ["\U0001F469\u200d\U0001F4BB coder", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"]
    (d / "zw.txt").write_text("\n".join(zero_width + kept) + "\n", encoding="utf-8")
    (d / "bad.txt").write_bytes(b"Good one.\n\xff\xfe\xfa broken\nnul\x00byte\nGood two.\n")
    r = read_corpus(tmp_path, [str(d / "*")])

    got = r.texts("cut.txt.gz")  # complete lines only, then one truncated_file dead letter
    assert 0 < len(got) < 40 and got == forty[:len(got)]
    [trunc] = r.dead_in("cut.txt.gz")
    assert trunc["reason"] == dl.TRUNCATED_FILE and f"{len(got)} complete records" in trunc["detail"]
    assert r.texts("cut.txt.bz2") == [] and r.reasons("cut.txt.bz2") == {dl.TRUNCATED_FILE: 1}
    assert r.texts("whole.txt.gz") == ["Zipped one.", "Zipped two."]
    assert r.texts("whole.txt.bz2") == ["Bzipped one.", "Bzipped two"]
    [bad_gz] = r.dead_in("corrupt.txt.gz")
    assert bad_gz["reason"] == dl.UNREADABLE_FILE and "zlib.error: Error -3" in bad_gz["detail"]
    assert "error: error" not in bad_gz["detail"]
    assert r.reasons("notgzip.txt.gz") == {dl.UNREADABLE_FILE: 1}
    assert r.ids("bom.txt")[text_id("Same sentence.")] == "Same sentence." == r.texts("plain.txt")[0]
    assert sorted(r.texts("le.txt")) == ["Caf\u00e9 au lait.", "\u65e5\u672c\u8a9e"]
    assert r.reasons("le.txt") == {dl.INVALID_UTF8: 1}  # the lone surrogate, its line only
    assert sorted(r.texts("be.txt")) == ["Big endian.", "\u0420\u0443\u0441\u0441\u043a\u0438\u0439"]
    assert r.texts("notutf16.txt") == ["A UTF-8 line."] and r.reasons("notutf16.txt") == {dl.INVALID_UTF8: 1}
    assert sorted(r.texts("mac.txt")) == ["Old Mac one.", "Old Mac three.", "Old Mac two."]
    assert r.reasons("mac.txt") == {dl.EMPTY: 1}  # the blank line between two CRs
    assert sorted(r.texts("zw.txt")) == sorted(kept)  # ZWJ and ZWNJ kept inside text
    assert r.reasons("zw.txt") == {dl.EMPTY: len(zero_width)}
    assert sorted(r.texts("bad.txt")) == ["Good one.", "Good two."]
    assert r.reasons("bad.txt") == {dl.INVALID_UTF8: 1, dl.CONTAINS_NUL: 1}
    assert [d["raw"] for d in r.dead_in("bad.txt") if d["reason"] == dl.INVALID_UTF8] == ["\\xff\\xfe\\xfa broken"]


def test_csv_and_tsv_files(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rows = [f"r{i},Row number {i} is fine." for i in range(100)]
    stray = rows[:2] + ['r2,"Stray quote opens here'] + rows[3:]
    (d / "stray.csv").write_text("id,text\n" + "\n".join(stray) + "\n")
    (d / "tail.csv").write_text('id,text\nt1,Fine.\nt2,"Never closed\nt3,Still read.\n')
    (d / "multi.csv").write_text('id,text\nm1,"First line\nsecond line, same field"\nm2,"He said ""hi"""\n')
    (d / "bom.csv").write_bytes(b"\xef\xbb\xbfid,text\nb1,Behind a BOM.\n")
    (d / "zipped.csv.gz").write_bytes(gzip.compress(b"id,text\nz1,Gzipped CSV row.\n"))
    (d / "cut.csv.gz").write_bytes(cut(gzip.compress(("id,text\n" + "\n".join(rows) + "\n").encode())))
    (d / "wide.csv").write_bytes("id,text\r\nw1,Caf\u00e9 UTF-16.\r\nw2,\u65e5\u672c\u8a9e\r\n".encode("utf-16"))
    (d / "ids.csv").write_bytes(b"id,text\n\xff1,Bad byte in the id.\ni2,Bad byte \xfe in the text.\ni3,Fine id.\n")
    (d / "rows.tsv").write_bytes(b"id\ttext\r\ns1\tTab separated.\r\ns2\r\ns3\t\"Quoted\ttab\"\r\n")
    r = read_corpus(tmp_path, [str(d / "*.csv"), str(d / "*.csv.gz"), str(d / "*.tsv")],
                    text_field="text", id_field="id", max_chars=500)

    assert len(r.ids("stray.csv")) == 99 and "r99" in r.ids("stray.csv")
    [bad] = r.dead_in("stray.csv")
    assert (bad["reason"], bad["raw"]) == (dl.MALFORMED_CSV, 'r2,"Stray quote opens here')
    assert "line 4" in bad["detail"] and "500 characters" in bad["detail"]
    assert r.ids("tail.csv") == {"t1": "Fine.", "t3": "Still read."}
    [never] = r.dead_in("tail.csv")
    assert never["reason"] == dl.MALFORMED_CSV and "never closed" in never["detail"]
    assert r.ids("multi.csv") == {"m1": "First line second line, same field", "m2": 'He said "hi"'}
    assert r.ids("bom.csv") == {"b1": "Behind a BOM."} and not r.dead_in("bom.csv")
    assert r.ids("zipped.csv.gz") == {"z1": "Gzipped CSV row."}
    got = r.ids("cut.csv.gz")
    assert 0 < len(got) < 100 and got == {f"r{i}": f"Row number {i} is fine." for i in range(len(got))}
    assert r.reasons("cut.csv.gz") == {dl.TRUNCATED_FILE: 1}
    assert r.ids("wide.csv") == {"w1": "Caf\u00e9 UTF-16.", "w2": "\u65e5\u672c\u8a9e"}
    assert r.ids("ids.csv") == {"i3": "Fine id."}
    assert r.reasons("ids.csv") == {dl.INVALID_UTF8: 2}
    assert {d["raw"] for d in r.dead_in("ids.csv")} == {"\\xff1,Bad byte in the id.", "i2,Bad byte \\xfe in the text."}
    assert r.ids("rows.tsv") == {"s1": "Tab separated.", "s3": "Quoted tab"}
    assert r.reasons("rows.tsv") == {dl.MISSING_FIELD: 1}


def test_json_lines_files(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    lines = [
        '{"id": "a", "text": "Fine string id."}',
        '{"id": 7, "text": "Integer id."}',
        '{"id": "s1", "text": "\\ud800"}',  # lone surrogate in the text
        '{"id": "\\udc80", "text": "Lone surrogate in the id."}',
        '{"id": true, "text": "Bool id."}',
        '{"id": 1.5, "text": "Float id."}',
        '{"id": {"x": 1}, "text": "Object id."}',
        '{"id": [1], "text": "List id."}',
        '{"id": null, "text": "Null id."}',
        '{"id": "m", "other": "No text field in this row."}',
        '{"id": "n", "text": 5}',
        '[' * 100_000 + ']' * 100_000,  # too deep for the JSON parser
        '"just a string"',
    ]
    (d / "mixed.jsonl").write_bytes(b"\xef\xbb\xbf" + "\r".join(lines).encode() + b"\r\n" +
                                    b'{"id": "u", "text": "bad \xff byte"}\n')
    full = "".join(json.dumps({"id": f"g{i}", "text": s}) + "\n" for i, s in enumerate(numbered(300)))
    (d / "cut.jsonl.gz").write_bytes(cut(gzip.compress(full.encode())))
    (d / "wide.jsonl").write_bytes('{"id": "w", "text": "UTF-16 JSON."}\n'.encode("utf-16"))
    r = read_corpus(tmp_path, [str(d / "*.jsonl"), str(d / "*.jsonl.gz")], text_field="text", id_field="id")

    assert r.ids("mixed.jsonl") == {"a": "Fine string id.", "7": "Integer id."}
    assert r.reasons("mixed.jsonl") == {dl.INVALID_UTF8: 3, dl.INVALID_ID: 4, dl.MISSING_FIELD: 2,
                                        dl.NOT_A_STRING: 1, dl.INVALID_JSON: 2}
    got = r.ids("cut.jsonl.gz")
    assert 0 < len(got) < 300 and got == {f"g{i}": numbered(300)[i] for i in range(len(got))}
    assert r.reasons("cut.jsonl.gz") == {dl.TRUNCATED_FILE: 1}
    assert r.ids("wide.jsonl") == {"w": "UTF-16 JSON."}


def _broken_parquet(path: Path) -> None:
    """Two row groups of 10 rows; the second one's pages overwritten with garbage."""
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(20)], "text": numbered(20)}), path, row_group_size=10)
    column = pq.ParquetFile(path).metadata.row_group(1).column(1)
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + 5:start + column.total_compressed_size - 5] = b"\x5a" * (column.total_compressed_size - 10)
    path.write_bytes(bytes(data))


def test_parquet_files(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    raw = [f"Parquet row {i}.".encode() for i in range(10)]
    raw[3] = b"Invalid \xff UTF-8."
    unchecked = pa.Array.from_buffers(pa.string(), 10, pa.array(raw, pa.binary()).buffers())
    pq.write_table(pa.table({"id": [f"u{i}" for i in range(10)], "text": unchecked}), d / "utf8.parquet")
    pq.write_table(pa.table({"id": [1, 2, None], "text": ["Int id one.", None, "Null id."]}), d / "ints.parquet")
    pq.write_table(pa.table({"id": [1.5, 2.5], "text": ["Float id.", "Float id two."]}), d / "floats.parquet")
    pq.write_table(pa.table({"id": ["n1", "n2"], "text": [1, 2]}), d / "numbers.parquet")
    pq.write_table(pa.table({"id": ["c1", "c2"], "text": pa.array(["Category.", "Category."]).dictionary_encode()}),
                   d / "dict.parquet")
    _broken_parquet(d / "broken.parquet")
    r = read_corpus(tmp_path, [str(d / "*.parquet")], text_field="text", id_field="id")

    assert r.ids("utf8.parquet") == {f"u{i}": f"Parquet row {i}." for i in range(10) if i != 3}
    [bad] = r.dead_in("utf8.parquet")
    assert (bad["reason"], bad["id"]) == (dl.INVALID_UTF8, "u3")
    assert json.loads(bad["raw"]) == {"id": "u3", "text": "Invalid \\xff UTF-8."}
    assert r.ids("ints.parquet") == {"1": "Int id one."}
    assert r.reasons("ints.parquet") == {dl.MISSING_FIELD: 2}
    assert r.reasons("floats.parquet") == {dl.INVALID_ID: 2}
    assert r.reasons("numbers.parquet") == {dl.NOT_A_STRING: 2}
    assert r.ids("dict.parquet") == {"c1": "Category.", "c2": "Category."}
    got = r.ids("broken.parquet")
    assert got == {f"p{i}": numbered(20)[i] for i in range(10)}  # the first row group
    [broken] = r.dead_in("broken.parquet")
    assert broken["reason"] == dl.UNREADABLE_FILE and f"after {len(got)} records" in broken["detail"]


@pytest.mark.parametrize("name, content, found", [
    ("headers.csv", b"id,headline\n1,Text.\n", r"its columns are: \['id', 'headline'\]"),
    ("keys.jsonl", b'{"id": 1, "headline": "a"}\nnot json\n{"id": 2}\n', r"first one's keys are: \['id', 'headline'\]"),
    ("schema.parquet", None, r"its columns are: \['id', 'headline'\]"),
])
def test_a_field_missing_from_a_whole_file_fails_fast(tmp_path, name, content, found):
    path = tmp_path / name
    if content is None:
        pq.write_table(pa.table({"id": [1], "headline": ["Text."]}), path)
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match=rf"{name}: --text_field 'text' .*{found}"):
        read_corpus(tmp_path, [str(path)], text_field="text")


def test_flag_and_compression_errors(tmp_path):
    with pytest.raises(InputError, match="--text_field needs a CSV/TSV, JSON Lines or Parquet input"):
        ReadCorpus(["corpus.txt"], text_field="text")
    with pytest.raises(InputError, match="--id_field needs"):
        ReadCorpus(["corpus.txt"], id_field="id")
    with pytest.raises(InputError, match=r"corpus\.csv\.zst: \.zst compression is not supported"):
        ReadCorpus(["corpus.csv.zst"], text_field="text")
    (tmp_path / "c.txt.deflate").write_bytes(b"x")
    with pytest.raises(InputError, match=r"c\.txt\.deflate: \.deflate compression is not supported"):
        read_corpus(tmp_path, [str(tmp_path / "c.*")])


def test_the_printable_ascii_shortcut_normalizes_like_the_general_rule():
    rng = np.random.default_rng(0)
    alphabet = np.array(list(string.printable[:95]) + [" "] * 20)  # printable ASCII, spaces often in runs
    texts = ["", " ", "  a  b  ", *("".join(rng.choice(alphabet, rng.integers(0, 60))) for _ in range(3000))]
    assert all(t.isascii() and t.isprintable() for t in texts)
    assert [normalize(t) for t in texts] == [textnorm._normalize_any(t) for t in texts]


def test_normalize_treats_format_characters_alone_as_empty():
    assert normalize("\u200b \u200d\t\u2060\ufeff\u202e") == ""
    assert normalize(" a\u200db ") == "a\u200db"
    assert normalize("  Cafe\u0301\t au\u00a0 lait \r\n") == "Caf\u00e9 au lait"


def test_dead_letter_raw_is_valid_unicode():
    assert json.loads(dl.dead_letter("x", "f", "a\udcffb"))["raw"] == "a\\xffb"
    assert json.loads(dl.dead_letter("x", "f", "a\ud800b"))["raw"] == "a\\ud800b"
    assert json.loads(dl.dead_letter("x", "f", b"a\xffb"))["raw"] == "a\\xffb"
