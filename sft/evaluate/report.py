"""The before/after tables of sft-eval and sft-bench: which models they compare, and the table as markdown."""

from __future__ import annotations

from typing import Any

from sft.run.adapter import AdapterSource

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


def variants(compare_base: bool, source: AdapterSource | None) -> list[tuple[str, AdapterSource | None]]:
    """The models of a before/after table: (column name, adapter or None for the base)."""
    if source is None:
        return [("base", None)]
    return ([("base", None)] if compare_base else []) + [("adapter", source)]
