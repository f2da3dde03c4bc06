"""prompt=chat with messages so short that their text stands inside the template's control tokens ("a" and
"start" in <|im_start|>, "end" in <|im_end|>, "|", "<"), a single space and an empty system prompt, on every family
of tests/families.py: each message's text is located in its own turn, so the rows' control tokens are the
template's; and the row check catches a cut inside a control token's string, which decodes to the same text."""

from __future__ import annotations

from typing import Any

import pytest
from families import FAMILIES, tokenizer

from sft.config import DataConfig, PromptConfig
from sft.data import chat
from sft.data.prompts import build_segments, end_of_turn_token, prompt_segments
from sft.data.skeleton import FIELDS
from sft.data.tokenize import IGNORE_INDEX, control_ids, encode, special_prefix, tokenize_examples
from sft.errors import DataError
from sft.generate.items import prompt_ids

pytestmark = pytest.mark.slow
SHORT = ["a", "end", "start", "id", "im", "|", "<", " "]
# each short text once as a question and once as an answer; every other conversation has an empty system prompt
CONVERSATIONS = [([{"role": "system", "content": ""}] if k % 2 == 0 else [])
                 + [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                 for k, (q, a) in enumerate(zip(SHORT, SHORT[1:] + SHORT[:1]))]
CONVERSATIONS.append([{"role": "user", "content": "a"}, {"role": "assistant", "content": "end"},
                      {"role": "user", "content": "<"}, {"role": "assistant", "content": "|"}])
ALL = [*FAMILIES, "llama-2-spm"]


def controls(tok: Any, ids: list[int]) -> list[int]:
    special = control_ids(tok)
    return [t for t in ids if t in special]


def row_ids(tok: Any, text: str, ids: list[int]) -> list[int]:
    """The row without the BOS that tokenize_examples puts in front of a template that writes none."""
    return ids[len(special_prefix(tok)) if not text.startswith(tok.bos_token or "\0") else 0:]


@pytest.mark.parametrize("family", ALL)
def test_short_texts_are_located_in_their_own_turn(family: str) -> None:
    tok, cfg = tokenizer(family), PromptConfig(name="chat")
    eot = end_of_turn_token(cfg, tok)
    records = [{"id": k, "messages": m} for k, m in enumerate(CONVERSATIONS)]
    segments = [build_segments(r, cfg, tok, eot) for r in records]
    examples, kept, stats = tokenize_examples(segments, tok, eot, max_seq_len=4096)
    assert kept == list(range(len(records))) and stats.render_mismatched == []
    for record, segs, ex in zip(records, segments, examples):
        text = "".join(s.text for s in segs)
        assert chat.render(record["messages"], cfg, tok, False).startswith(text)
        # the template's control tokens, as a whole tokenization of the render gives them: none cut into text
        assert controls(tok, row_ids(tok, text, ex["input_ids"])) == controls(tok, encode(tok, [text])[0]), family
        # the record text, in order, is the messages' text (as the template trims it)
        plain = [s.text.strip() for s in segs if s.plain and s.text.strip()]
        assert plain == [m[f].strip() for m in record["messages"] for f in FIELDS if (m.get(f) or "").strip()]
        # each trained run ends with the end-of-turn id, and what is trained ends with the answer
        labels = ex["labels"]
        ends = [i for i in range(len(labels))
                if labels[i] != IGNORE_INDEX and (i + 1 == len(labels) or labels[i + 1] == IGNORE_INDEX)]
        assert all(ex["input_ids"][i] == tok.convert_tokens_to_ids(eot) for i in ends)
        answer = record["messages"][-1]["content"]
        trained = "".join(s.text for s in segs if s.trained)
        assert trained.removesuffix(eot).endswith(answer.strip() if family.startswith("llama-3") else answer)


@pytest.mark.parametrize("family", ALL)
def test_generation_prompts_of_short_texts_keep_the_control_tokens(family: str) -> None:
    tok, cfg = tokenizer(family), PromptConfig(name="chat")
    for k, messages in enumerate(CONVERSATIONS):
        segs = prompt_segments({"id": k, "messages": messages}, cfg, tok)
        text = "".join(s.text for s in segs)
        assert text == chat.render(messages[:-1], cfg, tok, True)
        ids = prompt_ids(segs, tok, special_prefix(tok))
        assert controls(tok, row_ids(tok, text, ids)) == controls(tok, encode(tok, [text])[0]), family


def substring_locate(text: str, layout: chat.Layout, messages: list[dict[str, Any]]) -> Any:
    """The locating before issue 26: each text searched for from the end of the one before it (an answer from
    the end of its generation prompt)."""
    spans, cursor, aligned = {}, 0, REAL_LOCATE(text, layout, messages)[1]
    for i, m in enumerate(messages):
        head = aligned.to_render(layout.heads[i]) if i in layout.heads else -1
        for field in FIELDS:
            value = m.get(field)
            at = text.find(value, max(cursor, head)) if isinstance(value, str) and value else -1
            if at >= 0:
                spans[(i, field)] = [(at, at + len(value))]
                cursor = at + len(value)
    return spans, aligned


REAL_LOCATE = chat.locate
ISSUE_RECORDS = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
                 {"messages": [{"role": "user", "content": "end"}, {"role": "assistant", "content": "start"}]}]


def test_the_row_check_catches_a_cut_inside_a_control_token(monkeypatch: Any, tmp_path: Any) -> None:
    from conftest import write_jsonl

    from sft.data import tokenize
    from sft.data.prepare import prepare

    tok, cfg = tokenizer("qwen2.5"), PromptConfig(name="chat")
    monkeypatch.setattr(chat, "locate", substring_locate)
    segments = [build_segments(r, cfg, tok) for r in ISSUE_RECORDS]
    # the cut the issue reproduced: "a" inside <|im_start|>, "end" inside the system turn's <|im_end|>
    assert [s.text for s in segments[0][:2]] == ["<|im_st", "a"] and segments[1][1].text == "end"
    _, kept, stats = tokenize_examples(segments, tok, "<|im_end|>", 4096)
    assert kept == [] and stats.render_mismatched == [0, 1]
    path = write_jsonl(tmp_path / "c.jsonl", ISSUE_RECORDS)
    with pytest.raises(DataError, match=r"c.jsonl: record 0: its tokens do not"):
        prepare(DataConfig(path=str(path), format="messages"), cfg, tok, 0, use_cache=False)
    # the decoded text alone cannot see it: without the control tokens' comparison both rows pass
    monkeypatch.setattr(tokenize, "control_mismatches", lambda *args: [])
    _, kept, _ = tokenize_examples(segments, tok, "<|im_end|>", 4096)
    assert kept == [0, 1]
