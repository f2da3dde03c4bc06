"""Templates: Alpaca verbatim, the tokenizer's chat template, custom; generation sees the training prompt."""

from __future__ import annotations

import pytest

from sft.config import PromptConfig
from sft.data.prompts import build_segments, chat_segments, render_prompt
from sft.errors import DataError

WITH_INPUT = {"id": 0, "instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
NO_INPUT = {"id": 1, "instruction": "Say hi.", "input": "", "output": "Hi!"}


def test_alpaca_templates_are_the_published_ones(char_tokenizer):
    assert render_prompt(WITH_INPUT, PromptConfig(), char_tokenizer) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:"
    )
    assert render_prompt(NO_INPUT, PromptConfig(), char_tokenizer) == (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSay hi.\n\n### Response:"
    )


def test_segments_are_prompt_then_answer(char_tokenizer):
    segments = build_segments(WITH_INPUT, PromptConfig(), char_tokenizer)
    assert [(s.text, s.trained) for s in segments] == [(render_prompt(WITH_INPUT, PromptConfig(), char_tokenizer), False), ("5", True)]


def test_custom_template_keeps_braces_in_the_data(char_tokenizer):
    cfg = PromptConfig(name="custom", template_input="I: {instruction} [{input}] =>", template_no_input="I: {instruction} =>")
    record = {"id": 0, "instruction": "Print {x}", "input": "{input}", "output": "ok"}
    assert render_prompt(record, cfg, char_tokenizer) == "I: Print {x} [{input}] =>"
    # an instruction that itself contains a field name is inserted as it is, never substituted again
    code = {"id": 1, "instruction": 'What does print(f"{input}") print?', "input": "", "output": "ok"}
    assert render_prompt(code, PromptConfig(name="alpaca"), char_tokenizer).endswith(
        '### Instruction:\nWhat does print(f"{input}") print?\n\n### Response:')
    assert render_prompt({**code, "input": "hello"}, cfg, char_tokenizer) == 'I: What does print(f"{input}") print? [hello] =>'


def test_custom_template_typed_on_the_command_line_reads_escapes(char_tokenizer):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    # the documented override (conf/prompt/custom.yaml), as the shell hands it to Hydra
    (override,) = OverridesParser.create().parse_overrides(["prompt.template_no_input='Q: {instruction}\\nA:'"])
    assert override.value() == "Q: {instruction}\\nA:"  # Hydra keeps the backslash and the n
    cfg = PromptConfig(name="custom", template_input="{instruction} {input}", template_no_input=override.value())
    record = {"id": 0, "instruction": "Name a colour \\n please", "input": "", "output": "red"}
    # the template's escape becomes a newline; the data's own backslashes stay as written
    assert render_prompt(record, cfg, char_tokenizer) == "Q: Name a colour \\n please\nA:"


def test_chat_template_trains_each_assistant_turn(smollm2_tokenizer):
    msgs = [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you."},
    ]
    cfg = PromptConfig(name="chat")
    segments = chat_segments(msgs, None, cfg, smollm2_tokenizer, "<|im_end|>")
    assert [(s.text, s.part) for s in segments if s.trained] == [
        ("Hello!", "answer"), ("<|im_end|>", "structure"), ("See you.", "answer"), ("<|im_end|>", "structure")]
    assert segments[0].text.endswith("<|im_start|>user\n") and segments[1].text == "Hi" and segments[1].plain
    assert segments[2].text == "<|im_end|>\n<|im_start|>assistant\n" and not segments[2].plain
    # the segments are the template's own rendering, up to the end of the last trained turn
    assert smollm2_tokenizer.apply_chat_template(msgs, tokenize=False) == "".join(s.text for s in segments) + "\n"
    last = chat_segments(msgs, None, PromptConfig(name="chat", train_on="last_assistant"), smollm2_tokenizer, "<|im_end|>")
    assert [s.text for s in last if s.trained] == ["See you.", "<|im_end|>"]


def test_chat_prompt_for_generation_and_system_message(smollm2_tokenizer):
    cfg = PromptConfig(name="chat", system="Be brief.")
    prompt = render_prompt(NO_INPUT, cfg, smollm2_tokenizer)
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
    segments = build_segments(NO_INPUT, cfg, smollm2_tokenizer)
    assert "".join(s.text for s in segments if not s.trained) == prompt


