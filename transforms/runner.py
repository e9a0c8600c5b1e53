"""Runner choice, counters and progress logging shared by the Beam jobs."""
from __future__ import annotations

import logging
import os

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from core import files
from core.machine import available_cores

log = logging.getLogger(__name__)

LOCAL_RUNNERS = (None, "DirectRunner", "directrunner", "direct")


def create_pipeline(options: PipelineOptions) -> beam.Pipeline:
    """A pipeline on the runner the options name, with a deliberate local default.

    Beam's ``DirectRunner`` first tries Prism, which downloads a binary at
    run time (impossible offline, and a network dependency nobody asked for)
    before falling back. Locally we therefore go straight to the FnApiRunner,
    the engine DirectRunner falls back to: it honours
    ``--direct_running_mode`` (in_memory, multi_threading, multi_processing)
    and ``--direct_num_workers``. Any other ``--runner`` (PrismRunner,
    PortableRunner, DataflowRunner, FlinkRunner) is used as given.
    """
    runner_name = options.view_as(StandardOptions).runner
    if runner_name in LOCAL_RUNNERS:
        from apache_beam.portability.api import beam_provision_api_pb2
        from apache_beam.runners.portability.fn_api_runner import fn_runner
        from apache_beam.runners.portability.portable_runner import JobServiceHandle

        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        info = fn_runner.ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
        return beam.Pipeline(runner=fn_runner.FnApiRunner(provision_info=info), options=options)
    return beam.Pipeline(options=options)


def run_and_wait(pipeline: beam.Pipeline):
    """Run, block until done, and fail loudly unless the job succeeded."""
    result = pipeline.run()
    state = result.wait_until_finish()
    if state not in (None, "DONE") and str(state) != "DONE":
        raise RuntimeError(f"pipeline finished in state {state}")
    return result


WORKERS = "workers"


def count_worker() -> None:
    """Note which process runs this DoFn (call in ``setup``): jobs report how many processes did the work."""
    Metrics.counter(WORKERS, f"pid-{os.getpid()}").inc()


def worker_processes(result) -> int:
    """How many distinct worker processes ran the counted DoFns."""
    return len(counter_values(result, WORKERS))


def counter_values(result, namespace: str) -> dict[str, int]:
    """Committed counter values of ``namespace`` (attempted where a runner lacks committed)."""
    values: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        values[c.key.metric.name] = values.get(c.key.metric.name, 0) + int(value or 0)
    return values




def processes_per_machine(options: PipelineOptions) -> int:
    """How many SDK worker processes share a machine's cores, for sizing each one's BLAS threads."""
    if options.view_as(StandardOptions).runner not in LOCAL_RUNNERS:
        return available_cores()  # Dataflow/Flink run about one Python process per core
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode in ("multi_processing", "multi_threading"):
        return max(1, direct.direct_num_workers or 1)
    return 1


# Below this much input, starting local worker processes costs more than the parallel encoding saves.
PARALLEL_MIN_BYTES = 4 * 2**20  # ~40,000 sentences of news text


def with_local_workers(options: PipelineOptions, input_paths: list[str]) -> PipelineOptions:
    """On the local runner, one worker process per core for a large enough local input.

    Two single-threaded encoder processes embed ~1.25x faster than one
    process with two BLAS threads (benchmarks/bench_embed.py), but take a few
    seconds to start. A running mode or worker count the user chose is kept.
    """
    chosen = options.get_all_options(drop_default=True)
    flags = [f.split("=")[0] for f in options._flags]  # pylint: disable=protected-access  # also default values
    if (options.view_as(StandardOptions).runner not in LOCAL_RUNNERS or available_cores() < 2
            or {"--direct_running_mode", "--direct_num_workers"} & set(flags)
            or any(files.is_url(p) for p in input_paths)  # other processes may not see it (e.g. in-memory)
            or sum(os.path.getsize(p) for p in input_paths) < PARALLEL_MIN_BYTES):
        return options
    log.info("embedding in %d local worker processes", available_cores())
    return PipelineOptions.from_dictionary({**chosen, "direct_running_mode": "multi_processing",
                                            "direct_num_workers": available_cores()})




def progress_share(options: PipelineOptions) -> int | None:
    """How many local worker processes split the work (for ETAs); None on a remote runner (unknown)."""
    if options.view_as(StandardOptions).runner not in LOCAL_RUNNERS:
        return None
    return processes_per_machine(options)
