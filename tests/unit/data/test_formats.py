"""Directories written by datasets' save_to_disk, and large inputs read as they go: Parquet by batch, JSON lists
record by record, Hub datasets streamed (a local Parquet directory through datasets.load_dataset stands in)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import write_jsonl

from sft.config import DataConfig, PromptConfig
from sft.data import json_stream
from sft.data.load import iter_records, load_records, LoadResult
from sft.data.sources import resolve_sources
from sft.errors import DataError

ROWS = [{"instruction": f"q {i} ünï 猫", "input": "" if i % 2 else "x", "output": f"a {i}"} for i in range(7)]
EXPECTED = [{"id": i, **r} for i, r in enumerate(ROWS)]


def cfg(**kw) -> DataConfig:
    return DataConfig(path="unused", **kw)


def test_a_saved_dataset_directory_is_a_source(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "alpaca_disk"))
    assert load_records(str(tmp_path / "alpaca_disk"), cfg()).records == EXPECTED  # was: "file not found"


def test_a_saved_dataset_dict_gives_train_and_its_held_out_split(tmp_path):
    import datasets

    from sft.data.prepare import load_splits

    path = str(tmp_path / "dd")
    splits = {"train": datasets.Dataset.from_list(ROWS[:5]), "validation": datasets.Dataset.from_list(ROWS[5:])}
    datasets.DatasetDict(splits).save_to_disk(path, max_shard_size="1KB")  # several Arrow files per split
    (source,) = resolve_sources(DataConfig(path=path))
    assert source.name == "dd" and source.data.eval_path == f"{path}/validation"
    records = load_splits(DataConfig(path=path))[0]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "id"} for r in rs]  # noqa: E731
    assert strip(records["train"]) == ROWS[:5] and strip(records["eval"]) == ROWS[5:]
    assert resolve_sources(DataConfig(path=path, eval_fraction=0.5))[0].data.eval_path is None  # held out its own way
    with pytest.raises(DataError, match=r"dd: the saved DatasetDict has no split 'test' \(it has train, validation\)"):
        load_records(path, cfg(split="test"))
    assert load_records(path, cfg(split="validation")).records == [{**r, "id": i} for i, r in enumerate(ROWS[5:])]


def test_a_changed_saved_dataset_changes_the_cache_key(tmp_path, char_tokenizer):
    import datasets

    from sft.data.build import source_key

    path = str(tmp_path / "disk")
    datasets.Dataset.from_list(ROWS).save_to_disk(path)
    key = lambda: source_key(DataConfig(path=path), PromptConfig(), char_tokenizer, 0)  # noqa: E731
    before = key()
    datasets.Dataset.from_list(ROWS[:3]).save_to_disk(str(tmp_path / "other"))
    import shutil

    shutil.rmtree(path)
    shutil.move(str(tmp_path / "other"), path)
    assert key() != before


def test_parquet_is_read_a_batch_at_a_time_across_row_groups(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sft.data import readers

    monkeypatch.setattr(readers, "BATCH", 2)
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet", row_group_size=3)
    assert pq.ParquetFile(tmp_path / "d.parquet").num_row_groups == 3
    assert load_records(str(tmp_path / "d.parquet"), cfg()).records == EXPECTED
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="bad.parquet: cannot read parquet"):
        load_records(str(tmp_path / "bad.parquet"), cfg())


TRICKY = [{"n": 1.5, "e": 1e-7, "big": 123456789012345678901234567890, "s": "a\\\"b\n\u00e9\U0001f600", "t": True,
           "z": None, "l": [1, [2, {"x": "y"}]]}, {"long": "x" * 300}, 12345, -0.25, "str", [], {}]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
def test_a_json_list_streams_the_values_json_loads_gives(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(json_stream, "CHUNK", chunk)
    monkeypatch.setattr(json_stream, "MARGIN", min(chunk, 64))
    text = json.dumps(TRICKY, ensure_ascii=False, indent=1)
    (tmp_path / "t.json").write_text("\ufeff  " + text + "\n\n")
    got = [row for _, row in json_stream.json_list_rows(tmp_path / "t.json", "t.json")]
    assert got == json.loads(text) and type(got[0]["big"]) is int and math.isclose(got[0]["e"], 1e-7)
    (tmp_path / "e.json").write_text(" [ ] ")
    assert list(json_stream.json_list_rows(tmp_path / "e.json", "e.json")) == []


@pytest.mark.parametrize("chunk", [2, 5, 1 << 20])
@pytest.mark.parametrize("text, message", [
    ('[{"a": 1},\n{"a": 2},\n {"b": }]', "t.json:3: malformed JSON (Expecting value at column 8)"),
    ('[{"a": 1},\n{"a": 2},]', "t.json:2: malformed JSON (Expecting value at column 10)"),
    ('[{"a": 1},\n{"a": 2} {"a": 3}]', "t.json:2: malformed JSON (Expecting ',' delimiter at column 10)"),
    ('[{"a": 1},\n{"a": 2}] x', "t.json:2: malformed JSON (Extra data after the list at column 11)"),
    ('[{"a": 1},\n{"a": "2', "t.json:2: malformed JSON (Unterminated string starting at column 7)"),
    ('{"a": 1}', "t.json: expected a JSON list of records, got dict"),
])
def test_a_malformed_json_list_is_named_by_line_after_the_good_records(tmp_path, monkeypatch, chunk, text, message):
    """The records before the fault are handed on first: the file is not parsed whole before any record."""
    monkeypatch.setattr(json_stream, "CHUNK", chunk)
    monkeypatch.setattr(json_stream, "MARGIN", min(chunk, 64))
    (tmp_path / "t.json").write_text(text)
    got = []
    with pytest.raises(DataError) as err:
        got.extend(row for _, row in json_stream.json_list_rows(tmp_path / "t.json", "t.json"))
    assert str(err.value) == message
    assert got == ([] if text.startswith("{") else [{"a": 1}, {"a": 2}][: 1 + ("\n{\"a\": 2}" in text)])


def test_a_json_list_hands_on_its_records_before_reading_the_rest(tmp_path, monkeypatch):
    """Records come out one at a time: those before a fault at the end are read before the fault is met."""
    monkeypatch.setattr(json_stream, "CHUNK", 64)
    (tmp_path / "d.json").write_text(json.dumps(ROWS)[:-1] + ", {oops]")
    got = []
    with pytest.raises(DataError, match=r"d.json:1: malformed JSON \(Expecting property name enclosed in double"):
        got.extend(iter_records(str(tmp_path / "d.json"), cfg(), LoadResult(records=[], source="d.json")))
    assert got == EXPECTED


def test_a_json_list_that_is_not_utf8_is_named_by_line_and_column(tmp_path, monkeypatch):
    monkeypatch.setattr(json_stream, "CHUNK", 4)
    (tmp_path / "l.json").write_bytes(b'[{"a": "b"},\n {"a": "caf\xc3\xa9"},\n {"a": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"l.json:3: not UTF-8 text \(byte 0xe9 at column 12\)"):
        list(json_stream.json_list_rows(tmp_path / "l.json", "l.json"))


def test_a_hub_dataset_streams_through_load_dataset(tmp_path, monkeypatch):
    """A local Parquet directory loaded by datasets stands in for the Hub (nothing is downloaded): streamed through
    the builder load_dataset(streaming=True) uses, its Parquet files read a row group at a time."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = tmp_path / "org_alpaca" / "data"
    repo.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ROWS[:4]), repo / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[4:]), repo / "train-00001-of-00002.parquet")
    real_builder, real_load, seen = datasets.load_dataset_builder, datasets.load_dataset, []

    def local(name):
        return str(tmp_path / "org_alpaca") if name == "org/alpaca" else name

    def hub_builder(name, config):
        builder = real_builder(local(name), config)
        seen.append((name, type(builder.config).__name__))
        return builder

    def hub(name, config, split, streaming):
        seen.append((name, streaming))
        return real_load(local(name), config, split=split, streaming=streaming)

    monkeypatch.setattr(datasets, "load_dataset_builder", hub_builder)
    monkeypatch.setattr(datasets, "load_dataset", hub)
    assert load_records("org/alpaca", cfg()).records == EXPECTED
    assert load_records(str(tmp_path / "org_alpaca"), cfg()).records == EXPECTED  # a local directory of data files
    assert seen == [("org/alpaca", "ParquetConfig"), (str(tmp_path / "org_alpaca"), "ParquetConfig")]
    assert load_records("org/alpaca", cfg(streaming=False, split="train[:2]")).records == EXPECTED[:2]
    assert seen[-1] == ("org/alpaca", False)
    found = LoadResult(records=[], source="x")
    first = next(iter_records("org/alpaca", cfg(), found))
    assert first == EXPECTED[0] and seen[-1] == ("org/alpaca", "ParquetConfig")


