"""sft-prepare on the formats users arrive with, as they run it: a save_to_disk DatasetDict directory, and
ShareGPT conversations (good, and with a turn out of order)."""

from __future__ import annotations

import json

from conftest import run_sft, write_jsonl

RECORDS = [{"instruction": f"Repeat {i}.", "input": "", "output": f"{i} " * (1 + i % 5)} for i in range(12)]


def test_a_saved_dataset_dict_trains_on_train_and_holds_out_validation(tmp_path):
    import datasets

    splits = {"train": datasets.Dataset.from_list(RECORDS[:9]), "validation": datasets.Dataset.from_list(RECORDS[9:])}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "alpaca_disk"))
    done = run_sft("prepare", "data=alpaca", "data.path=alpaca_disk", "out_dir=out", "cache=false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr  # was: "error: alpaca_disk: file not found"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["splits"]["train"]["kept"] == 9 and report["splits"]["eval"]["kept"] == 3


def test_sharegpt_prepares_and_a_turn_out_of_order_is_one_error(tmp_path):
    turns = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]
    write_jsonl(tmp_path / "chats.jsonl", [{"conversations": turns}] * 3)
    args = ["data=sharegpt", "prompt=chat", "data.path=chats.jsonl", "out_dir=out", "cache=false"]
    done = run_sft("prepare", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out" / "report.json").read_text())["splits"]["train"]["kept"] == 3
    write_jsonl(tmp_path / "chats.jsonl", [{"conversations": turns}, {"conversations": turns[:2] + turns[1:2]}])
    bad = run_sft("prepare", *[a.replace("out_dir=out", "out_dir=bad") for a in args], cwd=tmp_path)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: chats.jsonl:2: field 'conversations', turn 2 (from 'human'): a user turn follows a user turn; turns "
        "alternate: an optional system turn, then user, assistant, user, ... (tool turns answer a function_call)")
