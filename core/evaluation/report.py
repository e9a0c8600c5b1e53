"""Render an evaluation report (dict) as Markdown and PNG figures (headless matplotlib)."""
from __future__ import annotations

import os

from core import files
from core.evaluation import frontier

RAW = "raw"


def _f(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _header(report: dict) -> list[str]:
    lines = ["# Reduction report", "",
             f"Embeddings: `{report['embeddings']}` (encoder `{report['encoder']}`, {report['input_dim']}-d).", ""]
    if report.get("best_reducer"):
        lines += [f"**Best reducer: {report['best_reducer']}** (`{report.get('best_reducer_path')}`; highest mean "
                  "of STS fidelity and label-free nDCG@10).", ""]
    if report.get("chosen"):
        lines += [f"**Chosen representation: {report['chosen']}.**", ""]
    if report.get("same_bytes_line"):
        lines += [report["same_bytes_line"], ""]
    lines += ["| reducer | kind | dims | path |", "|---|---|---|---|"]
    lines += [f"| {n} | {r['kind']} | {r['input_dim']} -> {r['output_dim']} | `{r['path']}` |"
              for n, r in report["reducers"].items()]
    return lines + [""]


def _sts(report: dict) -> list[str]:
    sts = report.get("sts")
    if not sts:
        return []
    lines = [f"## STS benchmark ({sts['split']}, {sts['pairs']} pairs)", "",
             "Fidelity: correlation between raw-512 and stored-vector cosines of the pairs. "
             "Human: correlation of each representation's cosine with the human scores.", "",
             "| representation | fidelity Pearson | fidelity Spearman | human Spearman | human Pearson |",
             "|---|---|---|---|---|"]
    for name, e in sts["representations"].items():
        fid = e["fidelity"]
        lines.append(f"| {name} | {_f(fid['pearson'])} | {_f(fid['spearman'])} "
                     f"| {_f(e['human']['spearman'])} | {_f(e['human']['pearson'])} |")
    return lines + [""]


def _frontier(report: dict) -> list[str]:
    section = report.get("frontier")
    if not section:
        return []
    held = "held-out" if section["held_out"] else "NOT held out (too few validation-split rows)"
    searched = (f"a seeded uniform sample of {section['searched_rows']:,} of the {section['corpus_rows']:,} "
                "corpus vectors searched" if section.get("sampled") else
                f"all {section['corpus_rows']:,} corpus vectors searched")
    lines = [f"## Quality per stored byte ({section['queries']} {held} queries; {searched})", "",
             "The raw-512 exact top-10 of each query is the golden set; stored vectors are decoded, queries are "
             "reduced but not quantized; two-stage rows re-rank the first representation's candidates. recall@10 "
             "± is the 95% confidence half-width over queries.", "",
             "| representation | bytes/vector | MRR@10 | recall@10 | nDCG@10 | STS fidelity | golden nDCG@10 "
             "| code us/vector | search ms/query |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(section["rows"], key=lambda r: (-r["bytes_per_vector"], r["name"])):
        marker = " **(chosen)**" if r["name"] == report.get("chosen") else ""
        lines.append(f"| {r['name']}{marker} | {r.get('bytes_detail', r['bytes_per_vector'])} | {_f(r['mrr@10'], 3)} "
                     f"| {_recall(r)} | {_f(r['ndcg@10'], 3)} | {_f(r.get('sts_fidelity'))} "
                     f"| {_f(r.get('golden_ndcg@10'), 3)} | {_f(r.get('encode_us_per_vector'), 2)} "
                     f"| {_f(r.get('search_ms_per_query'), 2)} |")
    return lines + [""]


def _recall(row: dict) -> str:
    half = row.get("recall@10_ci95")
    return _f(row["recall@10"], 3) + (f" ± {half:.3f}" if half is not None else "")


def _golden(report: dict) -> list[str]:
    golden = report.get("golden_set")
    if not golden:
        return []
    lines = [f"## Labelled retrieval (`{golden['path']}`, {golden['split']}: {golden['queries']} queries, "
             f"{golden['documents']} documents)", "",
             "| representation | MRR@10 | nDCG@10 | nDCG@10 vs raw | MRR@10 within group | nDCG@10 within group |",
             "|---|---|---|---|---|---|"]
    raw_ndcg = golden["representations"][RAW]["global"]["ndcg@10"]
    for name, e in golden["representations"].items():
        g, w = e["global"], e.get("within_group", {})
        rel = g["ndcg@10"] / raw_ndcg - 1 if raw_ndcg else None
        lines.append(f"| {name} | {_f(g['mrr@10'])} | {_f(g['ndcg@10'])} | {'-' if rel is None else f'{rel:+.1%}'} "
                     f"| {_f(w.get('mrr@10'))} | {_f(w.get('ndcg@10'))} |")
    return lines + [""]


def markdown(report: dict) -> str:
    lines = _header(report) + _sts(report) + _frontier(report) + _golden(report)
    if report.get("skipped"):
        lines += ["## Skipped", ""] + [f"- {k}: {v}" for k, v in report["skipped"].items()] + [""]
    if report.get("figures"):
        lines += ["## Figures", ""] + [f"![{os.path.splitext(f)[0]}]({f})" for f in report["figures"]] + [""]
    return "\n".join(lines)


def write_figures(report: dict, cosines: dict | None, reducer_names: list[str], out_dir: str) -> list[str]:
    """STS scatter of raw vs reduced cosines per reducer, and the frontier (recall@10 against bytes)."""
    written = []
    if cosines:
        _save(_scatter(report, cosines, reducer_names), files.join(out_dir, "sts_scatter.png"))
        written.append("sts_scatter.png")
    rows = report.get("frontier", {}).get("rows")
    if rows and report.get("chosen"):
        with files.create(files.join(out_dir, "frontier.png")) as f:
            frontier.plot_frontier(rows, report["chosen"], f)
        written.append("frontier.png")
    return written


def _scatter(report: dict, cosines: dict, names: list[str]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * len(names), 4))
    FigureCanvasAgg(fig)
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        ax.scatter(cosines[RAW], cosines[name], s=4, alpha=0.4)
        lo = float(min(cosines[RAW].min(), cosines[name].min()))
        ax.plot([lo, 1], [lo, 1], color="grey", lw=0.8)
        r = report["sts"]["representations"][name]["fidelity"]["pearson"]
        ax.set(title=f"{name} (Pearson {r:.3f})", xlabel="raw 512-d cosine", ylabel="reduced cosine")
    fig.tight_layout()
    return fig


def _save(fig, path: str) -> None:
    """Write ``fig`` as a PNG through a file object, so ``path`` may be a URL (matplotlib only writes local files)."""
    with files.create(path) as f:
        fig.savefig(f, format="png", dpi=110)
