"""`sdpa_varlen`: transformers' sdpa attention, except that packed rows attend one example at a time, with no mask.

A packed batch reaches the model as one row of several examples (`sft.data.collate.PackedCollator`): position_ids
restart at each example, and the collator passes the boundaries as `cu_seq_lens_q/k` (cumulative lengths
[0, n1, n1 + n2, ...], the keyword transformers' flash-attention path reads) and `max_length_q/k`. Plain sdpa
would turn the row into a dense block-diagonal causal mask of T x T booleans (1 GiB for 8 x 4,096 tokens) and
compute every (query, key) pair of the row only to mask most of them away. Here:

- the mask function (`packed_mask`) builds no mask for a one-row batch without padding or cache offset: the
  attention below needs none (packed: the boundaries; one example: plain causal);
- on CUDA in half precision, the whole row goes through one variable-length flash kernel per layer
  (`torch.nn.attention.varlen.varlen_attn`, else flash-attn's `flash_attn_varlen_func` when installed);
- elsewhere (CPU, fp32) each example runs causal sdpa alone; grouped-query heads are shared with `enable_gqa`,
  not copied.

The boundaries come from `cu_seq_lens_q` when the batch has them, else from position_ids (transformers' rule: an
example starts wherever the position does not go up by one). Everything else is transformers' sdpa unchanged,
with the mask transformers builds: padded batches, several rows, generation with a KV cache, non-causal modules,
soft-capped logits or attention sinks (for these, a packed row gets the block-diagonal mask built here), and a
sliding window shorter than one of the examples. The name is registered with transformers' attention and mask
interfaces by `register()`; it is a runtime choice only (a saved config does not record it).
"""

from __future__ import annotations

from typing import Any

NAME = "sdpa_varlen"


def register() -> None:
    """Make `attn_implementation="sdpa_varlen"` valid for transformers models (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(NAME, sdpa_varlen_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, packed_mask)


def packed_mask(*, batch_size: int, q_length: int, kv_length: int, q_offset: Any = 0, kv_offset: Any = 0,
                attention_mask: Any = None, local_size: int | None = None, use_vmap: bool = False, **kwargs: Any) -> Any:
    """transformers' mask for `sdpa_varlen`: None where the attention needs no mask, else sdpa's. No mask when the
    batch is one row with no padding mask, no cached tokens before it, no custom overlay (`use_vmap` marks one)
    and no sliding window shorter than the row: the row is then one causal example or packed examples, whose
    boundaries reach the attention as cu_seq_lens or position_ids."""
    from transformers.masking_utils import sdpa_mask

    if (attention_mask is None and batch_size == 1 and q_length == kv_length and not use_vmap
            and isinstance(q_offset, int) and isinstance(kv_offset, int) and q_offset == kv_offset == 0
            and (local_size is None or q_length <= local_size)):
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask, local_size=local_size, use_vmap=use_vmap,
                     **kwargs)


def _boundaries(query: Any, key: Any, module: Any, kwargs: dict[str, Any]) -> Any:
    """cu_seq_lens of the examples to attend separately, or None to fall back to sdpa."""
    from sft.data.collate import example_boundaries

    length = query.shape[2]
    if query.shape[0] != 1 or key.shape[2] != length or not getattr(module, "is_causal", True):
        return None  # several rows (padded), or a KV cache holding earlier tokens (generation)
    cu, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu is None or (cu_k is not None and cu_k.shape != cu.shape):
        position_ids = kwargs.get("position_ids")
        if position_ids is None or tuple(position_ids.shape) != (1, length):
            return None
        cu = example_boundaries(position_ids[0])
    return None if cu.shape[0] <= 2 else cu  # one example: plain causal sdpa


def _window(module: Any, kwargs: dict[str, Any]) -> int | None:
    return kwargs.get("sliding_window") or getattr(module, "sliding_window", None)


def sdpa_varlen_forward(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
    scaling: float | None = None, **kwargs: Any,
) -> tuple[Any, None]:
    """query [1, heads, T, d], key/value [1, kv_heads, T, d] -> ([1, T, heads, d], None), as sdpa_attention_forward."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = _boundaries(query, key, module, kwargs)
    window = _window(module, kwargs)
    unusual = kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None
    if cu is not None and not unusual:
        kernel = varlen_kernel(query, dropout)
        if kernel is not None:
            return kernel(query, key, value, cu, kwargs.get("max_length_q"), scaling, window), None
        spans = _spans(cu)
        if window is None or max(b - a for a, b in spans) <= window:
            return per_example(query, key, value, spans, dropout, scaling), None
    if cu is not None and attention_mask is None:  # a packed row the per-example paths cannot take
        attention_mask = block_diagonal_mask(_spans(cu), window, query.device)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def _spans(cu: Any) -> list[tuple[int, int]]:
    edges = cu.tolist()
    return list(zip(edges, edges[1:]))


def per_example(query: Any, key: Any, value: Any, spans: list[tuple[int, int]], dropout: float,
                scaling: float | None) -> Any:
    """Causal sdpa on each example alone; K/V heads shared by their query-head groups without a copy."""
    import torch
    import torch.nn.functional as F

    gqa = query.shape[1] != key.shape[1]
    outputs = [
        F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout,
                                       scale=scaling, is_causal=True, enable_gqa=gqa)
        for a, b in spans
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous()


def block_diagonal_mask(spans: list[tuple[int, int]], window: int | None, device: Any) -> Any:
    """[1, 1, T, T] booleans, True where a query may attend: same example, not after it, within the window."""
    import torch

    lengths = torch.tensor([b - a for a, b in spans], device=device)
    example = torch.repeat_interleave(torch.arange(len(spans), device=device), lengths)
    index = torch.arange(example.shape[0], device=device)
    allowed = (example[:, None] == example[None, :]) & (index[:, None] >= index[None, :])
    if window is not None:
        allowed &= index[:, None] - index[None, :] < window
    return allowed[None, None]


def varlen_kernel(query: Any, dropout: float) -> Any:
    """The one-call variable-length kernel for this query, or None (CPU, fp32, attention dropout, no kernel)."""
    import torch

    if not query.is_cuda or query.dtype not in (torch.float16, torch.bfloat16) or dropout:
        return None
    try:
        from torch.nn.attention.varlen import varlen_attn  # torch >= 2.10

        return _varlen_call(lambda q, k, v, cu, n, scaling, window: varlen_attn(
            q, k, v, cu, cu, n, n, scale=scaling, enable_gqa=q.shape[1] != k.shape[1],
            window_size=(-1, 0) if window is None else (window - 1, 0)))
    except ImportError:
        pass
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return _varlen_call(lambda q, k, v, cu, n, scaling, window: flash_attn_varlen_func(
        q, k, v, cu, cu, n, n, softmax_scale=scaling, causal=True,
        window_size=(-1, -1) if window is None else (window - 1, 0)))


def _varlen_call(kernel: Any) -> Any:
    """`kernel` (tokens-first q, k, v [T, heads, d], cu_seq_lens, max length, scale, window) in this module's
    calling convention: [1, heads, T, d] in, [1, T, heads, d] out."""
    def call(query: Any, key: Any, value: Any, cu: Any, max_length: Any, scaling: float | None,
             window: int | None) -> Any:
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
        n = int(max_length) if max_length is not None else int((cu[1:] - cu[:-1]).max())
        return kernel(q, k, v, cu.to(q.device, non_blocking=True), n, scaling, window).unsqueeze(0)

    return call
