"""Files, directories and Hub datasets -> (location, raw row) pairs, read as they go: memory holds a batch of rows,
never the source.

.jsonl line by line; .json list record by record (sft.data.json_stream); .parquet batch by batch, one row group
in memory at a time; .csv row by row; a directory written by `datasets`' save_to_disk through its Arrow files, a
batch at a time (read, not memory-mapped: mapped pages stay resident and count towards the process's memory);
another directory (data files as a Hub dataset repository holds them) and Hub datasets through
datasets.load_dataset, streaming unless data.streaming=false.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from sft.config import DataConfig
from sft.data.json_stream import json_list_rows
from sft.errors import DataError

LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
BATCH = 1000  # rows converted to Python at a time
EVAL_SPLITS = ("eval", "validation")  # a saved DatasetDict's split that becomes the held-out set, the first found


class Malformed:
    """A row that could not be read (its line is not JSON, not UTF-8): a bad record, counted like the others."""

    def __init__(self, why: str) -> None:
        self.why = why


def is_local(path: str) -> bool:
    return Path(path).exists() or path.endswith(LOCAL_SUFFIXES) or path.startswith((".", "/", "~"))


def raw_rows(path: str, cfg: DataConfig) -> Iterator[tuple[str, Any]]:
    """(location, raw row) pairs; a malformed container is a DataError naming the spot."""
    if not is_local(path):
        yield from _load_dataset_rows(path, f"hub:{path}", cfg)
        return
    p = Path(path).expanduser()
    if p.is_dir():
        disk = saved_dataset(p, cfg.split)
        yield from _disk_rows(disk, path) if disk else _load_dataset_rows(str(p), path, cfg)
        return
    if not p.is_file():
        raise DataError(f"{path}: file not found")
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl_rows(p, path)
    elif suffix == ".json":
        yield from json_list_rows(p, path)
    elif suffix == ".csv":
        yield from _csv_rows(p, path)
    elif suffix == ".parquet":
        yield from _parquet_rows(p, path)
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r} (use {', '.join(LOCAL_SUFFIXES)}, a directory "
                        "written by save_to_disk, or a Hub dataset)")


def _jsonl_rows(p: Path, path: str) -> Iterator[tuple[str, Any]]:
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a byte-order mark is not JSON
            except UnicodeDecodeError as e:
                yield f"{path}:{lineno}", Malformed(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{path}:{lineno}", Malformed(f"malformed JSON line ({e.msg} at column {e.colno})")


CSV_FIELD_LIMIT = 2**31 - 1  # csv's default (131,072 characters) is shorter than some answers


def _csv_rows(p: Path, path: str) -> Iterator[tuple[str, Any]]:
    """Row by row, decoded as read; a UTF-8 byte-order mark (Excel's "CSV UTF-8") is not part of the first
    column's name."""
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    with p.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        try:
            for i, row in enumerate(reader):
                yield f"{path}:{reader.line_num}: row {i}", row
        except UnicodeDecodeError:
            _utf8_text(p, path)  # raises, naming the line and column
            raise
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None


def _utf8_text(p: Path, path: str) -> str:
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); "
                        "save the file as UTF-8") from None


def _parquet_rows(p: Path, path: str) -> Iterator[tuple[str, Any]]:
    try:  # pyarrow raises several types for a damaged file, on opening or on reading a row group
        yield from _batch_rows(_parquet_batches(p), path, f"{path}: record")
    except (OSError, ValueError, TypeError) as e:
        raise DataError(f"{path}: cannot read parquet ({e})") from None


def _parquet_batches(source: Any) -> Iterator[Any]:
    """A Parquet file's (a path or an open file) record batches of BATCH rows, one row group in memory at a time.
    pre_buffer=False: with pyarrow's default, iter_batches keeps the column chunks it has read (0.5 GB for a 470 MB
    file of 100 row groups at its end, pyarrow 26); without it, one row group at a time (10 MB)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(source, pre_buffer=False).iter_batches(batch_size=BATCH)


def _batch_rows(batches: Iterable[Any], path: str, label: str) -> Iterator[tuple[str, Any]]:
    i = 0
    for batch in batches:
        for row in batch.to_pylist():
            yield f"{label} {i}", row
            i += 1


def saved_dataset(p: Path, split: str) -> Path | None:
    """The Dataset directory that save_to_disk wrote at p (a Dataset), or at p/<split> (a DatasetDict); None when p
    is not one."""
    if (p / "dataset_dict.json").is_file():
        splits = json.loads((p / "dataset_dict.json").read_text()).get("splits", [])
        if split not in splits:
            raise DataError(f"{p}: the saved DatasetDict has no split {split!r} (it has {', '.join(splits)}): set "
                            "data.split")
        return p / split
    return p if (p / "state.json").is_file() and (p / "dataset_info.json").is_file() else None


def saved_eval_split(path: str, split: str) -> str | None:
    """The held-out split's directory of a save_to_disk DatasetDict read for its train split, when it has one."""
    p = Path(path).expanduser()
    if split != "train" or not (p / "dataset_dict.json").is_file():
        return None
    splits = json.loads((p / "dataset_dict.json").read_text()).get("splits", [])
    return next((str(Path(path) / s) for s in EVAL_SPLITS if s in splits), None)


