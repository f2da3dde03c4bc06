"""What reaches the model during training, and how the loss is normalized (tiny Llama, CPU, fp32)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

from conftest import tiny_llama, write_jsonl
from sft.config import DataConfig, LoraConfig, PromptConfig, QuantConfig, TrainConfig
from sft.data.collate import PackedCollator, PaddedCollator, make_collator
from sft.data.prepare import prepare
from sft.model.lora import add_lora
from sft.train.trainer import SftTrainer, training_arguments

NONE = QuantConfig(name="none")
PROMPT = PromptConfig(name="custom", template_input="{instruction} {input}:", template_no_input="{instruction}:")


def records(n: int) -> list[dict[str, str]]:
    words = ["red", "blue", "green", "tea", "sky", "moon", "cat", "dog"]
    return [
        {"instruction": f"say {words[i % 8]} {i}", "input": "x" * (i % 3), "output": " " + words[(i * 3) % 8] * (1 + i % 4)}
        for i in range(n)
    ]


def prepared_splits(tmp_path: Path, tokenizer: Any, packing: bool, n: int = 12) -> Any:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_jsonl(tmp_path / "train.jsonl", records(n))
    data = DataConfig(path=str(path), max_seq_len=64, packing=packing)
    return prepare(data, PROMPT, tokenizer, seed=0, use_cache=False).datasets


def lora_model(seed: int = 0, randomize: bool = False, base: Any = None) -> Any:
    torch.manual_seed(seed)
    base = tiny_llama() if base is None else base
    model = add_lora(base, NONE, LoraConfig(r=4, alpha=8, dropout=0.0), gradient_checkpointing=True)
    if randomize:  # B starts at zero: give both LoRA matrices values so every gradient is informative
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.data = torch.randn(p.shape, generator=gen) * 0.05
    return model


def make_trainer(model: Any, dataset: Any, collator: Any, tmp_path: Path, **train: Any) -> SftTrainer:
    cfg = TrainConfig(**{"lr": 1e-3, "warmup_ratio": 0.0, "max_grad_norm": 0.0, "save_steps": 1000, **train})
    args = training_arguments(cfg, NONE, seed=0, out_dir=tmp_path, has_eval=False)
    args.disable_tqdm = True
    return SftTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator)


class CaptureGrads(TrainerCallback):
    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def step_grads(dataset: Any, micro_batch_size: int, grad_accum: int, tmp_path: Path,
               base: Any = None) -> dict[str, torch.Tensor]:
    return step(dataset, micro_batch_size, grad_accum, tmp_path, base)[0]


def step(dataset: Any, micro_batch_size: int, grad_accum: int, tmp_path: Path,
         base: Any = None) -> tuple[dict[str, torch.Tensor], SftTrainer]:
    """The gradients of one optimizer step, and the trainer that took it."""
    capture = CaptureGrads()
    trainer = make_trainer(
        lora_model(randomize=True, base=base), dataset, PackedCollator(), tmp_path,
        micro_batch_size=micro_batch_size, grad_accum=grad_accum, max_steps=1,
    )
    trainer.add_callback(capture)
    trainer.train()
    assert capture.grads
    return capture.grads, trainer


def two_rows() -> Any:
    import datasets

    gen = torch.Generator().manual_seed(1)
    rows = []
    for n, trained in ((40, 30), (24, 3)):  # very different trained-token counts: mean of means != token mean
        ids = torch.randint(4, 128, (n,), generator=gen).tolist()
        labels = [-100] * (n - trained) + ids[n - trained:]
        rows.append({"input_ids": ids, "labels": labels, "position_ids": list(range(n))})
    return datasets.Dataset.from_list(rows)


def test_accumulated_step_equals_one_batch_holding_both_halves(tmp_path: Path) -> None:
    rows = two_rows()
    accumulated = step_grads(rows, micro_batch_size=1, grad_accum=2, tmp_path=tmp_path / "a")
    together = step_grads(rows, micro_batch_size=2, grad_accum=1, tmp_path=tmp_path / "b")
    assert accumulated.keys() == together.keys()
    for name in together:
        torch.testing.assert_close(accumulated[name], together[name], rtol=1e-5, atol=1e-7)

    # The bug this guards against: the mean of per-micro-batch means gives a different gradient.
    model = lora_model(randomize=True)
    model.train()
    losses = [model(**PackedCollator()([row])).loss for row in rows]
    (sum(losses) / 2).backward()
    mean_of_means = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any(not torch.allclose(mean_of_means[n], together[n], rtol=1e-3) for n in together)


def test_a_model_declaring_no_loss_kwargs_gets_the_same_one_sum_over_the_steps_trained_tokens(tmp_path: Path) -> None:
    """For models with accepts_loss_kwargs=False (several vision-language and remote-code ones) transformers
    counts no trained tokens (num_items_in_batch=None); our loss must still be one sum over the step's trained
    tokens over their count, not the model's mean per micro-batch averaged over the accumulation."""
    from transformers import LlamaForCausalLM

    class NoLossKwargsLlama(LlamaForCausalLM):
        accepts_loss_kwargs = False

    plain = tiny_llama()
    declaring = NoLossKwargsLlama(plain.config).eval()
    declaring.load_state_dict(plain.state_dict())
    rows = two_rows()  # 30 and 3 trained tokens
    expected, plain_trainer = step(rows, micro_batch_size=1, grad_accum=2, tmp_path=tmp_path / "a")
    found, trainer = step(rows, micro_batch_size=1, grad_accum=2, tmp_path=tmp_path / "b", base=declaring)
    assert not trainer.model_accepts_loss_kwargs and plain_trainer.model_accepts_loss_kwargs
    assert found.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], rtol=1e-5, atol=1e-7)
    assert trainer.trained_tokens == plain_trainer.trained_tokens == 33


