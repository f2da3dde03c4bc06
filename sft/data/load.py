"""Files and Hub datasets -> validated records.

Every problem names the file, where in it (line for .jsonl, record index for .json/.parquet, row and line
for .csv) and the field. With on_bad_record=skip the bad records are counted and the first few kept for the
report; with error the first one stops the run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, TypedDict

from sft.config import DataConfig
from sft.data.sharegpt import sharegpt_as_messages
from sft.errors import DataError

LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
ROLES = ("system", "user", "assistant", "tool")


class Record(TypedDict, total=False):
    id: int  # position in the source (0-based), stable across skips, used for seeds and reports
    source: str  # the name of its source, in a mixture (data.sources) only
    instruction: str
    input: str
    output: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]  # tool schemas the chat template is given (messages format)


@dataclass
class LoadResult:
    records: list[Record]
    source: str  # file path or hub:name
    bad: int = 0
    bad_examples: list[str] = field(default_factory=list)  # the first few problems, for the report


def is_local(path: str) -> bool:
    return Path(path).exists() or path.endswith(LOCAL_SUFFIXES) or path.startswith((".", "/", "~"))


def _raw_rows(path: str, cfg: DataConfig) -> Iterator[tuple[str, Any]]:
    """(location, raw row) pairs; a malformed container is a DataError naming the spot."""
    if not is_local(path):
        yield from _hub_rows(path, cfg)
        return
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{path}: file not found")
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        with p.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield f"{path}:{lineno}", _Malformed(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
                    continue
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{lineno}", json.loads(line)
                except json.JSONDecodeError as e:
                    yield f"{path}:{lineno}", _Malformed(f"malformed JSON line ({e.msg} at column {e.colno})")
    elif suffix == ".json":
        try:
            rows = json.loads(_utf8_text(p, path))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of records, got {type(rows).__name__}")
        for i, row in enumerate(rows):
            yield f"{path}: record {i}", row
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(_utf8_text(p, path), newline=""))
        for i, row in enumerate(reader):
            yield f"{path}:{reader.line_num}: row {i}", row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: cannot read parquet ({e})") from None
        for i, row in enumerate(table.to_pylist()):
            yield f"{path}: record {i}", row
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r} (use {', '.join(LOCAL_SUFFIXES)})")


def _utf8_text(p: Path, path: str) -> str:
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); "
                        "save the file as UTF-8") from None


def _hub_rows(name: str, cfg: DataConfig) -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(name, cfg.hub_config, split=cfg.split)
    except Exception as e:  # offline, unknown name, unknown split: all the user's to fix
        raise DataError(f"hub dataset {name!r} (split {cfg.split!r}): cannot load ({type(e).__name__}: {e})") from None
    for i, row in enumerate(ds):
        yield f"hub:{name}[{cfg.split}]: record {i}", row


class _Malformed:
    def __init__(self, why: str) -> None:
        self.why = why


def _text(row: dict, name: str, where: str, required: bool) -> str:
    value = row.get(name)
    if value is None and not required:
        return ""
    if value is None:
        raise DataError(f"{where}: field {name!r}: missing")
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r}: must be a string, got {type(value).__name__}")
    return value


def _record(index: int, row: Any, where: str, cfg: DataConfig, answers: bool = True) -> Record:
    """answers=False (prompts to generate for): the output, or a chat's assistant turn, may be absent."""
    if isinstance(row, _Malformed):
        raise DataError(f"{where}: {row.why}")
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with fields, got {type(row).__name__}")
    if cfg.format in ("messages", "sharegpt"):
        name = cfg.messages_field
        if cfg.format == "sharegpt":  # read as the messages it holds, under the names the user knows
            row, name = sharegpt_as_messages(row, where, cfg.sharegpt, cfg.tools_field), cfg.sharegpt.conversations_field
        record: Record = {"id": index, "messages": _messages(row, where, name, answers)}
        tools = row.get(cfg.tools_field)
        if tools is not None:
            if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
                raise DataError(f"{where}: field {cfg.tools_field!r}: must be a list of tool schemas (objects)")
            record["tools"] = tools
        return record
    instruction = _text(row, cfg.instruction_field, where, required=True)
    output = _text(row, cfg.output_field, where, required=answers)
    if not instruction.strip():
        raise DataError(f"{where}: field {cfg.instruction_field!r}: empty")
    if answers and not output.strip():
        raise DataError(f"{where}: field {cfg.output_field!r}: empty")
    record: Record = {"id": index, "instruction": instruction, "input": _text(row, cfg.input_field, where, False)}
    if output.strip():
        record["output"] = output
    return record


