"""The before/after table of sft-eval, as markdown."""

from __future__ import annotations

from typing import Any

METRICS = ("exact_match", "token_f1", "rouge_l", "loss", "perplexity")


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    head = ["metric", *names] + (["change"] if len(names) == 2 else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for metric in METRICS:
        values = [results[n].get(metric) for n in names]
        if all(v is None for v in values):
            continue
        cells = ["-" if v is None else f"{v:.4f}" for v in values]
        if len(names) == 2:
            cells.append("-" if None in values else f"{values[1] - values[0]:+.4f}")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
