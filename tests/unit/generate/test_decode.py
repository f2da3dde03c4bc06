"""The batched decoding loop on a tiny random Llama: greedy equals model.generate, samples do not depend on
the batch, stop tokens and strings end rows where they should, log-probabilities are the model's."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny_llama

from sft.config import GenerationConfig
from sft.generate.decode import Stopping, decode, left_pad

EOS = 2
PAD = 0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_llama(vocab_size=128, seed=0)


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 20, (n,), generator=g).tolist()
    return [torch.randint(4, 128, (k,), generator=g).tolist() for k in lengths]


def by_index(done: list) -> dict[int, list[int]]:
    return {d.index: d.tokens for d in done}


def chars(ids: list[int]) -> str:
    return "".join(chr(97 + i % 26) for i in ids)


def test_greedy_equals_model_generate(model: torch.nn.Module) -> None:
    ps = prompts(8)
    cfg = GenerationConfig(max_new_tokens=20)
    ours = by_index(decode(model, ps, [0] * 8, cfg, Stopping([EOS]), PAD))
    ids, mask, _ = left_pad(ps, PAD, "cpu")
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=20, eos_token_id=EOS, pad_token_id=PAD)
    for i in range(8):
        theirs = out[i, ids.shape[1] :].tolist()
        theirs = theirs[: theirs.index(EOS)] if EOS in theirs else theirs
        assert ours[i] == theirs


def test_sampled_rows_do_not_depend_on_batch_size_or_order(model: torch.nn.Module) -> None:
    ps = prompts(12, seed=1)
    seeds = list(range(100, 112))
    cfg = GenerationConfig(do_sample=True, temperature=1.0, top_p=0.95, max_new_tokens=16)
    batched = by_index(decode(model, ps, seeds, cfg, Stopping([EOS]), PAD))
    for i in range(12):
        assert decode(model, [ps[i]], [seeds[i]], cfg, Stopping([EOS]), PAD)[0].tokens == batched[i]
    order = list(reversed(range(12)))
    reversed_run = by_index(decode(model, [ps[i] for i in order], [seeds[i] for i in order], cfg, Stopping([EOS]), PAD))
    assert all(reversed_run[j] == batched[i] for j, i in enumerate(order))


def test_seeds_change_samples_and_temperature_zero_ignores_them(model: torch.nn.Module) -> None:
    ps = prompts(6, seed=2)
    sampled = GenerationConfig(do_sample=True, temperature=1.0, max_new_tokens=12)
    a = by_index(decode(model, ps, list(range(6)), sampled, Stopping([EOS]), PAD))
    b = by_index(decode(model, ps, list(range(50, 56)), sampled, Stopping([EOS]), PAD))
    assert a != b
    greedy = by_index(decode(model, ps, [0] * 6, GenerationConfig(max_new_tokens=12), Stopping([EOS]), PAD))
    cold = dataclasses.replace(sampled, temperature=0.0)
    for seeds in ([1] * 6, list(range(9, 15))):
        assert by_index(decode(model, ps, seeds, cold, Stopping([EOS]), PAD)) == greedy


def test_stop_token_ends_the_row_and_min_new_tokens_delays_it(model: torch.nn.Module) -> None:
    ps = prompts(3, seed=3)
    hook = model.lm_head.register_forward_hook(lambda m, i, out: out.index_add(-1, torch.tensor([EOS]), torch.full_like(out[..., :1], 1e4)))
    try:
        now = decode(model, ps, [0] * 3, GenerationConfig(max_new_tokens=10), Stopping([EOS]), PAD)
        later = decode(model, ps, [0] * 3, GenerationConfig(max_new_tokens=10, min_new_tokens=4), Stopping([EOS]), PAD)
    finally:
        hook.remove()
    assert [(d.tokens, d.finish_reason) for d in now] == [([], "eos")] * 3
    assert all(len(d.tokens) == 4 and d.finish_reason == "eos" and EOS not in d.tokens for d in later)


def test_stop_string_cuts_the_output_before_it(model: torch.nn.Module) -> None:
    ps = prompts(4, seed=4)
    cfg = GenerationConfig(max_new_tokens=24)
    free = by_index(decode(model, ps, [0] * 4, cfg, Stopping([]), PAD))
    text0 = chars(free[0])
    stop = text0[9:12]  # a string the first row produces mid-way
    done = {d.index: d for d in decode(model, ps, [0] * 4, cfg, Stopping([], [stop], chars), PAD)}
    assert done[0].finish_reason == "stop"
    assert done[0].text == text0[: text0.index(stop)]
    assert stop not in done[0].text
    assert free[0][: len(done[0].tokens)] == done[0].tokens and len(done[0].tokens) < 24
    for i in range(1, 4):  # other rows stop where their own text first shows it, or run to the length limit
        text = chars(free[i])
        if stop in text:
            assert done[i].finish_reason == "stop" and done[i].text == text[: text.index(stop)]
        else:
            assert done[i].finish_reason == "length" and done[i].tokens == free[i]


def test_a_stop_string_within_min_new_tokens_does_not_count(model: torch.nn.Module) -> None:
    ps = prompts(4, seed=4)
    free = by_index(decode(model, ps, [0] * 4, GenerationConfig(max_new_tokens=24), Stopping([]), PAD))
    text0 = chars(free[0])
    stop = text0[2:4]  # starts at the third token: inside the first 5
    cfg = GenerationConfig(max_new_tokens=24, min_new_tokens=5)
    done = {d.index: d for d in decode(model, ps, [0] * 4, cfg, Stopping([], [stop], chars), PAD)}
    later = text0.find(stop, 5)
    if later >= 0:
        assert done[0].finish_reason == "stop" and done[0].text == text0[:later]
    else:
        assert done[0].finish_reason == "length" and done[0].tokens == free[0]
    assert len(done[0].text or "") >= 5 or done[0].text is None


def test_logprobs_are_the_model_log_probabilities_of_the_tokens(model: torch.nn.Module) -> None:
    ps = prompts(3, seed=5)
    cfg = GenerationConfig(do_sample=True, temperature=0.8, max_new_tokens=8, logprobs=True)
    for d in decode(model, ps, [1, 2, 3], cfg, Stopping([EOS]), PAD):
        full = torch.tensor([ps[d.index] + d.tokens])
        with torch.no_grad():
            logp = torch.log_softmax(model(full).logits[0].float(), -1)
        n = len(ps[d.index])
        expected = [logp[n - 1 + j, t].item() for j, t in enumerate(d.tokens)]
        assert len(d.logprobs) == len(d.tokens)
        assert d.logprobs == pytest.approx(expected, abs=1e-4)


def test_beam_search_is_model_generates_and_cut_at_stop_strings(model: torch.nn.Module) -> None:
    from sft.generate.decode import beam_decode

    ps = prompts(3, seed=6)
    cfg = GenerationConfig(num_beams=3, max_new_tokens=10)
    ours = beam_decode(model, ps, cfg, Stopping([EOS]), PAD)
    ids, mask, _ = left_pad(ps, PAD, "cpu")
    out = model.generate(input_ids=ids, attention_mask=mask, num_beams=3, do_sample=False, max_new_tokens=10, eos_token_id=EOS, pad_token_id=PAD)
    for d in ours:
        theirs = out[d.index, ids.shape[1] :].tolist()
        theirs = theirs[: theirs.index(EOS)] if EOS in theirs else theirs
        assert d.tokens == theirs and d.finish_reason in ("eos", "length")
    stop = chars(ours[0].tokens)[2:4]
    cut = beam_decode(model, ps, cfg, Stopping([EOS], [stop], chars), PAD)[0]
    assert cut.finish_reason == "stop" and cut.text == chars(ours[0].tokens)[: chars(ours[0].tokens).index(stop)]


def test_decoding_builds_no_autograd_graph(model: torch.nn.Module) -> None:
    """Like model.generate (no_grad), the loop runs in inference mode: no graph kept for the KV cache."""
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, i, out: seen.append(torch.is_inference_mode_enabled()))
    try:
        decode(model, prompts(2, seed=7), [0, 0], GenerationConfig(max_new_tokens=3), Stopping([EOS]), PAD)
    finally:
        hook.remove()
    assert seen and all(seen)
