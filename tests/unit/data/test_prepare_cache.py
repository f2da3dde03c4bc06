"""The processed-data cache under concurrent writers: every torchrun rank prepares its data, so on a cold
cache they all build and publish the same entry at once."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from conftest import write_jsonl
from sft.config import DataConfig, PromptConfig
from sft import io as sft_io
from sft.data.prepare import prepare

PROMPT = PromptConfig(name="custom", template_input="{instruction} {input}:", template_no_input="{instruction}:")


def data_config(tmp_path: Path) -> DataConfig:
    rows = [{"instruction": f"say {i}", "input": "", "output": f" word{i}"} for i in range(8)]
    return DataConfig(path=str(write_jsonl(tmp_path / "train.jsonl", rows)), max_seq_len=64, packing=True)


def rows(prepared: Any) -> list[list[int]]:
    return [r["input_ids"] for r in prepared.datasets["train"]]


def test_nodes_preparing_at_once_on_a_shared_cold_cache_build_each_entry_once(
        char_tokenizer: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """Two nodes' first ranks (threads here; the lock is an flock, taken per open file) prepare the same data at
    once: one builds, the other waits on the entry's lock and reads what was built."""
    import time

    from sft.data import prepare as prepare_module

    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path / "cache"))
    data = data_config(tmp_path)
    real_build, builds = prepare_module.build_source, []

    def slow_build(*args: Any) -> Any:
        builds.append(args[0].name)
        time.sleep(1)  # long enough for the other node to arrive while this one builds
        return real_build(*args)

    monkeypatch.setattr(prepare_module, "build_source", slow_build)
    start, results = threading.Barrier(2), []

    def node() -> None:
        start.wait(timeout=60)
        results.append(prepare(data, PROMPT, char_tokenizer, seed=0))

    threads = [threading.Thread(target=node) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert builds == ["train"] and len(results) == 2  # built once, not once per node
    assert sorted(r.report["cache"]["hit"] for r in results) == [False, True]
    assert rows(results[0]) == rows(results[1]) and rows(results[0])


def test_ranks_preparing_at_once_on_a_cold_cache_all_succeed(char_tokenizer: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """Without the lock (a file system without flock), both build and race to rename: the loser keeps the
    winner's entry."""
    import contextlib

    import filelock

    monkeypatch.setattr(filelock, "FileLock", lambda path: contextlib.nullcontext())
    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path / "cache"))
    data = data_config(tmp_path)
    cache_dir = tmp_path / "cache" / "datasets"
    real_replace = sft_io.os.replace
    both_ready, one_at_a_time, waited = threading.Barrier(2), threading.Lock(), set()

    def replace(src: Any, dst: Any) -> None:
        """Hold each rank at its rename into the cache until both have built their entry, then let them
        rename one after the other: the loser finds the winner's entry in place."""
        dst = Path(dst)
        if dst.is_relative_to(cache_dir) and not any(part.startswith(".tmp-") for part in dst.parts):
            if threading.get_ident() not in waited:
                waited.add(threading.get_ident())
                both_ready.wait(timeout=60)
            with one_at_a_time:
                return real_replace(src, dst)
        return real_replace(src, dst)

    monkeypatch.setattr(sft_io.os, "replace", replace)
    results: list[Any] = []
    errors: list[BaseException] = []

    def rank() -> None:
        try:
            results.append(prepare(data, PROMPT, char_tokenizer, seed=0))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=rank) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(waited) == 2  # both built the source's entry and raced to rename it into place
    entries = list((tmp_path / "cache" / "datasets").iterdir())
    # one entry for the source's examples, one for the rows drawn from it; no temporary left behind
    assert sorted(e.name.startswith("src-") for e in entries) == [False, True]
    assert not any(e.name.startswith(".tmp-") for e in entries)
    again = prepare(data, PROMPT, char_tokenizer, seed=0)
    assert again.report["cache"]["hit"] and rows(again) == rows(results[0]) == rows(results[1])


def test_an_incomplete_entry_from_an_old_crash_is_replaced(char_tokenizer: Any, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path / "cache"))
    data = data_config(tmp_path)
    first = prepare(data, PROMPT, char_tokenizer, seed=0)
    entry = tmp_path / "cache" / "datasets" / first.report["cache"]["key"]
    (entry / "report.json").unlink()  # a dataset without its report: never complete
    rebuilt = prepare(data, PROMPT, char_tokenizer, seed=0)
    assert not rebuilt.report["cache"]["hit"] and (entry / "report.json").is_file()
    assert rows(prepare(data, PROMPT, char_tokenizer, seed=0)) == rows(first)
