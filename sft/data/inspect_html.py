"""inspect.html: the first rows of prepared data token by token, as one self-contained page (no network).

Each token is a box: trained tokens (labels kept) green, masked ones grey, end-of-turn tokens outlined, and a
packed row's example boundaries marked; hovering a token shows its id, its label and its position. Above the rows, the report's distributions drawn as
inline SVG (sft.data.plots): lengths per source, packed rows' fill, the mixture's shares.
"""

from __future__ import annotations

import html
import json
from typing import Any

from sft.data.plots import STYLE as PLOT_STYLE, data_plots
from sft.data.tokenize import IGNORE_INDEX

STYLE = """
body { font: 14px/1.5 system-ui, sans-serif; margin: 2em; color: #222; }
.row { border: 1px solid #ddd; border-radius: 6px; padding: 0.5em 1em; margin: 1em 0; }
.tokens { font: 13px/2 ui-monospace, monospace; white-space: pre-wrap; word-break: break-all; }
.t { border-radius: 3px; padding: 1px 0; }
.t.masked { background: #eee; color: #777; }
.t.trained { background: #c8f7c5; color: #0b3d0b; }
.t.eot { outline: 2px solid #d9480f; }
.t.start { border-left: 3px solid #1c7ed6; margin-left: 2px; }
.legend span { margin-right: 1em; } .meta { color: #666; font-size: 12px; }
"""


def token_spans(input_ids: list[int], labels: list[int], position_ids: list[int] | None, tokenizer: Any,
                end_of_turn_id: int | None) -> str:
    pieces = tokenizer.convert_ids_to_tokens(list(input_ids))
    texts = [tokenizer.convert_tokens_to_string([p]) if p is not None else "" for p in pieces]
    out = []
    for k, (tok, label, text) in enumerate(zip(input_ids, labels, texts)):
        classes = ["t", "masked" if label == IGNORE_INDEX else "trained"]
        if tok == end_of_turn_id:
            classes.append("eot")
        if position_ids is not None and k and position_ids[k] == 0:
            classes.append("start")
        shown = html.escape(text).replace("\n", "\u21b5\n") or "\u2205"
        hover = f"id {tok}, label {label if label != IGNORE_INDEX else 'masked'}, position {k}"
        out.append(f'<span class="{" ".join(classes)}" data-id="{tok}" title="{hover}">{shown}</span>')
    return "".join(out)


def inspect_page(rows: list[dict[str, Any]], tokenizer: Any, end_of_turn: str, report: dict[str, Any]) -> str:
    eot_id = tokenizer.convert_tokens_to_ids(end_of_turn) if end_of_turn else None
    sections = []
    for i, row in enumerate(rows):
        labels = row["labels"]
        trained = sum(label != IGNORE_INDEX for label in labels)
        spans = token_spans(row["input_ids"], labels, row.get("position_ids"), tokenizer, eot_id)
        sections.append(f'<section class="row"><h3>train row {i}</h3><p class="meta">{len(labels)} tokens, {trained} '
                        f'trained</p><div class="tokens">{spans}</div></section>')
    about = {k: report.get(k) for k in ("source", "template", "records_read", "bad_records")}
    legend = ('<p class="legend"><span class="t trained">trained</span><span class="t masked">masked</span>'
              f'<span class="t eot">end of turn {html.escape(end_of_turn)}</span><span class="t start">example '
              'start (packed)</span> hover a token for its id</p>')
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>sft-prepare: inspect</title>"
            f"<style>{STYLE}{PLOT_STYLE}</style></head><body><h1>sft-prepare: the first {len(rows)} training rows</h1>"
            f'<pre class="meta">{html.escape(json.dumps(about, indent=1, default=str))}</pre>{data_plots(report)}'
            f"<h2>the rows</h2>{legend}{''.join(sections)}</body></html>\n")


def report_page(report: dict[str, Any], title: str) -> str:
    """The training run directory's report.html: the data report's summary (what sft-prepare prints) and its plots."""
    from sft.data.inspect import summary_lines

    summary = html.escape("\n".join(summary_lines(report)))
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}{PLOT_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<pre class="meta">{summary}</pre>{data_plots(report)}</body></html>\n')
