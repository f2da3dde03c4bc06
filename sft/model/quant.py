"""Where the base runs and in what precision: the device, the compute dtype, the bitsandbytes settings."""

from __future__ import annotations

from typing import Any

from sft.config import QuantConfig


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(name: str, device: str) -> Any:
    """auto: bf16 where the GPU supports it, else fp16 on GPU; fp32 on CPU."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device.startswith("cuda"):  # "cuda" or "cuda:N" (one device per rank under torchrun)
        # native bf16 only (Ampere and newer): on a T4 or V100 torch would emulate it, slowly
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return torch.float32


def weights_dtype(model_dtype: str, quant: QuantConfig, device: str) -> Any:
    """The torch dtype the model computes in: model.dtype with quant=none, else quant.compute_dtype (resolved)."""
    return compute_dtype(model_dtype if quant.name == "none" else quant.compute_dtype, device)


def device_name(device: str) -> str:
    """cpu, or cuda with the GPU's name: what decides the rounding of the numbers a run computes."""
    import torch

    return f"cuda:{torch.cuda.get_device_name()}" if device.startswith("cuda") else device


def quantization_config(quant: QuantConfig, device: str) -> Any:
    """bitsandbytes settings for quant.name, or None for full-precision weights."""
    from transformers import BitsAndBytesConfig

    if quant.name == "none":
        return None
    if quant.name == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    import torch

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.name,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(quant.compute_dtype, device),
        bnb_4bit_quant_storage=getattr(torch, quant.quant_storage),
    )
