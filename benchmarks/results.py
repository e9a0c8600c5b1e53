"""The one way benchmark scripts update benchmarks/RESULTS.md: replace or append their own section.

A section is the line ``## {title}`` and everything up to the next line that
starts with ``## `` (or the end of the file). Re-running a script replaces its
section in place instead of appending a copy; other sections are untouched.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import socket
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """'Machine: <date UTC>, <host>, <CPU model>, <n> cores, Python <version>' for a section header."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Machine: {now}, {socket.gethostname()}, {_cpu_model()}, {cores} cores, "
            f"Python {platform.python_version()}")


def write_section(title: str, body: str, path: Path | str = RESULTS) -> None:
    """Replace the section ``## {title}`` of ``path`` with ``body`` (append the section if absent)."""
    if "\n" in title or not title.strip():
        raise ValueError(f"a section title is one non-empty line, got {title!r}")
    path = Path(path)
    heading = f"## {title}"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    section = [heading, "", *body.strip("\n").splitlines(), ""]
    try:
        start = lines.index(heading)
    except ValueError:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ([""] if lines else []) + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = section
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")
    os.replace(tmp, path)
