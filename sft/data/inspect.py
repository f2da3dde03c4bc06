"""Show what is trained: every token of an example, masked ones dim, trained ones green."""

from __future__ import annotations

import os
import sys
from typing import Any

from sft.data.contamination import contamination_lines
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
    lines += duplicate_lines(report.get("duplicates"))
    lines += contamination_lines(report.get("contamination"))
    sources = report.get("sources", {})
    if len(sources) > 1:
        lines += source_lines(sources, report.get("mix_by", "examples"))
    for problem in report.get("bad_examples", []):
        lines.append(f"skipped: {problem}")
    return lines


def source_lines(sources: dict[str, Any], mix_by: str) -> list[str]:
    """One line per source of a mixture: what was read and kept, what the mixture drew, the share asked and got."""
    lines = [f"mixture by {mix_by}:"]
    for name, r in sources.items():
        m, splits = r["mixture"], r["splits"]
        asked = f"asked {m['share_asked']:.2%}, " if m.get("share_asked") is not None else ""
        lines.append(
            f"  {name} ({r['path']}): read {r['records_read']}, bad {r['bad_records']}, kept "
            f"{splits.get('train', {}).get('kept', 0)} train / {splits.get('eval', {}).get('kept', 0)} eval; drew "
            f"{m['drawn']} ({m['passes']:.2f} passes, {m['tokens']} tokens, {m['trained_tokens']} trained): share "
            f"{asked}got {m['share_of_examples']:.2%} of examples, {m['share_of_tokens']:.2%} of tokens"
            + ("" if r["cache"]["hit"] is False else " [cached]"))
    return lines


def duplicate_lines(duplicates: dict[str, Any] | None) -> list[str]:
    """What sft.data.dedup found, and whether data.dedup removed it, with the first pairs."""
    if not duplicates:
        return []
    removes = {"exact": duplicates["mode"] in ("exact", "near"), "near": duplicates["mode"] == "near"}
    lines = []
    for kind, what in (("exact", "the same text after lower-casing and collapsing whitespace"),
                       ("near", "near-duplicates (MinHash)")):
        found = duplicates.get(kind)
        if found is None:
            continue
        lines.append(f"duplicates, {kind} ({what}): {found['duplicates']} ({found['within_sources']} within a source, "
                     f"{found['across_sources']} across sources): "
                     + ("removed" if removes[kind] else f"kept (data.dedup={kind} removes them)"))
        for pair in found["examples"]:
            a, b = pair["kept"], pair["duplicate"]
            lines.append(f"  {b['source']} {b['split']} record {b['record']} repeats {a['source']} {a['split']} "
                         f"record {a['record']}")
    return lines
