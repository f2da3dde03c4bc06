"""eval.html and inspect.html in a real headless Chromium: the pages load without console errors, show what they
claim (one table row per metric, one section per example, tokens with their ids), the filter works, and a
screenshot is not blank."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from browser import Page, chromium, file_url, not_blank
from conftest import run_sft


@pytest.fixture(scope="module")
def browser() -> str:
    path, why = chromium()
    if path is None:
        pytest.skip(why)
    return path


def generations(outputs: list[str], references: list[str], variant: str) -> list[dict[str, Any]]:
    return [{"id": i, "sample": 0, "instruction": f"q{i}", "input": "", "prompt": f"Question {i}?", "output": out,
             "reference": ref, "finish_reason": "eos", "variant": variant} for i, (out, ref) in enumerate(zip(outputs, references))]


def test_eval_page_table_filter_and_diffs(browser: str, tmp_path: Path) -> None:
    from sft.evaluate.html import eval_page

    references = ["blue sky", "red apple", "green tea", "a <b> & c"]
    base = generations(["blue sky", "red", "green coffee", "a <b> & c"], references, "base")
    adapter = generations(["blue", "red apple", "green tea", "a <b> & c!"], references, "adapter")
    results = {"base": {"exact_match": 0.5, "token_f1": 0.7, "rouge_l": 0.7, "loss": 1.2, "perplexity": 3.3},
               "adapter": {"exact_match": 0.5, "token_f1": 0.9, "rouge_l": 0.9, "loss": 0.8, "perplexity": 2.2}}
    page_file = tmp_path / "eval.html"
    page_file.write_text(eval_page({"adapter": "run", "data": "d.jsonl", "split": "eval"}, results,
                                   {"base": base, "adapter": adapter}))
    page = Page(browser, file_url(page_file))
    try:
        assert page.errors() == []
        assert page.evaluate("document.querySelectorAll('#metrics tr.metric').length") == 5  # one row per metric
        assert page.evaluate("document.querySelectorAll('section.example').length") == 4
        assert page.evaluate("document.getElementById('shown').textContent") == "4 of 4 examples shown"
        # by prompt length: "Question N?" has 2 words: one bucket of all 4, each model's mean scores
        buckets = page.evaluate("[...document.querySelectorAll('#length-buckets tr.bucket')].map(r => [...r.cells].map(c => c.textContent))")
        assert [b[:2] for b in buckets] == [["2-2", "4"]]
        assert buckets[0][2:5] == ["0.5000", "0.7917", "0.7917"]  # base: exact match, token F1 (1, 2/3, 1/2, 1), ROUGE-L
        # example 0: the adapter dropped a word (token F1 1.0 -> 0.67): the only one it made worse
        page.evaluate("document.getElementById('only-worse').click()")
        visible = "[...document.querySelectorAll('section.example')].filter(s => s.offsetParent !== null)"
        assert page.evaluate(f"{visible}.map(s => s.querySelector('h3').textContent)") == ["record 0"]
        assert page.evaluate("document.getElementById('shown').textContent") == "1 of 4 examples shown"
        page.evaluate("document.getElementById('only-worse').click()")
        assert page.evaluate(f"{visible}.length") == 4
        # the character diff: the adapter's "blue" lacks " sky" of the reference; markup in the text is text
        assert page.evaluate("document.querySelector('pre.output.adapter del').textContent") == " sky"
        texts = page.evaluate("[...document.querySelectorAll('pre.output.adapter')].map(p => p.textContent)")
        assert texts[3] == "a <b> & c!" and page.evaluate("document.querySelectorAll('pre b').length") == 0
        assert not_blank(page.screenshot())
    finally:
        page.close()


def test_inspect_page_shows_every_token_with_its_id(browser: str, smollm2_dir: str, tmp_path: Path) -> None:
    out = tmp_path / "prep"
    done = run_sft("prepare", "inspect=3", "inspect_html=true", "data.packing=true", "data.max_seq_len=256",
                   f"out_dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    import datasets

    rows = datasets.load_from_disk(str(out / "dataset"))["train"]
    page = Page(browser, file_url(out / "inspect.html"))
    try:
        assert page.errors() == []
        assert page.evaluate("document.querySelectorAll('section.row').length") == 3
        counts = page.evaluate("[...document.querySelectorAll('section.row')].map(s => s.querySelectorAll('.t').length)")
        assert counts == [len(rows[i]["input_ids"]) for i in range(3)]
        trained = page.evaluate("[...document.querySelectorAll('section.row')].map(s => s.querySelectorAll('.t.trained').length)")
        assert trained == [sum(label != -100 for label in rows[i]["labels"]) for i in range(3)]
        ids = page.evaluate("[...document.querySelectorAll('section.row')[0].querySelectorAll('.t')].map(t => +t.dataset.id)")
        assert ids == list(rows[0]["input_ids"])
        assert page.evaluate("document.querySelector('section.row .t').title").startswith("id ")
        eot = json.loads((out / "report.json").read_text())["template_details"]["end_of_turn"]
        assert eot == "<|im_end|>" and page.evaluate("document.querySelectorAll('section.row .t.eot.trained').length") > 0
        assert page.evaluate("document.querySelectorAll('section.row .t.start').length") > 0  # packed examples
        # the data: the bars of the length plot count every training example; packed rows by fill; the shares
        report = json.loads((out / "report.json").read_text())
        source = next(iter(report["distributions"]["sources"]))
        plots = page.evaluate("[...document.querySelectorAll('figure.plot')].map(f => f.dataset.plot)")
        assert plots == [f"lengths-{source}", "fill", "mixture"]
        bars = page.evaluate(f"[...document.querySelectorAll('figure[data-plot=\"lengths-{source}\"] rect.bar[data-series=tokens]')]"
                             ".map(r => +r.dataset.count)")
        assert bars == report["distributions"]["sources"][source]["tokens"] and sum(bars) == report["splits"]["train"]["kept"]
        assert page.evaluate("document.querySelector('figure[data-plot=fill] svg').getBoundingClientRect().height") > 100
        assert page.evaluate("+document.querySelector('rect.share[data-kind=examples]').dataset.share") == 1.0
        assert not_blank(page.screenshot())
    finally:
        page.close()
