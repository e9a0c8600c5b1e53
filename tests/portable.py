"""Beam's portable runner for tests: a local Job API server and an SDK worker pool.

Both run as separate processes, the same submission path a Flink or Spark
cluster uses (Job API over gRPC, workers from a pool with
``--environment_type EXTERNAL``). Measured pitfalls handled here: the pool
starts workers with whatever ``python`` is first on PATH (a wrong one makes a
job hang instead of failing), so PATH is set to this interpreter's directory
and checked up front; every process started is stopped, even on failure.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PortableCluster:
    job_endpoint: str
    worker_pool: str
    env: dict

    def options(self) -> list[str]:
        return ["--runner", "PortableRunner", "--job_endpoint", self.job_endpoint,
                "--environment_type", "EXTERNAL", "--environment_config", self.worker_pool]

    def run_module(self, module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``python -m module args`` against the cluster; a hang fails after ``timeout``."""
        return subprocess.run([sys.executable, "-m", module, *args, *self.options()], env=self.env,
                              capture_output=True, text=True, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("localhost", port), timeout=1):
            return
        time.sleep(0.5)
    raise TimeoutError(f"service did not open port {port} within {timeout}s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def portable_cluster(workdir: Path):
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    found = shutil.which("python", path=env["PATH"])
    if not found or Path(found).resolve() != Path(sys.executable).resolve():
        raise RuntimeError(f"'python' on PATH is {found}, not {sys.executable}: workers would not start")
    procs: list[subprocess.Popen] = []
    try:
        job_port, pool_port = _free_port(), _free_port()
        services = [
            ("jobservice", [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                            "--port", str(job_port)], job_port),
            ("workerpool", [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                            "--service_port", str(pool_port)], pool_port),
        ]
        for name, cmd, port in services:
            log = workdir / f"{name}.log"
            procs.append(subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                          start_new_session=True))
            _wait_for_port(port, procs[-1], log)
        yield PortableCluster(f"localhost:{job_port}", f"localhost:{pool_port}", env)
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
