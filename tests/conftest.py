"""Shared fixtures. Nothing here downloads: the real model is the embedded SmolLM2 GGUF, converted once per
cache directory ($SFT_CACHE_DIR, set by scripts/test.sh to .cache/sft in the repo) and reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SFT_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".cache" / "sft"))

REPO = Path(__file__).resolve().parent.parent
CHAR_SPECIALS = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def make_char_tokenizer(add_bos: bool = True) -> Any:
    """A tokenizer whose ids can be written by hand: every character is one token with id ord(char);
    <pad>=0, <s>=1 (prepended when add_bos), </s>=2, <unk>=3."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, decoders
    from transformers import PreTrainedTokenizerFast

    vocab = dict(CHAR_SPECIALS)
    vocab.update({chr(i): i for i in range(9, 127) if i >= 32 or chr(i) in "\n\t"})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture
def char_tokenizer() -> Any:
    return make_char_tokenizer()


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The embedded SmolLM2-135M-Instruct as a local transformers directory (converted once, then cached)."""
    from sft.config import ModelConfig
    from sft.model.load import resolve_model_path

    return resolve_model_path(ModelConfig())


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir: str) -> Any:
    from sft.config import ModelConfig
    from sft.model.load import load_tokenizer

    return load_tokenizer(ModelConfig(), path=smollm2_dir)


def tiny_llama(vocab_size: int = 128, seed: int = 0) -> Any:
    """A 2-layer random Llama in fp32: fast, and the same architecture as the default model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        attn_implementation="sdpa", pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: Any) -> Path:
    """tiny_llama() and the char tokenizer saved as a model directory: `model.path=` for fast CLI runs."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_llama().save_pretrained(path)
    make_char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def one_torch_thread() -> Any:
    """One torch thread: on a shared 2-core machine, a second thread waiting for a busy core costs more than it gives."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_run_config(run_dir: Path, model_path: str | None, data: dict[str, Any], prompt: dict[str, Any] | None = None,
                     seed: int = 0, tokenizer: Any = None) -> Path:
    """config.yaml of a training run (and its tokenizer/, when given), written by RunDir as sft-train writes them
    (the full resolved config), for tests that save the run's adapter themselves."""
    from sft.config import DataConfig, LoraConfig, ModelConfig, PromptConfig, TrainRunConfig
    from sft.run.rundir import RunDir, run_config

    cfg = TrainRunConfig(model=ModelConfig(path=model_path), data=DataConfig(**data), prompt=PromptConfig(**(prompt or {})),
                         lora=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), out_dir=str(run_dir), seed=seed)
    if tokenizer is None:
        RunDir(run_dir).write_config(run_config(cfg))
    else:
        RunDir(run_dir).begin(run_config(cfg), {}, tokenizer)
    return run_dir


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def sigkill_training_when(ready: Any, overrides: list[str], env: dict[str, str] | None = None, poll: float = 0.05) -> None:
    """Run `python -m sft train overrides...` and SIGKILL it once ready() is true (within 10 minutes); the run must
    still be unfinished then."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "sft", "train", *overrides], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.time() + 600
        while not ready():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < end, "timed out waiting to kill the run"
            time.sleep(poll)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()


def run_sft(command: str, *overrides: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run `python -m sft COMMAND overrides...` as a user would; returns the finished process (no check)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sft", command, *overrides],
        cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def local_lm_eval_tasks(root: Path) -> Path:
    """tests/integration/lm_eval_tasks/*.yaml in root, their DATA replaced by records made from the demo's held-out
    file (the instruction, input and output, plus the answer's product and sentiment fields)."""
    from sft.config import resource_path

    rows = [json.loads(line) for line in Path(resource_path("demo_eval.jsonl")).read_text().splitlines()]
    data = write_jsonl(root / "demo.jsonl", [{**r, **json.loads(r["output"])} for r in rows])
    for task in (REPO / "tests" / "integration" / "lm_eval_tasks").glob("*.yaml"):
        (root / task.name).write_text(task.read_text().replace("test: DATA", f"test: {data}"))
    return root
