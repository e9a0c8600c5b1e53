"""Sentence normalization and stable ids.

Normalization (documented in the README):
1. Unicode NFC, so composed and decomposed accents are the same sentence;
2. control characters (Unicode category Cc, e.g. tabs, CR, BEL) become spaces;
3. every run of whitespace (including Unicode spaces) becomes one space, and
   leading/trailing whitespace is removed;
4. a text made only of format characters (Unicode category Cf: zero-width
   spaces and joiners, bidi controls, BOMs) and spaces is empty. Cf characters
   inside other text are kept: a ZWJ in an emoji or a ZWNJ in Persian matters.
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
    if text.isascii() and text.isprintable():  # most text: its only whitespace is " ", NFC changes nothing
        return " ".join(text.split())
    return _normalize_any(text)


def _normalize_any(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    return "" if only_format_characters(text) else text


def only_format_characters(text: str) -> bool:
    """True if ``text`` holds nothing visible: only spaces and Cf characters (or nothing)."""
    return all(ch == " " or unicodedata.category(ch) == "Cf" for ch in text)


def text_id(normalized: str) -> str:
    """A stable 128-bit id (hex) of an already normalized sentence."""
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()[:32]
