"""data.format=sharegpt: records shaped like the public ShareGPT dumps read as the messages they hold, and one
error naming file, record and turn for each kind of bad conversation."""

from __future__ import annotations

import json

import pytest
from conftest import write_jsonl

from sft.config import DataConfig
from sft.data.load import load_records
from sft.errors import DataError
from sft.schemas import ShareGPTConfig

WEATHER = {"name": "get_current_weather", "description": "Get the current weather in a given location",
           "parameters": {"type": "object", "properties": {"location": {"type": "string"},
                                                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                          "required": ["location"]}}
# as in the dumps: Vicuna's ShareGPT (an id, multi-turn human/gpt), OpenHermes/SlimOrca (a system turn, a null
# `weight` per turn), LLaMA-Factory's glaive_toolcall (function_call / observation turns, tools as a JSON string),
# axolotl's sharegpt with a `tool` turn after a gpt turn that calls it in text
DUMPS = [
    {"id": "QWJhYvA_0", "conversations": [
        {"from": "human", "value": "Summarize the main ideas of Jeff Walker's Product Launch Formula."},
        {"from": "gpt", "value": "The Product Launch Formula is a step-by-step program ..."},
        {"from": "human", "value": "Summarize the main ideas of Brendon Burchard's Experts Academy."},
        {"from": "gpt", "value": "Experts Academy is a training program ..."}]},
    {"conversations": [
        {"from": "system", "value": "You are an AI assistant. You will be given a task.", "weight": None},
        {"from": "human", "value": "Translate to German: The cat sleeps.", "weight": None},
        {"from": "gpt", "value": "Die Katze schläft.", "weight": 1.0}]},
    {"conversations": [
        {"from": "human", "value": "What's the weather like in Boston?"},
        {"from": "function_call", "value": '{"name": "get_current_weather", "arguments": {"location": "Boston"}}'},
        {"from": "observation", "value": '{"temperature": 22, "unit": "celsius"}'},
        {"from": "gpt", "value": "It is 22 degrees Celsius in Boston."}],
     "tools": json.dumps([WEATHER])},
    {"conversations": [
        {"from": "system", "value": "You may call get_current_weather."},
        {"from": "human", "value": "Weather in Oslo and Bergen?"},
        {"from": "function_call", "value": json.dumps([{"name": "get_current_weather", "arguments": {"location": "Oslo"}},
                                                        {"name": "get_current_weather", "arguments": {"location": "Bergen"}}])},
        {"from": "observation", "value": "4 C"}, {"from": "tool", "value": "6 C"},
        {"from": "gpt", "value": "Oslo 4 C, Bergen 6 C."}], "tools": [WEATHER]},
]


def call(location: str) -> dict:
    return {"type": "function", "function": {"name": "get_current_weather", "arguments": {"location": location}}}


EXPECTED = [
    {"id": 0, "messages": [
        {"role": "user", "content": "Summarize the main ideas of Jeff Walker's Product Launch Formula."},
        {"role": "assistant", "content": "The Product Launch Formula is a step-by-step program ..."},
        {"role": "user", "content": "Summarize the main ideas of Brendon Burchard's Experts Academy."},
        {"role": "assistant", "content": "Experts Academy is a training program ..."}]},
    {"id": 1, "messages": [
        {"role": "system", "content": "You are an AI assistant. You will be given a task."},
        {"role": "user", "content": "Translate to German: The cat sleeps."},
        {"role": "assistant", "content": "Die Katze schläft."}]},
    {"id": 2, "messages": [
        {"role": "user", "content": "What's the weather like in Boston?"},
        {"role": "assistant", "content": "", "tool_calls": [call("Boston")]},
        {"role": "tool", "content": '{"temperature": 22, "unit": "celsius"}'},
        {"role": "assistant", "content": "It is 22 degrees Celsius in Boston."}], "tools": [WEATHER]},
    {"id": 3, "messages": [
        {"role": "system", "content": "You may call get_current_weather."},
        {"role": "user", "content": "Weather in Oslo and Bergen?"},
        {"role": "assistant", "content": "", "tool_calls": [call("Oslo"), call("Bergen")]},
        {"role": "tool", "content": "4 C"}, {"role": "tool", "content": "6 C"},
        {"role": "assistant", "content": "Oslo 4 C, Bergen 6 C."}], "tools": [WEATHER]},
]


def sharegpt(**kw) -> DataConfig:
    return DataConfig(path="unused", format="sharegpt", **kw)


def test_public_dump_shapes_read_as_the_messages_they_hold(tmp_path):
    path = write_jsonl(tmp_path / "sharegpt.jsonl", DUMPS)
    assert load_records(str(path), sharegpt()).records == EXPECTED
    (tmp_path / "sharegpt.json").write_text(json.dumps(DUMPS))
    assert load_records(str(tmp_path / "sharegpt.json"), sharegpt()).records == EXPECTED


def test_the_same_conversation_as_messages_is_the_same_record(tmp_path):
    """Equal records: equal rows, held-out draws and cache contents downstream."""
    as_messages = [{k: v for k, v in r.items() if k != "id"} for r in EXPECTED]
    messages = load_records(str(write_jsonl(tmp_path / "m.jsonl", as_messages)), DataConfig(path="x", format="messages"))
    assert messages.records == load_records(str(write_jsonl(tmp_path / "s.jsonl", DUMPS)), sharegpt()).records


def test_keys_and_role_names_are_configurable(tmp_path):
    rows = [{"chat": [{"role": "USER", "text": "hi"}, {"role": "bot", "text": "yo", "reasoning_content": "greet"}]}]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    roles = {"USER": "user", "bot": "assistant"}
    cfg = sharegpt(sharegpt=ShareGPTConfig(conversations_field="chat", role_key="role", content_key="text", roles=roles))
    assert load_records(str(path), cfg).records == [{"id": 0, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "reasoning_content": "greet"}]}]
    with pytest.raises(DataError, match=r"c.jsonl:1: field 'conversations': must be a non-empty list of \{from, value\}"):
        load_records(str(path), sharegpt())


