"""Mixtures of sources: the shares the weights ask for, caches kept per source, the same rows with any number of
workers (and as tokenizing every record in one call), and one clear error per bad mixture."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import write_jsonl
from sft.config import DataConfig, PromptConfig
from sft.data import build, splits
from sft.data.load import load_records
from sft.data.mix import largest_remainder, take_examples, take_tokens
from sft.data.packing import pack_examples
from sft.data.prepare import prepare
from sft.data.prompts import build_segments
from sft.data.tokenize import tokenize_examples
from sft.errors import ConfigError, DataError
from sft.schemas import SourceConfig

PROMPT = PromptConfig(name="custom", template_input="{instruction} {input}:", template_no_input="{instruction}:")


def records(prefix: str, n: int, long_every: int = 0) -> list[dict[str, str]]:
    return [{"instruction": f"{prefix} {i}", "input": "", "output": " " + "ab" * (1 + (i % 5) + (40 if long_every and i % long_every == 0 else 0))}
            for i in range(n)]


@pytest.fixture
def files(tmp_path: Path, monkeypatch: Any) -> dict[str, str]:
    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path / "cache"))
    return {name: str(write_jsonl(tmp_path / f"{name}.jsonl", records(name, n))) for name, n in (("a", 120), ("b", 60))}


def mixture(files: dict[str, str], **settings: Any) -> DataConfig:
    weights = settings.pop("weights", {"a": 3, "b": 1})
    sources = [SourceConfig(path=files[n], weight=w, eval_fraction=0.1) for n, w in weights.items()]
    return DataConfig(sources=sources, max_seq_len=64, **settings)


def rows(prepared: Any, split: str = "train") -> list[tuple]:
    return [tuple(tuple(r[k]) if isinstance(r[k], list) else r[k] for k in sorted(r)) for r in prepared.datasets[split]]


@pytest.mark.parametrize("mix_by", ["examples", "tokens"])
def test_weights_3_to_1_give_the_shares_asked_within_1_percent(files: dict[str, str], char_tokenizer: Any, mix_by: str) -> None:
    prepared = prepare(mixture(files, mix_by=mix_by, packing=True), PROMPT, char_tokenizer, seed=0)
    sources = prepared.report["sources"]
    measure = "share_of_examples" if mix_by == "examples" else "share_of_tokens"
    assert [s["mixture"]["share_asked"] for s in sources.values()] == [0.75, 0.25]
    for s in sources.values():
        assert abs(s["mixture"][measure] - s["mixture"]["share_asked"]) < 0.01
    # a holds 2/3 of the examples and gets 3/4: it is repeated in part, b is under-sampled (a seeded subset)
    assert sources["a"]["mixture"]["passes"] > 1 > sources["b"]["mixture"]["passes"]
    drawn = sum(s["mixture"]["drawn"] for s in sources.values())
    assert sum(len(r["position_ids"]) - sum(1 for p in r["position_ids"][1:] if p) for r in prepared.datasets["train"]) == drawn
    # held-out rows: every source's held-out examples, each row from one source
    assert {r["source"] for r in prepared.datasets["eval"]} == {0, 1}


def test_changing_one_weight_or_adding_a_source_reuses_every_source_cache(files: dict[str, str], char_tokenizer: Any,
                                                                          tmp_path: Path) -> None:
    first = prepare(mixture(files), PROMPT, char_tokenizer, seed=0)
    assert [s["cache"]["hit"] for s in first.report["sources"].values()] == [False, False]
    reweighted = prepare(mixture(files, weights={"a": 1, "b": 1}), PROMPT, char_tokenizer, seed=0)
    assert [s["cache"]["hit"] for s in reweighted.report["sources"].values()] == [True, True]
    assert not reweighted.report["cache"]["hit"] and rows(reweighted) != rows(first)
    assert rows(reweighted, "eval") == rows(first, "eval")  # held-out rows do not depend on the weights
    files["c"] = str(write_jsonl(tmp_path / "c.jsonl", records("c", 10)))
    added = prepare(mixture(files, weights={"a": 1, "b": 1, "c": 1}), PROMPT, char_tokenizer, seed=0)
    assert [s["cache"]["hit"] for s in added.report["sources"].values()] == [True, True, False]
    again = prepare(mixture(files), PROMPT, char_tokenizer, seed=0)
    assert again.report["cache"]["hit"] and rows(again) == rows(first)


def test_draws_are_whole_passes_then_a_seeded_subset() -> None:
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    counts = Counter(take_examples(10, 25, rng()).tolist())
    assert sorted(counts.values()) == [2] * 5 + [3] * 5  # 2 passes, then 5 drawn once more
    under = take_examples(10, 4, rng())
    assert len(set(under.tolist())) == 4 and (take_examples(10, 4, rng()) == under).all()
    lengths = np.array([10, 20, 30, 40])
    assert int(lengths[take_tokens(lengths, 250.0, rng())].sum()) in (240, 250, 260)  # 2 passes + the nearest part
    assert largest_remainder([1.5, 1.5, 1.0], 4) == [2, 1, 1]


def test_epochs_instead_of_a_weight_and_a_weight_0_source_is_only_evaluated(files: dict[str, str], char_tokenizer: Any) -> None:
    data = DataConfig(max_seq_len=64, sources=[SourceConfig(path=files["a"], epochs=0.5, eval_fraction=0.1),
                                               SourceConfig(path=files["b"], weight=0, eval_fraction=0.1)])
    report = prepare(data, PROMPT, char_tokenizer, seed=0).report["sources"]
    kept_a = report["a"]["splits"]["train"]["kept"]
    assert report["a"]["mixture"]["drawn"] == round(kept_a / 2) and report["b"]["mixture"]["drawn"] == 0
    assert report["b"]["splits"]["eval"]["kept"] > 0


def test_workers_give_the_same_rows_as_one_process_and_as_tokenizing_everything_at_once(
        smollm2_tokenizer: Any, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(splits, "CHUNK", 16)  # 200 records: 13 chunks, enough to start the 2 workers
    path = str(write_jsonl(tmp_path / "train.jsonl", records("say", 200, long_every=7)))
    prompt = PromptConfig()
    pools, real = [], build._in_workers
    monkeypatch.setattr(build, "_in_workers", lambda *a: pools.append(a[1]) or real(*a))
    results = {}
    for num_proc in (1, 2):
        data = DataConfig(path=path, max_seq_len=48, num_proc=num_proc, truncation="drop")
        results[num_proc] = prepare(data, prompt, smollm2_tokenizer, seed=0, use_cache=False)
    assert pools == [2]  # num_proc=2 tokenized in 2 worker processes, num_proc=1 in this one
    assert rows(results[1]) == rows(results[2])
    assert results[1].report["splits"] == results[2].report["splits"]
    assert results[1].report["splits"]["train"]["dropped"]["too_long"] == 29  # every 7th record of 200
    # the rows of the pipeline before sources and workers: every record's segments tokenized in one call
    loaded = load_records(path, DataConfig(path=path)).records
    examples, _, _ = tokenize_examples([build_segments(r, prompt, smollm2_tokenizer) for r in loaded],
                                       smollm2_tokenizer, "<|im_end|>", 48, "drop")
    assert [r["input_ids"] for r in results[2].datasets["train"]] == [e["input_ids"] for e in examples]
    assert [r["labels"] for r in results[2].datasets["train"]] == [e["labels"] for e in examples]
    packed = prepare(DataConfig(path=path, max_seq_len=48, num_proc=2, truncation="drop", packing=True), prompt,
                     smollm2_tokenizer, seed=3, use_cache=False)
    assert [dict(r) for r in packed.datasets["train"]] == pack_examples(examples, 48, seed=3)


def test_a_tiny_held_out_fraction_still_holds_out_one_record(files: dict[str, str], char_tokenizer: Any) -> None:
    data = DataConfig(path=files["b"], max_seq_len=64, eval_fraction=0.001)
    prepared = prepare(data, PROMPT, char_tokenizer, seed=0)
    assert len(prepared.datasets["eval"]) == 1 and len(prepared.datasets["train"]) == 59


def test_bad_mixtures_are_one_message_naming_the_source(files: dict[str, str], char_tokenizer: Any, tmp_path: Path) -> None:
    same = DataConfig(sources=[SourceConfig(path=files["a"]), SourceConfig(path=files["a"])])
    with pytest.raises(ConfigError, match=r"data.sources\[1\] and data.sources\[0\] are both named 'a'"):
        prepare(same, PROMPT, char_tokenizer, seed=0)
    both = DataConfig(path=files["b"], sources=[SourceConfig(path=files["a"])])
    with pytest.raises(ConfigError, match="data.path=.* and data.sources are both set"):
        prepare(both, PROMPT, char_tokenizer, seed=0)
    assert DataConfig(sources=[SourceConfig(path="x", weight=-1), SourceConfig(path="y", weight=0)]).problems("data") == [
        "data.sources[0].weight=-1: must be >= 0"]
    assert DataConfig(sources=[SourceConfig(path="x", weight=0)]).problems("data") == [
        "data.sources: the weights are all 0; at least one must be positive"]
    long = str(write_jsonl(tmp_path / "long.jsonl", [{"instruction": "x", "output": "y" * 200}]))
    too_long = DataConfig(max_seq_len=64, truncation="drop", sources=[SourceConfig(path=files["a"], weight=1),
                                                                      SourceConfig(path=long, weight=1)])
    with pytest.raises(DataError, match=r"data source 'long' \(.*long.jsonl\): no training example left"):
        prepare(too_long, PROMPT, char_tokenizer, seed=0)
    too_long.sources[1].weight = 0  # kept only for evaluation: no error
    assert prepare(too_long, PROMPT, char_tokenizer, seed=0).report["sources"]["long"]["mixture"]["drawn"] == 0
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"data source 'broken': .*broken.jsonl:2: malformed JSON"):
        prepare(DataConfig(sources=[SourceConfig(path=files["a"]), SourceConfig(path=str(broken))]), PROMPT,
                char_tokenizer, seed=0)


def examples_of(row: dict[str, Any]) -> list[tuple[int, ...]]:
    """The examples of a packed row (their input_ids), cut where the positions restart at 0."""
    starts = [t for t, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
    return [tuple(row["input_ids"][a:b]) for a, b in zip(starts, starts[1:])]


@pytest.mark.parametrize("over_sampled", ["epochs", "weights"])
def test_the_copies_of_an_over_sampled_example_are_in_different_rows(files: dict[str, str], char_tokenizer: Any,
                                                                    over_sampled: str) -> None:
    # records of 5 lengths: many equal lengths, the case where best fit put copies side by side
    if over_sampled == "epochs":  # 3 passes over a
        data = DataConfig(sources=[SourceConfig(path=files["a"], epochs=3, eval_fraction=0.1)], max_seq_len=64,
                          packing=True)
    else:  # a holds 2/3 of the examples and gets 3/4: repeated in part
        data = mixture(files, packing=True)
    prepared = prepare(data, PROMPT, char_tokenizer, seed=0)
    per_row = [examples_of(r) for r in prepared.datasets["train"]]
    counts = Counter(e for row in per_row for e in row)
    mix = {name: s["mixture"] for name, s in prepared.report["sources"].items()}
    assert sum(counts.values()) == sum(m["drawn"] for m in mix.values())  # every copy is there
    assert max(counts.values()) == (3 if over_sampled == "epochs" else 2)
    assert [len(row) - len(set(row)) for row in per_row] == [0] * len(per_row)  # no row holds two copies
