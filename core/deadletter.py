"""Dead-letter records: every input that could not be embedded, with a reason.

Each line of the dead-letter output is a JSON object with ``reason``,
``source`` (file), ``raw`` (the record as text, undecodable bytes shown as
``\\xNN`` escapes, lone surrogates as ``\\uXXXX``) and, where known, ``id``
and ``detail``.
"""
from __future__ import annotations

import json

# Reasons, one per kind of bad input; counters are named dead_letter_<reason>.
EMPTY = "empty"
INVALID_UTF8 = "invalid_utf8"
CONTAINS_NUL = "contains_nul"
TOO_LONG = "too_long"
MISSING_FIELD = "missing_field"
NOT_A_STRING = "not_a_string"
INVALID_JSON = "invalid_json"
UNREADABLE_FILE = "unreadable_file"
TRUNCATED_FILE = "truncated_file"  # a compressed file that ends early: the records before the cut are kept
MALFORMED_CSV = "malformed_csv"  # a CSV record whose quoting never closes (within --max_chars)
INVALID_ID = "invalid_id"  # an --id_field value that is neither a string nor an integer
CONFLICTING_ID = "conflicting_id"
WRONG_DIMENSION = "wrong_dimension"
NON_FINITE = "non_finite"
ENCODER_ERROR = "encoder_error"


def dead_letter(reason: str, source: str, raw: bytes | str | None, *, id_: str | None = None,
                detail: str | None = None) -> str:
    """One dead-letter line (JSON, ASCII-safe)."""
    record = {"reason": reason, "source": source, "raw": printable(raw)}
    if id_ is not None:
        record["id"] = id_
    if detail:
        record["detail"] = detail
    return json.dumps(record, ensure_ascii=True, sort_keys=True)


def printable(raw: bytes | str | None) -> str | None:
    """``raw`` as valid Unicode: invalid UTF-8 bytes (also when surrogate-escaped) as ``\\xNN``."""
    if isinstance(raw, str):
        try:
            raw.encode("utf-8")
            return raw
        except UnicodeEncodeError:
            try:
                raw = raw.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # a lone surrogate that was never a byte (e.g. "\\ud800" in JSON)
                return raw.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="backslashreplace")
    return raw
