"""sdpa_varlen (sft/model/attention.py): packed rows attend one example at a time, with the same result as transformers'
block-diagonal sdpa and as each example run alone; everything else is sdpa unchanged."""

from __future__ import annotations

from typing import Any

import torch

from conftest import tiny_llama
from sft.model.attention import NAME, example_spans, register

LENGTHS = (5, 9, 1, 7)  # one single-token example: its only key is itself


def with_attention(name: str) -> Any:
    register()
    model = tiny_llama()  # grouped-query attention: 4 query heads, 2 key/value heads
    model.set_attn_implementation(name)
    assert model.config._attn_implementation == name
    return model


def packed_row(lengths: tuple[int, ...] = LENGTHS, seed: int = 0) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    examples = [torch.randint(3, 128, (n,), generator=gen) for n in lengths]
    batch = {
        "input_ids": torch.cat(examples).unsqueeze(0),
        "position_ids": torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0),
    }
    return examples, batch


def test_example_spans_follow_transformers_rule() -> None:
    assert example_spans(torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3]])) == [(0, 3), (3, 5), (5, 6), (6, 10)]
    assert example_spans(torch.tensor([[0, 1, 2, 3]])) is None
    assert example_spans(torch.tensor([[4, 5, 6, 2, 3]])) == [(0, 3), (3, 5)]  # a restart need not be at 0


def test_packed_row_matches_block_diagonal_sdpa_and_each_example_alone(monkeypatch: Any) -> None:
    import transformers.integrations.sdpa_attention as sdpa_module

    examples, batch = packed_row()
    varlen, sdpa = with_attention(NAME), with_attention("sdpa")
    fallback, calls = sdpa_module.sdpa_attention_forward, []
    monkeypatch.setattr(sdpa_module, "sdpa_attention_forward", lambda *a, **k: calls.append(1) or fallback(*a, **k))
    with torch.no_grad():
        ours = varlen(**batch, use_cache=False).logits
        assert not calls  # packed: the per-example path, not sdpa over the masked row
        theirs = sdpa(**batch, use_cache=False).logits
        alone = torch.cat([sdpa(input_ids=e.unsqueeze(0)).logits for e in examples], dim=1)
        # with a KV cache (eval mode's default) transformers skips packed-sequence detection and sdpa lets the
        # examples see each other; the spans here come from position_ids, so sdpa_varlen stays per example
        cached = varlen(**batch, use_cache=True).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached, alone, rtol=1e-5, atol=1e-5)


def test_packed_row_gradients_match_sdpa_under_gradient_checkpointing() -> None:
    _, batch = packed_row(seed=1)
    grads = []
    for name in (NAME, "sdpa"):
        model = with_attention(name).train()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(**batch, labels=batch["input_ids"]).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


def test_padded_batches_and_generation_are_sdpa_unchanged() -> None:
    varlen, sdpa = with_attention(NAME), with_attention("sdpa")
    ids = torch.randint(3, 128, (2, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        assert torch.equal(varlen(input_ids=ids, attention_mask=mask).logits, sdpa(input_ids=ids, attention_mask=mask).logits)
    left = torch.ones_like(ids)
    left[0, :3] = 0  # left padding, as generation pads
    kw = {"input_ids": ids, "attention_mask": left, "max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(varlen.generate(**kw), sdpa.generate(**kw))


def test_load_model_uses_sdpa_varlen_by_default(tmp_path: Any) -> None:
    from sft.config import ModelConfig, QuantConfig
    from sft.model.load import load_model

    tiny_llama().save_pretrained(tmp_path / "tiny")
    model = load_model(ModelConfig(path=str(tmp_path / "tiny")), QuantConfig(name="none"), device="cpu")
    assert model.config._attn_implementation == NAME
    model.save_pretrained(tmp_path / "saved")  # a runtime choice: the saved config does not record it
    assert NAME not in (tmp_path / "saved" / "config.json").read_text()
