"""The layering the README describes, checked on every import statement (lazy ones included).

- ``pipelines/common`` and ``pipelines/evaluation`` import neither ``transforms`` nor ``trainer``;
- ``transforms`` and ``trainer`` import only ``pipelines.common`` and ``pipelines.evaluation``;
- job modules (``pipelines/<job>.py``, ``trainer/task.py``) are imported by no library module, and
  among jobs only the orchestrators ``run`` and ``demo`` import other jobs;
- nothing shipped imports ``benchmarks`` or ``tests``; ``pipelines/`` holds only job modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
JOBS = {"pipelines.cli", "pipelines.embed", "pipelines.fit_pca", "pipelines.fit_codec", "pipelines.reduce",
        "pipelines.evaluate", "pipelines.search", "pipelines.run", "pipelines.demo", "pipelines.sample_corpus",
        "trainer.task"}
ORCHESTRATORS = {"pipelines.run", "pipelines.demo"}


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module name an import statement in ``path`` names (``from a import b`` gives a and a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _ours(name: str) -> bool:
    return name.split(".")[0] in ("pipelines", "transforms", "trainer", "benchmarks", "tests")


SHIPPED = sorted(p for pkg in ("pipelines", "transforms", "trainer") for p in (REPO / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_follow_the_layers(path):
    module = _module(path)
    imported = {i for i in _imports(path) if _ours(i)}
    assert not {i for i in imported if i.split(".")[0] in ("benchmarks", "tests")}, module
    jobs = {i for i in imported if i in JOBS}
    if module.startswith(("pipelines.common", "pipelines.evaluation")):
        assert not {i for i in imported if i.split(".")[0] in ("transforms", "trainer")}, module
    if module.startswith(("transforms", "trainer")) and module != "trainer.task":
        assert all(i.startswith(("pipelines.common", "pipelines.evaluation", module.split(".")[0]))
                   for i in imported), (module, imported)
    if module in ORCHESTRATORS:
        return
    assert not jobs - {"pipelines.cli"} or module not in JOBS, f"{module} imports jobs {jobs}"
    if module not in JOBS:
        assert not jobs, f"library module {module} imports jobs {jobs}"


def test_pipelines_holds_only_job_modules():
    top = {p.stem for p in (REPO / "pipelines").glob("*.py")} - {"__init__"}
    assert {f"pipelines.{name}" for name in top} <= JOBS, top
    assert {p.name for p in (REPO / "pipelines").iterdir() if p.is_dir() and p.name != "__pycache__"} == \
        {"common", "evaluation"}