def test_parquet_data_files_are_read_by_sfts_reader_as_datasets_resolves_them(tmp_path, monkeypatch):
    """A Parquet dataset's files, as datasets resolved them for the split, are read with sft's own reader (opened
    through datasets' xopen: an fsspec URL here, as hf:// URLs are on the Hub); another builder streams through
    datasets itself."""
    import datasets
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sft.data import readers

    memory = fsspec.filesystem("memory")
    for i, part in enumerate((ROWS[:3], ROWS[3:])):
        with memory.open(f"/org_remote/data/train-{i:05d}-of-00002.parquet", "wb") as f:
            pq.write_table(pa.Table.from_pylist(part), f)
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    real_builder, opened = datasets.load_dataset_builder, []

    def hub_builder(name, config):
        if name == "org/remote":
            return real_builder("parquet", data_files={"train": "memory://org_remote/data/*.parquet"})
        return real_builder(name, config)

    def parquet_file_batches(files, builder):
        opened.append(files)
        return real_batches(files, builder)

    real_batches = readers._parquet_file_batches
    monkeypatch.setattr(datasets, "load_dataset_builder", hub_builder)
    monkeypatch.setattr(readers, "_parquet_file_batches", parquet_file_batches)
    assert load_records("org/remote", cfg()).records == EXPECTED
    assert [[f.rsplit("/", 1)[-1] for f in files] for files in opened] == [
        ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]]
    assert load_records(str(tmp_path / "j"), cfg()).records == EXPECTED and len(opened) == 1  # JSON: datasets'


def test_sharegpt_in_every_container(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]} for i in range(3)]
    want = [{"id": i, "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(3)]
    write_jsonl(tmp_path / "s.jsonl", rows)
    (tmp_path / "s.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "s.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "s_disk"))
    for name in ("s.jsonl", "s.json", "s.parquet", "s_disk"):
        assert load_records(str(tmp_path / name), cfg(format="sharegpt")).records == want, name
