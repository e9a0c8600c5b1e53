"""One command from corpus to a 128-d corpus and a report.

    shrink run --input 'corpus/*.txt' --workdir out
    shrink run --input news.csv --text_field headline --workdir out --runner DataflowRunner ...

Steps, each writing into ``--workdir``: embed -> fit-pca and train ->
evaluate (picks the best reducer unless ``--reducer`` names one) -> reduce.
Beam pipeline options are passed to every Beam step.

Every finished step is recorded in ``<workdir>/run_manifest.json`` with a key
made of its parameters and the identity of its inputs (file sizes and
modification times for the corpus, upstream manifests for the rest). A re-run
skips a step whose key is unchanged and whose output is complete, and redoes
it (and so everything downstream) otherwise; an interrupted run therefore
resumes at the step it was in (the trainer resumes from its last epoch).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

from apache_beam.io.filesystems import FileSystems

from pipelines import artifacts

log = logging.getLogger(__name__)
RUN_MANIFEST = "run_manifest.json"


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shrink run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", action="append", required=True, help="corpus file pattern (repeatable)")
    p.add_argument("--workdir", required=True, help="directory for every step's output")
    p.add_argument("--input_format", default="auto")
    p.add_argument("--text_field")
    p.add_argument("--id_field")
    p.add_argument("--encoder", default="use-m3")
    p.add_argument("--output_dim", type=int, default=128)
    p.add_argument("--reducer", choices=["best", "pca", "autoencoder"], default="best",
                   help="reducer for the output corpus; best = highest mean of STS fidelity and corpus nDCG@10")
    p.add_argument("--epochs", type=int, help="autoencoder epochs (default: the trainer's)")
    p.add_argument("--train_arg", action="append", default=[],
                   help="extra trainer flag, e.g. --train_arg=--similarity_weight=1 (repeatable)")
    p.add_argument("--format", choices=["tfrecord", "parquet"], default="tfrecord")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--drop_text", action="store_true")
    p.add_argument("--sts_dir")
    p.add_argument("--no_download", action="store_true", help="never download the STS benchmark")
    p.add_argument("--golden_set")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--force", action="store_true", help="redo every step")
    return p


@dataclass
class Step:
    name: str
    output: str
    key: dict
    action: Callable[[], object]
    done_file: str = artifacts.MANIFEST


def output_identity(directory: str, done_file: str = artifacts.MANIFEST) -> dict:
    """What a downstream step depends on: the upstream manifest's fingerprint and creation time."""
    with FileSystems.open(FileSystems.join(directory, done_file)) as f:
        body = json.loads(f.read().decode("utf-8"))
    return {"fingerprint": body.get("fingerprint"), "created_utc": body.get("created_utc")}


def input_identity(patterns: list[str]) -> list:
    """Sizes and modification times of the corpus files: a changed corpus redoes everything."""
    files = []
    for result in FileSystems.match(patterns):
        files += [(m.path, m.size_in_bytes, m.last_updated_in_seconds) for m in result.metadata_list]
    return sorted(files)


