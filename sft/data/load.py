"""Files, saved datasets and Hub datasets -> validated records.

Every problem names the file, where in it (line for .jsonl, record index for .json/.parquet/saved datasets, row
and line for .csv) and the field. With on_bad_record=skip the bad records are counted and the first few kept for the
report; with error the first one stops the run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, TypedDict

from sft.config import DataConfig
from sft.data.readers import LOCAL_SUFFIXES, Malformed, count_rows, is_local, local_files, raw_rows  # noqa: F401
from sft.data.sharegpt import sharegpt_as_messages
from sft.errors import DataError

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
    if isinstance(row, Malformed):
        raise DataError(f"{where}: {row.why}")
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with fields, got {type(row).__name__}")
    if cfg.format in ("messages", "sharegpt"):
        name = cfg.messages_field
        if cfg.format == "sharegpt":  # read as the messages it holds
            row = sharegpt_as_messages(row, where, cfg.sharegpt, cfg.tools_field)
            name = cfg.sharegpt.conversations_field  # the errors below name the user's own field
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
    """Validated records one at a time, read as they go (sft.data.readers); bad ones are counted in `found`
    (on_bad_record=skip) or stop the run."""
    for index, (where, row) in enumerate(raw_rows(path, cfg)):
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


def held_out_draw(record: Record, seed: int) -> float:
    """A number in [0, 1) fixed by the seed and the record's content (its position and other records play no
    part): the record is held out when it is below the fraction."""
    content = json.dumps({k: v for k, v in record.items() if k not in ("id", "source")}, sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(f"{seed}|{content}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
