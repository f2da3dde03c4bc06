"""The report's distributions (exact counts from a mixture with truncated and dropped examples, packed rows) and
the SVG that draws them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from conftest import write_jsonl
from sft.config import DataConfig, PromptConfig
from sft.data.inspect_html import inspect_page
from sft.data.plots import BINS, bar_chart
from sft.data.prepare import prepare
from sft.schemas import SourceConfig

PROMPT = PromptConfig(name="custom", template_input="{instruction} {input}:", template_no_input="{instruction}:")


def test_distributions_count_every_example_and_row(tmp_path: Path, monkeypatch: Any, char_tokenizer: Any) -> None:
    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path / "cache"))
    short = [{"instruction": f"q{i}", "output": " " + "a" * (3 + i)} for i in range(20)]  # 8 to 27 tokens
    long = [{"instruction": "q" * 80, "output": " b"}] * 2 + [{"instruction": "x", "output": " " + "c" * 100}]
    sources = [SourceConfig(path=str(write_jsonl(tmp_path / "s.jsonl", short)), name="short"),
               SourceConfig(path=str(write_jsonl(tmp_path / "l.jsonl", long)), name="long")]
    data = DataConfig(sources=sources, max_seq_len=64, packing=True)
    report = prepare(data, PROMPT, char_tokenizer, seed=0).report
    dist = report["distributions"]
    assert len(dist["edges"]) == BINS + 1 and dist["edges"][-1] == 64
    s, l = dist["sources"]["short"], dist["sources"]["long"]
    assert sum(s["tokens"]) == s["examples"] == 20 and sum(s["trained"]) == 20
    # long: two prompts cut to 64 tokens (the last bin), one answer too long to keep (dropped, in no bin)
    assert (l["examples"], l["truncated"], l["dropped"]) == (2, 2, 1)
    assert l["tokens"][-1] == 2 and sum(l["tokens"]) == 2
    # <s> q{i}: then 3 + i letters and </s>: 9..18 tokens, then 20..29; bins of 2 tokens
    lengths = [9 + i for i in range(10)] + [10 + i for i in range(10, 20)]
    assert s["tokens"] == np.histogram(lengths, bins=np.arange(0, 65, 2))[0].tolist()
    fill = dist["fill"]
    assert sum(fill["counts"]) == fill["rows"] == report["splits"]["train"]["packing"]["rows"]


def test_the_page_draws_one_figure_per_source_with_its_counts(tmp_path: Path, monkeypatch: Any, char_tokenizer: Any) -> None:
    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path / "cache"))
    records = [{"instruction": f"q{i}", "output": " " + "a" * (3 + i)} for i in range(12)]
    data = DataConfig(path=str(write_jsonl(tmp_path / "s.jsonl", records)), max_seq_len=64, packing=True)
    prepared = prepare(data, PROMPT, char_tokenizer, seed=0)
    page = inspect_page([prepared.datasets["train"][0]], char_tokenizer, "</s>", prepared.report)
    assert re.findall(r'data-plot="([^"]+)"', page) == ["lengths-s", "fill", "mixture"]
    counts = [int(c) for c in re.findall(r'data-series="tokens" data-count="(\d+)"', page)]
    assert counts == prepared.report["distributions"]["sources"]["s"]["tokens"] and sum(counts) == 12
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing fetched


def test_bar_heights_follow_the_counts() -> None:
    svg = bar_chart("x", "t", [0, 1, 2, 3], {"a": [1, 4, 2]}, "x", ["a note"])
    heights = [float(h) for h in re.findall(r'class="bar"[^>]* height="([\d.]+)"', svg)]
    assert heights[1] == max(heights) and abs(heights[0] * 4 - heights[1]) < 0.2 and abs(heights[2] * 2 - heights[1]) < 0.2
    assert "<li>a note</li>" in svg


def test_a_cached_source_is_reported_under_the_name_it_has_now(tmp_path: Path, monkeypatch: Any, char_tokenizer: Any) -> None:
    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path / "cache"))
    path = str(write_jsonl(tmp_path / "s.jsonl", [{"instruction": f"q{i}", "output": " a"} for i in range(4)]))
    prepare(DataConfig(sources=[SourceConfig(path=path, name="first")], max_seq_len=64), PROMPT, char_tokenizer, seed=0)
    again = prepare(DataConfig(sources=[SourceConfig(path=path, name="second")], max_seq_len=64), PROMPT, char_tokenizer, seed=0)
    assert list(again.report["sources"]) == ["second"] and again.report["sources"]["second"]["cache"]["hit"]


def test_the_run_directory_gets_its_data_report_drawn(tmp_path: Path, monkeypatch: Any, char_tokenizer: Any) -> None:
    from sft.run.rundir import RunDir

    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path / "cache"))
    records = [{"instruction": f"q{i}", "output": " " + "a" * (3 + i)} for i in range(12)]
    data = DataConfig(path=str(write_jsonl(tmp_path / "s.jsonl", records)), max_seq_len=64, packing=True)
    report = prepare(data, PROMPT, char_tokenizer, seed=0).report
    run = RunDir(tmp_path / "run")
    run.begin({"seed": 0}, report, char_tokenizer)
    page = (tmp_path / "run" / "report.html").read_text()
    assert re.findall(r'data-plot="([^"]+)"', page) == ["lengths-s", "fill", "mixture"]
    counts = [int(c) for c in re.findall(r'data-series="tokens" data-count="(\d+)"', page)]
    assert counts == report["distributions"]["sources"]["s"]["tokens"] and sum(counts) == 12
    import html

    from sft.data.inspect import summary_lines

    summary = summary_lines(report)  # what sft-prepare prints, above the plots
    assert len(summary) > 3 and all(html.escape(line) in page for line in summary)
    assert page.index(html.escape(summary[-1])) < page.index('data-plot="lengths-s"')
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing fetched
