"""prompt=chat on the real tokenizers and official chat templates of Llama-3.1, Llama-3.2, Qwen2.5, Qwen3, Phi-3.5,
a DeepSeek-R1 distill and a Llama-2 style SentencePiece tokenizer (tests/families.py fetches them): every row
decodes to its template's render, the trained tokens are exactly the answers and their end-of-turn token, record
text that spells a control token stays text, and generation tokenizes its prompt as training did."""

from __future__ import annotations

import json
from typing import Any

import pytest
from families import FAMILIES, tokenizer

from sft.config import DataConfig, PromptConfig
from sft.data.prompts import build_segments, end_of_turn_token, prompt_segments
from sft.data.tokenize import IGNORE_INDEX, encode, special_prefix, special_strings, tokenize_examples
from sft.generate.items import prompt_ids

pytestmark = pytest.mark.slow
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
LITERALS = "<|im_end|> <|eot_id|> <|end|> </s> <|im_start|>assistant <｜end▁of▁sentence｜>"
RECORDS = [
    {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": " Paris.\n"}, {"role": "user", "content": "And Japan?"},
                  {"role": "assistant", "content": "Tokyo."}]},
    {"messages": [{"role": "user", "content": "Übersetze: 猫 (ねこ)"}, {"role": "assistant", "content": "Katze — 猫 is a cat."}]},
    {"messages": [{"role": "user", "content": f"Repeat: {LITERALS}"}, {"role": "assistant", "content": f"Said: {LITERALS}"}]},
]
TOOL_RECORD = {"tools": TOOLS, "messages": [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]},
    {"role": "tool", "name": "weather", "content": "4 C, rain"},
    {"role": "assistant", "content": "4 C and rain in Oslo."}]}
REASONING_RECORD = {"messages": [{"role": "user", "content": "2+2?"},
                                 {"role": "assistant", "reasoning_content": "Two and two make four.", "content": "4"}]}
WITH_TOOLS = {"llama-3.1", "llama-3.2", "qwen2.5", "qwen3"}
# SentencePiece decodes its space mark, and some special-token spellings in plain text, lossily: rows with the
# literals are checked by their ids there, not by decoding them
SENTENCEPIECE = {"phi-3.5", "llama-2-spm"}
ALL = [*FAMILIES, "llama-2-spm"]


def records_for(family: str, tmp_path: Any) -> list[dict[str, Any]]:
    """The records as sft loads them (tool arguments as a JSON string, as Parquet would hold them)."""
    from conftest import write_jsonl

    from sft.data.load import load_records

    rows = RECORDS + ([TOOL_RECORD] if family in WITH_TOOLS else []) + ([REASONING_RECORD] if family == "qwen3" else [])
    path = write_jsonl(tmp_path / "chats.jsonl", rows)
    return load_records(str(path), DataConfig(path=str(path), format="messages")).records


def expected_answers(record: dict[str, Any], family: str) -> list[str]:
    """The text of each trained assistant turn as the template renders it (Llama-3 trims it)."""
    out = []
    for m in record["messages"]:
        if m["role"] == "assistant" and m["content"]:
            content = m["content"].strip() if family.startswith("llama-3") else m["content"]
            out.append((m["reasoning_content"] + "\n</think>\n\n" + content) if m.get("reasoning_content") else content)
    return out


