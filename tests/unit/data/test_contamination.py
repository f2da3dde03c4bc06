"""Contamination: 13-grams of words shared between training records and evaluation items, counted exactly on planted
items: held-out records, and the documents of a local lm-eval task loaded through lm-eval."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import write_jsonl
from sft.config import DataConfig, PromptConfig
from sft.data.contamination import Contamination, ngrams
from sft.data.inspect import summary_lines
from sft.data.prepare import prepare

PROMPT = PromptConfig(name="custom", template_input="{instruction} {input}:", template_no_input="{instruction}:")
WORDS = "the quick brown fox jumps over the lazy dog while seven wizards quietly judge boxing matches at dawn".split()


def sentence(k: int, n: int = 20) -> str:
    """n words, distinct for each k (no 13-gram in common with another k)."""
    return " ".join(f"{WORDS[i % len(WORDS)]}{k}" for i in range(n))


def test_ngrams_are_13_words_within_one_text() -> None:
    grams, owner = ngrams([" ".join(WORDS[:13]), " ".join(WORDS[:12]), " ".join(WORDS[:14])])
    assert owner.tolist() == [0, 2, 2]
    assert grams[0] == grams[1] != grams[2]  # the same 13 words, wherever they stand
    assert len(ngrams([" ".join(WORDS[:6]), " ".join(WORDS[6:13])])[0]) == 0  # none across two texts
    # case and punctuation do not count
    assert ngrams([" ".join(WORDS[:13]).upper().replace(" ", ", ")])[0].tolist() == grams[:1].tolist()


def test_planted_items_are_found_and_nothing_else() -> None:
    items = [sentence(1), sentence(2), sentence(3), "too short to hold thirteen words"]
    found = Contamination({"eval": items})
    found.scan(["unrelated words " + sentence(1) + " and more", "x"])  # item 0, verbatim inside a longer text
    found.scan([sentence(2).upper().replace(" ", "; ")])  # item 1: case and punctuation changed
    found.scan([" ".join(sentence(3).split()[:12]), " ".join(sentence(3).split()[12:])])  # item 2: 12 words at most
    report = found.report()
    assert report["training_records_scanned"] == 5
    s = report["sets"]["eval"]
    assert (s["items"], s["too_short"], s["contaminated"]) == (4, 1, 2)
    assert s["share"] == pytest.approx(2 / 3)
    assert [e["item"] for e in s["examples"]] == [0, 1]


def test_prepare_reports_held_out_records_found_in_training(tmp_path: Path, monkeypatch: Any, char_tokenizer: Any) -> None:
    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path / "cache"))
    train = [{"instruction": "say", "input": "", "output": sentence(k)} for k in range(10)]
    held = [{"instruction": sentence(3), "input": "", "output": "yes"},  # a training answer asked as a question
            {"instruction": "say", "input": "", "output": "w " + sentence(7, 14)},
            *({"instruction": "say", "input": "", "output": sentence(k)} for k in (20, 21, 22))]
    data = DataConfig(path=str(write_jsonl(tmp_path / "t.jsonl", train)), eval_path=str(write_jsonl(tmp_path / "e.jsonl", held)),
                      max_seq_len=400)
    report = prepare(data, PROMPT, char_tokenizer, seed=0).report
    s = report["contamination"]["sets"]["held-out:t"]
    assert (s["items"], s["contaminated"], s["too_short"]) == (5, 2, 0)
    assert report["contamination"]["training_records_scanned"] == 10
    assert "  held-out:t: 2 of 5 items (40.00%)" in summary_lines(report)
    again = prepare(data, PROMPT, char_tokenizer, seed=0).report  # cached: the same figures
    assert again["contamination"] == report["contamination"]


def distinct_records(tmp_path: Path) -> str:
    """40 records that share no 13-gram, one file."""
    return str(write_jsonl(tmp_path / "d.jsonl", [{"instruction": "say", "input": "", "output": sentence(k)}
                                                  for k in range(40)]))


def test_the_training_side_is_the_split_data_split_seed_draws_whatever_the_seed(tmp_path: Path, monkeypatch: Any,
                                                                                 char_tokenizer: Any) -> None:
    """The held-out records are checked against the training records of the split preparation made (drawn by
    data.split_seed), not one drawn by `seed`: distinct records, so nothing is contaminated, by prepare and
    through a run directory (sft-eval, sft-bench)."""
    from conftest import write_run_config
    from sft.data.contamination import eval_contamination
    from sft.data.load import load_records
    from sft.run.rundir import RunDir

    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path / "cache"))
    path = distinct_records(tmp_path)
    data = DataConfig(path=path, eval_fraction=0.3, max_seq_len=400)
    report = prepare(data, PROMPT, char_tokenizer, seed=5).report
    held = report["contamination"]["sets"]["held-out:d"]
    assert held["contaminated"] == 0 and 0 < held["items"] < 40
    assert report["contamination"]["training_records_scanned"] == 40 - held["items"]
    run = write_run_config(tmp_path / "run", None, {"path": path, "eval_fraction": 0.3}, seed=5)
    records = load_records(path, DataConfig(path=path)).records
    every = eval_contamination(SimpleNamespace(run=RunDir(run)), records, "all")["sets"]["sft-eval:all"]
    assert (every["items"], every["contaminated"]) == (40, 40 - held["items"])  # each training record, no more


def planted_task(tmp_path: Path) -> Path:
    """A local lm-eval task of 6 documents (questions of 20 words) and training records holding two of its
    questions verbatim (documents 1 and 4) and 12 words of a third: the task's directory."""
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"question": sentence(k), "answer": f"a{k}"} for k in range(100, 106)])
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "planted.yaml").write_text(
        f"task: sft_planted\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {docs}\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_text: 'Question: {{question}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: exact_match\nmetadata:\n  version: 1.0\n")
    return tasks


