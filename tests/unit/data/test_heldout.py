"""The held-out split: seeded by data.split_seed alone (a seed sweep keeps one partition and one tokenized cache
entry), recorded per source (ids and content hashes), and checked at evaluation time against what the data gives
now (a changed split rule or file is refused, not silently scored)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import write_jsonl, write_run_config
from sft.config import DataConfig, EvalRunConfig, PromptConfig
from sft.data import splits
from sft.data.prepare import load_splits, prepare
from sft.data.splits import record_hash
from sft.errors import DataError
from sft.generate.setup import resolve_setup
from sft.run.rundir import RunDir

PROMPT = PromptConfig(name="custom", template_input="{instruction} {input}:", template_no_input="{instruction}:")
RECORDS = [{"instruction": f"say {i}", "input": "", "output": f" word{i}"} for i in range(40)]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: Any) -> Path:
    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "datasets"


def data_config(tmp_path: Path, **settings: Any) -> DataConfig:
    path = write_jsonl(tmp_path / "records.jsonl", RECORDS)
    return DataConfig(path=str(path), eval_fraction=0.25, max_seq_len=64, num_proc=1, **settings)


def test_a_seed_sweep_keeps_one_held_out_split_and_one_tokenized_entry(char_tokenizer: Any, tmp_path: Path,
                                                                      cache: Path) -> None:
    data = data_config(tmp_path)
    one, two = (prepare(data, PROMPT, char_tokenizer, seed=seed) for seed in (1, 2))
    expected = [[r["id"], record_hash(r)] for r in load_splits(data)[0]["eval"]]
    assert 0 < len(expected) < len(RECORDS)
    assert one.held_out["sources"]["records"]["records"] == two.held_out["sources"]["records"]["records"] == expected
    first, second = (p.report["sources"]["records"]["cache"] for p in (one, two))
    assert first["key"] == second["key"] and not first["hit"] and second["hit"]  # tokenized once, for both seeds
    assert sorted(e.name for e in cache.iterdir() if e.name.startswith("src-") and e.suffix != ".lock") == [f"src-{first['key']}"]
    assert sorted(map(list, one.datasets["eval"]["input_ids"])) == sorted(map(list, two.datasets["eval"]["input_ids"]))
    # `seed` still draws the rows (their order): one mixture entry per seed, drawn from the same source entry
    assert one.report["cache"]["key"] != two.report["cache"]["key"]
    other = prepare(data_config(tmp_path, split_seed=5), PROMPT, char_tokenizer, seed=1)  # the split's own seed
    assert other.held_out["sources"]["records"]["records"] != expected


def trained_run(tmp_path: Path, tiny_dir: Path, char_tokenizer: Any, data: DataConfig) -> Path:
    """A run directory as sft-train leaves it for evaluation: config.yaml, tokenizer/, held_out.json and an adapter
    config naming the base (resolve_setup reads no weights with items=False)."""
    run = tmp_path / "run"
    settings = {k: getattr(data, k) for k in ("path", "eval_fraction", "max_seq_len")}
    write_run_config(run, str(tiny_dir), settings, {"name": "custom", "template_input": PROMPT.template_input,
                                                    "template_no_input": PROMPT.template_no_input},
                     tokenizer=char_tokenizer)
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_dir)}))
    RunDir(run).record_held_out(prepare(data, PROMPT, char_tokenizer, seed=0).held_out, resumed=False)
    return run


def eval_records(run: Path, *given: str, **data: Any) -> list[dict[str, Any]]:
    cfg = EvalRunConfig(adapter=str(run), out_dir="unused", data=DataConfig(**data))
    return resolve_setup(cfg, set(given), items=False).records


def test_eval_refuses_held_out_records_the_run_did_not_hold_out(char_tokenizer: Any, tiny_dir: Path, tmp_path: Path,
                                                                 cache: Path, monkeypatch: Any, capsys: Any) -> None:
    data = data_config(tmp_path)
    run = trained_run(tmp_path, tiny_dir, char_tokenizer, data)
    held = load_splits(data)[0]["eval"]
    assert eval_records(run) == held  # as recorded: evaluated

    # a smaller selection of what the run held out is no leak: evaluated, with a note
    assert eval_records(run, "max_records", max_records=2) == held[:2]
    assert f"evaluating 2 of the {len(held)} records {run} held out" in capsys.readouterr().err

    # the split rule changes after training (as it did on 2026-12-01): the same config now gives other records
    draw = splits.held_out_draw
    monkeypatch.setattr(splits, "held_out_draw", lambda record, seed: draw(record, seed + 1))
    with pytest.raises(DataError) as refused:
        eval_records(run)
    assert str(refused.value).startswith(f"{run}: data source 'records' ({data.path}) now gives held-out records")
    assert "that it did not hold out" in str(refused.value) and "it may have trained on them" in str(refused.value)
    monkeypatch.undo()

    # a larger held-out fraction given on the command line would score records the run trained on
    with pytest.raises(DataError, match="that it did not hold out"):
        eval_records(run, "eval_fraction", eval_fraction=0.5)

    # a held-out record edited in the file since training (an edit that keeps it on the held-out side)
    first = held[0]["id"]
    change = next(dict(RECORDS[first], output=f" changed {n}") for n in range(1000)
                  if draw({**RECORDS[first], "output": f" changed {n}"}, 0) < data.eval_fraction)
    edited = [change if i == first else r for i, r in enumerate(RECORDS)]
    write_jsonl(Path(data.path), edited)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=rf"1 whose content differs from what it held out \(records {first}\)"):
        eval_records(run)


def test_a_run_from_before_held_out_json_is_evaluated_with_a_note(char_tokenizer: Any, tiny_dir: Path,
                                                                  tmp_path: Path, cache: Path, capsys: Any) -> None:
    data = data_config(tmp_path)
    run = trained_run(tmp_path, tiny_dir, char_tokenizer, data)
    (run / "held_out.json").unlink()
    assert eval_records(run) == load_splits(data)[0]["eval"]
    assert f"note: {run} has no held_out.json" in capsys.readouterr().err
