"""Package for the embedding-reduction pipelines.

Dataflow/Flink workers install the project from this file (``--setup_file
./setup.py``), so every module a job imports lives in these packages.
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


setup(
    name="use-shrink",
    version="0.1.0",
    description="Shrink Universal Sentence Encoder embeddings 512 -> 128 at corpus scale",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["core", "core.*", "pipelines", "pipelines.*", "transforms",
                                    "transforms.*", "trainer", "trainer.*"]),
    install_requires=_requirements(),
    entry_points={"console_scripts": ["shrink=pipelines.cli:main"]},
)