def planted_training(tmp_path: Path) -> str:
    # two of the task's questions, verbatim inside training answers; a third only 12 words of it
    train = [{"instruction": "say", "input": "", "output": f"well: {sentence(101)}"},
             {"instruction": sentence(104), "input": "", "output": "ok"},
             {"instruction": "say", "input": "", "output": " ".join(sentence(102).split()[:12])},
             *({"instruction": "say", "input": "", "output": sentence(k)} for k in range(5))]
    return str(write_jsonl(tmp_path / "t.jsonl", train))


def test_a_local_lm_eval_tasks_planted_documents(tmp_path: Path, monkeypatch: Any, char_tokenizer: Any) -> None:
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path / "cache"))
    data = DataConfig(path=planted_training(tmp_path), max_seq_len=400, contamination_tasks=["sft_planted"],
                      contamination_include_path=str(planted_task(tmp_path)))
    report = prepare(data, PROMPT, char_tokenizer, seed=0).report["contamination"]
    s = report["sets"]["lm-eval:sft_planted"]
    assert (s["items"], s["contaminated"]) == (6, 2)
    assert [e["item"] for e in s["examples"]] == [1, 4]
    assert s["examples"][0]["text"].startswith("Question: " + sentence(101)[:40])


def test_sft_bench_checks_its_tasks_against_the_runs_training_records(tmp_path: Path) -> None:
    pytest.importorskip("lm_eval")
    from conftest import write_run_config
    from sft.data.contamination import run_contamination
    from sft.run.rundir import RunDir

    run = write_run_config(tmp_path / "run", None, {"path": planted_training(tmp_path), "eval_fraction": 0.0})
    report = run_contamination(SimpleNamespace(run=RunDir(run)), ["sft_planted"], str(planted_task(tmp_path)))
    s = report["sets"]["lm-eval:sft_planted"]
    assert (report["training_records_scanned"], s["items"], s["contaminated"]) == (8, 6, 2)
    assert run_contamination(None, ["sft_planted"], None) is None  # a bare adapter names no training data


def test_text_every_item_repeats_is_the_sets_template_not_contamination() -> None:
    frame = "answer the following question about the passage below in one word please thank you kindly"
    items = [f"{frame} {sentence(k)}" for k in range(12)]
    found = Contamination({"eval": items})
    found.scan([f"{frame} something else entirely", sentence(5)])  # the frame in training, and one item's content
    s = found.report()["sets"]["eval"]
    assert (s["items"], s["too_short"], s["contaminated"]) == (12, 0, 1)
    assert [e["item"] for e in s["examples"]] == [5]


def test_the_trackers_get_the_counts_and_shares_as_flat_figures() -> None:
    from sft.data.contamination import tracker_figures

    report = {"duplicates": {"mode": "exact", "exact": {"duplicates": 4}, "near": {"duplicates": 2}},
              "contamination": {"sets": {"held-out:a": {"share": 0.123456}, "lm-eval:t": {"share": 0.0}}}}
    assert tracker_figures(report) == {"duplicates/exact": 4, "duplicates/near": 2, "contamination/held-out:a": 0.1235,
                                       "contamination/lm-eval:t": 0.0}
    assert tracker_figures({"duplicates": None, "contamination": None}) == {}
