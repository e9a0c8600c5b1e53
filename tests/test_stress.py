"""Stress: 100,000 lines mixing valid sentences with every kind of bad input (slow; `make test-slow`)."""
from __future__ import annotations

import json
import random

import pytest

from pipelines import embed, sample_corpus
from tests.hub_models import save_text_encoder

BAD = {
    "invalid_utf8": lambda i: b"\xff\xfe\xfa broken " + str(i).encode(),
    "empty": lambda i: b" \t " if i % 2 else b"",
    "too_long": lambda i: b"x" * (1 << 20),  # 1 MB line
    "contains_nul": lambda i: b"nul\x00byte " + str(i).encode(),
}
GOOD_ODD = [  # valid, if unusual: control characters, other scripts, emoji
    "Bell\x07and\x1bescape {i}", "\u65e5\u672c\u8a9e\u306e\u6587 {i}", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 {i}",
    "\u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442 {i}", "Emoji \U0001F680 {i}",
]


@pytest.mark.slow
def test_100k_mixed_lines_are_all_accounted_for(tmp_path):
    rng = random.Random(0)
    good = sample_corpus.generate(60_000, seed=11)
    lines, expected_bad = [], {k: 0 for k in BAD}
    for i in range(100_000):
        r = rng.random()
        if r < 0.6:
            lines.append(good[rng.randrange(len(good))].encode())  # duplicates included
        elif r < 0.8:
            lines.append(rng.choice(GOOD_ODD).format(i=i).encode())
        else:
            kind = rng.choice(sorted(BAD))
            if kind == "too_long" and expected_bad[kind] >= 20:  # 20 one-megabyte lines are plenty
                kind = "empty"
            expected_bad[kind] += 1
            lines.append(BAD[kind](i))
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    hub = save_text_encoder(str(tmp_path / "hub"), 512)
    manifest = embed.main(["--input", str(path), "--output", str(tmp_path / "out"), "--encoder", f"tfhub:{hub}"])
    c = manifest["counts"]
    assert c["read"] == 100_000
    assert c["read"] == c["embedded"] + c["duplicate"] + c["dead_letter"]
    for kind, n in expected_bad.items():
        assert c.get(f"dead_letter_{kind}", 0) == n, kind
    dead = [json.loads(l) for f in (tmp_path / "out" / "deadletter").glob("*.jsonl")
            for l in f.read_text().splitlines()]
    assert len(dead) == c["dead_letter"]
