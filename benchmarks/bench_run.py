"""End-to-end ``shrink run`` on real text: wall time, peak memory and each step's time.

One ``python -m pipelines.run`` process with its defaults, on the first
``--sentences`` lines of the financial corpus (``financial_corpus.py``, built
from ../shared/data when absent). Step times come from the run's own
``run_manifest.json``; peak memory is the largest total resident memory of
the process tree. Target: at most 5 minutes on a 2-core machine for ~200,000
sentences.

    python benchmarks/bench_run.py --sentences 200000 [--budget_bytes 128] [--write]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import embedding_cache  # noqa: E402
import results  # noqa: E402
from bench_scale import run_stage  # noqa: E402
from financial_corpus import write_financial_corpus  # noqa: E402

TITLE = "End-to-end shrink run on real text"
CORPUS = REPO / "benchmarks" / "out" / "financial_corpus.txt"
TARGET_S = 5 * 60
BUDGET_TARGETS = {128: 0.85, 512: 0.99}  # label-free recall@10 of the chosen representation


def corpus_head(data_dir: Path, n: int, path: Path) -> int:
    """Write the first ``n`` sentences of the financial corpus to ``path``; how many there were."""
    if not CORPUS.exists():
        write_financial_corpus(data_dir, CORPUS)
    with CORPUS.open(encoding="utf-8") as src, path.open("w", encoding="utf-8") as dst:
        count = 0
        for count, line in enumerate(src, 1):
            dst.write(line)
            if count == n:
                break
    return count


def report(steps: dict, total: dict, n: int, command: str, chosen: dict | None = None) -> str:
    lines = [results.machine_line(), "", f"{n:,} financial-corpus sentences, `shrink run` defaults"
             f"{'' if '--budget_bytes' not in command else ' with a byte budget'}. Command: `{command}`", "",
             "| step | seconds | detail |", "|---|---|---|"]
    for name, s in sorted(steps.items(), key=lambda kv: kv[1].get("finished_utc", "")):
        detail = ", ".join(f"{k.replace('_', ' ')} {s[k]:,}" for k in ("records", "rows_analyzed", "epochs_run")
                           if k in s)
        lines.append(f"| {name} | {s['seconds']:.0f} | {detail} |")
    lines += [f"| **whole run** (process wall time) | **{total['seconds']:.0f}** | peak memory "
              f"{total['peak_bytes'] / 2**30:.2f} GiB |", ""]
    if chosen is None:
        verdict = "met" if total["seconds"] <= TARGET_S else "missed"
        lines.append(f"Target: at most {TARGET_S // 60} minutes: **{verdict}** ({total['seconds'] / 60:.1f} min).")
    else:
        budget, recall = chosen["budget_bytes"], chosen["recall@10"]
        target = BUDGET_TARGETS.get(budget)
        lines.append(f"Chosen within {budget} bytes/vector: {chosen['name']} ({chosen['bytes_per_vector']} B), "
                     f"label-free recall@10 {recall:.4f}" + ("" if target is None else
                     f"; target >= {target}: **{'met' if recall >= target else 'missed'}**") + ".")
    return "\n".join(lines) + "\n"


def chosen_row(workdir: Path, budget: int | None) -> dict | None:
    """The representation ``run`` chose within the budget, from its report (None without a budget)."""
    if budget is None:
        return None
    report_json = json.loads((workdir / "report" / "report.json").read_text())
    row = next(r for r in report_json["frontier"]["rows"] if r["name"] == report_json["chosen"])
    return {**row, "budget_bytes": budget}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", type=int, default=200_000)
    p.add_argument("--budget_bytes", type=int, help="pass --budget_bytes to run")
    p.add_argument("--data-dir", type=Path, default=embedding_cache.DEFAULT_DATA_DIR)
    p.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "out" / "run")
    p.add_argument("--write", action="store_true", help=f"replace the section '{TITLE}' in RESULTS.md")
    args = p.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    corpus = args.workdir / "corpus.txt"
    n = corpus_head(args.data_dir, args.sentences, corpus)
    sts = args.data_dir / "stsbenchmark"
    flags = ["--input", str(corpus), "--workdir", str(args.workdir / "work")]
    flags += ["--sts_dir", str(sts)] if sts.is_dir() else ["--no-download"]
    flags += ["--budget_bytes", str(args.budget_bytes)] if args.budget_bytes else []
    total = run_stage("run", ["pipelines.run", *flags], args.workdir)
    steps = json.loads((args.workdir / "work" / "run_manifest.json").read_text())["steps"]
    command = f"python benchmarks/bench_run.py --sentences {args.sentences}" + \
        (f" --budget_bytes {args.budget_bytes}" if args.budget_bytes else "")
    body = report(steps, total, n, command, chosen_row(args.workdir / "work", args.budget_bytes))
    print(body)
    if args.write:
        results.write_section(TITLE + (f", {args.budget_bytes} B budget" if args.budget_bytes else ""), body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