def _messages(row: dict, where: str, name: str, answers: bool = True) -> list[dict[str, Any]]:
    """Messages: role system | user | assistant | tool, string content (an assistant's may be empty or absent
    when it has tool_calls), an assistant's optional reasoning_content and tool_calls, a tool's optional name."""
    msgs = row.get(name)
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: field {name!r}: must be a non-empty list of {{role, content}}")
    out = []
    for j, m in enumerate(msgs):
        here = f"{where}: field {name!r}[{j}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise DataError(f"{here}: needs a role in {ROLES}")
        message = {"role": m["role"], "content": m.get("content")}
        calls = m.get("tool_calls")
        if calls is not None:
            if m["role"] != "assistant" or not isinstance(calls, list) or not all(_is_call(c) for c in calls):
                raise DataError(f"{here}: tool_calls must be an assistant's list of {{function: {{name, arguments}}}}")
            message["tool_calls"] = calls
        if message["content"] is None and calls:
            message["content"] = ""
        if not isinstance(message["content"], str):
            raise DataError(f"{here}: needs string content")
        for key in ("reasoning_content", "name", "tool_call_id"):
            if isinstance(m.get(key), str):
                message[key] = m[key]
        out.append(message)
    if answers and not any(m["role"] == "assistant" and (m["content"].strip() or m.get("tool_calls")) for m in out):
        raise DataError(f"{where}: field {name!r}: no non-empty assistant message to train on")
    return out


def _is_call(call: Any) -> bool:
    function = call.get("function", call) if isinstance(call, dict) else None
    return isinstance(function, dict) and isinstance(function.get("name"), str)


def iter_records(path: str, cfg: DataConfig, found: LoadResult, answers: bool = True) -> Iterator[Record]:
    """Validated records one at a time (a file is read as it goes: .jsonl, .csv and Hub datasets never whole;
    .json and .parquet are parsed whole); bad ones are counted in `found` (on_bad_record=skip) or stop the run."""
    for index, (where, row) in enumerate(_raw_rows(path, cfg)):
        try:
            record = _record(index, row, where, cfg, answers)
        except DataError as e:
            if cfg.on_bad_record == "error":
                raise
            found.bad += 1
            if len(found.bad_examples) < 5:
                found.bad_examples.append(str(e))
            continue
        yield record


def no_usable_records(path: str, found: LoadResult) -> DataError:
    detail = f" ({found.bad} bad records skipped)" if found.bad else ""
    return DataError(f"{path}: no usable records{detail}")


def load_records(path: str, cfg: DataConfig, answers: bool = True, limit: int | None = None) -> LoadResult:
    """Validated records of a file or Hub dataset, the first `limit` good ones when given. answers=False: prompts
    only (sft-generate), so a record without an output (or a chat without an assistant turn) is valid; one that
    has it keeps it as reference."""
    result = LoadResult(records=[], source=path)
    for record in iter_records(path, cfg, result, answers):
        result.records.append(record)
        if limit is not None and len(result.records) >= limit:
            break
    if not result.records:
        raise no_usable_records(path, result)
    return result


def count_rows(path: str) -> int | None:
    """How many rows a local .jsonl file has (its lines, counted fast), for a progress bar; None otherwise."""
    p = Path(path).expanduser()
    if not (is_local(path) and p.suffix.lower() == ".jsonl" and p.is_file()):
        return None
    with p.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))


def held_out_draw(record: Record, seed: int) -> float:
    """A number in [0, 1) fixed by the seed and the record's content (its position and other records play no
    part): the record is held out when it is below the fraction."""
    content = json.dumps({k: v for k, v in record.items() if k not in ("id", "source")}, sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(f"{seed}|{content}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