def _disk_rows(directory: Path, path: str) -> Iterator[tuple[str, Any]]:
    """The rows of a saved Dataset: its Arrow stream files (state.json lists them) a batch at a time."""
    import pyarrow as pa

    files = [directory / f["filename"] for f in json.loads((directory / "state.json").read_text()).get("_data_files", [])]
    label = f"{path}: record" if directory == Path(path).expanduser() else f"{path}[{directory.name}]: record"

    def batches() -> Iterator[Any]:
        for file in files:
            with pa.OSFile(str(file)) as f:
                yield from pa.ipc.open_stream(f)

    try:
        yield from _batch_rows(batches(), path, label)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot read the saved dataset ({e})") from None


def _load_dataset_rows(name: str, label: str, cfg: DataConfig) -> Iterator[tuple[str, Any]]:
    import datasets

    if cfg.streaming and "[" in cfg.split:
        raise DataError(f"{label}: data.split={cfg.split!r}: a slice needs data.streaming=false (or take "
                        "data.max_records records)")
    try:
        if cfg.streaming:  # what load_dataset(..., streaming=True) does, Parquet files read by sft's own reader
            builder = datasets.load_dataset_builder(name, cfg.hub_config)
            files = parquet_files(builder, cfg.split)
            batches = (_parquet_file_batches(files, builder) if files is not None else
                       iter(builder.as_streaming_dataset(split=cfg.split).with_format("arrow").iter(batch_size=BATCH)))
        else:
            ds = datasets.load_dataset(name, cfg.hub_config, split=cfg.split, streaming=False)
            batches = iter(ds.with_format("arrow").iter(batch_size=BATCH))
    except Exception as e:  # offline, unknown name, unknown split: all the user's to fix
        raise DataError(f"{label} (split {cfg.split!r}): cannot load ({type(e).__name__}: {e})") from None
    i = 0
    while True:
        try:  # streamed, a download or a file fails mid-way
            rows = next(batches).to_pylist()
        except StopIteration:
            return
        except Exception as e:
            raise DataError(f"{label}[{cfg.split}]: record {i}: cannot read ({type(e).__name__}: {e})") from None
        for row in rows:
            yield f"{label}[{cfg.split}]: record {i}", row
            i += 1


def parquet_files(builder: Any, split: str) -> list[str] | None:
    """The data files of a split that datasets' Parquet builder would stream (most Hub datasets, and local
    directories of Parquet files), as it resolved them; None for other builders. sft reads them itself, as it
    reads a .parquet file: through datasets' own streaming (1M records from 4 Parquet files, datasets 5.2, pyarrow
    26), the main process of sft-prepare held about 150 MB more than with this reader, 0.75 GB reading alone row by
    row, 0.49 GB as Arrow batches of 1,000 rows scanned without pre-buffering."""
    from datasets.packaged_modules.parquet.parquet import ParquetConfig

    config = builder.config
    if not isinstance(config, ParquetConfig) or config.filters is not None or config.columns is not None:
        return None
    files = (config.data_files or {}).get(split)
    return list(files) if files else None


def _parquet_file_batches(files: list[str], builder: Any) -> Iterator[Any]:
    """Record batches of the files in order, a row group at a time; opened as datasets opens them when streaming
    (local paths, and hf:// and other fsspec URLs with the builder's token and storage options)."""
    from datasets import DownloadConfig
    from datasets.utils.file_utils import xopen

    download = DownloadConfig(token=builder.token, storage_options=builder.storage_options)
    for file in files:
        with xopen(file, "rb", download_config=download) as f:
            yield from _parquet_batches(f)


def local_files(path: str) -> list[Path]:
    """The files a local source reads (a directory: every file under it, in order), for cache keys."""
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    return sorted(f for f in p.rglob("*") if f.is_file()) if is_local(path) and p.is_dir() else []


def count_rows(path: str) -> int | None:
    """How many rows a local .jsonl (its lines, counted fast) or .parquet (its metadata) file has, for a progress
    bar; None otherwise."""
    p = Path(path).expanduser()
    if not (is_local(path) and p.is_file()):
        return None
    if p.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(p).metadata.num_rows
        except (OSError, ValueError):  # damaged: reading it says so, naming the file
            return None
    if p.suffix.lower() != ".jsonl":
        return None
    with p.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))
