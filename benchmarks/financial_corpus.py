"""The financial-news benchmark corpus, built from the public sets in ../shared/data.

Benchmarks only: the shipped packages never import this module.
"""
from __future__ import annotations

import csv
import html
import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from core.textnorm import normalize

# A kept sentence has at least this many words (whitespace tokens containing a
# letter): shorter fragments ("Reuter", "Nine mths", "$AAPL 12 %") carry little meaning.
MIN_WORDS = 4
_WORD_TOKEN = re.compile(r"[^\W\d_][^ ]*")  # a token's first letter (in any script) to its end: one per word
_URL = re.compile(r"https?://\S+")
# Abbreviations whose trailing period does not end a sentence (financial news style).
_ABBREVIATIONS = frozenset("""mr mrs ms dr prof st mt ft co corp inc ltd plc bros jr sr vs no nos
    gen gov sen rep rev dept est jan feb mar apr jun jul aug sep sept oct nov dec""".split())
# A boundary candidate: . ! or ? (plus closing quotes/brackets), whitespace, then
# something that can start a sentence.
_BOUNDARY = re.compile(r"""(?<=[.!?])["')\]]*(\s+)(?=["'(\[]?[A-Z0-9])""")
_INITIALS = re.compile(r"(?:[A-Za-z]\.)+")  # U.S. / C.A. / J.


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences with a simple rule-based splitter.

    A sentence ends at ``.``, ``!`` or ``?`` (optionally followed by closing
    quotes/brackets) followed by whitespace and an upper-case letter, digit or
    opening quote, unless the word before the period is a known abbreviation
    (``Corp.``, ``Mr.``, ``Jan.``) or initials (``U.S.``, ``C.A.``). Good enough
    for newswire; it keeps rare errors rather than dropping text.
    """
    text = normalize(text)
    sentences, start = [], 0
    for m in _BOUNDARY.finditer(text):
        before = text[start:m.start(1)].rstrip("\"')]")
        last = before.rsplit(" ", 1)[-1]
        if last.endswith(".") and (last[:-1].lower() in _ABBREVIATIONS or _INITIALS.fullmatch(last)):
            continue
        sentences.append(text[start:m.start(1)])
        start = m.end(1)
    sentences.append(text[start:])
    return [s for s in sentences if s]


def _csv_column(path: Path, column: int, *, header: bool, delimiter: str = ",") -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter=delimiter))
    if header:
        rows = rows[1:]
    out = []
    for n, row in enumerate(rows, 2 if header else 1):
        if len(row) <= column:
            raise ValueError(f"{path}: row {n} has {len(row)} fields, expected more than {column}")
        out.append(row[column])
    return out


def _headlines(data_dir: Path) -> list[str]:
    folder = data_dir / "financial_news_headlines_cnbc_guardian_reuters"
    return (_csv_column(folder / "cnbc_headlines.csv", 1, header=True)
            + _csv_column(folder / "guardian_headlines.csv", 1, header=False)
            + _csv_column(folder / "reuters_headlines.csv", 1, header=False))


def _fincausal(data_dir: Path) -> list[str]:
    """Task-1 sections ("Index; Text; Gold", blind file "Index; Text"), split into sentences."""
    folder = data_dir / "fincausal2020"
    files = [(folder / "trial" / "fnp2020-fincausal-task1.csv", 3),
             (folder / "practice" / "fnp2020-fincausal2-task1.csv", 3),
             (folder / "evaluation" / "task1_blind.csv", 2)]
    out = []
    for path, n_fields in files:
        with open(path, encoding="utf-8-sig", newline="") as f:
            lines = f.read().splitlines()[1:]
        for n, line in enumerate(lines, 2):
            if not line.strip():
                continue
            parts = line.split("; ")
            if len(parts) < n_fields:
                raise ValueError(f"{path}:{n}: expected {n_fields} '; '-separated fields")
            text = "; ".join(parts[1:len(parts) - (n_fields - 2)])
            out.extend(split_sentences(text))
    return out


def _gold(data_dir: Path) -> list[str]:
    path = data_dir / "gold_commodity_news_headlines" / "gold-dataset-sinha-khandait.csv"
    with open(path, encoding="utf-8", newline="") as f:
        header = next(csv.reader(f, delimiter="\t"))
    return _csv_column(path, header.index("News"), header=True, delimiter="\t")


def _tweets(data_dir: Path) -> list[str]:
    folder = data_dir / "twitter_financial_news_sentiment"
    texts = (_csv_column(folder / "sent_train.csv", 0, header=True)
             + _csv_column(folder / "sent_valid.csv", 0, header=True))
    return [_URL.sub(" ", t) for t in texts]


def _phrasebank(data_dir: Path) -> list[str]:
    path = data_dir / "financial_phrasebank" / "Sentences_50Agree.txt"
    with open(path, encoding="utf-8-sig") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    for n, line in enumerate(lines, 1):
        if "@" not in line:
            raise ValueError(f"{path}:{n}: expected '<sentence>@<label>'")
    return [line.rsplit("@", 1)[0] for line in lines]


_STORY = re.compile(r"<REUTERS\b.*?</REUTERS>", re.S)
_TITLE = re.compile(r"<TITLE>(.*?)</TITLE>", re.S)
_BODY = re.compile(r"<BODY>(.*?)</BODY>", re.S)
_PARAGRAPH = re.compile(r"\n[ \t]+")  # paragraphs start on a new line indented by spaces
_SENTENCE_END = re.compile(r"""[.!?]["')]*$""")


