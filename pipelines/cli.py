"""The ``shrink`` console script: one subcommand per job.

``shrink embed ...`` is the same as ``python -m pipelines.embed ...``; every
job module exposes ``main(argv)`` (flags -> typed config -> ``run(config,
options)``) and the Beam jobs take standard Beam pipeline options.

Exit codes are trustworthy: 0 on success, 1 with a one-line message on a
failure, 2 on a usage error. Processes that ran tf.Transform can segfault
while the interpreter tears down, after the work succeeded; we therefore
flush and leave with ``os._exit`` so that teardown never decides the code.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import re
import signal
import sys
import traceback
from dataclasses import dataclass

from apache_beam.options.pipeline_options import PipelineOptions

from core import config as cfg
from core import logs
from core.config import option
from core.encoders import DEFAULT_ENCODER, DEFAULT_PRECISION, PRECISION_HELP, PRECISIONS
from core.errors import NAMES, ShrinkError
from transforms.corpus import FORMATS, ReadCorpus
from transforms.embedding import EncoderModelHandler
from transforms.runner import processes_per_machine

COMMANDS = {
    "embed": ("pipelines.embed", "corpus -> 512-d embedding TFRecord shards"),
    "fit-pca": ("pipelines.fit_pca", "fit the PCA reducer with tf.Transform on embedding shards"),
    "fit-codec": ("pipelines.fit_codec", "fit an int8 (tf.Transform ranges) or product-quantization (faiss) codec"),
    "train": ("pipelines.train", "train the tied autoencoder on embedding shards, export a reduction head"),
    "reduce": ("pipelines.reduce", "rewrite an embedding dataset in a smaller representation"),
    "evaluate": ("pipelines.evaluate", "score every representation (quality per stored byte) and write a report"),
    "search": ("pipelines.search", "find the nearest sentences to a query in a reduced corpus"),
    "export": ("pipelines.export", "write a stored corpus for a vector store (Vertex AI, BigQuery, LanceDB, pgvector)"),
    "run": ("pipelines.run", "the whole flow: embed -> fit-pca + train -> fit-codec -> evaluate -> reduce"),
    "demo": ("pipelines.demo", "`run` on the built-in sample corpus (make demo)"),
    "sample-corpus": ("pipelines.sample_corpus", "write the built-in synthetic financial-news corpus"),
}


def _usage() -> str:
    lines = ["usage: shrink [-v] <command> [options]  (shrink <command> --help for its options)", "",
             "  -v, --verbose  show every library's log lines too (or set SHRINK_LOG_LEVEL=DEBUG)", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def exit_now(code: int) -> None:
    """Flush and exit without interpreter teardown (see module docstring)."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def one_line(error: BaseException) -> str:
    """``Type: message`` of the error, on one line; for a runner's wrapped failure, our error inside it."""
    text = f"{type(error).__name__}: {error}"
    if not isinstance(error, ShrinkError):
        found = re.search(rf"\b({'|'.join(NAMES)}): (.+?)(?: \[while running [^\]]*\])?(?:\n|$)", text)
        if found:
            return f"{found.group(1)}: {found.group(2)}"
    if not str(error).strip():  # e.g. a bare AssertionError: say where, and that it is ours to fix
        frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
        where = f" at {os.path.basename(frame.filename)}:{frame.lineno}" if frame else ""
        return (f"internal error: {type(error).__name__}{where} with no message; please report it with the "
                "output of SHRINK_DEBUG=1")
    first = text.strip().splitlines()[0]
    return first if len(first) <= 600 else first[:600] + " ..."


_INTERRUPTED = {"flag": False}


def _on_sigint(signum, frame) -> None:
    """First Ctrl-C: silence every logger (Beam's threads would print their own tracebacks) and interrupt."""
    _INTERRUPTED["flag"] = True
    logging.disable(logging.CRITICAL)
    raise KeyboardInterrupt