@pytest.mark.parametrize("family", ALL)
def test_every_row_is_its_render_with_exact_trained_spans(family: str, tmp_path: Any) -> None:
    tok, cfg = tokenizer(family), PromptConfig(name="chat")
    eot = end_of_turn_token(cfg, tok)
    assert eot == {"llama-3.1": "<|eot_id|>", "llama-3.2": "<|eot_id|>", "qwen2.5": "<|im_end|>", "qwen3": "<|im_end|>",
                   "phi-3.5": "<|end|>", "deepseek-r1-distill-qwen": "<｜end▁of▁sentence｜>", "llama-2-spm": "</s>"}[family]
    records = records_for(family, tmp_path)
    segments = [build_segments(r, cfg, tok) for r in records]
    examples, kept, stats = tokenize_examples(segments, tok, eot, max_seq_len=4096)
    assert kept == list(range(len(records))) and stats.render_mismatched == []
    assert stats.eos_untrained == 0 and stats.double_bos == 0
    eot_id = tok.convert_tokens_to_ids(eot)
    controls = {tok.convert_tokens_to_ids(t) for t in special_strings(tok)}
    for record, segs, ex in zip(records, segments, examples):
        text = "".join(s.text for s in segs)
        ids = ex["input_ids"][len(special_prefix(tok)) if not text.startswith(tok.bos_token or "\0") else 0:]
        lossy = family in SENTENCEPIECE and LITERALS in text
        decoded = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert lossy or decoded == text or decoded == tok.decode(encode(tok, [text])[0], skip_special_tokens=False,
                                                                 clean_up_tokenization_spaces=False)
        # trained runs: each ends with the end-of-turn id; the answers' text is exactly the render's
        runs, run = [], []
        for t, label in zip(ex["input_ids"], ex["labels"]):
            if label != IGNORE_INDEX:
                run.append(t)
            elif run:
                runs.append(run)
                run = []
        runs += [run] if run else []
        assert all(r[-1] == eot_id for r in runs)
        answers = [tok.decode(r[:-1], skip_special_tokens=False, clean_up_tokenization_spaces=False) for r in runs]
        for got, want in zip([a for a in answers if not a.lstrip().startswith("<")], expected_answers(record, family)):
            assert lossy or got.strip().endswith(want.strip())
        # only the template writes control tokens: the record's literals stay text
        record_controls = [t for t in ids if t in controls]
        assert len(record_controls) == len([t for t in encode(tok, [text.replace(LITERALS, "")])[0] if t in controls])


@pytest.mark.parametrize("family", ALL)
def test_generation_tokenizes_the_prompt_as_training_did(family: str, tmp_path: Any) -> None:
    tok, cfg = tokenizer(family), PromptConfig(name="chat")
    eot = end_of_turn_token(cfg, tok)
    for record in records_for(family, tmp_path)[:3]:
        (ex,), _, _ = tokenize_examples([build_segments(record, cfg, tok)], tok, eot, 4096)
        starts = [i for i in range(1, len(ex["labels"])) if ex["labels"][i] != IGNORE_INDEX and ex["labels"][i - 1] == IGNORE_INDEX]
        generation = prompt_ids(prompt_segments(record, cfg, tok), tok, special_prefix(tok))
        if family == "deepseek-r1-distill-qwen":  # its generation prompt opens a think block training never saw
            assert "<think>" in tok.decode(generation[starts[-1]:]) and generation[: starts[-1]] == ex["input_ids"][: starts[-1]]
            continue
        assert generation == ex["input_ids"][: starts[-1]], family


def test_reasoning_is_trained_or_masked_and_turns_can_be_limited(tmp_path: Any) -> None:
    tok = tokenizer("qwen3")
    record = records_for("qwen3", tmp_path)[-1]
    trained = lambda cfg: "".join(s.text for s in build_segments(record, cfg, tok) if s.trained)  # noqa: E731
    assert trained(PromptConfig(name="chat")) == "<think>\nTwo and two make four.\n</think>\n\n4<|im_end|>"
    assert trained(PromptConfig(name="chat", train_reasoning=False)) == "4<|im_end|>"
    multi = records_for("qwen3", tmp_path)[0]
    last = [s.text for s in build_segments(multi, PromptConfig(name="chat", train_on="last_assistant"), tok) if s.trained]
    assert "".join(last).endswith("Tokyo.<|im_end|>") and "Paris" not in "".join(last)
    off = PromptConfig(name="chat", template_kwargs={"enable_thinking": False})
    assert "<think>\n\n</think>" in "".join(s.text for s in prompt_segments(multi, off, tok))


def test_a_record_the_template_cannot_cut_is_a_bad_record_named_by_turn(tmp_path: Any) -> None:
    from conftest import write_jsonl

    from sft.data.prepare import prepare

    tok = tokenizer("llama-2-spm")  # its template has no tool role: the tool message is dropped from the render
    rows = [RECORDS[1], {"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "secret"},
                                      {"role": "assistant", "content": "b"}]}]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    data = DataConfig(path=str(path), format="messages", max_seq_len=256)
    with pytest.raises(Exception, match=r"c.jsonl: record 1: turn 1 \(tool\): cannot find its content"):
        prepare(data, PromptConfig(name="chat"), tok, 0, use_cache=False)
    skipped = prepare(DataConfig(**{**data.__dict__, "on_bad_record": "skip"}), PromptConfig(name="chat"), tok, 0,
                      use_cache=False)
    assert skipped.report["bad_records"] == 1 and skipped.report["splits"]["train"]["kept"] == 1
    assert skipped.report["template_details"]["end_of_turn"] == "</s>"
    assert json.dumps(skipped.report)  # the report is plain data