class RunState:
    """``run_manifest.json``: the key and outcome of every finished step."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, RUN_MANIFEST)
        self.steps: dict = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.steps = json.load(f).get("steps", {})

    def is_done(self, step: Step) -> bool:
        record = self.steps.get(step.name)
        return (record is not None and record["key"] == artifacts.fingerprint(step.key)
                and FileSystems.exists(FileSystems.join(step.output, step.done_file)))

    def record(self, step: Step, seconds: float) -> None:
        self.steps[step.name] = {"key": artifacts.fingerprint(step.key), "output": step.output,
                                 "seconds": round(seconds, 2),
                                 "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"steps": self.steps}, f, indent=2, sort_keys=True)
        os.replace(tmp, self.path)  # atomic: a crash never leaves a half-written state


def _execute(state: RunState, step: Step, force: bool) -> bool:
    """Run ``step`` unless it is done; True if it ran."""
    if not force and state.is_done(step):
        log.info("step %s: unchanged, skipped (%s)", step.name, step.output)
        return False
    log.info("step %s: running -> %s", step.name, step.output)
    start = time.monotonic()
    step.action()
    state.record(step, time.monotonic() - start)
    return True


def run(argv: list[str] | None = None) -> dict:
    from pipelines import embed, evaluate, fit_pca, reduce
    from trainer import task

    args, beam_args = make_parser().parse_known_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    w = lambda name: os.path.join(args.workdir, name)  # noqa: E731
    state = RunState(args.workdir)
    ran: list[str] = []

    embed_argv = [a for i in args.input for a in ("--input", i)] + [
        "--output", w("embeddings"), "--input_format", args.input_format, "--encoder", args.encoder,
        *(["--text_field", args.text_field] if args.text_field else []),
        *(["--id_field", args.id_field] if args.id_field else [])]
    steps = [Step("embed", w("embeddings"), {"argv": embed_argv, "beam": beam_args,
                                             "files": input_identity(args.input)},
                  lambda: embed.run(embed_argv + ["--overwrite", *beam_args]))]
    for step in steps:
        if _execute(state, step, args.force):
            ran.append(step.name)
    emb_id = output_identity(w("embeddings"))

    pca_argv = ["--input", w("embeddings"), "--output", w("pca"), "--output_dim", str(args.output_dim),
                "--temp_dir", w("tmp")]
    train_argv = ["--input", w("embeddings"), "--output", w("autoencoder"),
                  *(["--epochs", str(args.epochs)] if args.epochs else []), *args.train_arg]
    for step in (Step("fit-pca", w("pca"), {"argv": pca_argv, "beam": beam_args, "embeddings": emb_id},
                      lambda: fit_pca.run(pca_argv + ["--overwrite", *beam_args])),
                 Step("train", w("autoencoder"), {"argv": train_argv, "embeddings": emb_id},
                      lambda: task.run(train_argv + ["--overwrite"]))):
        if _execute(state, step, args.force):
            ran.append(step.name)

    reducer_ids = {name: output_identity(w(name)) for name in ("pca", "autoencoder")}
    eval_argv = ["--embeddings", w("embeddings"), "--reducer", w("pca"), "--reducer", w("autoencoder"),
                 "--output", w("report"), "--queries", str(args.queries),
                 *(["--sts_dir", args.sts_dir] if args.sts_dir else []),
                 *(["--no_download"] if args.no_download else []),
                 *(["--golden_set", args.golden_set] if args.golden_set else [])]
    evaluate_step = Step("evaluate", w("report"), {"argv": eval_argv, "inputs": reducer_ids, "embeddings": emb_id},
                         lambda: evaluate.run(eval_argv), done_file="report.json")
    if _execute(state, evaluate_step, args.force):
        ran.append("evaluate")
    with open(os.path.join(w("report"), "report.json")) as f:
        report = json.load(f)

    chosen = report.get("best_reducer_path") if args.reducer == "best" else w(
        "pca" if args.reducer == "pca" else "autoencoder")
    if not chosen:
        raise RuntimeError("no reducer could be chosen: the report has neither STS nor corpus retrieval results; "
                           "pass --reducer pca or --reducer autoencoder")
    reduce_argv = ["--input", w("embeddings"), "--reducer", chosen, "--output", w("reduced"),
                   "--format", args.format, "--dtype", args.dtype, *(["--drop_text"] if args.drop_text else [])]
    reduce_step = Step("reduce", w("reduced"), {"argv": reduce_argv, "beam": beam_args, "embeddings": emb_id,
                                                "reducer": output_identity(chosen)},
                       lambda: reduce.run(reduce_argv + ["--overwrite", *beam_args]))
    if _execute(state, reduce_step, args.force):
        ran.append("reduce")

    summary = {"workdir": args.workdir, "steps_run": ran, "reducer": chosen,
               "reduced": w("reduced"), "report": os.path.join(w("report"), "report.md")}
    print(f"\nreduced corpus ({args.format}, {args.dtype}): {w('reduced')}\n"
          f"reducer used: {chosen}\nreport: {summary['report']}\n"
          f"steps run this time: {', '.join(ran) or 'none (all up to date)'}")
    return summary


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.run")
