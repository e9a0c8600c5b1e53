"""Render an evaluation report (dict) as Markdown and PNG figures (headless matplotlib)."""
from __future__ import annotations

import os

import numpy as np

from pipelines.common import files

RAW = "raw"


def _f(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def markdown(report: dict) -> str:
    lines = ["# Reduction report", "",
             f"Embeddings: `{report['embeddings']}` (encoder `{report['encoder']}`, {report['input_dim']}-d).", ""]
    if report.get("best_reducer"):
        lines += [f"**Best reducer: {report['best_reducer']}** (`{report.get('best_reducer_path')}`; "
                  "highest mean of STS fidelity and corpus nDCG@10)", ""]
    lines += ["| reducer | kind | dims | path |", "|---|---|---|---|"]
    lines += [f"| {n} | {r['kind']} | {r['input_dim']} -> {r['output_dim']} | `{r['path']}` |"
              for n, r in report["reducers"].items()]
    lines.append("")

    sts = report.get("sts")
    if sts:
        lines += [f"## STS benchmark ({sts['split']}, {sts['pairs']} pairs)", "",
                  "Fidelity: correlation between raw-512 and reduced cosine similarities of the pairs. "
                  "Human: correlation of each representation's cosine with the human scores.", "",
                  "| representation | fidelity Pearson | fidelity Spearman | human Spearman | human Pearson |",
                  "|---|---|---|---|---|"]
        for name, e in sts["representations"].items():
            fid = e.get("fidelity", {})
            lines.append(f"| {name} | {_f(fid.get('pearson', 1.0 if name == RAW else None))} "
                         f"| {_f(fid.get('spearman', 1.0 if name == RAW else None))} "
                         f"| {_f(e['human']['spearman'])} | {_f(e['human']['pearson'])} |")
        lines.append("")

    corpus = report.get("corpus_retrieval")
    if corpus:
        held = "held-out" if corpus.get("held_out") else "NOT held out (no validation-split rows in the sample)"
        lines += [f"## Retrieval fidelity, label-free ({corpus['queries']} {held} queries over "
                  f"{corpus['corpus_rows']} corpus vectors)", "",
                  "The raw-512 top-10 of each query is the golden set; exact search, the query excluded.", "",
                  "| reducer | MRR@10 | recall@10 | nDCG@10 |", "|---|---|---|---|"]
        for name, e in corpus["representations"].items():
            lines.append(f"| {name} | {_f(e['mrr@10'])} | {_f(e['recall@10'])} | {_f(e['ndcg@10'])} |")
        lines.append("")

    golden = report.get("golden_set")
    if golden:
        lines += [f"## Labelled retrieval (`{golden['path']}`, {golden['split']}: {golden['queries']} queries, "
                  f"{golden['documents']} documents)", "",
                  "| representation | MRR@10 | nDCG@10 | nDCG@10 vs raw | MRR@10 within group | "
                  "nDCG@10 within group |", "|---|---|---|---|---|---|"]
        raw_ndcg = golden["representations"][RAW]["global"]["ndcg@10"]
        for name, e in golden["representations"].items():
            g, w = e["global"], e.get("within_group", {})
            rel = g["ndcg@10"] / raw_ndcg - 1 if raw_ndcg else None
            lines.append(f"| {name} | {_f(g['mrr@10'])} | {_f(g['ndcg@10'])} | "
                         f"{'-' if rel is None else f'{rel:+.1%}'} | {_f(w.get('mrr@10'))} | "
                         f"{_f(w.get('ndcg@10'))} |")
        lines.append("")

    cost = report.get("cost")
    if cost:
        lines += [f"## Cost ({cost['corpus_vectors']} corpus vectors; query time: exact top-10 over "
                  f"{cost['search_rows']} vectors, {cost['timed_queries']} queries, timed side by side)", "",
                  "| representation | dim | bytes/vector f32 | bytes/vector f16 | corpus f32 | corpus f16 | "
                  "top-10 ms/query |", "|---|---|---|---|---|---|---|"]
        for name, e in cost["representations"].items():
            lines.append(f"| {name} | {e['dim']} | {e['bytes_per_vector_float32']} | {e['bytes_per_vector_float16']} "
                         f"| {_bytes(e['corpus_bytes_float32'])} | {_bytes(e['corpus_bytes_float16'])} "
                         f"| {e['top10_ms_per_query']:.3f} |")
        lines.append("")

    if report.get("skipped"):
        lines += ["## Skipped", ""] + [f"- {k}: {v}" for k, v in report["skipped"].items()] + [""]
    if report.get("figures"):
        lines += ["## Figures", ""] + [f"![{os.path.splitext(f)[0]}]({f})" for f in report["figures"]] + [""]
    return "\n".join(lines)


def write_figures(report: dict, cosines: dict[str, np.ndarray] | None, out_dir: str) -> list[str]:
    """Scatter of raw vs reduced STS cosines per reducer, and a bar chart of the headline metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = list(report["reducers"])
    if cosines:
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4), squeeze=False)
        for ax, name in zip(axes[0], names):
            ax.scatter(cosines[RAW], cosines[name], s=4, alpha=0.4)
            lo = float(min(cosines[RAW].min(), cosines[name].min()))
            ax.plot([lo, 1], [lo, 1], color="grey", lw=0.8)
            r = report["sts"]["representations"][name]["fidelity"]["pearson"]
            ax.set(title=f"{name} (Pearson {r:.3f})", xlabel="raw 512-d cosine", ylabel="reduced cosine")
        _save(fig, files.join(out_dir, "sts_scatter.png"))
        written.append("sts_scatter.png")

    bars: dict[str, list[float]] = {}
    if report.get("sts"):
        bars["STS fidelity (Pearson)"] = [report["sts"]["representations"][n]["fidelity"]["pearson"] for n in names]
    if report.get("corpus_retrieval"):
        reps = report["corpus_retrieval"]["representations"]
        bars["MRR@10 vs raw neighbours"] = [reps[n]["mrr@10"] for n in names]
        bars["nDCG@10 vs raw neighbours"] = [reps[n]["ndcg@10"] for n in names]
    if report.get("golden_set"):
        reps = report["golden_set"]["representations"]
        bars["golden nDCG@10 / raw"] = [reps[n]["global"]["ndcg@10"] / max(reps[RAW]["global"]["ndcg@10"], 1e-12)
                                       for n in names]
    if bars:
        fig, ax = plt.subplots(figsize=(2 + 2.2 * len(bars), 4))
        width = 0.8 / len(names)
        x = np.arange(len(bars))
        for i, name in enumerate(names):
            ax.bar(x + i * width, [v[i] for v in bars.values()], width, label=name)
        ax.set_xticks(x + width * (len(names) - 1) / 2, list(bars), rotation=15, ha="right")
        ax.set_ylim(0, 1.05)
        ax.legend(loc="lower right")
        _save(fig, files.join(out_dir, "metrics.png"))
        written.append("metrics.png")
    return written


def _save(fig, path: str) -> None:
    """Write ``fig`` as a PNG through a file object, so ``path`` may be a URL (matplotlib only writes local files)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with files.create(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