class CapturingTrainer(SftTrainer):
    """Records every training batch as it reaches the loss (input ids, labels, positions)."""

    batches: list[dict[str, torch.Tensor]]

    def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if model.training:
            self.batches.append({k: inputs[k].clone() for k in ("labels", "input_ids", "position_ids") if inputs.get(k) is not None})
        return super().compute_loss(model, inputs, *args, **kwargs)


@pytest.mark.parametrize("packing", [False, True])
def test_labels_reaching_the_loss_are_the_prepared_labels(packing: bool, char_tokenizer: Any, tmp_path: Path) -> None:
    train = prepared_splits(tmp_path, char_tokenizer, packing)["train"]
    micro = 1 if packing else 3  # packed: one row per batch, so each batch is exactly one prepared row
    cfg = TrainConfig(lr=1e-3, save_steps=1000, micro_batch_size=micro, grad_accum=1, epochs=1.0)
    args = training_arguments(cfg, NONE, seed=0, out_dir=tmp_path, has_eval=False)
    args.disable_tqdm = True
    trainer = CapturingTrainer(model=lora_model(), args=args, train_dataset=train,
                               data_collator=make_collator(packing, char_tokenizer.pad_token_id))
    trainer.batches = []
    trainer.train()

    seen: list[tuple[tuple[int, ...], ...]] = []
    for batch in trainer.batches:
        for i in range(batch["labels"].shape[0]):
            n = int((batch["input_ids"][i] != char_tokenizer.pad_token_id).sum()) if not packing else batch["labels"].shape[1]
            row = (tuple(batch["input_ids"][i, :n].tolist()), tuple(batch["labels"][i, :n].tolist()))
            if packing:
                row += (tuple(batch["position_ids"][i].tolist()),)
            seen.append(row)
    keys = ("input_ids", "labels", "position_ids") if packing else ("input_ids", "labels")
    expected = [tuple(tuple(r[k]) for k in keys) for r in train]
    assert sorted(seen) == sorted(expected)  # every prepared row exactly once per epoch, unchanged


def model_and_trained_token_losses(batch: dict[str, torch.Tensor], bf16_autocast: bool = False) -> Any:
    """(loss, LoRA grads) of the model's own loss and of sft.train.loss on identical fresh models, and the count."""
    from sft.train import loss as sft_loss

    results, count = [], None
    for ours in (False, True):
        model = lora_model(randomize=True).train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_autocast):
            if ours:
                summed, count = sft_loss.forward_trained_loss_sum(model, batch)
                loss = summed / count
            else:
                loss = model(**batch).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    return results, count


