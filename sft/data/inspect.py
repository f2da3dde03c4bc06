"""Show what is trained: every token of an example, masked ones dim, trained ones green."""

from __future__ import annotations

import os
import sys
from typing import Any

from sft.data.tokenize import IGNORE_INDEX

DIM, GREEN, RESET = "\033[2m", "\033[32m", "\033[0m"


def render_example(input_ids: list[int], labels: list[int], tokenizer: Any, color: bool | None = None) -> str:
    """Tokens joined as text; without colour (NO_COLOR, or not a terminal) trained runs are wrapped in [[ ]]."""
    if color is None:
        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    parts = []
    for tok, label in zip(input_ids, labels):
        text = tokenizer.decode([tok]).replace("\n", "\\n\n")
        trained = label != IGNORE_INDEX
        if color:
            parts.append(f"{GREEN if trained else DIM}{text}{RESET}")
        else:
            parts.append(f"[[{text}]]" if trained else text)
    return "".join(parts)


def summary_lines(report: dict[str, Any]) -> list[str]:
    template = report.get("template_details", {})
    named = f"{report['template']} (end of turn {template.get('end_of_turn')!r}" + (
        f", chat template {template['chat_template_sha256']})" if "chat_template_sha256" in template else ")")
    lines = [f"records read: {report['records_read']}  bad: {report['bad_records']}  template: {named}"]
    for name, s in report["splits"].items():
        dropped = ", ".join(f"{k}={v}" for k, v in s["dropped"].items()) or "none"
        parts = ", ".join(f"{k} {v}" for k, v in s.get("trained_tokens_by_part", {}).items())
        turns = ", ".join(f"{k}: {v}" for k, v in s.get("turns_trained", {}).items())
        lines.append(
            f"{name}: kept {s['kept']}/{s['examples']} (dropped: {dropped}; truncated {s['truncated']}), "
            f"tokens {s['total_tokens']} of which trained {s['trained_tokens']} ({parts}); "
            f"examples by trained turns {{{turns}}}"
        )
        lines.append(
            f"{name} checks: end of turn trained in every example: {'yes' if s['eos_trained']['ok'] else 'NO'}; "
            f"double BOS: {s.get('double_bos', 0)}; rows matching their text: "
            f"{s['kept'] + s.get('dropped', {}).get('render_mismatch', 0) - s.get('render_mismatches', 0)}"
            f"/{s['kept'] + s.get('dropped', {}).get('render_mismatch', 0)}; "
            f"prompt/answer boundaries that one-string tokenization would merge (kept exact): {s['boundary_mismatches']}"
        )
        if "packing" in s:
            p = s["packing"]
            lines.append(
                f"{name} packing: {p['rows']} rows (lower bound {p['lower_bound_rows']}), "
                f"efficiency {p['efficiency']:.2%}"
            )
    for problem in report.get("bad_examples", []):
        lines.append(f"skipped: {problem}")
    return lines
