"""Labelled retrieval sets in BEIR layout (corpus.jsonl, queries.jsonl, qrels)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from core.evaluation.textfiles import is_file, join, open_text


@dataclass
class GoldenSet:
    """A labelled retrieval set: documents, queries and graded relevance judgments.

    ``qrels[query_id][doc_id]`` is the relevance grade (> 0 relevant).
    ``doc_meta``/``query_meta`` hold each record's optional ``metadata`` dict
    (e.g. TAT-QA's ``table_uid``, which groups paragraphs of one report for
    within-report ranking).
    """
    doc_ids: list[str]
    doc_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]
    doc_meta: list[dict] = field(default_factory=list)
    query_meta: list[dict] = field(default_factory=list)


def _read_jsonl(path: str) -> list[dict]:
    records = []
    with open_text(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{n}: invalid JSON: {e}") from None
            if not isinstance(record, dict) or not isinstance(record.get("_id"), str) \
                    or not isinstance(record.get("text"), str):
                raise ValueError(f"{path}:{n}: each line needs string '_id' and 'text'")
            records.append(record)
    ids = [r["_id"] for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate _id values")
    return records


def _read_qrels(path: str) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open_text(path) as f:
        for n, line in enumerate(f, 1):
            fields = line.rstrip("\r\n").split("\t")
            if n == 1 and fields[0] == "query-id":
                continue
            if not line.strip():
                continue
            if len(fields) != 3:
                raise ValueError(f"{path}:{n}: expected 'query-id<TAB>corpus-id<TAB>score'")
            try:
                grade = int(fields[2])
            except ValueError:
                raise ValueError(f"{path}:{n}: score {fields[2]!r} is not an integer") from None
            qrels.setdefault(fields[0], {})[fields[1]] = grade
    return qrels


def load_golden_set(directory: str | os.PathLike, split: str = "test") -> GoldenSet:
    """Load a BEIR-layout golden set from a local path or a URL of any filesystem Beam supports.

    Format (UTF-8), all in ``directory``:
    - ``corpus.jsonl``: one JSON object per line, ``{"_id": str, "text": str,
      "title": str (optional; prepended to the text), "metadata": {...} (optional)}``;
    - ``queries.jsonl``: ``{"_id": str, "text": str, "metadata": {...} (optional)}``;
    - ``qrels/<split>.tsv`` (or ``qrels.tsv``): ``query-id<TAB>corpus-id<TAB>score``
      with an optional header line; score is an integer grade, > 0 relevant.
    Only queries with at least one relevant document in the qrels are kept
    (in queries.jsonl order), as BEIR scores them. Qrels naming an unknown
    query or document are an error.
    """
    corpus_path, queries_path = join(directory, "corpus.jsonl"), join(directory, "queries.jsonl")
    qrels_path = join(directory, "qrels", f"{split}.tsv")
    if not is_file(qrels_path):
        qrels_path = join(directory, "qrels.tsv")
    for path in (corpus_path, queries_path, qrels_path):
        if not is_file(path):
            raise FileNotFoundError(f"golden set {directory}: {path.rsplit('/', 1)[-1]} not found "
                                    f"(expected corpus.jsonl, queries.jsonl, qrels/{split}.tsv or qrels.tsv)")
    docs = _read_jsonl(corpus_path)
    queries = _read_jsonl(queries_path)
    qrels = _read_qrels(qrels_path)
    doc_ids = {d["_id"] for d in docs}
    query_ids = {q["_id"] for q in queries}
    for qid, judged in qrels.items():
        if qid not in query_ids:
            raise ValueError(f"{qrels_path}: query {qid!r} is not in queries.jsonl")
        unknown = [d for d in judged if d not in doc_ids]
        if unknown:
            raise ValueError(f"{qrels_path}: document {unknown[0]!r} is not in corpus.jsonl")
    kept = [q for q in queries if any(g > 0 for g in qrels.get(q["_id"], {}).values())]
    if not kept:
        raise ValueError(f"{qrels_path}: no query has a relevant document")
    return GoldenSet(
        doc_ids=[d["_id"] for d in docs],
        doc_texts=[f"{d.get('title') or ''} {d['text']}".strip() for d in docs],
        query_ids=[q["_id"] for q in kept],
        query_texts=[q["text"] for q in kept],
        qrels={q["_id"]: qrels[q["_id"]] for q in kept},
        doc_meta=[d.get("metadata") or {} for d in docs],
        query_meta=[q.get("metadata") or {} for q in kept],
    )