@pytest.mark.parametrize("packing", [False, True])
def test_trained_token_loss_equals_the_models_own_loss(packing: bool, char_tokenizer: Any, tmp_path: Path,
                                                        monkeypatch: Any) -> None:
    """sft.train.loss (head on trained positions only, in chunks) gives the model's loss and the same gradients."""
    from sft.train import loss as sft_loss

    monkeypatch.setattr(sft_loss, "CHUNK", 7)  # several chunks, the last one partial
    rows = list(prepared_splits(tmp_path, char_tokenizer, packing)["train"])[:4]
    batch = make_collator(packing, char_tokenizer.pad_token_id)(rows)
    ((model_loss, model_grads), (our_loss, our_grads)), count = model_and_trained_token_losses(batch)
    assert count == int((batch["labels"][:, 1:] != -100).sum()) > 7
    torch.testing.assert_close(our_loss, model_loss, rtol=1e-6, atol=1e-6)
    assert our_grads.keys() == model_grads.keys() and any("lora_B" in n for n in our_grads)
    for name in model_grads:
        torch.testing.assert_close(our_grads[name], model_grads[name], rtol=1e-5, atol=1e-7)


def test_trained_token_loss_under_bf16_autocast_matches_the_models_own(char_tokenizer: Any, tmp_path: Path,
                                                                      monkeypatch: Any) -> None:
    """Mixed precision (what bf16 training on GPU runs): the head's matmul in bf16, the cross-entropy in float32,
    as the model's head under autocast followed by its float32 loss. The loss matches the model's own; the
    gradients round differently (ours scales by 1/N after the bf16 matmul, autograd before it), so they must be
    no further from the float32 gradients than the model's own bf16 gradients are."""
    from sft.train import loss as sft_loss

    monkeypatch.setattr(sft_loss, "CHUNK", 5)
    batch = make_collator(True, char_tokenizer.pad_token_id)(list(prepared_splits(tmp_path, char_tokenizer, True)["train"])[:2])
    ((model_loss, model_grads), (our_loss, our_grads)), count = model_and_trained_token_losses(batch, bf16_autocast=True)
    ((_, exact_grads), _), _ = model_and_trained_token_losses(batch)
    assert our_loss.dtype == torch.float32 and count > 5
    torch.testing.assert_close(our_loss, model_loss, rtol=1e-5, atol=1e-5)
    assert our_grads.keys() == model_grads.keys() == exact_grads.keys()
    for name in model_grads:
        ours_off = (our_grads[name] - exact_grads[name]).norm()
        model_off = (model_grads[name] - exact_grads[name]).norm()
        assert ours_off <= 1.5 * model_off + 1e-6 * exact_grads[name].norm(), name
        torch.testing.assert_close(our_grads[name], model_grads[name], rtol=0.1, atol=1e-3)


def test_nothing_trained_gives_a_zero_loss_and_zero_gradients() -> None:
    from sft.train.loss import forward_trained_loss_sum

    model = lora_model(randomize=True).train()
    ids = torch.randint(4, 128, (2, 8))
    summed, count = forward_trained_loss_sum(model, {"input_ids": ids, "labels": torch.full_like(ids, -100)})
    summed.backward()
    assert count == 0 and summed.item() == 0.0
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert grads and all(g is None or not g.any() for g in grads)


def test_a_trained_or_non_linear_head_falls_back_to_the_models_loss() -> None:
    from sft.train.loss import forward_trained_loss_sum

    batch = {"input_ids": torch.randint(4, 128, (1, 8)), "labels": torch.randint(4, 128, (1, 8))}
    torch.manual_seed(0)
    saved_head = add_lora(tiny_llama(), NONE, LoraConfig(r=4, modules_to_save=["lm_head"]), gradient_checkpointing=False)
    assert forward_trained_loss_sum(saved_head, batch) is None
    capped = lora_model()
    capped.config.final_logit_softcapping = 30.0
    assert forward_trained_loss_sum(capped, batch) is None


def test_packed_loss_equals_padded_loss_of_the_same_examples(char_tokenizer: Any, tmp_path: Path) -> None:
    padded = prepared_splits(tmp_path / "pad", char_tokenizer, packing=False)["train"]
    packed = prepared_splits(tmp_path / "pack", char_tokenizer, packing=True)["train"]
    assert len(packed) < len(padded)
    model = lora_model(randomize=True).eval()
    with torch.no_grad():
        loss_padded = model(**PaddedCollator(char_tokenizer.pad_token_id)(list(padded))).loss
        loss_packed = model(**PackedCollator()(list(packed))).loss
        leaky = model(**PackedCollator()(list(packed)), use_cache=True).loss  # cache on: packing not detected
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(leaky, loss_padded, rtol=1e-4)


