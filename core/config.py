"""Typed job configs: each job's flags parse into one frozen dataclass that ``run(config, options)`` takes.

``shrink run`` builds these configs directly instead of rebuilding command
lines, and a config's ``params()`` (the fields that decide the output) is
both the output's fingerprint and ``run``'s step key.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import TypeVar

C = TypeVar("C")


def from_namespace(cls: type[C], namespace: argparse.Namespace) -> C:
    """The ``cls`` config holding the parsed flags of the same names (lists become tuples)."""
    values = {}
    for field in dataclasses.fields(cls):
        if hasattr(namespace, field.name):
            value = getattr(namespace, field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def params(config, exclude: tuple[str, ...] = ()) -> dict:
    """The config's fields as plain values, without those that do not change the output."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()
            if k not in exclude}
