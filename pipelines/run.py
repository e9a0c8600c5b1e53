"""run: from a corpus to a reduced corpus and a report, in one re-runnable command.

    shrink run --input 'corpus/*.txt' --workdir out
    shrink run --input news.csv --text_field headline --workdir out --runner DataflowRunner ...
    shrink run --input 'corpus/*.txt' --workdir out --embed.max_batch_size 256 --train.learning_rate 0.005
    shrink run --input 'corpus/*.txt' --workdir out --incremental --refit_on_drift   # nightly

Steps, each writing into ``--workdir``: embed -> fit-pca and train ->
fit-codec (int8 of the raw vectors; with ``--budget_bytes`` also the int8 and
product-quantization codecs that can fit, and learned PQ with
``--learned_pq_steps``) -> evaluate -> reduce. Without a
budget the corpus is written with the better reducer (or ``--reducer``) as
``--dtype``, and the report says what the same bytes would buy; with
``--budget_bytes B`` it is written in the representation with the highest
label-free recall@10 within B bytes per vector (ties: higher STS fidelity).

Every step is a job called with its typed config. Each job's flags are
declared once, on its config, and reachable here with the step's name as a
prefix: ``--embed.<flag>``, ``--pca.<flag>``, ``--train.<flag>``,
``--codec.<flag>``, ``--evaluate.<flag>``, ``--reduce.<flag>`` (run decides
inputs and outputs). The most used ones are also accepted without the
prefix: the corpus flags of embed (``--text_field``...), ``--epochs``,
``--sts_dir``/``--download``/``--golden_set``/``--queries`` and
``--format``/``--dtype``/``--drop_text``. Beam pipeline options go to the Beam steps.

Every finished step is recorded in ``<workdir>/run_manifest.json`` with a key
made of its config and the identity of its inputs (file sizes and
modification times for the corpus, digests of upstream outputs for the rest)
and the digest of its output. A re-run skips a step whose key is unchanged
and whose output is the one recorded, and redoes it (and so everything
downstream) otherwise; an interrupted run therefore resumes at the step it
was in (the trainer resumes from its last epoch). An output run did not
write is refused.

``--incremental`` extends a finished run with the sentences of the (grown)
corpus whose ids are new: they are embedded into ``increments/NNNN/``, the
current representation is checked for drift on them, and they are reduced
with it (or, with ``--refit_on_drift`` and drift found, both reducers are
refitted on everything and the whole corpus is reduced again).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field

from apache_beam.options.pipeline_options import PipelineOptions

from core import codecs, containment, files, layouts, manifests, reducers
from core import config as cfg
from core.config import option
from core.dataset import EmbeddingDataset, sample_vectors
from core.errors import ArtifactError, InputError
from core.evaluation import coded, drift
from core.outputs import locked, remove_output
from core.plan import RunState, Step, input_identity
from core.run_summary import summarize
from pipelines import embed, evaluate, fit_codec, fit_pca, reduce, train
from pipelines.cli import CORPUS_FIELDS, check_beam_args
from transforms.corpus import check_patterns

log = logging.getLogger(__name__)
DRIFT_SAMPLE = 5000
MIN_DRIFT_ROWS = 20  # fewer new vectors make too few pairs for a meaningful fidelity
PQ_SIZES = (8, 16, 32, 64, 128, 256)
# Each step's config, the fields run decides itself, and the fields also accepted without the step's prefix.
STEPS = {
    "embed": (embed.EmbedConfig, ("input", "output", "previous", "overwrite"), CORPUS_FIELDS),
    "pca": (fit_pca.FitPcaConfig, ("input", "output", "extra_input", "query_input", "query_share", "temp_dir",
                                   "overwrite"), ()),
    "train": (train.TrainConfig, ("input", "output", "extra_input", "overwrite"), ("epochs",)),
    "codec": (fit_codec.FitCodecConfig, ("input", "output", "extra_input", "codec", "reducer", "m",
                                         "fine_tune_steps", "temp_dir", "overwrite"), ()),
    "evaluate": (evaluate.EvaluateConfig, ("embeddings", "reducer", "codec", "output", "budget_bytes", "overwrite"),
                 ("sts_dir", "download", "golden_set", "queries")),
    "reduce": (reduce.ReduceConfig, ("reducer", "output", "input", "text_input", "dtype", "overwrite",
                                     *CORPUS_FIELDS), ("format", "drop_text")),
}
# Where run writes (relative to the workdir), to check an input glob cannot match any of it.
STEP_DIRS = ("", "embeddings/", "query_embeddings/", "pca/", "autoencoder/", "codecs/raw-int8/", "report/",
             "reduced/", "reduced_rescore/", "increments/0001/embeddings/", "increments/0001/reduced/", "tmp/")


@dataclass(frozen=True)
class RunConfig:
    input: tuple[str, ...] = option(help="corpus file pattern (repeatable)")
    workdir: str = option(help="directory for every step's output: local, or any URL Beam and TensorFlow reach "
                               "(gs://...)")
    output_dim: int = option(128, "dimension of both reducers' vectors (the autoencoder's code size unless "
                                  "--train.sizes says otherwise)")
    reducer: str = option("best", "reducer for the output corpus; best = highest mean of STS fidelity and corpus "
                                  "nDCG@10", choices=["best", "pca", "autoencoder"])
    dtype: str = option("float32", "precision of the reduced corpus when no --budget_bytes is given",
                        choices=["float32", "float16"])
    budget_bytes: int | None = option(None, "write the corpus in the best representation of at most this many "
                                            "bytes per vector (int8, float16/32 of raw, PCA or autoencoder vectors, "
                                            "PQ codes, two-stage)")
    learned_pq_steps: int = option(0, "with --budget_bytes: also fit learned PQ at the budget's PQ size (OPQ "
                                      "fine-tuned this many steps to keep rankings; 400 measured), chosen only "
                                      "when it measures better")
    query_sample: tuple[str, ...] = option((), "file pattern of sample queries the corpus will serve, e.g. "
                                               "questions (repeatable; read with --text_field, format by "
                                               "extension): PCA is fitted on them too (query-aware)")
    query_share: float = option(0.5, "share of PCA's fitting rows the --query_sample rows make up")
    incremental: bool = option(False, "embed and reduce only the corpus's new sentences, extending a finished run")
    drift_threshold: float = option(0.02, "drift when the representation's pair fidelity on new data is this "
                                          "much below its fitting data")
    refit_on_drift: bool = option(False, "with --incremental: on drift, refit both reducers on everything and "
                                         "reduce it all again")
    force: bool = option(False, "redo every step")
    steps: dict = field(default_factory=dict)  # {step: {field: value}} given on the command line

    def step(self, name: str, **decided) -> object:
        """The step's config: run's decisions, then the user's flags for it."""
        cls = STEPS[name][0]
        return dataclasses.replace(cls(**decided), **self.steps.get(name, {}))


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="shrink run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cfg.add_flags(p, RunConfig)
    shorthands = p.add_argument_group("step flags also accepted without their prefix")
    for name, (cls, _, shared) in STEPS.items():
        cfg.add_flags(shorthands, cls, only=shared, keep_defaults=False)
    for name, (cls, decided, _) in STEPS.items():
        group = p.add_argument_group(f"{name} step (see `shrink {name if name != 'codec' else 'fit-codec'} --help`)")
        cfg.add_flags(group, cls, prefix=f"{name}.", skip=decided, keep_defaults=False)
    return p


