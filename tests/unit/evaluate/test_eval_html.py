"""eval.html's table by prompt length: buckets at the quartiles of the prompts' words, each model's mean scores."""

from __future__ import annotations

import re

from sft.evaluate.html import length_buckets


def rows(outputs: list[str]) -> list[dict]:
    return [{"id": i, "sample": 0, "prompt": " ".join(["w"] * (i + 1)), "output": out, "reference": "yes",
             "finish_reason": "eos"} for i, out in enumerate(outputs)]


def test_buckets_split_at_the_quartiles_and_average_each_models_scores() -> None:
    # 8 prompts of 1..8 words: quartile edges 1, 2, 4, 6, 8 -> buckets 1-2 (1 word), 2-4 (2, 3), 4-6 (4, 5), 6-8 (6, 7, 8)
    base = rows(["yes", "no", "yes", "no", "no", "no", "no", "yes"])
    adapter = rows(["yes"] * 8)
    table = length_buckets({"base": base, "adapter": adapter})
    cells = [re.findall(r"<td[^>]*>([^<]*)</td>", r) for r in re.findall(r'<tr class="bucket">(.*?)</tr>', table)]
    assert [c[:2] for c in cells] == [["1-2", "1"], ["2-4", "2"], ["4-6", "2"], ["6-8", "3"]]
    assert [c[2] for c in cells] == ["1.0000", "0.5000", "0.0000", "0.3333"]  # base exact match
    assert all(c[5] == "1.0000" for c in cells)  # the adapter's exact match
    assert length_buckets({"base": base[:3]}) == ""  # fewer examples than buckets: no table
