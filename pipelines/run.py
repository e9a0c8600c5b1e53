"""run: from a corpus to a reduced corpus and a report, in one re-runnable command.

    shrink run --input 'corpus/*.txt' --workdir out
    shrink run --input news.csv --text_field headline --workdir out --runner DataflowRunner ...
    shrink run --input 'corpus/*.txt' --workdir out --incremental --refit_on_drift   # nightly

Steps, each writing into ``--workdir``: embed -> fit-pca and train ->
fit-codec (int8 of the raw vectors; with ``--budget_bytes`` also the int8 and
product-quantization codecs that can fit) -> evaluate -> reduce. Without a
budget the corpus is written with the better reducer (or ``--reducer``) as
``--dtype``, and the report says what the same bytes would buy; with
``--budget_bytes B`` it is written in the representation with the highest
label-free recall@10 within B bytes per vector (ties: higher STS fidelity).
Each step is a job called with a typed config (``<job>.run(config,
options)``); Beam pipeline options go to the Beam steps.

Every finished step is recorded in ``<workdir>/run_manifest.json`` with a key
made of its config and the identity of its inputs (file sizes and
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
import dataclasses
import json
import logging
import time
from dataclasses import dataclass

from apache_beam.options.pipeline_options import PipelineOptions

from core import codecs, files, manifests, reducers
from core import config as cfg
from core.dataset import EmbeddingDataset
from core.errors import InputError
from core.evaluation import coded, drift
from core.outputs import locked, remove_output
from core.steps import RunState, Step, input_identity
from pipelines import embed, evaluate, fit_codec, fit_pca, reduce
from pipelines import train as task
from pipelines.cli import check_beam_args

log = logging.getLogger(__name__)
DRIFT_SAMPLE = 5000
MIN_DRIFT_ROWS = 20  # fewer new vectors make too few pairs for a meaningful fidelity


@dataclass(frozen=True)
class RunConfig:
    input: tuple[str, ...]
    workdir: str
    input_format: str = "auto"
    text_field: str | None = None
    id_field: str | None = None
    encoder: str = embed.EmbedConfig.encoder
    allow_partial_files: bool = False
    output_dim: int = 128
    reducer: str = "best"
    epochs: int | None = None
    train_arg: tuple[str, ...] = ()
    pca_arg: tuple[str, ...] = ()
    format: str = "tfrecord"
    dtype: str = "float32"
    budget_bytes: int | None = None
    drop_text: bool = False
    sts_dir: str | None = None
    download: bool = True
    golden_set: str | None = None
    queries: int = 1000
    query_sample: tuple[str, ...] = ()
    query_share: float = 0.5
    incremental: bool = False
    drift_threshold: float = 0.02
    refit_on_drift: bool = False
    force: bool = False


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="shrink run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", action="append", required=True, help="corpus file pattern (repeatable)")
    p.add_argument("--workdir", required=True,
                   help="directory for every step's output: local, or any URL Beam and TensorFlow reach (gs://...)")
    p.add_argument("--input_format", default="auto", help="as in `shrink embed`")
    p.add_argument("--text_field", help="as in `shrink embed`")
    p.add_argument("--id_field", help="as in `shrink embed`")
    p.add_argument("--encoder", default=RunConfig.encoder, help="as in `shrink embed`")
    p.add_argument("--allow_partial_files", action=argparse.BooleanOptionalAction, default=False,
                   help="as in `shrink embed`")
    p.add_argument("--output_dim", type=int, default=RunConfig.output_dim,
                   help="dimension of both reducers' vectors (the autoencoder's code size unless --train_arg "
                        "sets --sizes)")
    p.add_argument("--reducer", choices=["best", "pca", "autoencoder"], default="best",
                   help="reducer for the output corpus; best = highest mean of STS fidelity and corpus nDCG@10")
    p.add_argument("--epochs", type=int, help="most autoencoder epochs (default: the trainer's)")
    p.add_argument("--train_arg", action="append", default=[],
                   help="extra trainer flag, e.g. --train_arg=--similarity_weight=1 (repeatable)")
    p.add_argument("--pca_arg", action="append", default=[],
                   help="extra fit-pca flag, e.g. --pca_arg=--no-center (repeatable)")
    p.add_argument("--format", choices=["tfrecord", "parquet"], default="tfrecord")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="precision of the reduced corpus when no --budget_bytes is given")
    p.add_argument("--budget_bytes", type=int,
                   help="write the corpus in the best representation of at most this many bytes per vector "
                        "(int8, float16/32 of raw, PCA or autoencoder vectors, PQ codes, two-stage)")
    p.add_argument("--drop_text", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--sts_dir", help="as in `shrink evaluate`")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                   help="download the STS benchmark when it is not cached")
    p.add_argument("--golden_set", help="as in `shrink evaluate`")
    p.add_argument("--queries", type=int, default=RunConfig.queries, help="label-free retrieval queries")
    p.add_argument("--query_sample", action="append", default=[],
                   help="file pattern of sample queries the corpus will serve, e.g. questions (repeatable; "
                        "read with --text_field, format by extension): PCA is fitted on them too (query-aware)")
    p.add_argument("--query_share", type=float, default=RunConfig.query_share,
                   help="share of PCA's fitting rows the --query_sample rows make up")
    p.add_argument("--incremental", action=argparse.BooleanOptionalAction, default=False,
                   help="embed and reduce only the corpus's new sentences, extending a finished run")
    p.add_argument("--drift_threshold", type=float, default=RunConfig.drift_threshold,
                   help="drift when the reducer's pair fidelity on new data is this much below its fitting data")
    p.add_argument("--refit_on_drift", action=argparse.BooleanOptionalAction, default=False,
                   help="with --incremental: on drift, refit both reducers on everything and reduce it all again")
    p.add_argument("--force", action=argparse.BooleanOptionalAction, default=False, help="redo every step")
    return p


def step_overrides(parser: argparse.ArgumentParser, extra: tuple[str, ...], what: str) -> dict:
    """The flags ``extra`` sets in a step's parser, as config fields (a typo is a usage error now)."""
    required = ["--input", "-", "--output", "-"]
    defaults = vars(parser.parse_args(required))
    given, unknown = parser.parse_known_args([*required, *extra])
    if unknown:
        parser.error(f"{what}: unrecognized arguments: {' '.join(unknown)} (pass Beam options to run itself)")
    overrides = {k: v for k, v in vars(given).items() if v != defaults[k]}
    if {"input", "output", "extra_input"} & overrides.keys():
        parser.error(f"{what} cannot set --input/--output/--extra_input: run decides them")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}


