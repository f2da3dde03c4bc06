"""Real tokenizers and official chat templates of the model families people train, for tests.

They come from llama.cpp's models/ folder inside the llama-cpp-python source archive on PyPI (vocab-only GGUF
files and templates/*.jinja): fetched once with pip, converted once into transformers tokenizer directories
under $SFT_CACHE_DIR/families/, and reused. Nothing of it is committed. Without the registry the tests that
need them skip, saying why; with SFT_REQUIRE_FAMILIES=1 (CI sets it, .ci/run) they fail instead, so a CI run that
cannot fetch them never passes by skipping them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

SDIST = "llama-cpp-python==0.3.36"
# family -> (vocab file, official template file)
FAMILIES = {
    "llama-3.1": ("ggml-vocab-llama-bpe.gguf", "meta-llama-Llama-3.1-8B-Instruct.jinja"),
    "llama-3.2": ("ggml-vocab-llama-bpe.gguf", "meta-llama-Llama-3.2-3B-Instruct.jinja"),
    "qwen2.5": ("ggml-vocab-qwen2.gguf", "Qwen-Qwen2.5-7B-Instruct.jinja"),
    "qwen3": ("ggml-vocab-qwen2.gguf", "Qwen-Qwen3-0.6B.jinja"),
    "phi-3.5": ("ggml-vocab-phi-3.gguf", "microsoft-Phi-3.5-mini-instruct.jinja"),
    "deepseek-r1-distill-qwen": ("ggml-vocab-qwen2.gguf", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"),
}
# A Llama-2 style SentencePiece tokenizer with a Mistral-style template written here (the vocab has no template).
LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}<<SYS>>\n{{ m['content'] }}\n<</SYS>>\n\n"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
# The DeepSeek-R1 distills keep Qwen2.5's vocabulary and add their own turn tokens, as their tokenizer does.
ADDED = {"deepseek-r1-distill-qwen": ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"]}
SPM = ("ggml-vocab-llama-spm.gguf", None)


def cache_dir() -> Path:
    root = Path(os.environ.get("SFT_CACHE_DIR") or Path.home() / ".cache" / "sft")
    return root / "families"


def models_dir() -> Path | str:
    """llama.cpp's models/ folder, fetched once; a string saying why when it cannot be had."""
    target = cache_dir() / "llama.cpp-models"
    if (target / "templates").is_dir():
        return target
    download = cache_dir() / "download"
    download.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST,
                        "-d", str(download), "-q"], check=True, capture_output=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as e:
        return f"cannot fetch {SDIST} from the package registry ({type(e).__name__})"
    archive = next(download.glob("llama_cpp_python-*.tar.gz"))
    wanted = {v for v, _ in FAMILIES.values()} | {SPM[0]}
    tmp = target.with_name(target.name + ".tmp")
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if "models" in parts and (parts[-1] in wanted or "templates" in parts[-2:-1]) and member.isfile():
                member.name = "/".join(parts[parts.index("models") + 1:])
                tar.extract(member, tmp, filter="data")
    tmp.rename(target)
    archive.unlink()
    return target


def tokenizer(family: str) -> Any:
    """The family's real tokenizer with its official chat template (each vocabulary converted once, then cached)."""
    from transformers import AutoTokenizer

    vocab, template = FAMILIES.get(family, SPM)
    saved = cache_dir() / "tokenizers" / vocab.removesuffix(".gguf")
    models = cache_dir() / "llama.cpp-models"
    if not (saved / "tokenizer_config.json").is_file():
        found = models_dir()
        if isinstance(found, str):
            import pytest

            if os.environ.get("SFT_REQUIRE_FAMILIES") == "1":
                pytest.fail(f"{found}; SFT_REQUIRE_FAMILIES=1: the family tests must run")
            pytest.skip(found)
        AutoTokenizer.from_pretrained(str(found), gguf_file=vocab).save_pretrained(str(saved))
    tok = AutoTokenizer.from_pretrained(str(saved))
    tok.chat_template = (models / "templates" / template).read_text() if template else LLAMA2_TEMPLATE
    if family in ADDED:
        tok.add_special_tokens({"additional_special_tokens": ADDED[family]})
        tok.bos_token, tok.eos_token = ADDED[family][0], ADDED[family][1]
    return tok
