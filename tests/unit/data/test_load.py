"""Loading records: every supported format, the Hub path, and one clear error per kind of bad input."""

from __future__ import annotations

import json

import pytest
from conftest import write_jsonl

from sft.config import DataConfig
from sft.data.load import load_records
from sft.data.splits import split_records
from sft.errors import DataError

GOOD = [{"instruction": "a", "input": "b", "output": "c"}, {"instruction": "d", "output": "e"}]
EXPECTED = [
    {"id": 0, "instruction": "a", "input": "b", "output": "c"},
    {"id": 1, "instruction": "d", "input": "", "output": "e"},
]


def cfg(**kw) -> DataConfig:
    return DataConfig(path="unused", **kw)


def test_json_jsonl_csv_parquet_give_the_same_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.json").write_text(json.dumps(GOOD))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in GOOD) + "\n\n")
    (tmp_path / "d.csv").write_text("instruction,input,output\na,b,c\nd,,e\n")
    pq.write_table(pa.Table.from_pylist([{"input": "b", **GOOD[0]}, {"input": None, **GOOD[1]}]), tmp_path / "d.parquet")
    for name in ("d.json", "d.jsonl", "d.csv", "d.parquet"):
        assert load_records(str(tmp_path / name), cfg()).records == EXPECTED, name


def test_files_saved_with_a_byte_order_mark_and_csv_fields_over_csvs_limit_read_as_the_others(tmp_path):
    """Excel's "CSV UTF-8" and some editors start the file with a BOM: it is not part of the first column's name
    (which then went missing) nor of the first JSON line (which was malformed). An answer over the csv module's
    default field limit (131,072 characters) is a record like any other."""
    (tmp_path / "d.csv").write_text("instruction,input,output\r\na,b,c\r\nd,,e\r\n", encoding="utf-8-sig")
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in GOOD) + "\n", encoding="utf-8-sig")
    for name in ("d.csv", "d.jsonl"):
        assert load_records(str(tmp_path / name), cfg()).records == EXPECTED, name
    long = "word " * 40_000  # 200,000 characters, quoted and over several lines
    (tmp_path / "long.csv").write_text(f'instruction,output\nq,"{long}\nand more"\nd,e\n')
    records = load_records(str(tmp_path / "long.csv"), cfg()).records
    assert [r["output"] for r in records] == [f"{long}\nand more", "e"]


def test_column_mapping_and_messages(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"q": "x", "a": "y"}) + "\n")
    assert load_records(str(path), cfg(instruction_field="q", output_field="a")).records[0]["output"] == "y"
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    path.write_text(json.dumps({"conv": chat}) + "\n")
    assert load_records(str(path), cfg(format="messages", messages_field="conv")).records == [{"id": 0, "messages": chat}]


