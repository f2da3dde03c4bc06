"""The model: where it comes from (Hub id, directory, .gguf, the embedded default), its quantization, LoRA and
the attention that keeps packed examples apart."""