@pytest.mark.parametrize("quant", ["nf4", "fp4", "int8", "none"])
def test_gradient_checkpointing_trains_lora_on_a_frozen_base(quant: str, tmp_path: Path) -> None:
    """No "element 0 of tensors does not require grad": k-bit prep + non-reentrant checkpointing."""
    from sft.config import ModelConfig
    from sft.model.load import load_model

    tiny_llama().save_pretrained(tmp_path / "tiny")
    base = load_model(ModelConfig(path=str(tmp_path / "tiny")), QuantConfig(name=quant), device="cpu")
    model = add_lora(base, QuantConfig(name=quant), LoraConfig(r=4, alpha=8), gradient_checkpointing=True)
    model.train()
    assert model.is_gradient_checkpointing
    ids = torch.randint(4, 128, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    lora_b = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(g is not None and g.abs().sum() > 0 for g in lora_b)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("compute", ["bfloat16", "float32"])
def test_kbit_preparation_keeps_frozen_embeddings_in_bf16_compute(compute: str, tmp_path: Path) -> None:
    """peft upcasts every non-quantized weight to float32; with bf16 compute the frozen embeddings and head go
    back to bf16 (residual stream and checkpointed activations in bf16, as QLoRA), norms and LoRA stay float32,
    and the checkpointed step still trains LoRA."""
    from sft.config import ModelConfig
    from sft.train.loss import forward_trained_loss_sum
    from sft.model.load import load_model

    tiny_llama().save_pretrained(tmp_path / "tiny")
    quant = QuantConfig(name="nf4", compute_dtype=compute)
    model = add_lora(load_model(ModelConfig(path=str(tmp_path / "tiny")), quant, device="cpu"), quant,
                     LoraConfig(r=4, alpha=8), gradient_checkpointing=True).train()
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert embed.weight.dtype == head.weight.dtype == getattr(torch, compute)
    norms = [p for n, p in model.named_parameters() if "norm" in n]
    assert norms and all(p.dtype == torch.float32 for p in norms)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)
    ids = torch.randint(4, 128, (2, 16))
    own = model(input_ids=ids, labels=ids).loss
    own.backward()
    lora_b = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(g is not None and g.abs().sum() > 0 for g in lora_b)
    summed, count = forward_trained_loss_sum(model, {"input_ids": ids, "labels": ids})  # also with a bf16 head
    torch.testing.assert_close(summed / count, own, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("compute", ["bfloat16", "auto"])
def test_bf16_compute_trains_under_bf16_autocast_on_cpu_too(compute: str, char_tokenizer: Any, tmp_path: Path) -> None:
    """quant.compute_dtype=bfloat16 gives the GPU's numerics on a CPU (bf16 autocast around the forward, bf16
    frozen embeddings): a CPU run that reproduces GPU training, and the benchmark's GPU memory emulation. The
    CPU default (auto = float32) stays out of autocast."""
    from sft.config import ModelConfig
    from sft.model.load import load_model

    tiny_llama().save_pretrained(tmp_path / "tiny")
    quant = QuantConfig(name="nf4", compute_dtype=compute)
    model = add_lora(load_model(ModelConfig(path=str(tmp_path / "tiny")), quant, device="cpu"), quant,
                     LoraConfig(r=4, alpha=8, dropout=0.0), gradient_checkpointing=True)
    seen: list[tuple[bool, torch.dtype]] = []
    model.get_input_embeddings().register_forward_hook(
        lambda mod, args, out: seen.append((torch.is_autocast_enabled("cpu"), out.dtype)) if mod.training else None)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = TrainConfig(lr=1e-3, warmup_ratio=0.0, save_steps=1000, micro_batch_size=2, grad_accum=1, max_steps=2)
    args = training_arguments(cfg, quant, seed=0, out_dir=tmp_path / "run", has_eval=False)
    args.disable_tqdm = True
    assert args.bf16 is (compute == "bfloat16") and not args.fp16
    train = prepared_splits(tmp_path / "data", char_tokenizer, packing=True)["train"]
    result = SftTrainer(model=model, args=args, train_dataset=train, data_collator=PackedCollator()).train()

    expected = (True, torch.bfloat16) if compute == "bfloat16" else (False, torch.float32)
    assert seen and set(seen) == {expected}
    assert torch.isfinite(torch.tensor(result.training_loss))
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before if "lora_B" in n)