class Flow:
    """The steps of one ``run`` invocation over a work directory."""

    def __init__(self, config: RunConfig, options: PipelineOptions, beam_args: list[str]):
        self.config, self.options, self.beam_args = config, options, beam_args
        self.state = RunState(config.workdir)
        self.ran: list[str] = []
        self.pca_overrides = step_overrides(fit_pca.make_parser(), config.pca_arg, "--pca_arg")
        self.train_overrides = step_overrides(task.build_parser(), config.train_arg, "--train_arg")

    def path(self, *parts: str) -> str:
        return files.join(self.config.workdir, *parts)

    def execute(self, name: str, output: str, key_config, inputs: list, action) -> bool:
        """Run a step (``output`` relative to the workdir) unless its config and inputs are unchanged."""
        key = {"config": dataclasses.asdict(key_config), "inputs": inputs, "beam": self.beam_args}
        ran = self.state.execute(Step(name, output, key, action), self.config.force)
        if ran:
            self.ran.append(name)
        return ran

    def embed(self, name: str, output: str, previous: list[str] = (), queries: bool = False) -> bool:
        c = self.config
        config = embed.EmbedConfig(
            input=c.query_sample if queries else c.input, output=self.path(output),
            input_format="auto" if queries else c.input_format, text_field=c.text_field,
            id_field=None if queries else c.id_field, encoder=c.encoder, previous=tuple(previous),
            allow_partial_files=c.allow_partial_files, overwrite=True)
        inputs = [input_identity(config.input), [manifests.identity(d) for d in previous]]
        return self.execute(name, output, config, inputs, lambda: embed.run(config, self.options))

    def datasets(self) -> list[str]:
        """Every embedding dataset of the corpus (relative paths): the first run's and each increment's."""
        return ["embeddings"] + [i["embeddings"] for i in self.state.increments]

    def fit(self) -> None:
        """Fit both reducers on every dataset of the corpus (and the query sample, when given)."""
        c, data = self.config, [self.path(d) for d in self.datasets()]
        identities = [manifests.identity(d) for d in data]
        pca = fit_pca.FitPcaConfig(input=data[0], extra_input=tuple(data[1:]), output=self.path("pca"),
                                   output_dim=c.output_dim, temp_dir=self.path("tmp"), overwrite=True)
        if c.query_sample:
            self.embed("embed-queries", "query_embeddings", queries=True)
            pca = dataclasses.replace(pca, query_input=self.path("query_embeddings"), query_share=c.query_share)
            identities = identities + [manifests.identity(self.path("query_embeddings"))]
        pca = dataclasses.replace(pca, **self.pca_overrides)
        self.execute("fit-pca", "pca", pca, identities, lambda: fit_pca.run(pca, self.options))
        train = task.TrainConfig(input=data[0], extra_input=tuple(data[1:]), output=self.path("autoencoder"),
                                 sizes=(max(256, c.output_dim), c.output_dim), overwrite=True,
                                 **({"epochs": c.epochs} if c.epochs else {}))
        train = dataclasses.replace(train, **self.train_overrides)
        self.execute("train", "autoencoder", train, identities[:len(data)], lambda: task.train(train))

    def fit_codecs(self) -> list[str]:
        """Codec artifacts to evaluate (relative paths): raw int8 always; within a budget, what can fit it."""
        c, data = self.config, [self.path(d) for d in self.datasets()]
        wanted = [("raw-int8", "int8", reducers.IDENTITY, 0)]
        if c.budget_bytes is not None:
            if c.budget_bytes >= c.output_dim:
                wanted += [(f"{n}-int8", "int8", self.path(n), 0) for n in ("pca", "autoencoder")]
            wanted += [(f"pq-{m}", "pq", reducers.IDENTITY, m) for m in pq_sizes(c.budget_bytes)]
        names = []
        for name, kind, reducer, m in wanted:
            config = fit_codec.FitCodecConfig(input=data[0], extra_input=tuple(data[1:]), output=self.path("codecs", name),
                                              codec=kind, reducer=reducer, m=m or fit_codec.FitCodecConfig.m,
                                              temp_dir=self.path("tmp"), overwrite=True)
            inputs = [manifests.identity(d) for d in data] + (
                [manifests.identity(reducer)] if reducer != reducers.IDENTITY else [])
            self.execute(f"fit-{name}", f"codecs/{name}", config, inputs,
                         lambda config=config: fit_codec.run(config, self.options))
            names.append(f"codecs/{name}")
        return names

    def evaluate_and_choose(self) -> list[tuple[str, str, str]]:
        """Evaluate every representation; ``[(output, reducer or codec, dtype)]`` to write the corpus with."""
        c, codec_dirs = self.config, self.fit_codecs()
        config = evaluate.EvaluateConfig(
            embeddings=self.path("embeddings"), reducer=(self.path("pca"), self.path("autoencoder")),
            codec=tuple(self.path(d) for d in codec_dirs), output=self.path("report"), sts_dir=c.sts_dir,
            download=c.download, golden_set=c.golden_set, queries=c.queries, budget_bytes=c.budget_bytes)
        inputs = [manifests.identity(self.path(d)) for d in ("embeddings", "pca", "autoencoder", *codec_dirs)]
        self.execute("evaluate", "report", config, inputs, lambda: evaluate.run(config))
        report = json.loads(files.read_text(self.path("report", "report.json")))
        if c.budget_bytes is not None:
            return writes_for(report, report["chosen"])
        if c.reducer != "best":
            return [("reduced", self.path("pca" if c.reducer == "pca" else "autoencoder"), c.dtype)]
        if not report.get("best_reducer_path"):
            raise InputError("no reducer could be chosen: the report has neither STS nor corpus retrieval "
                             "results; pass --reducer pca or --reducer autoencoder")
        return [("reduced", report["best_reducer_path"], c.dtype)]

    def reduce_all(self, writes: list[tuple[str, str, str]]) -> None:
        """Write every dataset of the corpus as each ``(output, reducer or codec, dtype)`` (unchanged steps skip)."""
        c = self.config
        datasets = [("", "embeddings", "")] + [(f"-{i['name']}", i["embeddings"], f"increments/{i['name']}/")
                                               for i in self.state.increments]
        for suffix, data, prefix in datasets:
            for output, spec, dtype in writes:
                step = f"{output.replace('reduced', 'reduce')}{suffix}"
                config = reduce.ReduceConfig(reducer=spec, output=self.path(prefix + output), input=self.path(data),
                                             format=c.format, dtype=dtype, drop_text=c.drop_text, overwrite=True)
                inputs = [manifests.identity(self.path(data))] + (
                    [manifests.identity(spec)] if spec != reducers.IDENTITY else [])
                self.execute(step, prefix + output, config, inputs,
                             lambda config=config: reduce.run(config, self.options))
        self.state.steps["reduce"]["writes"] = [
            [out, spec if spec == reducers.IDENTITY else files.relative(spec, c.workdir), dtype]
            for out, spec, dtype in writes]
        self.state.save()

    def current_writes(self) -> list[tuple[str, str, str]]:
        """The representation(s) the corpus is written in now, with absolute artifact paths."""
        return [(out, spec if spec == reducers.IDENTITY else self.path(spec), dtype)
                for out, spec, dtype in self.state.steps["reduce"]["writes"]]

    def full(self) -> dict:
        if self.embed("embed", "embeddings") and self.state.increments:
            # The corpus was embedded again from scratch: it now holds what the increments held.
            for inc in self.state.increments:
                for part in ("embeddings", "reduced"):
                    remove_output(self.path(inc[part]))
                files.delete([self.path(inc["drift_file"])] if inc.get("drift_file") else [])
                files.remove_if_empty(self.path("increments", inc["name"]))
            self.state.increments = []
            self.state.save()
        self.fit()
        writes = self.evaluate_and_choose()
        self.reduce_all(writes)
        return self.summary(writes)

    def increment(self) -> dict:
        if "writes" not in self.state.steps.get("reduce", {}):
            raise InputError(f"{self.config.workdir} holds no finished run to extend; run without --incremental "
                             "first")
        name = f"{len(self.state.increments) + 1:04d}"
        inc = {"name": name, "embeddings": f"increments/{name}/embeddings", "reduced": f"increments/{name}/reduced",
               "drift": None, "refit": False}
        self.embed(f"embed-{name}", inc["embeddings"], [self.path(d) for d in self.datasets()])
        current = self.current_writes()
        inc["counts"] = manifests.read(self.path(inc["embeddings"]), "embeddings")["counts"]
        if inc["counts"]["embedded"] == 0:
            log.info("no new sentences: nothing to add")
            remove_output(self.path(inc["embeddings"]))
            files.remove_if_empty(self.path("increments", name))
            return self.summary(current, new=0)
        report = self.check_drift(current[0][1], current[0][2], inc)
        self.state.increments.append(inc)
        self.state.save()
        if report and report["drift"] and self.config.refit_on_drift:
            inc["refit"] = True
            self.state.save()
            self.fit()
            current = self.evaluate_and_choose()
        elif report and report["drift"]:
            log.warning("the reducer has drifted on the new data; re-run with --refit_on_drift to refit it")
        self.reduce_all(current)
        return self.summary(current, new=inc["counts"]["embedded"])

    def check_drift(self, spec: str, dtype: str, inc: dict) -> dict | None:
        """Pair fidelity of the current representation on the new vectors vs on the data it was fitted on."""
        new = evaluate.load_sample(EmbeddingDataset.open(self.path(inc["embeddings"])), DRIFT_SAMPLE)
        if len(new) < MIN_DRIFT_ROWS:
            log.info("drift check skipped: %d new vectors, fewer than %d", len(new), MIN_DRIFT_ROWS)
            return None
        reference = evaluate.load_sample(EmbeddingDataset.open(self.path("embeddings")), DRIFT_SAMPLE)
        representation = codecs.open_representation(spec, dtype, reference.shape[1])
        report = drift.check(lambda x: coded.stored(representation, x), reference, new, self.config.drift_threshold)
        inc["drift"], inc["drift_file"] = report, f"increments/{inc['name']}/drift.json"
        files.write_text(self.path(inc["drift_file"]), json.dumps(report, indent=2))
        log.info("drift check: pair fidelity %.4f on new data vs %.4f on fitting data (drop %.4f, threshold %.4f)%s",
                 report["fidelity_new"], report["fidelity_reference"], report["drop"], report["threshold"],
                 ": DRIFT" if report["drift"] else "")
        return report

    def summary(self, writes: list[tuple[str, str, str]], new: int | None = None) -> dict:
        c = self.config
        totals = [EmbeddingDataset.open(self.path(d)).records for d in self.datasets()]
        reduced = [self.path("reduced")] + [self.path(i["reduced"]) for i in self.state.increments]
        written = manifests.read(self.path("reduced"), "reduced")["representation"]
        summary = {"workdir": c.workdir, "steps_run": self.ran, "reducer": writes[0][1], "reduced": reduced,
                   "representation": written, "vectors": sum(totals), "report": self.path("report", "report.md"),
                   "increments": self.state.increments}
        lines = [f"\nreduced corpus ({c.format}, {written['name']}, {written['bytes_per_vector']} bytes/vector): "
                 f"{', '.join(reduced)}",
                 f"vectors: {sum(totals)} (first run {totals[0]}"
                 + "".join(f", increment {i['name']} {t}" for i, t in zip(self.state.increments, totals[1:])) + ")",
                 f"written with: {writes[0][1]}" + (f" (re-ranked with {writes[1][1]})" if len(writes) > 1 else ""),
                 f"report: {summary['report']}",
                 f"steps run this time: {', '.join(self.ran) or 'none (all up to date)'}"]
        same_bytes = json.loads(files.read_text(self.path("report", "report.json"))).get("same_bytes_line")
        if same_bytes:
            lines.insert(3, same_bytes)
        if new is not None:
            summary["new_vectors"] = new
            lines.append(f"new sentences this time: {new}" + (_drift_line(self.state.increments[-1]) if new else ""))
        print("\n".join(lines), flush=True)
        return summary


