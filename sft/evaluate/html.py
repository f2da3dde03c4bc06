"""eval.html: sft-eval's report as one self-contained page (no network, no external script or style).

The before/after table (and one per source of a mixture, and one by prompt length), then every example: prompt, reference, each model's output with a character-level diff
against the reference (deleted reference text struck through, inserted text underlined), the example's own
metrics and finish reason. A checkbox keeps only the examples where the adapter got worse than the base.
"""

from __future__ import annotations

import difflib
import html
import json
from typing import Any

import numpy as np

from sft.evaluate.metrics import RougeL, exact_match, token_f1
from sft.evaluate.report import METRICS

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.better { color: #067d17; } .worse-cell { color: #b00020; }
section.example { border: 1px solid #ddd; border-radius: 6px; padding: 0.5em 1em; margin: 1em 0; }
section.example.worse { border-left: 6px solid #b00020; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f6f6; padding: 6px; margin: 4px 0; }
del { background: #ffd7d5; text-decoration: line-through; } ins { background: #ccffd8; text-decoration: underline; }
.meta { color: #666; font-size: 12px; }
"""

SCRIPT = """
(function () {
  var box = document.getElementById('only-worse');
  var shown = document.getElementById('shown');
  var all = document.querySelectorAll('section.example');
  function update() {
    var n = 0;
    all.forEach(function (s) {
      var show = !box || !box.checked || s.classList.contains('worse');
      s.style.display = show ? '' : 'none';
      n += show ? 1 : 0;
    });
    shown.textContent = n + ' of ' + all.length + ' examples shown';
  }
  if (box) { box.addEventListener('change', update); }
  update();
})();
"""


def char_diff(reference: str, output: str) -> str:
    """The output against the reference, as HTML: <del> for reference text the output lacks, <ins> for text it adds."""
    parts = []
    matcher = difflib.SequenceMatcher(None, reference, output, autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            parts.append(html.escape(output[b0:b1]))
            continue
        if a1 > a0:
            parts.append(f"<del>{html.escape(reference[a0:a1])}</del>")
        if b1 > b0:
            parts.append(f"<ins>{html.escape(output[b0:b1])}</ins>")
    return "".join(parts)


def example_scores(output: str, reference: str | None, rouge: RougeL) -> dict[str, float | None]:
    if reference is None:
        return {"exact_match": None, "token_f1": None, "rouge_l": None}
    return {"exact_match": exact_match(output, reference), "token_f1": token_f1(output, reference),
            "rouge_l": rouge(output, reference)}


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def metrics_table(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names) + ("<th>change</th>" if len(names) == 2 else "")
    rows = []
    for metric in METRICS:
        values = [results[n].get(metric) for n in names]
        if all(v is None for v in values):
            continue
        cells = "".join(f'<td class="num">{_fmt(v)}</td>' for v in values)
        if len(names) == 2:
            change = None if None in values else values[1] - values[0]
            better = change is not None and (change < 0 if metric in ("loss", "perplexity") else change > 0)
            cls = "" if not change else ("better" if better else "worse-cell")
            cells += f'<td class="num {cls}">{"-" if change is None else f"{change:+.4f}"}</td>'
        rows.append(f'<tr class="metric"><td>{metric}</td>{cells}</tr>')
    return f'<table id="metrics"><tr><th>metric</th>{head}</tr>{"".join(rows)}</table>'


BUCKETS = 4  # length buckets: the quartiles of the prompts' lengths


def length_buckets(generated: dict[str, list[dict[str, Any]]]) -> str:
    """Exact match, token F1 and ROUGE-L of each model over the examples bucketed by their prompt's length in words
    (the quartiles of the last model's prompts), as one table: where the adapter helps, short or long prompts."""
    names = list(generated)
    rows = [r for r in generated[names[-1]] if r.get("reference") is not None] if names else []
    if len(rows) < BUCKETS:
        return ""
    words = {key(r): len(r["prompt"].split()) for r in rows}
    edges = sorted(set(int(x) for x in np.quantile(list(words.values()), np.linspace(0, 1, BUCKETS + 1))))
    edges = edges if len(edges) > 1 else edges * 2  # every prompt as long: one bucket
    rouge, metrics = RougeL(), ("exact_match", "token_f1", "rouge_l")
    head = "".join(f"<th>{html.escape(n)} {m}</th>" for n in names for m in metrics)
    lines = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        last = hi == edges[-1]
        keys = {k for k, w in words.items() if lo <= w < hi or (last and w == hi)}
        cells = []
        for n in names:
            scored = [example_scores(r["output"], r["reference"], rouge) for r in generated[n] if key(r) in keys]
            cells += [f'<td class="num">{_fmt(float(np.mean([s[m] for s in scored])) if scored else None)}</td>' for m in metrics]
        lines.append(f'<tr class="bucket"><td>{lo}-{hi}</td><td class="num">{len(keys)}</td>{"".join(cells)}</tr>')
    return (f'<h3>by prompt length (words)</h3><table id="length-buckets"><tr><th>prompt words</th><th>examples</th>'
            f'{head}</tr>{"".join(lines)}</table>')


def key(row: dict[str, Any]) -> tuple:
    return row.get("source"), row["id"], row["sample"]


def examples_html(generated: dict[str, list[dict[str, Any]]]) -> tuple[str, int]:
    """Every example with each model's output; (html, how many the adapter made worse by token F1)."""
    names = list(generated)
    by_key = {n: {key(r): r for r in rows} for n, rows in generated.items()}
    rouge = RougeL()
    sections, worse_count = [], 0
    for row in generated[names[-1]] if names else []:
        reference = row.get("reference")
        outputs = {n: by_key[n].get(key(row)) for n in names}
        scores = {n: example_scores(r["output"], reference, rouge) for n, r in outputs.items() if r is not None}
        worse = (len(names) == 2 and all(n in scores for n in names) and scores[names[1]]["token_f1"] is not None
                 and scores[names[1]]["token_f1"] < scores[names[0]]["token_f1"])
        worse_count += worse
        title = f"record {row['id']}" + (f" of {row['source']}" if row.get("source") else "") + (
            f", sample {row['sample']}" if row["sample"] else "")
        body = [f"<h3>{html.escape(title)}</h3>", f"<div>prompt</div><pre class=\"prompt\">{html.escape(row['prompt'])}</pre>"]
        if reference is not None:
            body.append(f"<div>reference</div><pre class=\"reference\">{html.escape(reference)}</pre>")
        for n, r in outputs.items():
            if r is None:
                continue
            text = char_diff(reference, r["output"]) if reference is not None else html.escape(r["output"])
            s = scores[n]
            body.append(f'<div>{html.escape(n)} output <span class="meta">(finish: {html.escape(r["finish_reason"])}; '
                        f'exact match {_fmt(s["exact_match"])}, token F1 {_fmt(s["token_f1"])}, ROUGE-L '
                        f'{_fmt(s["rouge_l"])})</span></div><pre class="output {html.escape(n)}">{text}</pre>')
        sections.append(f'<section class="example{" worse" if worse else ""}">{"".join(body)}</section>')
    return "".join(sections), worse_count


def eval_page(report: dict[str, Any], results: dict[str, dict[str, Any]], generated: dict[str, list[dict[str, Any]]]) -> str:
    """The whole page: head, table (and one per source of a mixture, one by prompt length), filter, examples."""
    examples, worse = examples_html(generated)
    about = {k: report.get(k) for k in ("adapter", "data", "split", "template")}
    tables = [metrics_table(results)]
    for source in next(iter(results.values())).get("sources", {}) if results else []:
        tables.append(f"<h3>source {html.escape(source)}</h3>" + metrics_table({n: r["sources"][source] for n, r in results.items()})
                      .replace('id="metrics"', 'class="source-metrics"'))
    tables.append(length_buckets(generated))
    control = (f'<p><label><input type="checkbox" id="only-worse"> only the examples where the adapter got worse '
               f'(its token F1 below the base\'s: {worse})</label></p>' if len(generated) == 2 else "")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>sft-eval</title>"
            f"<style>{STYLE}</style></head><body><h1>sft-eval</h1>"
            f"<pre class=\"meta\">{html.escape(json.dumps(about, indent=1))}</pre>{''.join(tables)}{control}"
            f'<p id="shown" class="meta"></p><div id="examples">{examples}</div>'
            f"<script>{SCRIPT}</script></body></html>\n")
