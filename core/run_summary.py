"""What ``shrink run`` tells its user at the end: where the reduced corpus is, in what, and what ran."""
from __future__ import annotations

import json

from core import files, manifests
from core.dataset import EmbeddingDataset


def summarize(workdir: str, datasets: list[str], reduced: list[str], writes: list[tuple[str, str, str]],
              ran: list[str], increments: list[dict], new: int | None = None) -> tuple[dict, list[str]]:
    """(summary dict, lines to print) of a finished run; paths are relative to ``workdir``."""
    path = lambda *parts: files.join(workdir, *parts)  # noqa: E731
    totals = [EmbeddingDataset.open(path(d)).records for d in datasets]
    written = manifests.read(path(reduced[0]), "reduced", verify="none")
    stored = written["representation"]
    summary = {"workdir": workdir, "steps_run": ran, "reducer": writes[0][1], "reduced": [path(r) for r in reduced],
               "representation": stored, "vectors": sum(totals), "report": path("report", "report.md"),
               "increments": increments}
    lines = [f"\nreduced corpus ({written.get('format', 'tfrecord')}, {stored['name']}, "
             f"{stored['bytes_per_vector']} bytes/vector): {', '.join(summary['reduced'])}",
             f"vectors: {sum(totals)} (first run {totals[0]}"
             + "".join(f", increment {i['name']} {t}" for i, t in zip(increments, totals[1:])) + ")",
             f"written with: {writes[0][1]}" + (f" (re-ranked with {writes[1][1]})" if len(writes) > 1 else ""),
             f"report: {summary['report']}",
             f"steps run this time: {', '.join(ran) or 'none (all up to date)'}"]
    same_bytes = json.loads(files.read_text(path("report", "report.json"))).get("same_bytes_line")
    if same_bytes:
        lines.insert(3, same_bytes)
    if new is not None:
        summary["new_vectors"] = new
        lines.append(f"new sentences this time: {new}" + (_drift_line(increments[-1]) if new else ""))
    return summary, lines


def _drift_line(inc: dict) -> str:
    d = inc.get("drift")
    if not d:
        return ""
    return (f"; drift: {'YES' if d['drift'] else 'no'} (pair fidelity {d['fidelity_new']:.4f} on new data vs "
            f"{d['fidelity_reference']:.4f}){'; reducers refitted' if inc['refit'] else ''}")
