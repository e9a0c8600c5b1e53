"""Errors a user can act on. The CLI prints them as one line (full trace with SHRINK_DEBUG=1).

Raised inside a Beam DoFn they reach the launcher wrapped in the runner's own
exception (sometimes only as text, from another process); the CLI finds the
``<ClassName>: <message>`` of the first one of these in that text.
"""
from __future__ import annotations


class ShrinkError(Exception):
    """Base class: the message names the file or flag at fault and says what to do."""


class ArtifactError(ShrinkError):
    """An input artifact or output location cannot be used; the message says why."""


class InputError(ShrinkError):
    """Input data or flags are unusable (a missing column, a truncated file, a bad value)."""


class DataError(ShrinkError):
    """A dataset does not match its manifest (missing, damaged or extra records)."""


NAMES = tuple(cls.__name__ for cls in (ShrinkError, ArtifactError, InputError, DataError))
