"""Duplicates planted in two sources: the exact counts within and across sources, the pairs named in the report, and
data.dedup=exact giving the rows of the same data without them (the first of each group kept)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import write_jsonl
from sft.config import DataConfig, PromptConfig
from sft.data.dedup import exact_hash, first_of_groups, normalize
from sft.data.inspect import summary_lines
from sft.data.prepare import prepare
from sft.schemas import SourceConfig

import numpy as np

PROMPT = PromptConfig(name="custom", template_input="{instruction} {input}:", template_no_input="{instruction}:")


def distinct(prefix: str, n: int) -> list[dict[str, str]]:
    return [{"instruction": f"{prefix} task {i}", "input": "", "output": f" answer {i} " + "x" * (i % 4)} for i in range(n)]


def shouted(record: dict[str, str]) -> dict[str, str]:
    """The same record in upper case with its spaces doubled and a trailing newline: an exact duplicate once
    normalised."""
    return {k: "  ".join(v.upper().split(" ")) + ("\n" if k == "output" else "") for k, v in record.items()}


@pytest.fixture
def planted(tmp_path: Path, monkeypatch: Any) -> dict[str, Any]:
    """a: 30 distinct + a shouted copy of its record 3 (id 30) + an identical copy of its record 5 (id 31) + a
    record differing in one word (id 32, not a duplicate); b: 10 distinct + a shouted copy of a's record 7 (id 10,
    across sources) + a copy of its own record 2 (id 11)."""
    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path / "cache"))
    a, b = distinct("alpha", 30), distinct("beta", 10)
    a_all = a + [shouted(a[3]), dict(a[5]), {**a[6], "output": a[6]["output"] + " more"}]
    b_all = b + [shouted(a[7]), dict(b[2])]
    return {"with": [str(write_jsonl(tmp_path / "a.jsonl", a_all)), str(write_jsonl(tmp_path / "b.jsonl", b_all))],
            "without": [str(write_jsonl(tmp_path / "a0.jsonl", a_all[:30] + a_all[32:])),
                        str(write_jsonl(tmp_path / "b0.jsonl", b))]}


def mixture(paths: list[str], dedup: str) -> DataConfig:
    return DataConfig(sources=[SourceConfig(path=p, name=n) for p, n in zip(paths, "ab")], max_seq_len=64, dedup=dedup)


def texts(prepared: Any, tokenizer: Any) -> list[str]:
    return sorted(tokenizer.decode(r["input_ids"]) for r in prepared.datasets["train"])


def test_normalised_text_is_what_duplicates_compare() -> None:
    record = {"id": 0, "instruction": "Name  a\tcolour", "input": "", "output": "Red.\n"}
    assert normalize("  Name  a\tCOLOUR \n") == "name a colour"
    assert exact_hash(record) == exact_hash({**record, "id": 9, "instruction": "name a colour "})
    assert exact_hash(record) != exact_hash({**record, "output": "Red!"})
    # the fields stay apart: moving text from the instruction to the input is another record
    assert exact_hash(record) != exact_hash({**record, "instruction": "Name", "input": "a colour"})


def test_first_of_groups_keeps_the_lowest_order() -> None:
    first, leader = first_of_groups(np.array([5, 7, 5, 5, 7]), np.array([4, 0, 2, 9, 1]))
    assert first.tolist() == [False, True, True, False, False]
    assert leader.tolist() == [2, 1, 2, 2, 1]


def test_planted_duplicates_are_counted_and_named(planted: dict[str, Any], char_tokenizer: Any) -> None:
    report = prepare(mixture(planted["with"], "none"), PROMPT, char_tokenizer, seed=0).report["duplicates"]
    assert report["mode"] == "none"
    exact = report["exact"]
    assert (exact["duplicates"], exact["within_sources"], exact["across_sources"]) == (4, 3, 1)
    pairs = [(p["kept"]["source"], p["kept"]["record"], p["duplicate"]["source"], p["duplicate"]["record"])
             for p in exact["examples"]]
    assert pairs == [("a", 3, "a", 30), ("a", 5, "a", 31), ("a", 7, "b", 10), ("b", 2, "b", 11)]


def test_dedup_exact_gives_the_rows_of_the_data_without_them(planted: dict[str, Any], char_tokenizer: Any) -> None:
    kept = prepare(mixture(planted["with"], "none"), PROMPT, char_tokenizer, seed=0)
    removed = prepare(mixture(planted["with"], "exact"), PROMPT, char_tokenizer, seed=0)
    clean = prepare(mixture(planted["without"], "none"), PROMPT, char_tokenizer, seed=0)
    assert len(kept.datasets["train"]) == 45 and len(removed.datasets["train"]) == 41
    assert texts(removed, char_tokenizer) == texts(clean, char_tokenizer)
    assert clean.report["duplicates"]["exact"]["duplicates"] == 0
    # the sources were tokenized once: data.dedup re-draws the mixture only
    assert all(s["cache"]["hit"] for s in removed.report["sources"].values())
    lines = summary_lines(removed.report)
    assert "duplicates, exact (the same text after lower-casing and collapsing whitespace): 4 (3 within a source, " \
           "1 across sources): removed" in lines
    assert "  b train record 10 repeats a train record 7" in lines


def test_a_held_out_copy_of_a_training_record_is_removed_from_the_later_side(tmp_path: Path, monkeypatch: Any,
                                                                            char_tokenizer: Any) -> None:
    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path / "cache"))
    train = distinct("gamma", 12)
    held = [shouted(train[4]), *distinct("delta", 3)]
    data = DataConfig(path=str(write_jsonl(tmp_path / "t.jsonl", train)), eval_path=str(write_jsonl(tmp_path / "e.jsonl", held)),
                      max_seq_len=64, dedup="exact")
    prepared = prepare(data, PROMPT, char_tokenizer, seed=0)
    exact = prepared.report["duplicates"]["exact"]
    assert exact["duplicates"] == 1 and exact["examples"][0]["duplicate"] == {"source": "t", "split": "eval", "record": 0}
    assert len(prepared.datasets["train"]) == 12 and len(prepared.datasets["eval"]) == 3


def essay(rng: np.random.Generator, n: int = 120) -> str:
    return " ".join(f"w{int(k)}" for k in rng.integers(0, 5000, size=n))


def test_planted_near_duplicates_are_found_with_dedup_near(tmp_path: Path, monkeypatch: Any, char_tokenizer: Any) -> None:
    """a: 20 essays of 120 words, near copies of essays 2 and 9 (one word changed, punctuation added: 5-gram
    Jaccard about 0.92, found with probability 0.996), an exact copy of 5, and essay 3 with its second half
    rewritten (Jaccard about 0.3: found with probability 1e-5); b: 4 essays and a near copy of a's essay 11."""
    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    a = [essay(rng) for _ in range(20)]
    b = [essay(rng) for _ in range(4)]

    def changed(text: str) -> str:
        words = text.split()
        words[60] = "changed"
        return ", ".join(words) + "!"

    half = " ".join(a[3].split()[:60]) + " " + essay(rng, 60)
    paths = [write_jsonl(tmp_path / "a.jsonl", [{"instruction": "write", "output": t} for t in
                                                 a + [changed(a[2]), changed(a[9]), a[5], half]]),
             write_jsonl(tmp_path / "b.jsonl", [{"instruction": "write", "output": t} for t in b + [changed(a[11])]])]
    data = mixture([str(p) for p in paths], "near")
    data.max_seq_len = 2048
    prepared = prepare(data, PROMPT, char_tokenizer, seed=0)
    found = prepared.report["duplicates"]
    assert (found["exact"]["duplicates"], found["near"]["duplicates"]) == (1, 3)
    assert (found["near"]["within_sources"], found["near"]["across_sources"]) == (2, 1)
    pairs = [(p["kept"]["record"], p["duplicate"]["source"], p["duplicate"]["record"]) for p in found["near"]["examples"]]
    assert pairs == [(2, "a", 20), (9, "a", 21), (11, "b", 4)]
    assert len(prepared.datasets["train"]) == 20 + 1 + 4  # the half-rewritten essay stays
    data.dedup = "exact"
    assert len(prepare(data, PROMPT, char_tokenizer, seed=0).datasets["train"]) == 20 + 3 + 1 + 4


def test_near_keys_estimate_similarity_as_the_bands_promise() -> None:
    """Over 300 pairs each, the share that shares a band follows 1 - (1 - J^8)^8: 0.97 at 5-gram Jaccard 0.88,
    0.20 at 0.64, 0.007 at 0.41."""
    from sft.data.dedup import near_keys

    rng = np.random.default_rng(1)
    base = [essay(rng, 100) for _ in range(300)]

    def edit(text: str, every: int) -> str:
        return " ".join("x" if i % every == 0 else w for i, w in enumerate(text.split()))

    keys = near_keys(base)
    close, mid, far = ((near_keys([edit(t, every) for t in base]) == keys).any(axis=1).mean() for every in (50, 20, 12))
    assert close > 0.93 and 0.08 < mid < 0.35 and far < 0.03
