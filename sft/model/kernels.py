"""`train.kernels=liger`: Liger's fused Triton kernels for the base model's RoPE, RMSNorm and SwiGLU MLP.

Off by default: they are GPU kernels (Triton), and they have not been measured here against the plain modules
(see README "Benchmarks"). Liger's cross-entropy kernels stay off: our loss head already runs only on the trained
positions, in chunks, without the full logits (sft/train/loss.py), and Liger's fused-linear loss would replace
the model's forward, which the head relies on. The kernels patch the loaded base in place, before LoRA wraps its
linear layers: the fused MLP calls the layers it finds, so the LoRA and 4-bit layers that replace them later run
inside it.
"""

from __future__ import annotations

from typing import Any

from sft.errors import ConfigError


def check_kernels(name: str, device: str) -> None:
    """Fail before the model loads when `name` cannot run here: a one-line ConfigError."""
    if name == "none":
        return
    if device != "cuda":
        raise ConfigError(f"train.kernels={name}: Liger's kernels are Triton GPU kernels and this run is on {device}; "
                          "use train.kernels=none")
    liger_patcher()


def liger_patcher() -> Any:
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError as e:
        raise ConfigError(f"train.kernels=liger needs the liger-kernel package ({e}): pip install 'sft[liger]'") from None
    return _apply_liger_kernel_to_instance


def apply_kernels(model: Any, name: str) -> str | None:
    """Patch the base `model` in place with the chosen kernels; a line saying what was applied, or None."""
    if name == "none":
        return None
    patch = liger_patcher()
    patch(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
    return f"kernels: Liger RoPE, RMSNorm and SwiGLU on the {model.config.model_type} base (its cross-entropy off)"