PQ_SIZES = (8, 16, 32, 64, 128, 256)
# Where run writes (relative to the workdir), to check an input glob cannot match any of it.
STEP_DIRS = ("", "embeddings/", "query_embeddings/", "pca/", "autoencoder/", "codecs/raw-int8/", "report/",
             "reduced/", "reduced_rescore/", "increments/0001/embeddings/", "increments/0001/reduced/", "tmp/")


def pq_sizes(budget: int) -> list[int]:
    """The product-quantization code size worth fitting for a budget: the largest that fits it."""
    fits = [m for m in PQ_SIZES if m <= budget]
    return fits[-1:]


def writes_for(report: dict, name: str) -> list[tuple[str, str, str]]:
    """How to write the corpus in the report's representation ``name`` (two outputs for two-stage search)."""
    spec = report["specs"][name]
    if "stages" in spec:
        first, fine = (report["specs"][stage] for stage in spec["stages"])
        return [("reduced", first["reducer"], first["dtype"]), ("reduced_rescore", fine["reducer"], fine["dtype"])]
    return [("reduced", spec["reducer"], spec["dtype"])]


def _drift_line(inc: dict) -> str:
    d = inc.get("drift")
    if not d:
        return ""
    return (f"; drift: {'YES' if d['drift'] else 'no'} (pair fidelity {d['fidelity_new']:.4f} on new data vs "
            f"{d['fidelity_reference']:.4f}){'; reducers refitted' if inc['refit'] else ''}")


