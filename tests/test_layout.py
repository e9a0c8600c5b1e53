"""The layering the README describes, checked on every import statement (lazy ones included).

Arrows point one way: ``pipelines`` (commands) -> ``transforms`` (Beam) and ``trainer`` (Keras) -> ``core``.
- ``core`` imports nothing of ours but ``core``, and of Beam only its filesystem layer (no pipelines);
- ``transforms`` imports ``core`` and ``transforms``; it holds no argparse and no Keras;
- ``trainer`` imports ``core`` and ``trainer``; it holds no Beam;
- ``pipelines`` holds ``cli.py`` and one module per command; a command imports no other command
  except the orchestrators ``run`` and ``demo`` (and every command may use ``cli``'s shared flags);
- nothing shipped imports ``benchmarks`` or ``tests``, and tests do not import ``benchmarks``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "transforms", "trainer", "pipelines")
COMMANDS = {"pipelines.embed", "pipelines.fit_pca", "pipelines.fit_codec", "pipelines.train", "pipelines.reduce",
            "pipelines.evaluate", "pipelines.search", "pipelines.run", "pipelines.demo", "pipelines.sample_corpus",
            "pipelines.export"}
ORCHESTRATORS = {"pipelines.run", "pipelines.demo"}
ALLOWED = {"core": ("core",), "transforms": ("core", "transforms"), "trainer": ("core", "trainer"),
           "pipelines": PACKAGES}


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


SHIPPED = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_follow_the_layers(path):
    module = _module(path)
    package = module.split(".")[0]
    imported = _imports(path)
    ours = {i for i in imported if i.split(".")[0] in (*PACKAGES, "benchmarks", "tests")}
    assert all(i.split(".")[0] in ALLOWED[package] for i in ours), (module, sorted(ours))
    if package == "core":
        beam = {i for i in imported if i.split(".")[0] == "apache_beam"}
        assert all(i.startswith(("apache_beam.io.filesystem", "apache_beam.io.gcp")) for i in beam), (module, beam)
    if package == "transforms":
        assert not {i for i in imported if i.split(".")[0] in ("argparse", "keras")}, module
    if package == "trainer":
        assert not {i for i in imported if i.split(".")[0] == "apache_beam"}, module
    commands = {i for i in imported if i in COMMANDS}
    if module not in ORCHESTRATORS:
        assert not commands, f"{module} imports commands {commands}"


def test_pipelines_holds_the_cli_and_one_module_per_command():
    top = {f"pipelines.{p.stem}" for p in (REPO / "pipelines").glob("*.py")} - {"pipelines.__init__"}
    assert top == COMMANDS | {"pipelines.cli"}, top
    assert not [p for p in (REPO / "pipelines").iterdir() if p.is_dir() and p.name != "__pycache__"]


def test_tests_do_not_import_benchmarks():
    for path in (REPO / "tests").glob("*.py"):
        assert not {i for i in _imports(path) if i.split(".")[0] == "benchmarks"}, path.name
