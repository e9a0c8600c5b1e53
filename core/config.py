"""Typed job configs, and their flags declared once, on the config's fields.

Each job's settings are one frozen dataclass that ``run(config, options)``
takes. A field declared with ``option(default, help, ...)`` is a command-line
flag; ``add_flags`` turns the fields into argparse options, so a job, and
``shrink run`` for every step (``--embed.max_batch_size``), read the same
declaration. Every flag is spelled ``--a_b`` in help and also accepted as
``--a-b``; booleans take ``--x`` / ``--no_x`` (or ``--no-x``). A config's
``params()`` (the fields that decide the output) is both the output's
fingerprint and ``run``'s step key.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

C = TypeVar("C")


def option(default: Any = dataclasses.MISSING, help: str = "", **flag: Any) -> Any:  # noqa: A002 - argparse's name
    """A config field that is also a flag: its help and argparse settings (``choices``, ``type``, ``metavar``)."""
    return dataclasses.field(default=default, metadata={"help": help, **flag})


class _Bool(argparse.Action):
    """``--x`` sets True, ``--no_x`` / ``--no-x`` False (``--step.no_x`` for a step's flag)."""

    def __init__(self, option_strings, dest, negatives=(), **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)
        self.negatives = set(negatives)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, option_string not in self.negatives)


def _negatives(dest: str) -> list[str]:
    """``--no_x`` first (as help shows it), then the other accepted spellings."""
    prefix, _, name = dest.rpartition(".")
    prefix = prefix + "." if prefix else ""
    return list(dict.fromkeys([f"--{prefix}no_{name}", f"--{prefix}no-{name.replace('_', '-')}",
                               f"--{prefix}no-{name}"]))


def _spellings(name: str) -> tuple[str, list[str]]:
    """The flag as help shows it, and its other accepted spellings."""
    dashed = name.replace("_", "-")
    return f"--{name}", [f"--{dashed}"] if dashed != name else []


def _kind(hint) -> tuple[type, bool]:
    """(element type, repeatable) of a field's type hint: ``int | None`` -> int, ``tuple[str, ...]`` -> (str, True)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True
    return hint, False


def add_flags(parser, cls: type, prefix: str = "", only: tuple[str, ...] | None = None,
              skip: tuple[str, ...] = (), keep_defaults: bool = True) -> list[str]:
    """Add a flag for every ``option`` field of ``cls``; returns the dests added (``prefix`` + field name).

    With ``keep_defaults=False`` an absent flag leaves nothing in the namespace (``run``'s step overrides).
    """
    hints = typing.get_type_hints(cls)
    dests = []
    fields = sorted(dataclasses.fields(cls), key=lambda f: f.name not in required(cls))  # what must be given first
    for field in fields:
        if "help" not in field.metadata or field.name in skip or (only is not None and field.name not in only):
            continue
        dest = prefix + field.name
        flag, others = _spellings(dest)
        kind, repeated = _kind(hints[field.name])
        settings = {k: v for k, v in field.metadata.items() if k != "help"}
        default = field.default if field.default is not dataclasses.MISSING else None
        kwargs = {"dest": dest, "default": default if keep_defaults else argparse.SUPPRESS,
                  "help": field.metadata["help"]}
        if kind is bool:
            negative = _negatives(dest)
            parser.add_argument(flag, negative[0], action=_Bool, negatives=negative, **kwargs)
            parser.add_argument(*others, *negative[1:], action=_Bool, negatives=negative,
                                **{**kwargs, "help": argparse.SUPPRESS})
        else:
            kwargs.update(type=settings.pop("type", kind), **settings)
            if repeated and "type" not in field.metadata:
                kwargs["action"] = "append"
                kwargs["default"] = argparse.SUPPRESS if not keep_defaults else None
            parser.add_argument(flag, **kwargs)
            if others:
                parser.add_argument(*others, **{**kwargs, "help": argparse.SUPPRESS})
        dests.append(dest)
    return dests


def required(cls: type) -> list[str]:
    """The fields of ``cls`` without a default: flags a command line must give."""
    return [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING and "help" in f.metadata]


def from_namespace(cls: type[C], namespace: argparse.Namespace, prefix: str = "", parser=None) -> C:
    """The ``cls`` config holding the parsed flags (lists become tuples; ``None`` repeatables become ``()``)."""
    values = {}
    for field in dataclasses.fields(cls):
        value = getattr(namespace, prefix + field.name, dataclasses.MISSING)
        if value is dataclasses.MISSING:
            continue
        if value is None and field.default == ():
            value = ()
        values[field.name] = tuple(value) if isinstance(value, list) else value
    missing = [f"--{prefix}{name}" for name in required(cls) if values.get(name) in (None, ())]
    if missing and parser is not None:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    return cls(**values)


def overrides(namespace: argparse.Namespace, prefix: str) -> dict:
    """The ``prefix``-ed flags a command line gave, as ``{field: value}`` (lists become tuples)."""
    return {k[len(prefix):]: tuple(v) if isinstance(v, list) else v for k, v in vars(namespace).items()
            if k.startswith(prefix)}


def params(config, exclude: tuple[str, ...] = ()) -> dict:
    """The config's fields as plain values, without those that do not change the output."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()
            if k not in exclude}
