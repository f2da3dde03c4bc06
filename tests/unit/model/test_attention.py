"""sdpa_varlen (sft/model/attention.py): packed rows attend one example at a time, with no T x T mask, taking their
boundaries from the collator; the result equals transformers' block-diagonal sdpa and each example run alone;
everything else is sdpa unchanged."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_llama
from sft.data.collate import PackedCollator, example_boundaries
from sft.model.attention import NAME, block_diagonal_mask, register

LENGTHS = (5, 9, 1, 7)  # one single-token example: its only key is itself


def with_attention(name: str, model: Any = None) -> Any:
    register()
    model = model if model is not None else tiny_llama()  # grouped-query attention: 4 query heads, 2 key/value heads
    model.set_attn_implementation(name)
    assert model.config._attn_implementation == name
    return model


def packed_row(lengths: tuple[int, ...] = LENGTHS, seed: int = 0) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """The examples, and the batch PackedCollator makes of them (input_ids, position_ids, cu_seq_lens_q/k...)."""
    gen = torch.Generator().manual_seed(seed)
    examples = [torch.randint(3, 128, (n,), generator=gen) for n in lengths]
    rows = [{"input_ids": e.tolist(), "labels": e.tolist(), "position_ids": list(range(len(e)))} for e in examples]
    batch = PackedCollator()(rows)
    del batch["labels"]
    return examples, batch


class Spy:
    """Records what reaches the attention function and the sdpa mask builder, and the calls of plain sdpa."""

    def __init__(self, monkeypatch: Any) -> None:
        import transformers.integrations.sdpa_attention as sdpa_module
        import transformers.masking_utils as masking

        import sft.model.attention as ours

        self.masks, self.fallbacks, self.dense_masks, self.kv_heads, self.gqa = [], [], [], [], []
        fallback, dense = sdpa_module.sdpa_attention_forward, masking.sdpa_mask
        forward, sdpa = ours.sdpa_varlen_forward, F.scaled_dot_product_attention

        def spy_forward(module: Any, q: Any, k: Any, v: Any, mask: Any, *a: Any, **kw: Any) -> Any:
            self.masks.append(mask)
            return forward(module, q, k, v, mask, *a, **kw)

        def spy_sdpa(q: Any, k: Any, v: Any, *a: Any, **kw: Any) -> Any:
            self.kv_heads.append(k.shape[1])
            self.gqa.append(kw.get("enable_gqa", False))
            return sdpa(q, k, v, *a, **kw)

        monkeypatch.setattr(sdpa_module, "sdpa_attention_forward", lambda *a, **k: self.fallbacks.append(1) or fallback(*a, **k))
        monkeypatch.setattr(masking, "sdpa_mask", lambda *a, **k: self.dense_masks.append(1) or dense(*a, **k))
        monkeypatch.setattr(ours, "sdpa_varlen_forward", spy_forward)
        monkeypatch.setattr(F, "scaled_dot_product_attention", spy_sdpa)
        register()  # the spied forward


def test_example_boundaries_follow_transformers_rule() -> None:
    assert example_boundaries(torch.tensor([0, 1, 2, 0, 1, 0, 0, 1, 2, 3])).tolist() == [0, 3, 5, 6, 10]
    assert example_boundaries(torch.tensor([0, 1, 2, 3])).tolist() == [0, 4]
    assert example_boundaries(torch.tensor([4, 5, 6, 2, 3])).tolist() == [0, 3, 5]  # a restart need not be at 0
    batch = PackedCollator()([{"input_ids": [5] * 5, "labels": [5] * 5, "position_ids": [0, 1, 2, 0, 1]},
                              {"input_ids": [6] * 3, "labels": [6] * 3, "position_ids": [0, 1, 2]}])
    assert batch["cu_seq_lens_q"].dtype == torch.int32 and batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 8]
    assert batch["cu_seq_lens_k"] is batch["cu_seq_lens_q"] and batch["max_length_q"] == batch["max_length_k"] == 3


def test_packed_row_matches_block_diagonal_sdpa_and_each_example_alone(monkeypatch: Any) -> None:
    examples, batch = packed_row()
    varlen, sdpa = with_attention(NAME), with_attention("sdpa")
    with torch.no_grad():
        theirs = sdpa(**batch, use_cache=False).logits
        alone = torch.cat([sdpa(input_ids=e.unsqueeze(0)).logits for e in examples], dim=1)
        spy = Spy(monkeypatch)
        ours = varlen(**batch, use_cache=False).logits
        assert spy.masks == [None, None] and not spy.dense_masks  # no T x T mask was built, for either layer
        assert not spy.fallbacks  # the per-example path, not sdpa over the row
        assert set(spy.kv_heads) == {2} and all(spy.gqa)  # K/V heads shared, not repeated to 4
        assert len(spy.kv_heads) == 2 * len(LENGTHS)
        # with a KV cache (eval mode's default) transformers skips packed-sequence detection; the boundaries
        # still come with the batch, so the examples stay apart
        cached = varlen(**batch, use_cache=True).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached, alone, rtol=1e-5, atol=1e-5)


def test_boundaries_come_from_the_batch_else_from_position_ids() -> None:
    examples, batch = packed_row((6, 6))
    varlen = with_attention(NAME)
    with torch.no_grad():
        by_positions = varlen(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        assert torch.equal(by_positions, varlen(**batch, use_cache=False).logits)
        # the same positions with boundaries saying "one example": the second half now sees the first
        one = {**batch, "cu_seq_lens_q": torch.tensor([0, 12], dtype=torch.int32)}
        one["cu_seq_lens_k"], one["max_length_q"], one["max_length_k"] = one["cu_seq_lens_q"], 12, 12
        seen = varlen(**one, use_cache=False).logits
    torch.testing.assert_close(seen[:, :6], by_positions[:, :6], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(seen[:, 6:], by_positions[:, 6:], atol=1e-4)


def test_packed_row_gradients_match_sdpa_under_gradient_checkpointing() -> None:
    _, batch = packed_row(seed=1)
    grads = []
    for name in (NAME, "sdpa"):
        model = with_attention(name).train()
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model(**batch, labels=batch["input_ids"]).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


def tiny_mistral(window: int) -> Any:
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=window,
                           attn_implementation="sdpa", pad_token_id=0)
    return MistralForCausalLM(config).eval()


@pytest.mark.parametrize("window", [4, 64])
def test_sliding_window_packed_rows_equal_sdpa(monkeypatch: Any, window: int) -> None:
    """A window shorter than an example needs a mask (transformers builds it, sdpa runs); a window that holds
    every example changes nothing, so the row takes the mask-free per-example path."""
    _, batch = packed_row()
    with torch.no_grad():
        theirs = with_attention("sdpa", tiny_mistral(window))(**batch, use_cache=False).logits
        spy = Spy(monkeypatch)
        ours = with_attention(NAME, tiny_mistral(window))(**batch, use_cache=False).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert bool(spy.fallbacks) == (window < max(LENGTHS)) and bool(spy.dense_masks) == (window < sum(LENGTHS))


def test_block_diagonal_mask_is_causal_within_each_example_and_window() -> None:
    spans = [(0, 3), (3, 7)]
    want = torch.zeros(7, 7, dtype=torch.bool)
    for a, b in spans:
        want[a:b, a:b] = torch.ones(b - a, b - a, dtype=torch.bool).tril()
    assert torch.equal(block_diagonal_mask(spans, None, "cpu")[0, 0], want)
    banded = want & (torch.arange(7)[:, None] - torch.arange(7)[None, :] < 2)
    assert torch.equal(block_diagonal_mask(spans, 2, "cpu")[0, 0], banded)


def test_padded_batches_and_generation_are_sdpa_unchanged() -> None:
    varlen, sdpa = with_attention(NAME), with_attention("sdpa")
    ids = torch.randint(3, 128, (2, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        assert torch.equal(varlen(input_ids=ids, attention_mask=mask).logits, sdpa(input_ids=ids, attention_mask=mask).logits)
        one = ids[:1]  # one row, no mask: plain causal
        assert torch.equal(varlen(input_ids=one).logits, sdpa(input_ids=one).logits)
    left = torch.ones_like(ids)
    left[0, :3] = 0  # left padding, as generation pads
    kw = {"input_ids": ids, "attention_mask": left, "max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(varlen.generate(**kw), sdpa.generate(**kw))
    kw = {"input_ids": one, "max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}  # one row, no mask
    assert torch.equal(varlen.generate(**kw), sdpa.generate(**kw))


def test_load_model_uses_sdpa_varlen_by_default(tmp_path: Any) -> None:
    from sft.config import ModelConfig, QuantConfig
    from sft.model.load import load_model

    tiny_llama().save_pretrained(tmp_path / "tiny")
    model = load_model(ModelConfig(path=str(tmp_path / "tiny")), QuantConfig(name="none"), device="cpu")
    assert model.config._attn_implementation == NAME
    model.save_pretrained(tmp_path / "saved")  # a runtime choice: the saved config does not record it
    assert NAME not in (tmp_path / "saved" / "config.json").read_text()
