"""Base model -> trainable PeftModel: k-bit preparation, gradient checkpointing, LoRA adapters.

The classic "element 0 of tensors does not require grad" comes from reentrant checkpointing over a frozen
base: no input of the checkpointed block requires grad, so its output does not either. Non-reentrant
checkpointing (and input embeddings that require grad, for models that force reentrant) avoid it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sft.config import LoraConfig, QuantConfig
from sft.errors import ConfigError

CHECKPOINTING_KWARGS = {"use_reentrant": False}


def keep_one_cpu_kernel(model: Any) -> None:
    """bitsandbytes repacks 4-bit weights on CPUs with AVX512-BF16 the first time a layer runs in eval mode
    and switches to another kernel (repacked back when a checkpoint is saved). Evaluations then differ from
    training numerics and a resumed run takes a different path than an uninterrupted one; one kernel keeps
    eval losses comparable and resumes bitwise identical."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def embeddings_back_to_bf16(model: Any) -> None:
    """peft's k-bit preparation casts every weight that is not quantized to float32: norms, and also the frozen
    input embeddings and output head. Float32 embeddings make the whole residual stream float32, which doubles
    the activations that gradient checkpointing keeps (one [tokens, hidden] tensor per layer) and makes the
    head cast its weight to bf16 on every call. As the QLoRA reference code (artidoro/qlora) does, frozen
    embeddings and head go back to bf16 when the 4-bit layers compute in bf16; norms stay float32. The head
    then casts its input (the float32 output of the final norm) to bf16 itself, so it also works outside
    autocast. Nothing changes for float32 compute (CPU) or fp16 (whose range float32 embeddings protect)."""
    import torch

    compute = {getattr(m, "compute_dtype", None) for m in model.modules()} - {None}
    if compute != {torch.bfloat16}:
        return
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    for module in (embed, head):
        if module is not None and not any(p.requires_grad for p in module.parameters()):
            module.to(torch.bfloat16)
    if head is not None and getattr(head, "weight", None) is not None and head.weight.dtype == torch.bfloat16:
        head.register_forward_pre_hook(lambda m, args: (args[0].to(m.weight.dtype), *args[1:]))


def checkpoint_activations(model: Any) -> None:
    """Activation (gradient) checkpointing of every layer, non-reentrant: `activation_checkpointing_enable` where
    transformers has it (its old name is deprecated), else `gradient_checkpointing_enable`."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=CHECKPOINTING_KWARGS)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)


def enable_checkpointing(model: Any, quant: QuantConfig, gradient_checkpointing: bool) -> Any:
    """k-bit preparation (fp32 norms, frozen base) for quantized models; checkpointing if asked."""
    from peft import prepare_model_for_kbit_training

    keep_one_cpu_kernel(model)
    if quant.name != "none":
        # checkpointing is turned on below, through the current API (peft's call is the deprecated alias)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        embeddings_back_to_bf16(model)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
    if gradient_checkpointing:
        checkpoint_activations(model)
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


def add_lora(model: Any, quant: QuantConfig, lora: LoraConfig, gradient_checkpointing: bool,
             init_adapter: Path | None = None) -> Any:
    """The trainable PeftModel. Seed the global RNG first: the LoRA A matrices are drawn from it. With
    init_adapter (a PEFT adapter directory), its weights and LoRA shape are the start instead."""
    from peft import PeftModel, get_peft_model

    from peft.utils.error import NoMatchingPeftModuleError

    model = enable_checkpointing(model, quant, gradient_checkpointing)
    if init_adapter is not None:
        peft_model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
        peft_model.config.use_cache = False
        return peft_model
    try:
        peft_model = get_peft_model(model, peft_config(lora))
    except NoMatchingPeftModuleError:
        raise ConfigError(f"lora.target_modules={list(lora.target_modules)}: no such module in the model; its linear "
                          f"layers are named {', '.join(linear_names(model))} (or use [all-linear])") from None
    except ValueError as e:
        if "not found in the base model" not in str(e):
            raise
        raise ConfigError(f"lora.modules_to_save={list(lora.modules_to_save)}: {e}") from None
    peft_model.config.use_cache = False
    return peft_model


def linear_names(model: Any) -> list[str]:
    """The last name part of each linear layer (4-bit and 8-bit ones included), as target_modules takes them."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if name and type(module).__name__ in ("Linear", "Linear4bit", "Linear8bitLt")})


def trainable_summary(model: Any) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)"
