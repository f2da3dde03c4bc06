"""sft: supervised fine-tuning of LLMs (Alpaca/chat prompts, exact masking, packing, QLoRA, seeded evaluation)."""

__version__ = "0.1.0"