@pytest.mark.parametrize("micro_batch_size", [1, 2])
def test_eval_loss_is_the_mean_over_every_held_out_trained_token(micro_batch_size: int, tmp_path: Path) -> None:
    rows = two_rows()  # 30 and 3 trained tokens: a mean of per-row or per-batch means would differ a lot
    model = lora_model(randomize=True)
    with torch.no_grad():
        model.eval()
        per_row = [model(**PackedCollator()([row])).loss.item() for row in rows]
    counts = [30, 3]
    token_mean = sum(loss * n for loss, n in zip(per_row, counts)) / sum(counts)
    assert abs(token_mean - sum(per_row) / 2) > 0.01  # the two means are distinguishable here
    trainer = make_trainer(model, rows, PackedCollator(), tmp_path, micro_batch_size=micro_batch_size)
    metrics = trainer.evaluate(eval_dataset=rows)
    assert metrics["eval_loss"] == pytest.approx(token_mean, rel=1e-5)
    assert metrics["eval_trained_tokens"] == 33


def test_per_row_eval_sums_are_the_same_with_the_models_own_head(monkeypatch: Any) -> None:
    import sft.train.loss

    model = lora_model(randomize=True).eval()
    batch = PackedCollator()(list(two_rows()))
    batch = {k: batch[k].repeat(2, 1) for k in ("input_ids", "labels", "position_ids")}  # two identical rows
    with torch.no_grad():
        sums, counts = sft.train.loss.trained_loss_per_row(model, batch)
        monkeypatch.setattr(sft.train.loss, "plain_linear_head", lambda lm: None)
        own_sums, own_counts = sft.train.loss.trained_loss_per_row(model, batch)
        reference = model(**batch).loss.item() * 66
    assert counts.tolist() == own_counts.tolist() == [33, 33]
    torch.testing.assert_close(sums, own_sums, rtol=1e-5, atol=1e-5)
    assert sums.sum().item() == pytest.approx(reference, rel=1e-5)


def test_the_loss_check_finds_a_head_that_is_more_than_its_weights() -> None:
    """Parity holds for a plain head; a head whose output is changed without the config saying so (here a hook
    that shifts the logits) is caught, so training falls back to the model's own loss."""
    import torch
    from conftest import tiny_llama

    from sft.train.loss import loss_parity

    model = tiny_llama(vocab_size=64, seed=1)
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.randint(3, 64, (2, 40))
    labels = ids.clone()
    labels[:, :10] = -100
    inputs = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    ours, theirs = loss_parity(model, inputs)
    assert ours == pytest.approx(theirs, rel=1e-5)
    bias = torch.zeros(64)
    bias[5] = 10.0  # every position now predicts token 5
    model.lm_head.register_forward_hook(lambda m, args, out: out + bias)
    ours, theirs = loss_parity(model, inputs)
    assert abs(ours - theirs) > 1e-2 * theirs


def test_soft_capping_in_a_nested_text_config_takes_the_models_own_loss() -> None:
    from conftest import tiny_llama

    from sft.train.loss import plain_linear_head

    model = tiny_llama(vocab_size=64)
    for p in model.parameters():
        p.requires_grad_(False)
    assert plain_linear_head(model) is not None
    model.config.get_text_config = lambda: type("Text", (), {"final_logit_softcapping": 30.0})()
    assert plain_linear_head(model) is None


def test_the_models_own_logits_give_the_same_summed_loss() -> None:
    """The fallback for heads the trained-positions loss does not fit is still one sum over trained tokens."""
    import torch
    from conftest import tiny_llama

    from sft.train.loss import forward_trained_loss_sum, own_logits_loss_sum

    model = tiny_llama(vocab_size=64, seed=2)
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.randint(3, 64, (2, 30))
    labels = ids.clone()
    labels[0, :12] = -100
    labels[1, :20] = -100
    inputs = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        (ours, n), (theirs, m) = forward_trained_loss_sum(model, inputs), own_logits_loss_sum(model, inputs)
    assert n == m == 18 + 10 and float(ours) == pytest.approx(float(theirs), rel=1e-5)


def test_the_fallback_loss_is_one_sum_over_the_steps_trained_tokens(tmp_path: Path, monkeypatch: Any) -> None:
    """A model the trained-positions head does not fit (here: made so) trains on its own logits, and accumulation
    still divides one sum by the step's trained tokens, not a mean of per-micro-batch means."""
    import sft.train.loss

    monkeypatch.setattr(sft.train.loss, "plain_linear_head", lambda lm: None)
    rows = two_rows()
    accumulated = step_grads(rows, micro_batch_size=1, grad_accum=2, tmp_path=tmp_path / "a")
    together = step_grads(rows, micro_batch_size=2, grad_accum=1, tmp_path=tmp_path / "b")
    for name in together:
        torch.testing.assert_close(accumulated[name], together[name], rtol=1e-5, atol=1e-7)