def parse(argv: list[str] | None) -> tuple[RunConfig, list[str]]:
    """The run's config and Beam options; every flag (the step flags too) checked before any work."""
    parser = make_parser()
    args, beam_args = parser.parse_known_args(argv)
    check_beam_args(parser, beam_args)  # a typo fails now, not after hours of embedding
    config = cfg.from_namespace(RunConfig, args)
    step_overrides(fit_pca.make_parser(), config.pca_arg, "--pca_arg")
    step_overrides(task.build_parser(), config.train_arg, "--train_arg")
    if config.refit_on_drift and not config.incremental:
        raise InputError("--refit_on_drift goes with --incremental")
    if config.query_sample and not 0 < config.query_share < 1:  # fail now, not after embedding the corpus
        raise InputError(f"--query_share must be in (0, 1), got {config.query_share}")
    if not 1 <= config.output_dim <= embed.EmbedConfig.embedding_dim:
        raise InputError(f"--output_dim must be in 1..{embed.EmbedConfig.embedding_dim} (the encoder's dimension), "
                         f"got {config.output_dim}")
    if config.budget_bytes is not None and config.budget_bytes < PQ_SIZES[0]:
        raise InputError(f"no representation fits {config.budget_bytes} bytes per vector; the smallest is "
                         f"pq-{PQ_SIZES[0]} at {PQ_SIZES[0]} bytes per vector")
    return config, beam_args


def run(config: RunConfig, options: PipelineOptions, beam_args: list[str] = ()) -> dict:
    start = time.monotonic()
    reads = [*config.input, *config.query_sample, config.sts_dir, config.golden_set]
    with locked(config.workdir, reads, STEP_DIRS):
        flow = Flow(config, options, list(beam_args))
        summary = flow.increment() if config.incremental else flow.full()
    print(f"done in {time.monotonic() - start:.0f} s", flush=True)
    return summary


def main(argv: list[str] | None = None) -> dict:
    config, beam_args = parse(argv)
    return run(config, PipelineOptions(beam_args), beam_args)


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.run")
