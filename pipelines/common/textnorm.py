"""Sentence normalization and stable ids.

Normalization (documented in the README):
1. Unicode NFC, so composed and decomposed accents are the same sentence;
2. control characters (Unicode category Cc, e.g. tabs, CR, BEL) become spaces;
3. every run of whitespace (including Unicode spaces) becomes one space, and
   leading/trailing whitespace is removed.
Case and punctuation are kept: the encoder sees them.

The id of a sentence without a user-given id is derived from the normalized
text, so re-runs and incremental runs agree on it.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def text_id(normalized: str) -> str:
    """A stable 128-bit id (hex) of an already normalized sentence."""
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()[:32]
