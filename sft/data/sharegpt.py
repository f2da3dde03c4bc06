"""ShareGPT records -> messages-format rows, so that they are validated, rendered and masked by the messages path.

    {"conversations": [{"from": "system", "value": "..."}, {"from": "human", "value": "..."},
                       {"from": "function_call", "value": "{\"name\": \"weather\", \"arguments\": {...}}"},
                       {"from": "observation", "value": "4 C"}, {"from": "gpt", "value": "..."}],
     "tools": "[{\"name\": \"weather\", ...}]"}

The keys (`from`, `value`, `conversations`) and the role names are data.sharegpt's. A function_call turn becomes an
assistant message with tool_calls; tool schemas may be a list or a JSON string of one (LLaMA-Factory writes them
so). Turns must alternate as a conversation does: an optional system turn first, then user, assistant, user, ...,
where a function_call may answer a user and tool (observation) turns answer a function_call or an assistant.
"""

from __future__ import annotations

import json
from typing import Any

from sft.errors import DataError
from sft.schemas import ShareGPTConfig

# role -> the roles the turn before it may have (None: it opens the conversation)
FOLLOWS = {"system": {None}, "user": {None, "system", "assistant"}, "assistant": {"user", "tool"},
           "tool_call": {"user", "tool"}, "tool": {"tool_call", "assistant", "tool"}}
KEPT_KEYS = ("reasoning_content", "name", "tool_call_id")  # a turn's own keys that the messages path reads


def sharegpt_as_messages(row: dict[str, Any], where: str, cfg: ShareGPTConfig, tools_field: str) -> dict[str, Any]:
    """{conversations_field: messages, tools_field: tool schemas (when given)}; a bad turn is a DataError naming
    the record's place, the turn and its speaker."""
    field = cfg.conversations_field
    turns = row.get(field)
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field {field!r}: must be a non-empty list of {{{cfg.role_key}, {cfg.content_key}}}")
    messages, previous = [], None
    for j, turn in enumerate(turns):
        here = f"{where}: field {field!r}, turn {j}"
        role, value = _turn(turn, here, cfg)
        here = f"{here} ({cfg.role_key} {turn[cfg.role_key]!r})"
        if previous not in FOLLOWS[role]:
            after = f"follows {_said(previous)} turn" if previous else "opens the conversation"
            raise DataError(f"{here}: {_said(role)} turn {after}; turns alternate: an optional system turn, "
                            "then user, assistant, user, ... (tool turns answer a function_call)")
        message: dict[str, Any] = {"role": role, "content": value}
        if role == "tool_call":
            message = {"role": "assistant", "content": "", "tool_calls": _calls(value, here)}
        message.update({k: turn[k] for k in KEPT_KEYS if isinstance(turn.get(k), str)})
        messages.append(message)
        previous = role
    out: dict[str, Any] = {field: messages}
    tools = _tools(row.get(tools_field), f"{where}: field {tools_field!r}")
    if tools is not None:
        out[tools_field] = tools
    return out


def _turn(turn: Any, here: str, cfg: ShareGPTConfig) -> tuple[str, str]:
    """(role, value) of one turn, checked."""
    if not isinstance(turn, dict):
        raise DataError(f"{here}: expected an object with {cfg.role_key!r} and {cfg.content_key!r}, "
                        f"got {type(turn).__name__}")
    name = turn.get(cfg.role_key)
    if not isinstance(name, str) or name not in cfg.roles:
        raise DataError(f"{here}: {cfg.role_key} {name!r} is not a role name; known: {', '.join(cfg.roles)} "
                        f"(add one with +data.sharegpt.roles.NAME=user|assistant|system|tool|tool_call)")
    here = f"{here} ({cfg.role_key} {name!r})"
    value = turn.get(cfg.content_key)
    if not isinstance(value, str):
        raise DataError(f"{here}: {cfg.content_key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{here}: empty {cfg.content_key!r}")
    return cfg.roles[name], value


def _said(role: str) -> str:
    """'an assistant', 'a function_call'."""
    name = "function_call" if role == "tool_call" else role
    return f"{'an' if name[0] in 'aeio' else 'a'} {name}"


def _calls(value: str, here: str) -> list[dict[str, Any]]:
    """A function_call turn's value: one JSON call {name, arguments} or a list of them."""
    try:
        calls = json.loads(value)
    except json.JSONDecodeError as e:
        raise DataError(f"{here}: the value is not a JSON tool call ({e.msg} at column {e.colno})") from None
    calls = calls if isinstance(calls, list) else [calls]
    out = []
    for call in calls:
        if not (isinstance(call, dict) and isinstance(call.get("name"), str) and call["name"]
                and isinstance(call.get("arguments", {}), (dict, str))):
            raise DataError(f"{here}: a tool call must be {{\"name\": ..., \"arguments\": {{...}}}}, got {call!r:.80}")
        out.append({"type": "function", "function": {"name": call["name"], "arguments": call.get("arguments", {})}})
    return out


def _tools(tools: Any, here: str) -> list[Any] | None:
    """Tool schemas: a list, a JSON string of one, or nothing (absent, null or an empty string)."""
    if tools is None or tools == "":
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise DataError(f"{here}: not a JSON list of tool schemas ({e.msg} at column {e.colno})") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise DataError(f"{here}: must be a list of tool schemas (objects), or a JSON string of one")
    return tools
