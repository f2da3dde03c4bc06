"""The data report's distributions, and the inline SVG that draws them (no script, no network: the pages stay
self-contained).

`distributions` counts, per source, the training examples by tokens and by trained tokens (bins of
max_seq_len / 32; an example truncated to max_seq_len lands in the last bin, one dropped for length in none, and
both counts are written beside the bins), the packed rows by how full they are, and is kept in report.json, so
the run's report holds them; `data_plots` draws them for inspect.html and the training run
directory's report.html (sft.data.inspect_html).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

BINS = 32  # length bins up to max_seq_len
FILL_BINS = 20  # packed-row fill bins over [0, 1]
WIDTH, HEIGHT, PAD = 560, 180, 36
COLOURS = ("#1c7ed6", "#2f9e44", "#e8590c", "#ae3ec9", "#f59f00", "#0c8599")


def histogram(values: np.ndarray, edges: np.ndarray) -> list[int]:
    counts, _ = np.histogram(np.minimum(values, edges[-1]), bins=edges)
    return counts.astype(int).tolist()


def distributions(names: list[str], trains: list[Any], reports: list[dict[str, Any]], row_lengths: np.ndarray | None,
                  max_seq_len: int) -> dict[str, Any]:
    edges = np.linspace(0, max_seq_len, BINS + 1)
    out: dict[str, Any] = {"edges": [round(float(e), 2) for e in edges], "max_seq_len": max_seq_len, "sources": {}}
    for name, split, report in zip(names, trains, reports):
        lengths = split.lengths if split is not None else np.zeros(0, np.int32)
        trained = split.trained if split is not None else np.zeros(0, np.int32)
        train = report["splits"].get("train", {})
        out["sources"][name] = {"examples": int(len(lengths)), "tokens": histogram(lengths, edges),
                                "trained": histogram(trained, edges), "truncated": train.get("truncated", 0),
                                "dropped": sum(train.get("dropped", {}).values())}
    if row_lengths is not None:
        fill_edges = np.linspace(0.0, 1.0, FILL_BINS + 1)
        out["fill"] = {"edges": [round(float(e), 3) for e in fill_edges], "rows": int(len(row_lengths)),
                       "counts": histogram(row_lengths / max_seq_len, fill_edges)}
    return out


def row_lengths(path: Path) -> np.ndarray:
    """Tokens per row of a rows file, from its list offsets alone (the tokens are not read)."""
    import datasets
    import pyarrow.compute as pc

    column = datasets.Dataset.from_file(str(path)).data.column("input_ids")
    return np.concatenate([pc.list_value_length(c).to_numpy() for c in column.chunks] or [np.zeros(0, np.int32)])


def bar_chart(name: str, title: str, edges: list[float], series: dict[str, list[int]], xlabel: str,
              notes: list[str]) -> str:
    """Bars of one or more series over the same bins (side by side within a bin), the x axis's ends and middle
    labelled, each bar's range and count in its tooltip."""
    top = max((max(c) for c in series.values() if c), default=0) or 1
    bins, k = len(edges) - 1, max(len(series), 1)
    step = (WIDTH - 2 * PAD) / max(bins, 1)
    parts = [f'<text x="{PAD}" y="14" class="plot-title">{html.escape(title)}</text>']
    for s, (label, counts) in enumerate(series.items()):
        colour = COLOURS[s % len(COLOURS)]
        for i, count in enumerate(counts):
            h = (HEIGHT - 2 * PAD) * count / top
            x = PAD + i * step + s * step / k
            tip = f"{label}: {count} in [{edges[i]:g}, {edges[i + 1]:g})"
            parts.append(f'<rect class="bar" data-series="{html.escape(label)}" data-count="{count}" x="{x:.1f}" '
                         f'y="{HEIGHT - PAD - h:.1f}" width="{max(step / k - 1, 0.5):.1f}" height="{h:.1f}" '
                         f'fill="{colour}"><title>{html.escape(tip)}</title></rect>')
        parts.append(f'<text x="{WIDTH - PAD}" y="{14 + 12 * (s + 1)}" text-anchor="end" fill="{colour}" '
                     f'class="legend">{html.escape(label)}</text>')
    axis = HEIGHT - PAD
    parts.append(f'<line x1="{PAD}" y1="{axis}" x2="{WIDTH - PAD}" y2="{axis}" stroke="#888"/>')
    for value, x in ((edges[0], PAD), (edges[bins // 2], PAD + bins // 2 * step), (edges[-1], WIDTH - PAD)):
        parts.append(f'<text x="{x:.1f}" y="{axis + 13}" text-anchor="middle" class="tick">{value:g}</text>')
    parts.append(f'<text x="{PAD}" y="{axis - (HEIGHT - 2 * PAD) - 3}" class="tick">{top}</text>')
    parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 4}" text-anchor="middle" class="tick">{html.escape(xlabel)}</text>')
    note = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (f'<figure class="plot" data-plot="{html.escape(name)}"><svg xmlns="http://www.w3.org/2000/svg" '
            f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'aria-label="{html.escape(title)}">{"".join(parts)}</svg>'
            f'{f"<ul class=notes>{note}</ul>" if note else ""}</figure>')


def share_chart(mixture: dict[str, dict[str, Any]]) -> str:
    """One row per source: its share of the examples and of the tokens drawn (and the share asked, when weighted)."""
    rows, y = [], 24
    width = WIDTH - 2 * PAD - 120
    for name, m in mixture.items():
        for s, (label, key) in enumerate((("examples", "share_of_examples"), ("tokens", "share_of_tokens"),
                                          ("asked", "share_asked"))):
            value = m.get(key)
            if value is None:
                continue
            rows.append(f'<text x="{PAD}" y="{y + 9}" class="tick">{html.escape(name)} {label}</text>'
                        f'<rect class="share" data-source="{html.escape(name)}" data-kind="{label}" '
                        f'data-share="{value:.6f}" x="{PAD + 120}" y="{y}" width="{width * value:.1f}" height="10" '
                        f'fill="{COLOURS[s]}"><title>{html.escape(name)}: {value:.2%} of {label}</title></rect>'
                        f'<text x="{PAD + 124 + width * value:.1f}" y="{y + 9}" class="tick">{value:.1%}</text>')
            y += 14
        y += 6
    return (f'<figure class="plot" data-plot="mixture"><svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
            f'height="{y + 4}" viewBox="0 0 {WIDTH} {y + 4}" role="img" aria-label="mixture shares">'
            f'<text x="{PAD}" y="14" class="plot-title">mixture: each source\'s share</text>{"".join(rows)}</svg></figure>')


def data_plots(report: dict[str, Any]) -> str:
    """Every plot of the report's distributions, as HTML (empty when the report has none)."""
    dist = report.get("distributions")
    if not dist:
        return ""
    figures = []
    for name, d in dist["sources"].items():
        notes = [f"{d['truncated']} truncated to {dist['max_seq_len']} tokens (in the last bin)",
                 f"{d['dropped']} dropped (too long, or their text did not survive tokenization)"]
        figures.append(bar_chart(f"lengths-{name}", f"{name}: tokens per training example ({d['examples']} examples)",
                                 dist["edges"], {"tokens": d["tokens"], "trained tokens": d["trained"]},
                                 "tokens per example", notes))
    if "fill" in dist:
        f = dist["fill"]
        figures.append(bar_chart("fill", f"packed rows by fill ({f['rows']} rows of {dist['max_seq_len']} tokens)",
                                 f["edges"], {"rows": f["counts"]}, "share of the row holding tokens", []))
    mixture = {n: s["mixture"] for n, s in report.get("sources", {}).items() if "mixture" in s}
    if mixture:
        figures.append(share_chart(mixture))
    return '<section class="plots"><h2>the data</h2>' + "".join(figures) + "</section>"


STYLE = """
figure.plot { margin: 1em 0; } .plot-title { font: bold 12px system-ui, sans-serif; }
.tick, .legend { font: 10px system-ui, sans-serif; fill: #444; } ul.notes { margin: 0; color: #666; font-size: 12px; }
"""