def test_the_end_of_turn_token_comes_from_the_template(smollm2_tokenizer):
    from sft.data.prompts import end_of_turn_token

    assert end_of_turn_token(PromptConfig(name="chat"), smollm2_tokenizer) == "<|im_end|>"
    import copy

    llama3 = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}"
              "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
    tok = copy.deepcopy(smollm2_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    assert end_of_turn_token(PromptConfig(name="chat", chat_template=llama3), tok) == "<|eot_id|>"
    # the template trims the answer: it is located trimmed, not refused
    segs = chat_segments([{"role": "user", "content": "a"}, {"role": "assistant", "content": " b \n"}], None,
                         PromptConfig(name="chat", chat_template=llama3), tok, "<|eot_id|>")
    assert [s.text for s in segs if s.trained] == ["b", "<|eot_id|>"]


def test_chat_template_with_another_end_of_turn_is_a_bad_turn(smollm2_tokenizer):
    from sft.data.chat import ChatError

    with pytest.raises(ChatError, match=r"turn 1 \(assistant\): the template does not close it with '</s>'.*prompt.end_of_turn"):
        chat_segments([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], None,
                      PromptConfig(name="chat"), smollm2_tokenizer, "</s>")


def test_a_template_with_generation_marks_decides_what_is_trained(smollm2_tokenizer):
    """{% generation %} blocks (transformers' assistant mask) are the trained spans; record text stays plain."""
    marked = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}{% generation %}"
              "{{ m['content'] }}<|im_end|>{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>{% endif %}\n"
              "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    cfg = PromptConfig(name="chat", chat_template=marked)
    msgs = [{"role": "user", "content": "Hi <|im_end|>"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you."}]
    segments = chat_segments(msgs, None, cfg, smollm2_tokenizer, "<|im_end|>")
    assert [s.text for s in segments if s.trained] == ["Hello!", "<|im_end|>", "See you.", "<|im_end|>"]
    assert [s.text for s in segments if s.plain and not s.trained] == ["Hi <|im_end|>", "Bye"]
    last = chat_segments(msgs, None, PromptConfig(name="chat", chat_template=marked, train_on="last_assistant"),
                         smollm2_tokenizer, "<|im_end|>")
    assert [s.text for s in last if s.trained] == ["See you.", "<|im_end|>"]


def test_chat_template_from_a_file_and_a_missing_one(smollm2_tokenizer, tmp_path):
    from sft.errors import ConfigError

    (tmp_path / "t.jinja").write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|im_end|>{% endfor %}"
                                      "{% if add_generation_prompt %}[assistant] {% endif %}")
    cfg = PromptConfig(name="chat", chat_template=str(tmp_path / "t.jinja"))
    assert render_prompt(NO_INPUT, cfg, smollm2_tokenizer) == "[user] Say hi.<|im_end|>[assistant] "
    with pytest.raises(ConfigError, match="prompt.chat_template=.*missing.jinja: file not found"):
        render_prompt(NO_INPUT, PromptConfig(name="chat", chat_template=str(tmp_path / "missing.jinja")), smollm2_tokenizer)


def test_a_custom_template_puts_the_system_message_in_its_place(char_tokenizer):
    cfg = PromptConfig(name="custom", system="Answer in one word.", template_input="{system}\nQ: {instruction} ({input})\nA:",
                       template_no_input="{system}\nQ: {instruction}\nA:")
    assert cfg.problems("prompt") == []
    assert render_prompt(NO_INPUT, cfg, char_tokenizer) == "Answer in one word.\nQ: Say hi.\nA:"
    assert [(s.text, s.trained) for s in build_segments(WITH_INPUT, cfg, char_tokenizer)] == [
        ("Answer in one word.\nQ: Add the numbers. (2 and 3)\nA:", False), ("5", True)]
    # the system text is put in once, never searched again
    braces = PromptConfig(name="custom", system="{instruction}", template_input="{system}|{input}",
                          template_no_input="{system}|{instruction}")
    assert render_prompt(NO_INPUT, braces, char_tokenizer) == "{instruction}|Say hi."


@pytest.mark.parametrize(("cfg", "message"), [
    (PromptConfig(system="Be brief."), "prompt.system: prompt=alpaca has no place for a system message"),
    (PromptConfig(name="custom", system="Be brief.", template_input="{instruction} {input}", template_no_input="{instruction}"),
     "prompt.system is set but neither prompt.template_input nor prompt.template_no_input contains {system}"),
    (PromptConfig(name="custom", template_input="{system} {instruction} {input}", template_no_input="{instruction}"),
     "contain {system}: set prompt.system"),
])
def test_a_system_message_with_no_place_is_refused(cfg, message):
    assert any(message in p for p in cfg.problems("prompt")), cfg.problems("prompt")
