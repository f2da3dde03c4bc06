"""The per-step stop-string check decodes a window at the end of the output, yet answers what decoding the
whole output answers (whole_text_cut, the rule before), step by step, on the real SmolLM2 tokenizer: random
token sequences cut through multibyte characters and emoji, hold special tokens that decode to nothing, and
meet stop strings of several tokens at different places, with and without min_new_tokens."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from conftest import tiny_llama

from sft.config import GenerationConfig, ModelConfig
from sft.generate.decode import Stopping, decode, stop_string_cut, whole_text_cut
from sft.model.load import load_tokenizer

TEXT = (
    "Héllo wörld! 😀 Ça va? Yes, it's fine. I don't know, they've said we're 'done' . "
    "日本語のテキスト。Emoji: 👍🏽 🎉🎉 and € £ ¥ — “quotes” ... \n\nNew para: naïve café 🤖!\n"
)
FIXED_STOPS = ["😀", "🎉", "é", "。", "\n\n", " don't", "'s", " ,", "€ £", "👍🏽", "wörld!"]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(ModelConfig())


def stepwise(tokens: list[int], stopping: Stopping, min_tokens: int, check: Callable) -> tuple[int, str | None]:
    """Run `check` after each token as the decoding loop does: (tokens when it stopped, cut text)."""
    for n in range(1, len(tokens) + 1):
        cut = check(tokens[:n], stopping, min_tokens)
        if cut is not None:
            return n, cut
    return len(tokens), None


def random_tokens(rng: random.Random, text_ids: list[int], vocab: int) -> list[int]:
    """Runs of real text (so multibyte characters assemble), random ids (often byte pieces), special ids."""
    out: list[int] = []
    length = rng.randint(10, 90)
    while len(out) < length:
        kind = rng.random()
        if kind < 0.6:
            i = rng.randrange(len(text_ids))
            out += text_ids[i : i + rng.randint(1, 12)]
        elif kind < 0.85:
            out.append(rng.randrange(vocab))
        else:
            out.append(rng.randrange(17))  # <|endoftext|>, <|im_start|>, ...: skipped by the decode
    return out


def stops_for(rng: random.Random, text: str) -> list[str]:
    stops = rng.sample(FIXED_STOPS, rng.randint(0, 2))
    for _ in range(rng.randint(1, 3)):  # substrings of this output, which may span several tokens
        i = rng.randrange(max(len(text), 1))
        stops.append(text[i : i + rng.randint(1, 12)] or "x")
    return stops


@pytest.mark.parametrize("clean_up", [False, True])
def test_the_tail_check_equals_the_whole_decode_on_random_outputs(tokenizer: Any, clean_up: bool) -> None:
    dec = lambda t: tokenizer.decode(t, skip_special_tokens=True, clean_up_tokenization_spaces=clean_up)
    text_ids = tokenizer.encode(TEXT, add_special_tokens=False)
    rng = random.Random(0 if not clean_up else 1)
    stopped = 0
    for _ in range(300):
        tokens = random_tokens(rng, text_ids, len(tokenizer))
        stopping = Stopping([], stops_for(rng, dec(tokens)), dec)
        min_tokens = rng.choice([0, 0, 1, 2, 3, rng.randrange(len(tokens) + 1)])
        old = stepwise(tokens, stopping, min_tokens, whole_text_cut)
        assert stepwise(tokens, stopping, min_tokens, stop_string_cut) == old, (tokens, stopping.strings, min_tokens)
        stopped += old[1] is not None
    assert stopped > 150  # most cases do meet a stop string


def test_min_new_tokens_boundaries_inside_characters(tokenizer: Any) -> None:
    """Every boundary of an output full of emoji pieces (where the old rule's start can drop back to 0 once
    the cut character completes), with stop strings inside and after the head."""
    dec = lambda t: tokenizer.decode(t, skip_special_tokens=True)
    tokens = tokenizer.encode("a😀b 🎉🎉 c👍🏽d 😀 e🤖 🎉 f", add_special_tokens=False)
    tokens = tokens[:5] + [1] + tokens[5:]  # a special token in the middle of it all
    assert any(dec(tokens[:k]).endswith("\ufffd") for k in range(len(tokens)))
    for stops in (["😀"], ["🎉"], ["b"], ["🎉 c"], ["d 😀"], ["🤖", "f"], ["\ufffd"]):
        stopping = Stopping([], stops, dec)
        for min_tokens in range(len(tokens) + 1):
            old = stepwise(tokens, stopping, min_tokens, whole_text_cut)
            assert stepwise(tokens, stopping, min_tokens, stop_string_cut) == old, (stops, min_tokens)


def counting(dec: Callable[[list[int]], str]) -> tuple[Callable[[list[int]], str], list[int]]:
    sizes: list[int] = []

    def counted(ids: list[int]) -> str:
        sizes.append(len(ids))
        return dec(ids)

    return counted, sizes


@pytest.mark.parametrize("min_tokens", [0, 10])
def test_tokens_decoded_per_step_are_bounded(tokenizer: Any, min_tokens: int) -> None:
    text_ids = tokenizer.encode(TEXT, add_special_tokens=False)
    tokens = (text_ids * 40)[:2000]
    dec, sizes = counting(lambda t: tokenizer.decode(t, skip_special_tokens=True))
    stopping = Stopping([], ["never seen", "🚫🚫"], dec)
    assert stepwise(tokens, stopping, min_tokens, stop_string_cut) == (2000, None)
    assert max(sizes) <= 64 and sum(sizes) <= 64 * len(tokens)  # the whole decode: 2,000 and 2,001,000


@pytest.mark.usefixtures("one_torch_thread")
def test_a_long_generation_decodes_a_linear_number_of_tokens() -> None:
    model = tiny_llama(vocab_size=128, seed=0)
    dec, sizes = counting(lambda ids: "".join(chr(97 + i % 26) for i in ids))
    cfg = GenerationConfig(max_new_tokens=400, min_new_tokens=5)
    done = decode(model, [[5, 6, 7], [9, 10]], [0, 0], cfg, Stopping([], ["!!"], dec), pad_id=0)
    assert [(len(d.tokens), d.finish_reason) for d in done] == [(400, "length")] * 2
    assert sum(sizes) <= 20 * 2 * 400 and max(sizes) <= 40