def run_job(module_name: str, argv: list[str], verbose: bool = False) -> int:
    """Run ``module.main(argv)``; return the process exit code it deserves."""
    logs.setup(verbose)
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        importlib.import_module(module_name).main(argv)
        return 0
    except SystemExit as e:  # argparse: --help is 0, a usage error 2
        return e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as e:  # noqa: BLE001 - the top level turns any failure into a message
        if _INTERRUPTED["flag"]:  # a runner turned the interrupt into its own error
            return _interrupted()
        if os.environ.get("SHRINK_DEBUG"):
            traceback.print_exc()
        print(f"error: {one_line(e)}", file=sys.stderr)
        print("(set SHRINK_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _interrupted() -> int:
    print("interrupted: the output is left incomplete (no manifest); run the same command again to redo it",
          file=sys.stderr)
    return 130


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    verbose = bool(argv) and argv[0] in ("-v", "--verbose")
    argv = argv[1:] if verbose else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        exit_now(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        exit_now(2)
    exit_now(run_job(COMMANDS[command][0], rest, verbose))


def module_main(module_name: str) -> None:
    """``python -m pipelines.<job>`` entry point with the same exit-code rules."""
    exit_now(run_job(module_name, sys.argv[1:]))

def parse_job_args(parser: argparse.ArgumentParser, argv: list[str] | None):
    """Split argv into the job's own flags and standard Beam pipeline options.

    Job flags live in a plain argparse parser, as in Beam's wordcount
    example, rather than in PipelineOptions subclasses: Beam merges every
    subclass in the process into one parser, so jobs sharing flag names
    (``--input``, ``--output``) could not be imported together (the ``run``
    command, the test suite). Anything that is neither a job flag nor a
    known Beam option is an error, so a typo never passes silently.
    """
    args, rest = parser.parse_known_args(argv)
    check_beam_args(parser, rest)
    return args, PipelineOptions(rest)


def check_beam_args(parser: argparse.ArgumentParser, beam_args: list[str]) -> None:
    """Exit with a usage error (via ``parser``) if ``beam_args`` holds anything Beam does not know."""
    beam_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for cls in _all_subclasses(PipelineOptions):
        cls._add_argparse_args(beam_parser)  # pylint: disable=protected-access
    _, unknown = beam_parser.parse_known_args(beam_args)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


@dataclass(frozen=True, kw_only=True)
class CorpusFields:
    """How to read and embed a corpus: the fields ``embed`` and ``reduce --text_input`` share (declared once)."""

    input_format: str = option("auto", "auto: by file extension (.txt .csv .tsv .jsonl .parquet, optionally .gz/.bz2), "
                                       "else text", choices=["auto", *FORMATS])
    text_field: str | None = option(None, "column/field holding the sentence (CSV, TSV, JSONL, Parquet)")
    id_field: str | None = option(None, "optional column/field with a record id (string or integer); default: a "
                                        "hash of the normalized sentence")
    metadata_field: tuple[str, ...] = option((), "column/field carried with each vector as metadata (repeatable; "
                                                 "CSV, TSV, JSONL, Parquet): exports turn them into filters")
    encoder: str = option(DEFAULT_ENCODER, "'use-m3' (offline USE multilingual v3) or "
                                           "'tfhub:<handle or SavedModel path>'")
    embedding_dim: int = option(512, "dimension the encoder must return; other vectors are dead-lettered")
    max_chars: int = option(10_000, "longer sentences (after normalization) are dead-lettered, not truncated")
    allow_partial_files: bool = option(False, "succeed although input files were truncated or unreadable (they "
                                              "are dead-lettered)")
    encoder_threads: int = option(0, "BLAS threads per worker process; 0 = its share of the machine's cores")
    encoder_precision: str = option(DEFAULT_PRECISION, PRECISION_HELP, choices=list(PRECISIONS))
    max_batch_size: int = option(1024, "largest encoder batch")

    def read_corpus(self, patterns) -> ReadCorpus:
        return ReadCorpus(list(patterns), self.input_format, self.text_field, self.id_field, self.max_chars,
                          self.metadata_field)

    def encoder_handler(self, options: PipelineOptions) -> EncoderModelHandler:
        """The encoder's model handler, its threads sized for the processes sharing each machine."""
        return EncoderModelHandler(self.encoder, self.max_batch_size, threads=self.encoder_threads or None,
                                   processes_per_machine=processes_per_machine(options),
                                   precision=self.encoder_precision)


CORPUS_FIELDS = tuple(f.name for f in dataclasses.fields(CorpusFields))
# how fast, never what: not part of a fingerprint (encoder precisions give vectors equal to ~1e-5 cosine)
RUNTIME_FIELDS = ("encoder_threads", "encoder_precision", "max_batch_size")


def job_parser(prog: str, doc: str, cls: type) -> argparse.ArgumentParser:
    """A command's parser: its description and one flag per field of its config."""
    parser = argparse.ArgumentParser(allow_abbrev=False, prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cfg.add_flags(parser, cls)
    return parser


def parse_config(parser: argparse.ArgumentParser, cls: type, argv: list[str] | None, beam: bool = True):
    """``(config, Beam pipeline options)`` from argv; a Beam job's unknown flags must be Beam options."""
    if beam:
        args, options = parse_job_args(parser, argv)
    else:
        args, options = parser.parse_args(argv), None
    return cfg.from_namespace(cls, args, parser=parser), options


if __name__ == "__main__":
    main()
