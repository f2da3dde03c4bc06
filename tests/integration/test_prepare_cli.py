"""sft-prepare as a user runs it: from any directory, outputs and report, cache, bad input, inspect."""

from __future__ import annotations

import json

from conftest import run_sft, write_jsonl
from sft.data.prepare import load_prepared

RECORDS = [{"instruction": f"Repeat {i}.", "input": "x" * (i % 7), "output": f"{i} " * (1 + i % 5)} for i in range(30)]


def test_prepare_writes_dataset_and_report_and_reuses_its_cache(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    out = tmp_path / "out"
    args = [f"data=alpaca", f"data.path={data}", "data.eval_fraction=0.2", "data.max_seq_len=64", f"out_dir={out}"]
    first = run_sft("prepare", *args, "inspect=1", cwd=tmp_path)  # not the repo: configs ship in the package
    assert first.returncode == 0, first.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["records_read"] == 30 and report["cache"]["hit"] is False
    train, held = report["splits"]["train"], report["splits"]["eval"]
    assert train["kept"] + held["kept"] == 30 and 2 <= held["kept"] <= 10  # a fifth held out on average
    from sft.config import DataConfig
    from sft.data.load import load_records
    from sft.data.splits import split_records

    records = load_records(str(data), DataConfig(path=str(data))).records
    assert held["kept"] == len(split_records(records, 0.2, seed=0)[1])
    from sft.data.splits import record_hash

    listed = json.loads((out / "held_out.json").read_text())["sources"]["d"]["records"]  # as a training run records it
    assert listed == [[r["id"], record_hash(r)] for r in split_records(records, 0.2, seed=0)[1]]
    assert train["eos_trained"] == {"ok": True, "examples_without": 0}
    prepared = load_prepared(out)
    assert prepared.datasets["train"].column_names == ["input_ids", "labels"]
    assert sum(sum(label != -100 for label in row) for row in prepared.datasets["train"]["labels"]) == train["trained_tokens"]
    assert "[[" in first.stdout and "<|im_end|>]]" in first.stdout  # inspect marks trained tokens (NO_COLOR)

    again = run_sft("prepare", *args, cwd=tmp_path)
    assert json.loads((out / "report.json").read_text())["cache"]["hit"] is True, again.stderr
    write_jsonl(data, RECORDS[:-1])  # other bytes: the cache must not be reused
    changed = run_sft("prepare", *args, cwd=tmp_path)
    report = json.loads((out / "report.json").read_text())
    assert changed.returncode == 0 and report["cache"]["hit"] is False and report["records_read"] == 29


def test_packing_report_and_position_ids(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", RECORDS * 4)
    out = tmp_path / "out"
    done = run_sft("prepare", "data=alpaca", f"data.path={data}", "data.packing=true", "data.max_seq_len=256", f"out_dir={out}", "cache=false")
    assert done.returncode == 0, done.stderr
    packing = json.loads((out / "report.json").read_text())["splits"]["train"]["packing"]
    assert packing["rows"] <= packing["lower_bound_rows"] + 1
    rows = load_prepared(out).datasets["train"]
    assert rows.column_names == ["input_ids", "labels", "position_ids"]
    assert all(len(r) <= 256 for r in rows["input_ids"])
    assert sum(p.count(0) for p in rows["position_ids"]) == 120  # every example once, whole


def test_bad_record_is_one_clear_error_and_nothing_is_written(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps({"instruction": "x", "output": ["not", "text"]}) + "\n")
    out = tmp_path / "out"
    done = run_sft("prepare", "data=alpaca", f"data.path={data}", f"out_dir={out}", cwd=tmp_path)
    assert done.returncode == 1
    assert f"error: {data}:2: field 'output': must be a string, got list" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (out / "dataset").exists() and not (out / "report.json").exists()

    skipped = run_sft("prepare", "data=alpaca", f"data.path={data}", f"out_dir={out}", "data.on_bad_record=skip", cwd=tmp_path)
    report = json.loads((out / "report.json").read_text())
    assert skipped.returncode == 0 and report["bad_records"] == 1 and "d.jsonl:2" in report["bad_examples"][0]


def test_invalid_config_fails_before_loading_anything(tmp_path):
    done = run_sft("prepare", "data.max_seq_len=0", "data.path=/nonexistent.jsonl", cwd=tmp_path)
    assert done.returncode == 1
    assert "data.max_seq_len=0" in done.stderr and "nonexistent" not in done.stderr
