"""Run steps and their state: what ``shrink run`` did, so a re-run redoes only what changed.

``run_manifest.json`` in the work directory records every finished step
with a key (a digest of its config and the identity of its inputs) and the
corpus's increments. A step is skipped when its key is unchanged and its
output is complete; otherwise it runs (and, through the keys, everything
downstream of it). Paths are stored relative to the work directory.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Callable

from apache_beam.io.filesystems import FileSystems

from core import containment, files, manifests
from core.errors import ArtifactError

log = logging.getLogger(__name__)
RUN_MANIFEST = "run_manifest.json"


@dataclass
class Step:
    name: str
    output: str  # relative to the work directory
    key: dict
    action: Callable[[], dict]


def input_identity(patterns: list[str]) -> list:
    """Sizes and modification times of the corpus files: a changed corpus redoes everything."""
    found = []
    for result in FileSystems.match(list(patterns)):
        found += [(m.path, m.size_in_bytes, m.last_updated_in_seconds) for m in result.metadata_list]
    return sorted(found)


def _check_paths(source: str, steps: dict, increments: list) -> None:
    """Every path the state file names must stay inside the work directory (it is read back from disk)."""
    named = [record.get("output") for record in steps.values()]
    named += [spec for _, spec, *_ in steps.get("reduce", {}).get("writes", []) if spec != "identity"]
    bad = [p for p in named if not containment.safe_relative(p)]
    for inc in increments:  # increments live at fixed places
        name = str(inc.get("name"))
        expected = {"embeddings": f"increments/{name}/embeddings", "reduced": f"increments/{name}/reduced",
                    "drift_file": f"increments/{name}/drift.json"}
        bad += [inc.get(k) for k, v in expected.items() if not name.isdigit() or inc.get(k) not in (v, None)]
    if bad:
        raise ArtifactError(f"{source} is corrupt: it names {bad[0]!r}, which is not a path inside the work "
                            "directory; nothing was used or deleted")


class RunState:
    """The work directory's ``run_manifest.json``: finished steps and increments."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = files.join(workdir, RUN_MANIFEST)
        self.steps: dict = {}
        self.increments: list[dict] = []
        if files.exists(self.path):
            body = json.loads(files.read_text(self.path))
            self.steps, self.increments = body.get("steps", {}), body.get("increments", [])
            _check_paths(self.path, self.steps, self.increments)

    def abs(self, relative: str) -> str:
        return files.join(self.workdir, relative)

    def is_done(self, step: Step) -> bool:
        """Whether the step's output is the one this run recorded, for the same key.

        An output this run did not write (no record, or another digest: dropped in or replaced by hand) is
        refused, never used nor replaced.
        """
        record = self.steps.get(step.name) or {}
        output = self.abs(step.output)
        if not files.exists(manifests.path(output)):
            return False
        try:
            digest = manifests.identity(output)["digest"]
        except ArtifactError:
            digest = None
        if digest != record.get("digest") and not record.get("running"):
            raise ArtifactError(f"{output} holds an output this run did not write (its digest is not the one "
                                f"{self.path} recorded for step {step.name}); move it away or delete it: run "
                                "neither uses nor replaces it")
        return record.get("key") == manifests.fingerprint(step.key) and not record.get("running")

    def record(self, step: Step, seconds: float, summary: dict) -> None:
        self.steps[step.name] = {"key": manifests.fingerprint(step.key), "output": step.output,
                                 "digest": manifests.identity(self.abs(step.output))["digest"],
                                 "seconds": round(seconds, 2), **summary,
                                 "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.save()

    def save(self) -> None:
        files.write_text(self.path, json.dumps({"steps": self.steps, "increments": self.increments},
                                               indent=2, sort_keys=True))

    def execute(self, step: Step, force: bool = False) -> bool:
        """Run ``step`` unless it is done; True if it ran. Prints one line per step."""
        if self.is_done(step) and not force:  # checked with --force too: a foreign output is never replaced
            log.info("step %-14s up to date, skipped (%s)", step.name, step.output)
            return False
        log.info("step %-14s running -> %s", step.name, step.output)
        self.steps[step.name] = {**self.steps.get(step.name, {}), "running": True}
        self.save()
        start = time.monotonic()
        manifest = step.action() or {}
        seconds = time.monotonic() - start
        summary = {k: manifest[k] for k in ("records", "rows_analyzed", "epochs_run") if k in manifest}
        self.record(step, seconds, summary)
        detail = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in summary.items())
        print(f"  {step.name:<20} {seconds:7.1f} s  {detail:<28} -> {step.output}", flush=True)
        return True
