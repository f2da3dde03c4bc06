"""data.format=sharegpt on the chat families of test_chat_families.py: the conversations written as ShareGPT
(human/gpt/system turns, function_call and observation turns, tools as a JSON string, as LLaMA-Factory writes
them) give the same rows, bit for bit, as the same conversations in the messages format."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import write_jsonl
from families import tokenizer
from test_chat_families import ALL, REASONING_RECORD, RECORDS, TOOL_RECORD, WITH_TOOLS

from sft.config import DataConfig, PromptConfig
from sft.data.load import load_records
from sft.data.prompts import build_segments, end_of_turn_token, prompt_segments
from sft.data.tokenize import special_prefix, tokenize_examples
from sft.generate.items import prompt_ids

pytestmark = pytest.mark.slow
FROM = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}


def as_sharegpt(record: dict[str, Any]) -> dict[str, Any]:
    """The record as a ShareGPT dump holds it: a tool call is a function_call turn whose value is the JSON call,
    the tool's answer an observation turn (without the tool's name, which no dump has)."""
    turns = []
    for m in record["messages"]:
        if m.get("tool_calls"):
            calls = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                     for c in m["tool_calls"]]
            turns.append({"from": "function_call", "value": json.dumps(calls[0] if len(calls) == 1 else calls)})
            continue
        turn = {"from": FROM[m["role"]], "value": m["content"]}
        if "reasoning_content" in m:
            turn["reasoning_content"] = m["reasoning_content"]
        turns.append(turn)
    return {"conversations": turns, **({"tools": json.dumps(record["tools"])} if "tools" in record else {})}


@pytest.mark.parametrize("family", ALL)
def test_sharegpt_input_gives_the_rows_of_the_messages_input(family: str, tmp_path: Any) -> None:
    rows = RECORDS + ([TOOL_RECORD] if family in WITH_TOOLS else []) + ([REASONING_RECORD] if family == "qwen3" else [])
    messages = write_jsonl(tmp_path / "messages.jsonl", rows)
    sharegpt = write_jsonl(tmp_path / "sharegpt.jsonl", [as_sharegpt(r) for r in rows])
    tok, cfg = tokenizer(family), PromptConfig(name="chat")
    eot = end_of_turn_token(cfg, tok)
    out = {}
    for fmt, path in (("messages", messages), ("sharegpt", sharegpt)):
        records = load_records(str(path), DataConfig(path=str(path), format=fmt)).records
        examples, kept, stats = tokenize_examples([build_segments(r, cfg, tok) for r in records], tok, eot, 4096)
        assert kept == list(range(len(rows))) and stats.render_mismatched == []
        generation = [prompt_ids(prompt_segments(r, cfg, tok), tok, special_prefix(tok)) for r in records]
        out[fmt] = ([(e["input_ids"], e["labels"]) for e in examples], generation)
    assert out["sharegpt"] == out["messages"]
