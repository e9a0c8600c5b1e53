"""reduce with every kind of representation against today's float32 PCA output, and flat memory.

    .venv/bin/python benchmarks/bench_reduce_codecs.py --rows 200000 400000 [--write]

For each size: synthetic unit-norm 512-d vectors with USE-like structure are
written as an embedding dataset; PCA-128 is fitted (fit-pca), then the raw
int8 codec and the 64-byte OPQ+PQ codec (fit-codec, PQ on its default
sample); reduce then writes the corpus as PCA-128 float32 (today's output),
PCA-128 float16, raw int8 and PQ-64. Each step is its own process: seconds,
rows/s, rate against PCA-128 float32, and peak memory of its process tree
(the fits sample or stream, so memory should not grow with the corpus).
Quality is not measured here (see "Codecs: quality per stored byte").
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import results  # noqa: E402
import synthetic_dataset  # noqa: E402
from bench_scale import run_stage  # noqa: E402

TITLE = "reduce with codecs, and memory against corpus size"


def steps(w: Path) -> list[tuple[str, list[str]]]:
    emb = str(w / "emb")
    reduce = ["pipelines.reduce", "--input", emb, "--drop_text"]
    return [
        ("fit-pca", ["pipelines.fit_pca", "--input", emb, "--output", str(w / "pca")]),
        ("fit-codec raw int8", ["pipelines.fit_codec", "--input", emb, "--output", str(w / "raw8"), "--codec", "int8"]),
        ("fit-codec pq-64", ["pipelines.fit_codec", "--input", emb, "--output", str(w / "pq64"), "--codec", "pq",
                             "--m", "64"]),
        ("reduce pca-128/float32", [*reduce, "--reducer", str(w / "pca"), "--output", str(w / "r1")]),
        ("reduce pca-128/float16", [*reduce, "--reducer", str(w / "pca"), "--dtype", "float16",
                                    "--output", str(w / "r2")]),
        ("reduce raw-512/int8", [*reduce, "--reducer", str(w / "raw8"), "--output", str(w / "r3")]),
        ("reduce pq-64", [*reduce, "--reducer", str(w / "pq64"), "--output", str(w / "r4")]),
    ]


def measure(rows: int, workdir: Path) -> dict:
    shutil.rmtree(workdir, ignore_errors=True)
    synthetic_dataset.write(workdir / "emb", rows, make=synthetic_dataset.low_rank)
    return {name: run_stage(name.replace(" ", "_").replace("/", "_"), cmd, workdir) for name, cmd in steps(workdir)}


def table(stats: dict[int, dict], command: str) -> str:
    sizes = sorted(stats)
    lines = [results.machine_line(), "",
             "Synthetic 512-d vectors (rows below); each step its own process, local runner in memory. Rate is "
             f"against `reduce` with PCA-128 float32 (today's output) at the same size. Command: `{command}`", "",
             "| step | " + " | ".join(f"{n:,} rows: s, rows/s, vs float32, peak" for n in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for name in stats[sizes[0]]:
        cells = []
        for n in sizes:
            s, base = stats[n][name], stats[n]["reduce pca-128/float32"]
            ratio = f"{base['seconds'] / s['seconds']:.2f}x" if name.startswith("reduce") else "-"
            cells.append(f"{s['seconds']:.0f} s, {n / s['seconds']:,.0f}/s, {ratio}, {s['peak_bytes'] / 2**30:.2f} GiB")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[200_000, 400_000])
    p.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "out" / "reduce_codecs")
    p.add_argument("--write", action="store_true", help=f"replace the section '{TITLE}' in RESULTS.md")
    args = p.parse_args(argv)
    stats = {n: measure(n, args.workdir / str(n)) for n in args.rows}
    body = table(stats, "python benchmarks/bench_reduce_codecs.py --rows " + " ".join(map(str, args.rows)))
    print(body)
    if args.write:
        results.write_section(TITLE, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
