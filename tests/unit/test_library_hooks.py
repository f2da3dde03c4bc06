"""Smoke tests of the library internals sft relies on (README "Library internals we rely on"): each private
attribute, internal module path or file layout, asserted to exist and to behave as the code expects, so that a
library upgrade that changes one fails here, by name, instead of silently changing training or reports."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import tiny_llama


def params(fn: Any) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


# ---- transformers -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "expected"), [
    ("_save", ["output_dir", "state_dict"]),  # SftTrainer._save: FSDP2 gathers the adapter
    ("_save_checkpoint", ["model", "trial"]),  # AtomicCheckpointMixin: staging directory + rename
    ("_get_output_dir", ["trial"]),  # AtomicCheckpointMixin: where _save_checkpoint writes
    ("_load_from_checkpoint", ["resume_from_checkpoint", "model"]),  # job.trained_to_the_end
    ("get_batch_samples", ["epoch_iterator", "num_batches", "device"]),  # SftTrainer: the step's token count
    ("compute_loss", ["model", "inputs", "return_outputs", "num_items_in_batch"]),
    ("prediction_step", ["model", "inputs", "prediction_loss_only", "ignore_keys"]),
    ("log", ["logs", "start_time"]),
])
def test_trainer_methods_we_override_keep_their_signatures(name: str, expected: list[str]) -> None:
    from transformers import Trainer

    assert params(getattr(Trainer, name)) == expected


def test_trainer_checkpoint_writes_where_get_output_dir_says_and_names_its_files_as_we_read_them() -> None:
    import transformers.trainer as hf_trainer
    from transformers import Trainer

    assert "self._get_output_dir(" in inspect.getsource(Trainer._save_checkpoint)
    assert hf_trainer.PREFIX_CHECKPOINT_DIR == "checkpoint"  # sft.run.checkpoints: checkpoint-N
    assert hf_trainer.TRAINER_STATE_NAME == "trainer_state.json"  # a complete checkpoint holds it


def test_loss_is_scaled_for_ga_is_read_by_the_training_step() -> None:
    from transformers import Trainer

    assert Trainer.loss_is_scaled_for_ga is None  # the class attribute SftTrainer sets to True
    assert "self.loss_is_scaled_for_ga" in inspect.getsource(Trainer.training_step)


def test_a_model_flagged_as_sharded_at_load_is_not_wrapped_by_the_trainer(tmp_path: Path) -> None:
    """sft.model.fsdp sets the base's _is_distributed_loading_by_transformers; the Trainer must see it through
    the PEFT wrapper (then it neither moves the model nor wraps it in DDP)."""
    from transformers import Trainer, TrainingArguments

    from sft.config import LoraConfig, QuantConfig
    from sft.model.lora import add_lora

    base = tiny_llama()
    model = add_lora(base, QuantConfig(name="none"), LoraConfig(r=2), gradient_checkpointing=False)
    base._is_distributed_loading_by_transformers = True
    assert model.is_distributed_loading_by_transformers is True
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", save_only_model=True)
    trainer = Trainer(model=model, args=args)
    assert trainer.is_distributed_loading_by_transformers is True


def test_accelerate_skips_a_model_marked_prepared() -> None:
    """job.train_run resets model._is_accelerate_prepared after the step-0 evaluation, or train() skips DDP."""
    from accelerate import Accelerator

    assert 'getattr(model, "_is_accelerate_prepared", False)' in inspect.getsource(Accelerator.prepare_model)


def test_attention_and_mask_internals_keep_their_names_and_keywords() -> None:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    assert callable(getattr(AttentionInterface, "register")) and callable(ALL_MASK_ATTENTION_FUNCTIONS.register)
    assert {"batch_size", "q_length", "kv_length", "q_offset", "kv_offset", "attention_mask", "local_size",
            "use_vmap"} <= set(params(sdpa_mask))
    assert params(sdpa_attention_forward)[:7] == ["module", "query", "key", "value", "attention_mask", "dropout",
                                                  "scaling"]


def test_render_jinja_template_returns_the_generation_spans() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    template = ("{% for m in messages %}{{ m.role }}: {% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
                "{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]
    rendered, spans = render_jinja_template(conversations=[messages], chat_template=template,
                                            return_assistant_tokens_mask=True)
    assert rendered == ["user: hiassistant: yes"]
    assert [tuple(s) for s in spans[0]] == [(19, 22)]  # "yes"


def test_optimizer_and_scheduler_names_we_validate_against() -> None:
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    assert {"adamw_torch", "paged_adamw_8bit"} <= {o.value for o in OptimizerNames}
    assert "cosine" in {s.value for s in SchedulerType}


def test_liger_is_switched_on_through_training_arguments() -> None:
    import dataclasses

    from transformers import TrainingArguments

    assert {"use_liger_kernel", "liger_kernel_config"} <= {f.name for f in dataclasses.fields(TrainingArguments)}


# ---- datasets ---------------------------------------------------------------------------------------------------

def test_arrow_writer_writes_a_file_that_from_file_maps(tmp_path: Path) -> None:
    import datasets
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter  # sft.data.mix.RowsWriter

    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"))})
    writer = ArrowWriter(features=features, path=str(tmp_path / "rows.arrow"))
    offsets, values = pa.array([0, 2, 3], pa.int32()), pa.array([5, 6, 7], pa.int32())
    writer.write_table(pa.Table.from_arrays([pa.ListArray.from_arrays(offsets, values)], names=["input_ids"]))
    writer.finalize()
    writer.close()
    ds = datasets.Dataset.from_file(str(tmp_path / "rows.arrow"))
    assert ds["input_ids"] == [[5, 6], [7]] and ds.features == features


def test_save_to_disk_layout_is_the_one_prepare_writes_by_hand(tmp_path: Path) -> None:
    """sft.data.prepare.save_splits copies the Arrow file and writes state.json from the Dataset's private
    attributes; datasets.load_from_disk must read that as it reads its own save_to_disk."""
    import datasets

    ds = datasets.Dataset.from_dict({"x": [1, 2]})
    assert ds._indices is None
    for key in ("_fingerprint", "_format_columns", "_format_kwargs", "_format_type", "_output_all_columns"):
        assert hasattr(ds, key), key
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved"))
    assert json.loads((tmp_path / "saved" / "dataset_dict.json").read_text()) == {"splits": ["train"]}
    split = tmp_path / "saved" / "train"
    assert sorted(p.name for p in split.iterdir()) == ["data-00000-of-00001.arrow", "dataset_info.json", "state.json"]
    state = json.loads((split / "state.json").read_text())
    assert set(state) == {"_data_files", "_fingerprint", "_format_columns", "_format_kwargs", "_format_type",
                          "_output_all_columns", "_split"}
    assert state["_data_files"] == [{"filename": "data-00000-of-00001.arrow"}]


# ---- trackio ----------------------------------------------------------------------------------------------------

def test_trackio_internals_the_tracker_reads() -> None:
    trackio = pytest.importorskip("trackio")
    from trackio.run import Run
    from trackio.sqlite_storage import SQLiteStorage

    assert trackio.__version__
    assert params(SQLiteStorage.get_max_step_for_run)[:2] == ["project", "run"]
    assert callable(getattr(Run, "_flush_queues_inline"))  # Trackio.log writes through at once
    assert "self._client_lock" in inspect.getsource(Run.__init__)


# ---- W&B --------------------------------------------------------------------------------------------------------

def test_wandb_offline_record_format_and_run_attributes() -> None:
    wandb = pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.wandb_run import Run

    assert "history" in {f.name for f in wandb_internal_pb2.Record.DESCRIPTOR.oneofs_by_name["record_type"].fields}
    assert {"key", "nested_key", "value_json"} <= {f.name for f in wandb_internal_pb2.HistoryItem.DESCRIPTOR.fields}
    record = wandb_internal_pb2.Record()
    item = record.history.item.add()
    item.key, item.value_json = "_step", "3"
    again = wandb_internal_pb2.Record()
    again.ParseFromString(record.SerializeToString())
    assert again.WhichOneof("record_type") == "history" and again.history.item[0].value_json == "3"
    assert isinstance(inspect.getattr_static(Run, "starting_step"), property)
    assert wandb.Settings(x_disable_stats=True).x_disable_stats is True
