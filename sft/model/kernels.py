"""`train.kernels=liger`: Liger's fused Triton kernels for the base model's RoPE, RMSNorm and SwiGLU MLP.

Off by default: they are GPU kernels (Triton), and they have not been measured here against the plain modules
(see README "Benchmarks"). Liger's cross-entropy kernels stay off: our loss head already runs only on the trained
positions, in chunks, without the full logits (sft/train/loss.py), and Liger's fused-linear loss would replace
the model's forward, which the head relies on.

Applied through transformers' public switch, `TrainingArguments(use_liger_kernel=True, liger_kernel_config=...)`:
when training starts, the Trainer patches the base model inside the PEFT wrapper in place (Liger's
`_apply_liger_kernel_to_instance`, called by transformers, not by us). The patch swaps the forward of each norm and
MLP module and the module's rotary function; the MLP's forward calls the layers it finds on the module, which by
then are LoRA layers over 4-bit ones, so LoRA trains inside the fused MLP.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from sft.errors import ConfigError

# the kwargs transformers passes to Liger: RoPE, RMSNorm and SwiGLU; no cross-entropy (see the module docstring)
LIGER_CONFIG = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                "fused_linear_cross_entropy": False}


def check_kernels(name: str, device: str) -> None:
    """Fail before the model loads when `name` cannot run here: a one-line ConfigError."""
    if name == "none":
        return
    if device != "cuda":
        raise ConfigError(f"train.kernels={name}: Liger's kernels are Triton GPU kernels and this run is on {device}; "
                          "use train.kernels=none")
    if importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("train.kernels=liger needs the liger-kernel package: pip install 'sft[liger]'")


def kernel_arguments(name: str) -> dict[str, Any]:
    """TrainingArguments fields that turn the chosen kernels on (none: no fields)."""
    return {} if name == "none" else {"use_liger_kernel": True, "liger_kernel_config": dict(LIGER_CONFIG)}


def kernels_line(model: Any, name: str) -> str | None:
    """What the Trainer will apply when training starts, or None."""
    if name == "none":
        return None
    return f"kernels: Liger RoPE, RMSNorm and SwiGLU on the {model.config.model_type} base (its cross-entropy off)"