def _reuters(data_dir: Path) -> list[str]:
    """Titles, then body sentences. Body text ends with " Reuter"; tables are dropped.

    Body paragraphs are split into sentences and only sentences ending with
    . ! or ? are kept: that drops table rows ("Shr 34 cts vs 1.19 dlrs")
    and the closing "Reuter" marker.
    """
    folder = data_dir / "reuters21578"
    files = sorted(folder.glob("reut2-*.sgm"))
    if not files:
        raise FileNotFoundError(f"no reut2-*.sgm files in {folder}")
    titles, bodies = [], []
    for path in files:
        text = path.read_text(encoding="latin-1")
        for story in _STORY.findall(text):
            title = _TITLE.search(story)
            if title:
                titles.append(html.unescape(title.group(1)))
            body = _BODY.search(story)
            if body:
                for paragraph in _PARAGRAPH.split(html.unescape(body.group(1))):
                    bodies.extend(s for s in split_sentences(paragraph) if _SENTENCE_END.search(s))
    return titles + bodies


# Sources in the order they are read; dedup keeps a sentence's first occurrence.
FINANCIAL_SOURCES = {
    "financial_news_headlines_cnbc_guardian_reuters": _headlines,
    "fincausal2020": _fincausal,
    "gold_commodity_news_headlines": _gold,
    "twitter_financial_news_sentiment": _tweets,
    "financial_phrasebank": _phrasebank,
    "reuters21578": _reuters,
}


def _keep(sentence: str, min_words: int) -> bool:
    return len(_WORD_TOKEN.findall(sentence)) >= min_words


def financial_corpus_with_counts(data_dir: str | os.PathLike,
                                 min_words: int = MIN_WORDS) -> tuple[list[str], dict[str, dict[str, int]]]:
    """The corpus plus, per source, how many texts were read / too short / duplicates / kept."""
    data_dir = Path(data_dir)
    seen: dict[str, None] = {}
    counts = {}
    for name, reader in FINANCIAL_SOURCES.items():
        read = short = dup = 0
        for raw in reader(data_dir):
            read += 1
            sentence = normalize(raw)
            if not _keep(sentence, min_words):
                short += 1
            elif sentence in seen:
                dup += 1
            else:
                seen[sentence] = None
        counts[name] = {"read": read, "too_short": short, "duplicate": dup, "kept": read - short - dup}
    return list(seen), counts


def build_financial_corpus(data_dir: str | os.PathLike, min_words: int = MIN_WORDS) -> list[str]:
    """The ~200k-sentence financial-news corpus built from the public data in ``data_dir``.

    Sources (``data_dir/<folder>``, formats per each SOURCE.txt), read in this
    fixed order: CNBC/Guardian/Reuters headlines; FinCausal 2020 task-1
    sections (split into sentences); gold-market headlines; financial news
    tweets (URLs removed); Financial PhraseBank sentences; Reuters-21578
    titles and body sentences. Each text is normalized (NFC, control
    characters and whitespace runs to one space, trimmed; see
    pipelines.textnorm), texts with fewer than ``min_words`` words (tokens
    containing a letter) are dropped, and exact duplicates keep their first
    occurrence. The result is deterministic.
    """
    return financial_corpus_with_counts(data_dir, min_words)[0]


def write_sentences(sentences: list[str], path: str | os.PathLike) -> Path:
    """Write one sentence per line (UTF-8), the embed job's plain-text input format."""
    path = Path(path)
    for i, s in enumerate(sentences):
        if "\n" in s or "\r" in s:
            raise ValueError(f"sentence {i} contains a line break: {s[:60]!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_financial_corpus(data_dir: str | os.PathLike, out_path: str | os.PathLike,
                           min_words: int = MIN_WORDS) -> dict[str, dict[str, int]]:
    """Build the financial corpus and write it as a text file; returns per-source counts."""
    sentences, counts = financial_corpus_with_counts(data_dir, min_words)
    write_sentences(sentences, out_path)
    return counts


# --------------------------------------------------------------------------- golden sets (BEIR)


def variants(sentences: list[str], n: int, swap: float = 0.3, seed: int = 0) -> Iterator[str]:
    """``n`` sentences shaped like ``sentences``: the real ones in a seeded cycle, each word swapped with
    probability ``swap`` for a word drawn from the corpus's own word frequencies.

    Each variant has its source sentence's word count and the corpus's vocabulary, so lengths,
    tokens per sentence and token-id reuse follow real text at any size (the corpus has ~200k
    real sentences; the scale benchmark needs millions). Rare repeats are left to embed's dedupe.
    """
    rng = np.random.default_rng(seed)
    words = [s.split() for s in sentences]
    vocabulary = np.array([w for ws in words for w in ws], dtype=object)  # frequency-weighted by repetition
    order = rng.permutation(len(words))
    for i in range(n):
        source = words[order[i % len(words)]]
        swapped = rng.random(len(source)) < swap
        draws = iter(vocabulary[rng.integers(0, len(vocabulary), int(swapped.sum()))])
        yield " ".join(next(draws) if s else w for w, s in zip(source, swapped))