def test_hub_dataset_goes_through_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config, split, streaming):  # a local stand-in for the Hub
        calls.append((name, config, split, streaming))
        return datasets.Dataset.from_list([{"instruction": "a", "input": "b", "output": "c"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    result = load_records("tatsu-lab/alpaca", cfg(split="train[:10]", hub_config="default", streaming=False))
    assert calls == [("tatsu-lab/alpaca", "default", "train[:10]", False)]
    assert result.records == [EXPECTED[0]]
    with pytest.raises(DataError, match=r"hub:tatsu-lab/alpaca: data.split='train\[:10\]': a slice needs "
                                        "data.streaming=false"):
        load_records("tatsu-lab/alpaca", cfg(split="train[:10]"))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.jsonl", None, "missing.jsonl: file not found"),
        ("bad.json", '[{"instruction": "a",\n "output": }]', "bad.json:2: malformed JSON"),
        ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": \n', "bad.jsonl:2: malformed JSON line"),
        ("nofield.jsonl", '{"instruction": "a"}\n', "nofield.jsonl:1: field 'output': missing"),
        ("type.json", '[{"instruction": "a", "output": "b"}, {"instruction": 3, "output": "b"}]',
         "type.json: record 1: field 'instruction': must be a string, got int"),
        ("empty_out.jsonl", '{"instruction": "a", "output": "  "}\n', "empty_out.jsonl:1: field 'output': empty"),
        ("empty.jsonl", "", "empty.jsonl: no usable records"),
        ("notlist.json", '{"instruction": "a"}', "notlist.json: expected a JSON list"),
        ("row.csv", "instruction,output\na,\n", "row.csv:2: row 0: field 'output': empty"),
    ],
)
def test_bad_input_names_file_place_and_field(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as err:
        load_records(str(path), cfg())
    assert str(err.value).startswith(str(tmp_path / name))  # the full path, then the place and the field
    assert message in str(err.value).replace(str(tmp_path) + "/", "")


def test_skip_counts_bad_records_and_keeps_the_first_problems(tmp_path):
    lines = ['{"instruction": "a", "output": "b"}', "{oops", '{"instruction": "c", "output": 5}', '{"instruction": "d", "output": "e"}']
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = load_records(str(path), cfg(on_bad_record="skip"))
    assert [r["id"] for r in result.records] == [0, 3]
    assert result.bad == 2
    assert "d.jsonl:2: malformed JSON line" in result.bad_examples[0]
    assert "d.jsonl:3: field 'output': must be a string" in result.bad_examples[1]


def test_split_is_seeded_and_disjoint():
    records = [{"id": i, "instruction": f"x {i}", "input": "", "output": "y"} for i in range(200)]
    train, held = split_records(records, 0.25, seed=3)
    assert 30 <= len(held) <= 70 and len(train) + len(held) == 200  # a quarter on average, not exactly
    assert {r["id"] for r in train}.isdisjoint(r["id"] for r in held)
    assert split_records(records, 0.25, seed=3) == (train, held)
    assert split_records(records, 0.25, seed=4)[1] != held


def test_a_records_side_does_not_depend_on_the_others():
    """Cutting the file short or appending to it moves no record across the split; duplicates stay together."""
    records = [{"id": i, "instruction": f"q {i}", "input": "", "output": f"a {i}"} for i in range(100)]
    held = {r["instruction"] for r in split_records(records, 0.2, seed=0)[1]}
    more = records + [{"id": 100 + i, "instruction": f"new {i}", "input": "", "output": "n"} for i in range(50)]
    assert {r["instruction"] for r in split_records(more, 0.2, seed=0)[1]} & {r["instruction"] for r in records} == held
    first = records[:30]
    assert {r["instruction"] for r in split_records(first, 0.2, seed=0)[1]} == held & {r["instruction"] for r in first}
    twice = records + [{**r, "id": 100 + r["id"]} for r in records]  # the same content under other positions
    train, held_twice = split_records(twice, 0.2, seed=0)
    assert {r["instruction"] for r in held_twice}.isdisjoint(r["instruction"] for r in train)


def test_max_records_cuts_each_split_after_it_is_made(tmp_path):
    from sft.data.prepare import load_splits

    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": f"q {i}", "output": f"a {i}"} for i in range(100)])
    full = load_splits(DataConfig(path=str(path), eval_fraction=0.2))[0]
    cut = load_splits(DataConfig(path=str(path), eval_fraction=0.2, max_records=5))[0]
    assert cut["eval"] == full["eval"][:5] and cut["train"] == full["train"][:5]


def test_a_tiny_file_keeps_one_record_on_each_side():
    two = [{"id": i, "instruction": f"x {i}", "input": "", "output": "y"} for i in range(2)]
    assert [len(side) for side in split_records(two, 0.01, seed=0)] == [1, 1]
    assert [len(side) for side in split_records(two, 0.99, seed=0)] == [1, 1]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("latin1.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n',
         "latin1.jsonl:2: not UTF-8 text (byte 0xe9 at column 21)"),
        ("latin1.json", b'[{"instruction": "a",\n  "output": "caf\xe9"}]', "latin1.json:2: not UTF-8 text (byte 0xe9 at column 17)"),
        ("latin1.csv", b"instruction,output\na,b\ncaf\xe9,b\n", "latin1.csv:3: not UTF-8 text (byte 0xe9 at column 4)"),
    ],
)
def test_a_file_that_is_not_utf8_is_one_error_naming_the_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_records(str(path), cfg())
    assert message in str(err.value).replace(str(tmp_path) + "/", "")


def test_prompts_without_answers_load_for_generation_only(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"instruction": "a"}\n{"instruction": "b", "output": "ref"}\n')
    with pytest.raises(DataError, match="field 'output': missing"):
        load_records(str(path), cfg())
    records = load_records(str(path), cfg(), answers=False).records
    assert records == [{"id": 0, "instruction": "a", "input": ""}, {"id": 1, "instruction": "b", "input": "", "output": "ref"}]
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match="no non-empty assistant message"):
        load_records(str(chat), cfg(format="messages"))
    assert load_records(str(chat), cfg(format="messages"), answers=False).records[0]["messages"][0]["content"] == "hi"