def step_overrides(args: argparse.Namespace) -> dict:
    """``{step: {field: value}}`` of the step flags given, prefixed or (for the shared ones) not."""
    out = {}
    for name, (_, _, shared) in STEPS.items():
        plain = {k: v for k, v in vars(args).items() if k in shared}
        out[name] = {**{k: tuple(v) if isinstance(v, list) else v for k, v in plain.items()},
                     **cfg.overrides(args, f"{name}.")}
    return out


def parse(argv: list[str] | None) -> tuple[RunConfig, list[str]]:
    """The run's config and Beam options; every flag (the step flags too) checked before any work."""
    parser = make_parser()
    args, beam_args = parser.parse_known_args(argv)
    check_beam_args(parser, beam_args)  # a typo fails now, not after hours of embedding
    config = dataclasses.replace(cfg.from_namespace(RunConfig, args, parser=parser), steps=step_overrides(args))
    if config.refit_on_drift and not config.incremental:
        raise InputError("--refit_on_drift goes with --incremental")
    if config.learned_pq_steps < 0 or (config.learned_pq_steps and config.budget_bytes is None):
        raise InputError("--learned_pq_steps is a step count (>= 0) that goes with --budget_bytes")
    if config.query_sample and not 0 < config.query_share < 1:  # fail now, not after embedding the corpus
        raise InputError(f"--query_share must be in (0, 1), got {config.query_share}")
    dim = config.step("embed", input=config.input, output="-").embedding_dim
    if not 1 <= config.output_dim <= dim:
        raise InputError(f"--output_dim must be in 1..{dim} (the encoder's dimension), got {config.output_dim}")
    if config.budget_bytes is not None and config.budget_bytes < PQ_SIZES[0]:
        raise InputError(f"no representation fits {config.budget_bytes} bytes per vector; the smallest is "
                         f"pq-{PQ_SIZES[0]} at {PQ_SIZES[0]} bytes per vector")
    return config, beam_args


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


