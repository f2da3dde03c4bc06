"""Base model -> trainable PeftModel: k-bit preparation, gradient checkpointing, LoRA adapters.

The classic "element 0 of tensors does not require grad" comes from reentrant checkpointing over a frozen
base: no input of the checkpointed block requires grad, so its output does not either. Non-reentrant
checkpointing (and input embeddings that require grad, for models that force reentrant) avoid it.
"""

from __future__ import annotations

from typing import Any

from sft.config import LoraConfig, QuantConfig

CHECKPOINTING_KWARGS = {"use_reentrant": False}


def keep_one_cpu_kernel(model: Any) -> None:
    """bitsandbytes repacks 4-bit weights on CPUs with AVX512-BF16 the first time a layer runs in eval mode
    and switches to another kernel (repacked back when a checkpoint is saved). Evaluations then differ from
    training numerics and a resumed run takes a different path than an uninterrupted one; one kernel keeps
    eval losses comparable and resumes bitwise identical."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def enable_checkpointing(model: Any, quant: QuantConfig, gradient_checkpointing: bool) -> Any:
    """k-bit preparation (fp32 norms/embeddings, frozen base) for quantized models; checkpointing if asked."""
    from peft import prepare_model_for_kbit_training

    keep_one_cpu_kernel(model)
    if quant.name != "none":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS,
        )
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)
    if gradient_checkpointing:
        model.enable_input_require_grads()
    # Padding-free packed batches need use_cache=False: with a cache, transformers builds a DynamicCache and
    # skips the detection of packed sequences from position_ids (examples would attend to each other).
    model.config.use_cache = False
    return model


def peft_config(lora: LoraConfig) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    targets: Any = lora.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"  # peft's shorthand: every linear layer except the output head
    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias=lora.bias,
        modules_to_save=list(lora.modules_to_save) or None,
        task_type="CAUSAL_LM",
    )


def add_lora(model: Any, quant: QuantConfig, lora: LoraConfig, gradient_checkpointing: bool) -> Any:
    """The trainable PeftModel. Seed the global RNG first: the LoRA A matrices are drawn from it."""
    from peft import get_peft_model

    model = enable_checkpointing(model, quant, gradient_checkpointing)
    peft_model = get_peft_model(model, peft_config(lora))
    peft_model.config.use_cache = False
    return peft_model


def trainable_summary(model: Any) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)"
