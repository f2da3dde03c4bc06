"""sft.io: atomic writes leave the old file or the new one, never a part; config diffs name dotted keys."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from sft.io import differing_keys, publish_dir, write_json_atomic, write_rows_atomic, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    write_json_atomic(target, {"a": 1})

    class Unserializable:
        pass

    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": Unserializable()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_rows_are_json_lines_and_text_is_written_as_given(tmp_path: Path) -> None:
    write_rows_atomic(tmp_path / "rows.jsonl", [{"id": 0, "t": "é"}, {"id": 1}])
    assert (tmp_path / "rows.jsonl").read_text(encoding="utf-8") == '{"id": 0, "t": "é"}\n{"id": 1}\n'
    write_text_atomic(tmp_path / "eval.md", "| a |\n")
    assert (tmp_path / "eval.md").read_text() == "| a |\n"


def test_differing_keys_are_dotted_sorted_and_skip_ignored_subtrees() -> None:
    old = {"model": "m", "generation": {"seed": 1, "batch_size": 8}, "out_dir": "a"}
    new = {"model": "n", "generation": {"seed": 2, "batch_size": 4}, "out_dir": "b", "extra": {"x": 1}}
    assert differing_keys(old, new) == ["extra.x", "generation.batch_size", "generation.seed", "model", "out_dir"]
    assert differing_keys(old, new, ignore=("generation.batch_size", "out_dir")) == ["extra.x", "generation.seed", "model"]
    assert differing_keys(old, new, ignore=("generation",)) == ["extra.x", "model", "out_dir"]
    assert differing_keys(old, old) == []


def test_a_published_directory_is_whole_and_a_crashed_one_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "entry"
    target.mkdir(parents=True)
    (target / "half").write_text("left by a crash")  # no marker: not complete

    def write(tmp: Path) -> None:
        (tmp / "data").write_text("x")
        (tmp / "done").write_text("")

    publish_dir(target, write, marker="done")
    assert sorted(p.name for p in target.iterdir()) == ["data", "done"]
    assert [p.name for p in target.parent.iterdir()] == ["entry"]  # no temporary left

    def fail(tmp: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish_dir(tmp_path / "other", fail, marker="done")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_and_directories_honour_the_umask(tmp_path: Path, umask: int) -> None:
    """Colleagues on a shared cluster read a run as the umask allows (mkstemp alone makes every file 0600)."""
    before = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "report.json", {"a": 1})
        write_rows_atomic(tmp_path / "rows.jsonl", [{"a": 1}])
        publish_dir(tmp_path / "entry", lambda d: (d / "done").write_text("1"), marker="done")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "rows.jsonl").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "entry").stat().st_mode) == 0o777 & ~umask