class Flow:
    """The step graph of one ``run`` over a work directory: which job runs with which config, on what."""

    def __init__(self, config: RunConfig, options: PipelineOptions, beam_args: list[str]):
        self.config, self.options, self.beam_args = config, options, beam_args
        self.state = RunState(config.workdir)
        self.ran: list[str] = []

    def path(self, *parts: str) -> str:
        return files.join(self.config.workdir, *parts)

    def execute(self, name: str, output: str, config, inputs: list, action) -> bool:
        """Run a step (``output`` relative to the workdir) unless its config and inputs are unchanged."""
        key = {"config": dataclasses.asdict(config), "inputs": inputs, "beam": self.beam_args}
        ran = self.state.execute(Step(name, output, key, action), self.config.force)
        if ran:
            self.ran.append(name)
        return ran

    def datasets(self) -> list[str]:
        """Every embedding dataset of the corpus (relative paths): the first run's and each increment's."""
        return ["embeddings"] + [i["embeddings"] for i in self.state.increments]

    def embed(self, name: str, output: str, previous: list[str] = (), queries: bool = False) -> bool:
        c = self.config
        config = c.step("embed", input=c.query_sample if queries else c.input, output=self.path(output),
                        previous=tuple(previous), overwrite=True)
        if queries:  # questions: their own format (by extension) and ids
            config = dataclasses.replace(config, input_format="auto", id_field=None)
        inputs = [input_identity(config.input), [manifests.identity(d) for d in previous]]
        return self.execute(name, output, config, inputs, lambda: embed.run(config, self.options))

    def fit(self) -> None:
        """Fit both reducers on every dataset of the corpus (and the query sample, when given)."""
        c, data = self.config, [self.path(d) for d in self.datasets()]
        identities = [manifests.identity(d) for d in data]
        pca = c.step("pca", input=data[0], extra_input=tuple(data[1:]), output=self.path("pca"),
                     output_dim=c.output_dim, temp_dir=self.path("tmp"), overwrite=True)
        if c.query_sample:
            self.embed("embed-queries", "query_embeddings", queries=True)
            pca = dataclasses.replace(pca, query_input=self.path("query_embeddings"), query_share=c.query_share)
            identities = identities + [manifests.identity(self.path("query_embeddings"))]
        self.execute("fit-pca", "pca", pca, identities, lambda: fit_pca.run(pca, self.options))
        autoencoder = c.step("train", input=data[0], extra_input=tuple(data[1:]), output=self.path("autoencoder"),
                             sizes=(max(256, c.output_dim), c.output_dim), overwrite=True)
        self.execute("train", "autoencoder", autoencoder, identities[:len(data)],
                     lambda: train.train(autoencoder))

    def fit_codecs(self) -> list[str]:
        """Codec artifacts to evaluate (relative paths): raw int8 always; within a budget, what can fit it."""
        c, data = self.config, [self.path(d) for d in self.datasets()]
        wanted = [("raw-int8", "int8", reducers.IDENTITY, fit_codec.FitCodecConfig.m, 0)]
        if c.budget_bytes is not None:
            if c.budget_bytes >= c.output_dim:
                wanted += [(f"{n}-int8", "int8", self.path(n), fit_codec.FitCodecConfig.m, 0)
                           for n in ("pca", "autoencoder")]
            for m in pq_sizes(c.budget_bytes):
                wanted += [(f"pq-{m}", "pq", reducers.IDENTITY, m, 0)] + (
                    [(f"{codecs.LEARNED_PQ}-{m}", "pq", reducers.IDENTITY, m, c.learned_pq_steps)]
                    if c.learned_pq_steps else [])
        for name, kind, reducer, m, steps in wanted:
            config = c.step("codec", input=data[0], extra_input=tuple(data[1:]), output=self.path("codecs", name),
                            codec=kind, reducer=reducer, m=m, fine_tune_steps=steps, temp_dir=self.path("tmp"),
                            overwrite=True)
            inputs = [manifests.identity(d) for d in data] + (
                [manifests.identity(reducer)] if reducer != reducers.IDENTITY else [])
            self.execute(f"fit-{name}", f"codecs/{name}", config, inputs,
                         lambda config=config: fit_codec.run(config, self.options))
        return [f"codecs/{name}" for name, *_ in wanted]

    def evaluate_and_choose(self) -> list[tuple[str, str, str]]:
        """Evaluate every representation; ``[(output, reducer or codec, dtype)]`` to write the corpus with."""
        c, codec_dirs = self.config, self.fit_codecs()
        config = c.step("evaluate", embeddings=self.path("embeddings"),
                        reducer=(self.path("pca"), self.path("autoencoder")),
                        codec=tuple(self.path(d) for d in codec_dirs), output=self.path("report"),
                        budget_bytes=c.budget_bytes)
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
                config = c.step("reduce", reducer=spec, output=self.path(prefix + output), input=self.path(data),
                                dtype=dtype, overwrite=True)
                inputs = [manifests.identity(self.path(data))] + (
                    [manifests.identity(spec)] if spec != reducers.IDENTITY else [])
                self.execute(step, prefix + output, config, inputs,
                             lambda config=config: reduce.run(config, self.options))
        self.state.steps["reduce"]["writes"] = [
            [out, spec if spec == reducers.IDENTITY else files.relative(spec, c.workdir), dtype,
             reducers.IDENTITY if spec == reducers.IDENTITY else manifests.identity(spec)["digest"]]
            for out, spec, dtype in writes]
        self.state.save()

    def current_writes(self) -> list[tuple[str, str, str]]:
        """The representation(s) the corpus is written in now (absolute artifact paths), each still the artifact
        the corpus was written with."""
        writes = []
        for out, spec, dtype, digest in self.state.steps["reduce"]["writes"]:
            if spec != reducers.IDENTITY and manifests.identity(self.path(spec))["digest"] != digest:
                raise ArtifactError(f"{self.path(spec)} is not the artifact the corpus was written with (refitted "
                                    "or replaced since); run without --incremental to redo the run")
            writes.append((out, spec if spec == reducers.IDENTITY else self.path(spec), dtype))
        return writes

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
        new = sample_vectors(EmbeddingDataset.open(self.path(inc["embeddings"])), DRIFT_SAMPLE)
        if len(new) < MIN_DRIFT_ROWS:
            log.info("drift check skipped: %d new vectors, fewer than %d", len(new), MIN_DRIFT_ROWS)
            return None
        reference = sample_vectors(EmbeddingDataset.open(self.path("embeddings")), DRIFT_SAMPLE)
        representation = codecs.open_representation(spec, dtype, reference.shape[1])
        report = drift.check(lambda x: coded.stored(representation, x), reference, new, self.config.drift_threshold)
        inc["drift"], inc["drift_file"] = report, f"increments/{inc['name']}/drift.json"
        files.write_text(self.path(inc["drift_file"]), json.dumps(report, indent=2))
        log.info("drift check: pair fidelity %.4f on new data vs %.4f on fitting data (drop %.4f, threshold %.4f)%s",
                 report["fidelity_new"], report["fidelity_reference"], report["drop"], report["threshold"],
                 ": DRIFT" if report["drift"] else "")
        return report

    def summary(self, writes: list[tuple[str, str, str]], new: int | None = None) -> dict:
        reduced = ["reduced"] + [i["reduced"] for i in self.state.increments]
        summary, lines = summarize(self.config.workdir, self.datasets(), reduced, writes, self.ran,
                                   self.state.increments, new)
        print("\n".join(lines), flush=True)
        return summary


def run(config: RunConfig, options: PipelineOptions, beam_args: list[str] = ()) -> dict:
    start = time.monotonic()
    reads = [*config.input, *config.query_sample, *(config.steps.get("evaluate", {}).get(k) for k in
                                                     ("sts_dir", "golden_set"))]
    containment.check_separate(config.workdir, reads, layouts.probes(STEP_DIRS), "--workdir")
    containment.check_files_outside(config.workdir, check_patterns([*config.input, *config.query_sample]),
                                    "--workdir")
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