H, G = {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}
CALL = {"from": "function_call", "value": '{"name": "f", "arguments": {}}'}


@pytest.mark.parametrize("turns, message", [
    ([H, {"from": "bot", "value": "a"}],
     "turn 1: from 'bot' is not a role name; known: system, human, user, gpt, assistant, tool, observation, "
     "function_call (add one with +data.sharegpt.roles.NAME=user|assistant|system|tool|tool_call)"),
    ([H, {"value": "a"}], "turn 1: from None is not a role name"),
    ([H, {"from": "gpt", "value": "  \n"}], "turn 1 (from 'gpt'): empty 'value'"),
    ([H, {"from": "gpt", "value": None}], "turn 1 (from 'gpt'): 'value' must be a string, got NoneType"),
    ([H, "a"], "turn 1: expected an object with 'from' and 'value', got str"),
    ([G, H], "turn 0 (from 'gpt'): an assistant turn opens the conversation; turns alternate"),
    ([H, H, G], "turn 1 (from 'human'): a user turn follows a user turn"),
    ([H, G, G], "turn 2 (from 'gpt'): an assistant turn follows an assistant turn"),
    ([H, G, {"from": "system", "value": "s"}, H, G], "turn 2 (from 'system'): a system turn follows an assistant turn"),
    ([H, {"from": "observation", "value": "r"}, G], "turn 1 (from 'observation'): a tool turn follows a user turn"),
    ([H, CALL, H], "turn 2 (from 'human'): a user turn follows a function_call turn"),
    ([H, {"from": "function_call", "value": "f(x)"}],
     "turn 1 (from 'function_call'): the value is not a JSON tool call (Expecting value at column 1)"),
    ([H, {"from": "function_call", "value": '{"arguments": {}}'}],
     "turn 1 (from 'function_call'): a tool call must be {\"name\": ..., \"arguments\": {...}}"),
])
def test_a_bad_conversation_is_one_error_naming_file_record_and_turn(tmp_path, turns, message):
    path = write_jsonl(tmp_path / "chats.jsonl", [{"conversations": [H, G]}, {"conversations": turns}])
    with pytest.raises(DataError) as err:
        load_records(str(path), sharegpt())
    assert str(err.value).startswith(f"{path}:2: field 'conversations', ")
    assert message in str(err.value)
    (tmp_path / "chats.json").write_text(json.dumps([{"conversations": [H, G]}, {"conversations": turns}]))
    with pytest.raises(DataError, match=f"chats.json: record 1: field 'conversations', {message[:7]}"):
        load_records(str(tmp_path / "chats.json"), sharegpt())


def test_bad_tools_no_answer_and_skip(tmp_path):
    rows = [{"conversations": [H, G], "tools": "[{oops"}, {"conversations": [H]}, {"conversations": [H, G], "tools": ""}]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(DataError, match=r"t.jsonl:1: field 'tools': not a JSON list of tool schemas"):
        load_records(str(path), sharegpt())
    found = load_records(str(path), sharegpt(on_bad_record="skip"))
    assert [r["id"] for r in found.records] == [2] and "tools" not in found.records[0] and found.bad == 2
    assert "t.jsonl:2: field 'conversations': no non-empty assistant message to train on" in found.bad_examples[1]
    prompts = load_records(str(path), sharegpt(on_bad_record="skip"), answers=False).records  # sft-generate
    assert prompts[0] == {"id": 1, "messages": [{"role": "user", "content": "q"}]}


def test_role_names_must_map_to_a_role():
    cfg = DataConfig(path="x", format="sharegpt", sharegpt=ShareGPTConfig(roles={"bot": "robot"}))
    assert cfg.problems("data") == ["data.sharegpt.roles.bot='robot': must be one of system, user, assistant, tool, "
                                    "tool_call"]
