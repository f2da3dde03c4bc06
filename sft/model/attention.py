"""`sdpa_varlen`: transformers' sdpa attention, except that packed rows attend one example at a time.

A packed batch reaches the model as one row of several examples whose position_ids restart at 0
(`sft.data.collate.PackedCollator`). transformers' sdpa turns that into a dense block-diagonal causal mask over the
whole row, so the attention kernel still computes every (query, key) pair of the row and then masks most of them
away: the work grows with the square of the row, not with the examples, and a masked kernel cannot skip the upper
triangle. This implementation finds the examples from position_ids (the rule transformers' own mask uses: a new
example starts wherever the position does not go up by one) and runs causal sdpa on each example alone. The
result is the same attention, computed without the cross-example blocks (a CPU step of 4 x 512 packed tokens of
SmolLM2-135M spent 39% of its time in attention before; see README "Benchmarks").

Everything else falls back to transformers' sdpa unchanged, with the mask transformers builds: padded batches,
batches of several rows, generation with a KV cache, sliding-window or soft-capped attention, non-causal modules.
The name is registered with transformers' attention and mask interfaces by `register()`; it is a runtime choice
only (a saved config does not record it).
"""

from __future__ import annotations

from typing import Any

NAME = "sdpa_varlen"

_last: tuple[Any, list[tuple[int, int]] | None] = (None, None)  # (position_ids, their spans): one per forward


def register() -> None:
    """Make `attn_implementation="sdpa_varlen"` valid for transformers models (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, sdpa_varlen_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the fallback's mask, as sdpa's


def example_spans(position_ids: Any) -> list[tuple[int, int]] | None:
    """[(start, end), ...] of the examples in a one-row packed batch, or None when the row holds one example.
    An example starts at index 0 and wherever position_ids[i] != position_ids[i - 1] + 1 (transformers'
    find_packed_sequence_indices)."""
    import torch

    row = position_ids[0]
    starts = (torch.diff(row) != 1).nonzero().flatten().add(1).tolist()
    if not starts:
        return None
    edges = [0, *starts, row.shape[0]]
    return list(zip(edges, edges[1:]))


def _spans(query: Any, key: Any, module: Any, kwargs: dict[str, Any]) -> list[tuple[int, int]] | None:
    """The examples to attend separately, or None to fall back to sdpa."""
    global _last
    position_ids = kwargs.get("position_ids")
    length = query.shape[2]
    if (
        position_ids is None
        or query.shape[0] != 1
        or tuple(position_ids.shape) != (1, length)
        or key.shape[2] != length  # a KV cache holds earlier tokens: generation, not a packed row
        or not getattr(module, "is_causal", True)
        or kwargs.get("sliding_window") is not None
        or getattr(module, "sliding_window", None) is not None
        or kwargs.get("softcap") is not None
        or kwargs.get("s_aux") is not None
    ):
        return None
    if _last[0] is not position_ids:  # every layer (and checkpointing's recompute) sees the same tensor
        _last = (position_ids, example_spans(position_ids))
    return _last[1]


def sdpa_varlen_forward(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
    scaling: float | None = None, **kwargs: Any,
) -> tuple[Any, None]:
    """query [1, heads, T, d], key/value [1, kv_heads, T, d] -> ([1, T, heads, d], None), as sdpa_attention_forward."""
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    spans = _spans(query, key, module, kwargs)
    if spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` consecutive query heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    outputs = [
        F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout,
                                       scale=scaling, is_causal=True)
        for a, b in spans
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None
