"""One command from corpus to a 128-d corpus and a report.

    shrink run --input 'corpus/*.txt' --workdir out
    shrink run --input news.csv --text_field headline --workdir out --runner DataflowRunner ...
    shrink run --input 'corpus/*.txt' --workdir out --incremental --refit_on_drift   # nightly

Steps, each writing into ``--workdir``: embed -> fit-pca and train ->
evaluate (picks the best reducer unless ``--reducer`` names one) -> reduce.
Beam pipeline options are passed to every Beam step.

Every finished step is recorded in ``<workdir>/run_manifest.json`` with a key
made of its parameters and the identity of its inputs (file sizes and
modification times for the corpus, upstream manifests for the rest). A re-run
skips a step whose key is unchanged and whose output is complete, and redoes
it (and so everything downstream) otherwise; an interrupted run therefore
resumes at the step it was in (the trainer resumes from its last epoch).

``--incremental`` extends a finished run with the sentences of the (grown)
corpus whose ids are new: they are embedded into ``increments/NNNN/``, the
current reducer is checked for drift on them, and they are reduced with it
(or, with ``--refit_on_drift`` and drift found, both reducers are refitted on
everything and the whole corpus is reduced again).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from typing import Callable

from apache_beam.io.filesystems import FileSystems

from pipelines.common import artifacts
from pipelines.common.beam_runner import check_beam_args

log = logging.getLogger(__name__)
RUN_MANIFEST = "run_manifest.json"
DRIFT_SAMPLE = 5000
MIN_DRIFT_ROWS = 20  # fewer new vectors make too few pairs for a meaningful fidelity


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="shrink run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", action="append", required=True, help="corpus file pattern (repeatable)")
    p.add_argument("--workdir", required=True,
                   help="directory for every step's output: local, or any URL Beam and TensorFlow reach (gs://...)")
    p.add_argument("--input_format", default="auto")
    p.add_argument("--text_field")
    p.add_argument("--id_field")
    p.add_argument("--encoder", default="use-m3")
    p.add_argument("--output_dim", type=int, default=128,
                   help="dimension of both reducers' vectors (the autoencoder's code size unless --train_arg "
                        "sets --sizes)")
    p.add_argument("--reducer", choices=["best", "pca", "autoencoder"], default="best",
                   help="reducer for the output corpus; best = highest mean of STS fidelity and corpus nDCG@10")
    p.add_argument("--epochs", type=int, help="autoencoder epochs (default: the trainer's)")
    p.add_argument("--train_arg", action="append", default=[],
                   help="extra trainer flag, e.g. --train_arg=--similarity_weight=1 (repeatable)")
    p.add_argument("--pca_arg", action="append", default=[],
                   help="extra fit-pca flag, e.g. --pca_arg=--no-center (repeatable)")
    p.add_argument("--format", choices=["tfrecord", "parquet"], default="tfrecord")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--drop_text", action="store_true")
    p.add_argument("--sts_dir")
    p.add_argument("--no_download", action="store_true", help="never download the STS benchmark")
    p.add_argument("--golden_set")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--query_sample", action="append", default=[],
                   help="file pattern of sample queries the corpus will serve, e.g. questions (repeatable; "
                        "read with --text_field, format by extension): PCA is fitted on them too (query-aware)")
    p.add_argument("--query_share", type=float, default=0.5,
                   help="share of PCA's fitting rows the --query_sample rows make up")
    p.add_argument("--incremental", action="store_true",
                   help="embed and reduce only the corpus's new sentences, extending a finished run")
    p.add_argument("--drift_threshold", type=float, default=0.02,
                   help="drift when the reducer's pair fidelity on new data is this much below its fitting data")
    p.add_argument("--refit_on_drift", action="store_true",
                   help="with --incremental: on drift, refit both reducers on everything and reduce it all again")
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
    body = json.loads(artifacts.read_text(artifacts.join(directory, done_file)))
    return {"fingerprint": body.get("fingerprint"), "created_utc": body.get("created_utc")}


def input_identity(patterns: list[str]) -> list:
    """Sizes and modification times of the corpus files: a changed corpus redoes everything."""
    files = []
    for result in FileSystems.match(patterns):
        files += [(m.path, m.size_in_bytes, m.last_updated_in_seconds) for m in result.metadata_list]
    return sorted(files)


class RunState:
    """``run_manifest.json``: every finished step's key and outcome, and the corpus's increments."""

    def __init__(self, workdir: str):
        self.path = artifacts.join(workdir, RUN_MANIFEST)
        self.steps: dict = {}
        self.increments: list[dict] = []
        if artifacts.exists(self.path):
            body = json.loads(artifacts.read_text(self.path))
            self.steps, self.increments = body.get("steps", {}), body.get("increments", [])

    def is_done(self, step: Step) -> bool:
        record = self.steps.get(step.name)
        return (record is not None and record["key"] == artifacts.fingerprint(step.key)
                and artifacts.exists(artifacts.join(step.output, step.done_file)))

    def record(self, step: Step, seconds: float) -> None:
        self.steps[step.name] = {"key": artifacts.fingerprint(step.key), "output": step.output,
                                 "seconds": round(seconds, 2),
                                 "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.save()

    def save(self) -> None:
        artifacts.write_text(self.path, json.dumps({"steps": self.steps, "increments": self.increments},
                                                   indent=2, sort_keys=True))


class Flow:
    """The steps of one ``run`` invocation over a work directory."""

    def __init__(self, args: argparse.Namespace, beam_args: list[str]):
        self.args, self.beam_args = args, beam_args
        self.state = RunState(args.workdir)
        self.ran: list[str] = []

    def path(self, *parts: str) -> str:
        return artifacts.join(self.args.workdir, *parts)

    def execute(self, step: Step) -> bool:
        """Run ``step`` unless it is done; True if it ran."""
        if not self.args.force and self.state.is_done(step):
            log.info("step %s: unchanged, skipped (%s)", step.name, step.output)
            return False
        log.info("step %s: running -> %s", step.name, step.output)
        start = time.monotonic()
        step.action()
        self.state.record(step, time.monotonic() - start)
        self.ran.append(step.name)
        return True

    def embed_argv(self, output: str, previous: list[str] = (), queries: bool = False) -> list[str]:
        a = self.args
        if queries:  # a sample of queries: its own files, formats told by extension, ids from the text
            return [x for i in a.query_sample for x in ("--input", i)] + [
                "--output", output, "--encoder", a.encoder, *(["--text_field", a.text_field] if a.text_field else [])]
        return [x for i in a.input for x in ("--input", i)] + [
            "--output", output, "--input_format", a.input_format, "--encoder", a.encoder,
            *(["--text_field", a.text_field] if a.text_field else []),
            *(["--id_field", a.id_field] if a.id_field else []),
            *[x for d in previous for x in ("--previous", d)]]

    def embed(self, name: str, output: str, previous: list[str] = (), queries: bool = False) -> bool:
        from pipelines import embed

        argv = self.embed_argv(output, previous, queries)
        files = self.args.query_sample if queries else self.args.input
        key = {"argv": argv, "beam": self.beam_args, "files": input_identity(files),
               "previous": [output_identity(d) for d in previous]}
        return self.execute(Step(name, output, key, lambda: embed.run(argv + ["--overwrite", *self.beam_args])))

    def datasets(self) -> list[str]:
        """Every embedding dataset of the corpus: the first run's and each increment's."""
        return [self.path("embeddings")] + [i["embeddings"] for i in self.state.increments]

    def fit_and_evaluate(self) -> str:
        """Fit both reducers on every dataset, evaluate them; the path of the reducer to use."""
        from pipelines import evaluate, fit_pca
        from trainer import task

        a, data = self.args, self.datasets()
        extra = [x for d in data[1:] for x in ("--extra_input", d)]
        data_ids = [output_identity(d) for d in data]
        pca_argv = ["--input", data[0], *extra, "--output", self.path("pca"), "--output_dim", str(a.output_dim),
                    "--temp_dir", self.path("tmp"), *a.pca_arg]
        pca_data = list(data_ids)
        if a.query_sample:
            self.embed("embed-queries", self.path("query_embeddings"), queries=True)
            pca_argv += ["--query_input", self.path("query_embeddings"), "--query_share", str(a.query_share)]
            pca_data.append(output_identity(self.path("query_embeddings")))
        train_argv = ["--input", data[0], *extra, "--output", self.path("autoencoder"),
                      *code_size_args(a.output_dim), *(["--epochs", str(a.epochs)] if a.epochs else []),
                      *a.train_arg]
        self.execute(Step("fit-pca", self.path("pca"), {"argv": pca_argv, "beam": self.beam_args, "data": pca_data},
                          lambda: fit_pca.run(pca_argv + ["--overwrite", *self.beam_args])))
        self.execute(Step("train", self.path("autoencoder"), {"argv": train_argv, "data": data_ids},
                          lambda: task.run(train_argv + ["--overwrite"])))
        eval_argv = ["--embeddings", data[0], "--reducer", self.path("pca"), "--reducer", self.path("autoencoder"),
                     "--output", self.path("report"), "--queries", str(a.queries),
                     *(["--sts_dir", a.sts_dir] if a.sts_dir else []),
                     *(["--no_download"] if a.no_download else []),
                     *(["--golden_set", a.golden_set] if a.golden_set else [])]
        reducers = {n: output_identity(self.path(n)) for n in ("pca", "autoencoder")}
        self.execute(Step("evaluate", self.path("report"), {"argv": eval_argv, "reducers": reducers,
                                                            "data": data_ids},
                          lambda: evaluate.run(eval_argv), done_file="report.json"))
        if a.reducer != "best":
            return self.path(a.reducer if a.reducer == "pca" else "autoencoder")
        chosen = json.loads(artifacts.read_text(self.path("report", "report.json"))).get("best_reducer_path")
        if not chosen:
            raise RuntimeError("no reducer could be chosen: the report has neither STS nor corpus retrieval "
                               "results; pass --reducer pca or --reducer autoencoder")
        return chosen

    def reduce_all(self, reducer: str) -> None:
        """Reduce every dataset of the corpus with ``reducer`` (steps whose inputs are unchanged are skipped)."""
        from pipelines import reduce

        a = self.args
        targets = [("reduce", self.path("embeddings"), self.path("reduced"))] + [
            (f"reduce-{i['name']}", i["embeddings"], i["reduced"]) for i in self.state.increments]
        for name, data, output in targets:
            argv = ["--input", data, "--reducer", reducer, "--output", output, "--format", a.format,
                    "--dtype", a.dtype, *(["--drop_text"] if a.drop_text else [])]
            key = {"argv": argv, "beam": self.beam_args, "data": output_identity(data),
                   "reducer": output_identity(reducer)}
            self.execute(Step(name, output, key, lambda argv=argv: reduce.run(argv + ["--overwrite",
                                                                                    *self.beam_args])))
        self.state.steps["reduce"]["reducer"] = reducer
        self.state.save()

    def full(self) -> dict:
        if self.embed("embed", self.path("embeddings")) and self.state.increments:
            # The corpus was embedded again from scratch: it now holds what the increments held.
            for inc in self.state.increments:
                artifacts.delete_tree(self.path("increments", inc["name"]))
            self.state.increments = []
            self.state.save()
        reducer = self.fit_and_evaluate()
        self.reduce_all(reducer)
        return self.summary(reducer)

    def increment(self) -> dict:
        from pipelines.evaluation import drift
        from pipelines import evaluate
        from pipelines.common.reducers import load_reducer

        if "reduce" not in self.state.steps or "reducer" not in self.state.steps["reduce"]:
            raise RuntimeError(f"{self.args.workdir} holds no finished run to extend; run without --incremental first")
        name = f"{len(self.state.increments) + 1:04d}"
        inc_dir = self.path("increments", name)
        self.embed(f"embed-{name}", artifacts.join(inc_dir, "embeddings"), self.datasets())
        manifest = artifacts.read_manifest(artifacts.join(inc_dir, "embeddings"), "embeddings")
        counts = manifest["counts"]
        current = self.state.steps["reduce"]["reducer"]
        record = {"name": name, "embeddings": artifacts.join(inc_dir, "embeddings"),
                  "reduced": artifacts.join(inc_dir, "reduced"), "counts": counts, "drift": None, "refit": False}
        if counts["embedded"] == 0:
            log.info("no new sentences: nothing to add")
            artifacts.delete_tree(inc_dir)
            return self.summary(current, new=0)
        new, _ = evaluate.load_sample(record["embeddings"], DRIFT_SAMPLE, 0)
        if len(new) >= MIN_DRIFT_ROWS:
            reference, _ = evaluate.load_sample(self.path("embeddings"), DRIFT_SAMPLE, 0)
            record["drift"] = drift.check(load_reducer(current), reference, new, self.args.drift_threshold)
            artifacts.write_text(artifacts.join(inc_dir, "drift.json"), json.dumps(record["drift"], indent=2))
        self.state.increments.append(record)
        self.state.save()
        d = record["drift"]
        if d is None:
            log.info("drift check skipped: %d new vectors, fewer than %d", len(new), MIN_DRIFT_ROWS)
        else:
            log.info("drift check: pair fidelity %.4f on new data vs %.4f on fitting data (drop %.4f, threshold "
                     "%.4f)%s", d["fidelity_new"], d["fidelity_reference"], d["drop"], d["threshold"],
                     ": DRIFT" if d["drift"] else "")
        if d and d["drift"] and self.args.refit_on_drift:
            record["refit"] = True
            self.state.save()
            current = self.fit_and_evaluate()
        elif d and d["drift"]:
            log.warning("the reducer has drifted on the new data; re-run with --refit_on_drift to refit it")
        self.reduce_all(current)
        return self.summary(current, new=counts["embedded"])

    def summary(self, reducer: str, new: int | None = None) -> dict:
        a = self.args
        totals = [artifacts.read_manifest(d, "embeddings")["counts"]["embedded"] for d in self.datasets()]
        reduced = [self.path("reduced")] + [i["reduced"] for i in self.state.increments]
        summary = {"workdir": a.workdir, "steps_run": self.ran, "reducer": reducer, "reduced": reduced,
                   "vectors": sum(totals), "report": self.path("report", "report.md"),
                   "increments": self.state.increments}
        lines = [f"\nreduced corpus ({a.format}, {a.dtype}): {', '.join(reduced)}",
                 f"vectors: {sum(totals)} (first run {totals[0]}"
                 + "".join(f", increment {i['name']} {t}" for i, t in zip(self.state.increments, totals[1:])) + ")",
                 f"reducer used: {reducer}", f"report: {summary['report']}",
                 f"steps run this time: {', '.join(self.ran) or 'none (all up to date)'}"]
        if new is not None:
            summary["new_vectors"] = new
            d = self.state.increments[-1]["drift"] if new else None
            lines.append(f"new sentences this time: {new}" + (
                f"; drift: {'YES' if d['drift'] else 'no'} (pair fidelity {d['fidelity_new']:.4f} on new data vs "
                f"{d['fidelity_reference']:.4f}){'; reducers refitted' if self.state.increments[-1]['refit'] else ''}"
                if d else ""))
        print("\n".join(lines))
        return summary


def code_size_args(output_dim: int) -> list[str]:
    """Trainer flags for an autoencoder whose codes have ``output_dim`` values (hidden layer 256, or wider)."""
    return ["--sizes", f"{max(256, output_dim)},{output_dim}"]


def check_step_args(args: argparse.Namespace) -> None:
    """Parse the --train_arg and --pca_arg flags now, so a typo fails before the corpus is embedded."""
    if args.train_arg:
        from trainer import task

        task.build_parser().parse_args(["--input", "-", "--output", "-", *args.train_arg])
    if args.pca_arg:
        from pipelines import fit_pca

        parser = fit_pca.make_parser()
        _, unknown = parser.parse_known_args(["--input", "-", "--output", "-", *args.pca_arg])
        if unknown:
            parser.error(f"--pca_arg: unrecognized fit-pca arguments: {' '.join(unknown)} "
                         "(pass Beam pipeline options to run itself)")


def run(argv: list[str] | None = None) -> dict:
    parser = make_parser()
    args, beam_args = parser.parse_known_args(argv)
    check_beam_args(parser, beam_args)  # a typo fails now, not after hours of embedding
    check_step_args(args)
    if args.refit_on_drift and not args.incremental:
        raise ValueError("--refit_on_drift goes with --incremental")
    if args.query_sample and not 0 < args.query_share < 1:  # fail now, not after embedding the corpus
        raise ValueError(f"--query_share must be in (0, 1), got {args.query_share}")
    artifacts.makedirs(args.workdir)
    flow = Flow(args, beam_args)
    return flow.increment() if args.incremental else flow.full()


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.run")
