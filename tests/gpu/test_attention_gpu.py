"""sdpa_varlen on CUDA: a packed bf16 row goes through one variable-length kernel call per layer, with the outputs
and gradients of each example run alone (skipped without a GPU)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from conftest import tiny_llama
from sft.data.collate import PackedCollator
from sft.model.attention import NAME, register, varlen_kernel

pytestmark = pytest.mark.gpu
LENGTHS = (37, 5, 120, 1, 64)


def bf16_model(name: str) -> Any:
    register()
    model = tiny_llama().to("cuda", torch.bfloat16)  # grouped-query attention: 4 query heads, 2 key/value heads
    model.set_attn_implementation(name)
    return model


def packed(examples: list[torch.Tensor]) -> dict[str, Any]:
    rows = [{"input_ids": e.tolist(), "labels": e.tolist(), "position_ids": list(range(len(e)))} for e in examples]
    return {k: v.cuda() if torch.is_tensor(v) else v for k, v in PackedCollator()(rows).items()}


def test_a_varlen_kernel_is_found_for_bf16_on_cuda() -> None:
    query = torch.zeros(1, 4, 8, 16, device="cuda", dtype=torch.bfloat16)
    assert varlen_kernel(query, 0.0) is not None
    assert varlen_kernel(query.float(), 0.0) is None  # fp32: per-example sdpa


def test_packed_row_outputs_and_gradients_equal_each_example_alone(monkeypatch: Any) -> None:
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    examples = [torch.randint(3, 128, (n,), generator=gen) for n in LENGTHS]
    model = bf16_model(NAME).train()
    sdpa_calls: list[int] = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: sdpa_calls.append(1) or sdpa(*a, **k))
    batch = packed(examples)
    out = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    assert not sdpa_calls  # the varlen kernel, not a loop of sdpa calls
    out.float().pow(2).mean().backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters()}
    monkeypatch.undo()
    model.zero_grad(set_to_none=True)
    alone = [model(input_ids=e.unsqueeze(0).cuda(), use_cache=False).logits for e in examples]
    ref = torch.cat(alone, dim=1)
    ref.float().pow(2).mean().backward()
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad.float(), rtol=5e-2, atol=5e-3, msg=n)
