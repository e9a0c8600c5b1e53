"""Which files ReadCorpus reads, and how: globs through symlinks, non-regular files, compressed data
under a plain name, refused containers, tar archives, JSON arrays, doubled CSV columns, and lines too
long to hold in memory.

Each test builds small files in tmp_path and runs ReadCorpus on the local runner through
``read_corpus`` (tests/test_corpus.py), which checks that every record read comes out once.
"""
from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.localfilesystem import LocalFileSystem
from apache_beam.options.pipeline_options import PipelineOptions

from core import deadletter as dl
from core.errors import InputError
from core.globs import expand_inputs
from tests.test_corpus import numbered, read_corpus
from transforms.corpus import ReadCorpus, check_patterns

ROOT = Path(__file__).resolve().parents[1]


def lines_of(sentences: list[str]) -> bytes:
    return ("\n".join(sentences) + "\n").encode()


def write_tree(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(lines_of(numbered(3, name)))


# ---------------------------------------------------------------- globs


def test_globs_see_files_under_symlinked_directories(tmp_path):
    corpus, elsewhere = tmp_path / "corpus", tmp_path / "elsewhere"
    for d, name in ((corpus / "a", "a"), (corpus / "b", "b"), (elsewhere, "c")):
        d.mkdir(parents=True)
        (d / f"{name}.txt").write_bytes(lines_of(numbered(40, name)))
    (corpus / "c").symlink_to(elsewhere, target_is_directory=True)
    r = read_corpus(tmp_path, [str(corpus / "*" / "*.txt")])
    assert len(r.records) == 120 and not r.dead
    assert sorted(r.texts("c.txt")) == sorted(numbered(40, "c"))


def test_double_star_follows_symlinks_without_looping(tmp_path):
    corpus = tmp_path / "corpus"
    write_tree(corpus, ["a/x.txt", "b/deep/y.txt"])
    (corpus / "b" / "deep" / "up").symlink_to(corpus, target_is_directory=True)  # a loop
    (corpus / "again").symlink_to(corpus / "a", target_is_directory=True)  # a second path to a/x.txt
    assert expand_inputs([f"{corpus}/**.txt"]) == [str(corpus / "a/x.txt"), str(corpus / "b/deep/y.txt")]
    r = read_corpus(tmp_path, [f"{corpus}/**.txt", str(corpus / "again" / "x.txt")])
    assert len(r.records) == 6 and not r.dead  # each file once, however many paths reach it


def test_expand_inputs_lists_sorted_absolute_paths_once(tmp_path, monkeypatch):
    write_tree(tmp_path, ["d/b.txt", "d/a.txt", "d/c.csv"])
    monkeypatch.chdir(tmp_path)
    assert expand_inputs(["d/*.txt", "d/a.txt", str(tmp_path / "d/*")]) == \
        [str(tmp_path / "d" / n) for n in ("a.txt", "b.txt", "c.csv")]
    with pytest.raises(FileNotFoundError, match="'d/\\*.json' matches no files"):
        expand_inputs(["d/*.json"])


@pytest.mark.parametrize("pattern", ["c/*.txt", "c/*", "c/", "c/**", "c/**.txt", "c/**/*.txt", "c/*/*.txt",
                                     "c/?/*.txt", "c/[ab]/*", "c/[!a]*/*", "c/a*", "c/1.txt", "c/*/x/*"])
def test_local_globs_match_like_beam_without_symlinks(tmp_path, monkeypatch, pattern):
    write_tree(tmp_path / "c", ["1.txt", "2.csv", ".dot.txt", "ab.txt", "a/3.txt", "a/ab.txt", "a/x/4.txt",
                                "b/5.txt", ".h/6.txt"])
    monkeypatch.chdir(tmp_path)
    [found] = LocalFileSystem(PipelineOptions([])).match([pattern])
    beam = sorted(os.path.abspath(m.path) for m in found.metadata_list)
    assert beam and expand_inputs([pattern]) == beam


def test_dangling_symlinks_are_refused_before_the_job(tmp_path):
    write_tree(tmp_path / "in", ["a.txt"])
    (tmp_path / "in" / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    with pytest.raises(InputError, match=r"gone\.txt is a dangling symlink \(to .*nowhere\.txt"):
        check_patterns([str(tmp_path / "in" / "*.txt")])


@pytest.mark.parametrize("make, kind", [
    (lambda p: os.mkfifo(p), "a FIFO"),
    (lambda p: p.mkdir(), "a directory"),
    (lambda p: p.symlink_to("/dev/null"), "a character device"),
], ids=["fifo", "directory", "device"])
def test_non_regular_files_are_refused_before_the_job(tmp_path, make, kind):
    """Never opened: opening a FIFO with no writer blocks forever."""
    write_tree(tmp_path / "in", ["a.txt"])
    make(tmp_path / "in" / "odd.txt")
    patterns = [str(tmp_path / "in" / "odd.txt")]
    if kind != "a directory":  # a glob matches files only, as Beam's does
        patterns.append(str(tmp_path / "in" / "*.txt"))
    for pattern in patterns:
        with pytest.raises(InputError, match=rf"odd\.txt is {kind}"):
            check_patterns([pattern])
        with pytest.raises(InputError, match=rf"odd\.txt is {kind}"):
            ReadCorpus([pattern])


def test_url_patterns_are_matched_by_beam_when_the_job_runs(tmp_path):
    import tensorflow as tf

    import tests.ramfs  # noqa: F401 - registers ram:// with Beam

    root = f"ram://{tmp_path.name}/corpus"
    tf.io.gfile.makedirs(root)
    for name in ("a.txt", "b.txt"):
        with tf.io.gfile.GFile(f"{root}/{name}", "wb") as f:
            f.write(gzip.compress(lines_of(numbered(5, name))))  # gzip data under a plain name
    assert expand_inputs([f"{root}/*.txt"]) == [f"{root}/a.txt", f"{root}/b.txt"]
    r = read_corpus(tmp_path, [f"{root}/*.txt"])
    assert sorted(r.texts("a.txt")) == sorted(numbered(5, "a.txt")) and len(r.records) == 10


# ---------------------------------------------------------------- containers


def test_compressed_data_under_a_plain_name_is_decompressed(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "notes.txt").write_bytes(gzip.compress(lines_of(numbered(30, "gzip"))))
    (d / "more.txt").write_bytes(bz2.compress(lines_of(numbered(30, "bzip2"))))
    (d / "twice.txt").write_bytes(gzip.compress(gzip.compress(lines_of(numbered(30, "twice")))))
    (d / "cut.txt").write_bytes(gzip.compress(lines_of(numbered(2000, "cut")))[:3000])
    (d / "BZh.txt").write_bytes(b"BZh is how this text starts.\n")
    r = read_corpus(tmp_path, [str(d / "*.txt")])
    for name, what in (("notes.txt", "gzip"), ("more.txt", "bzip2"), ("twice.txt", "twice")):
        assert sorted(r.texts(name)) == sorted(numbered(30, what)), name
    assert r.texts("BZh.txt") == ["BZh is how this text starts."]
    assert r.reasons("cut.txt") == {dl.TRUNCATED_FILE: 1} and r.texts("cut.txt")

    (d / "x.jsonl").write_bytes(gzip.compress(b'{"text": "JSON Lines, gzipped."}\n'))
    r = read_corpus(tmp_path, [str(d / "x.jsonl")], text_field="text")
    assert r.texts("x.jsonl") == ["JSON Lines, gzipped."]


@pytest.mark.parametrize("kind, data", [
    ("zip", b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(40)),
    ("xz", lzma.compress(b"Some text.\n")),
    ("zstd", b"\x28\xb5\x2f\xfd\x04\x00" + bytes(20)),
], ids=["zip", "xz", "zstd"])
def test_other_containers_are_refused_by_their_first_bytes(tmp_path, kind, data):
    (tmp_path / "c.txt").write_bytes(data)
    with pytest.raises(InputError, match=rf"c\.txt holds {kind} data"):
        read_corpus(tmp_path, [str(tmp_path / "c.txt")])


def _tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        directory = tarfile.TarInfo("d")
        directory.type = tarfile.DIRTYPE  # no data of its own, like the link below
        tar.addfile(directory)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("d/link.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "m0.txt"
        tar.addfile(link)
    return buf.getvalue()


def test_tar_archives_are_read_member_by_member(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    members = {f"d/m{i}.txt": lines_of(numbered(40, f"m{i}")) for i in range(3)}
    members["d/z.txt.gz"] = gzip.compress(lines_of(numbered(40, "z")))
    for name, data in (("a.tar", _tar(members)), ("b.tar.gz", _tar(members, "w:gz")),
                       ("c.tgz", _tar(members, "w:gz")), ("hidden.txt", _tar(members, "w:bz2"))):
        (d / name).write_bytes(data)
    whole = _tar({**members, "d/m0.txt": lines_of(numbered(20_000, "m0"))}, "w:gz")
    (d / "cut.tar.gz").write_bytes(whole[:len(whole) // 2])
    r = read_corpus(tmp_path, [str(d / "*")])
    for archive in ("a.tar", "b.tar.gz", "c.tgz", "hidden.txt"):
        got = [s for _, s, source in r.records if Path(source.split("!/")[0]).name == archive]
        assert sorted(got) == sorted(s for m in ("m0", "m1", "m2", "z") for s in numbered(40, m))  # first ones too
    assert {s for _, s, source in r.records if source.endswith("c.tgz!/d/z.txt.gz")} == set(numbered(40, "z"))
    kept = [s for _, s, source in r.records if "cut.tar.gz!/" in source]
    assert 0 < len(kept) < 20_000 and kept == numbered(20_000, "m0")[:len(kept)]  # lines before the cut
    assert r.reasons("cut.tar.gz") == {dl.TRUNCATED_FILE: 1}


def test_tar_members_take_their_own_format(tmp_path):
    members = {"rows.csv": b"id,text\nc1,A CSV row.\n", "objects.jsonl": b'{"id": "j1", "text": "A JSON line."}\n'}
    (tmp_path / "mixed.tar").write_bytes(_tar(members))
    r = read_corpus(tmp_path, [str(tmp_path / "mixed.tar")], text_field="text", id_field="id")
    assert r.ids("rows.csv") == {"c1": "A CSV row."} and r.ids("objects.jsonl") == {"j1": "A JSON line."}

    (tmp_path / "text.tar").write_bytes(_tar({**members, "notes.txt": b"Plain text.\n"}))
    with pytest.raises(InputError, match=r"text\.tar!/notes\.txt is read as text"):
        read_corpus(tmp_path, [str(tmp_path / "text.tar")], text_field="text", id_field="id")
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": ["Parquet."]}), buf)
    (tmp_path / "pq.tar").write_bytes(_tar({"t.parquet": buf.getvalue()}))
    with pytest.raises(InputError, match=r"pq\.tar!/t\.parquet: a Parquet file needs random access"):
        read_corpus(tmp_path, [str(tmp_path / "pq.tar")], text_field="text")


# ---------------------------------------------------------------- whole-file mistakes


@pytest.mark.parametrize("name, data", [
    ("x.json", b'[{"text": "One."}, {"text": "Two."}]\n'),
    ("x.json", b'\xef\xbb\xbf \n  [\n  {"text": "One."},\n  {"text": "Two."}\n]\n'),
    ("x.jsonl.gz", gzip.compress(b'[\n{"text": "One."}\n]')),
], ids=["one-line", "pretty-bom", "gzipped"])
def test_a_json_array_is_not_json_lines(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(InputError, match=rf"{name.replace('.', '[.]')} holds a JSON array; give JSON Lines"):
        read_corpus(tmp_path, [str(tmp_path / name)], text_field="text")


@pytest.mark.parametrize("header, flag, column", [
    (b"id,text,text", "--text_field", "text"),
    (b"id\ttext\tid", "--id_field", "id"),
], ids=["csv-text", "tsv-id"])
def test_a_column_named_twice_is_refused(tmp_path, header, flag, column):
    name = "rows.tsv" if b"\t" in header else "rows.csv"
    sep = b"\t" if b"\t" in header else b","
    (tmp_path / name).write_bytes(header + b"\n" + sep.join([b"1", b"One.", b"Two."]) + b"\n")
    with pytest.raises(InputError, match=rf"{name}: {flag} '{column}' names 2 columns"):
        read_corpus(tmp_path, [str(tmp_path / name)], text_field="text", id_field="id")


# ---------------------------------------------------------------- over-long lines


def test_an_over_long_line_is_one_too_long_dead_letter(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    huge = b"word " * 500_000  # 2.5 MB: over every line limit at --max_chars 10
    (d / "long.txt").write_bytes(b"Before.\n" + huge + b"\r\nAfter.\n")
    (d / "wide.txt").write_bytes(("\ufeffBefore.\n" + "w" * 5000 + "\nAfter.\n").encode("utf-16-le"))
    (d / "long.jsonl").write_bytes(b'{"text": "Before."}\n{"text": "' + huge + b'"}\n{"text": "After."}\n')
    (d / "long.csv").write_bytes(b"id,text\nr1,Before.\nr2," + huge + b"\nq1,\"opens\n" + huge +
                                 b"\"\nr3,After.\n")
    r = read_corpus(tmp_path, [str(d / "*.txt")], max_chars=10)
    for name in ("long.txt", "wide.txt"):
        assert sorted(r.texts(name)) == ["After.", "Before."]
        [long] = r.dead_in(name)
        assert long["reason"] == dl.TOO_LONG and len(long["raw"]) == 1024 and "bytes" in long["detail"]
    r = read_corpus(tmp_path, [str(d / "long.jsonl"), str(d / "long.csv")], text_field="text", max_chars=10)
    assert sorted(r.texts("long.jsonl")) == ["After.", "Before."]
    assert [(x["reason"], len(x["raw"])) for x in r.dead_in("long.jsonl")] == [(dl.TOO_LONG, 1024)]
    assert sorted(r.texts("long.csv")) == ["After.", "Before."]
    assert sorted((x["reason"], len(x["raw"])) for x in r.dead_in("long.csv")) == \
        [(dl.MALFORMED_CSV, len('q1,"opens')), (dl.TOO_LONG, 1024), (dl.TOO_LONG, 1024)]


_MEMORY_PROBE = textwrap.dedent("""
    import gzip, json, resource, sys
    from pathlib import Path
    from tests.test_corpus import read_corpus

    tmp = Path(sys.argv[1])
    (tmp / "small").mkdir()
    (tmp / "small" / "s.txt.gz").write_bytes(gzip.compress(b"Warm up.\\n"))
    read_corpus(tmp / "small", [str(tmp / "small" / "s.txt.gz")])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    member = gzip.compress(b"a" * 2**20)  # gzip members concatenate: 1 GiB of "a" in ~1 MB
    (tmp / "big").mkdir()
    data = gzip.compress(b"Before.\\n") + member * 1024 + gzip.compress(b"\\nAfter.\\n")
    (tmp / "big" / "b.txt.gz").write_bytes(data)
    r = read_corpus(tmp / "big", [str(tmp / "big" / "b.txt.gz")])
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"grew_kib": grew, "texts": sorted(r.texts("b.txt.gz")), "dead": r.dead}))
""")


@pytest.mark.slow
def test_a_gigabyte_line_streams_past_in_bounded_memory(tmp_path):
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["texts"] == ["After.", "Before."]
    [long] = result["dead"]
    assert long["reason"] == dl.TOO_LONG and f"a line of {2**30} bytes" in long["detail"]
    assert result["grew_kib"] < 300 * 1024, result["grew_kib"]
