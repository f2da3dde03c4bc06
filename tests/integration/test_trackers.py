"""train.report_to with the real tracker libraries, offline: W&B (WANDB_MODE=offline), MLflow (a local file store,
read back with MlflowClient) and trackio (its local store). A run killed with SIGKILL after a checkpoint and rerun
is one tracker run, with every step logged once; sft-eval logs its table into the same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, run_sft, sigkill_training_when, write_jsonl

WORDS = ["red", "blue", "green", "tea", "sky", "moon", "cat", "dog"]
STEPS = 8


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: Any) -> Path:
    rows = [{"instruction": f"say {WORDS[i % 8]}", "input": "", "output": WORDS[(i * 3) % 8]} for i in range(32)]
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", rows)


def overrides(tiny_dir: Path, data_file: Path, out: Path, tracker: str) -> list[str]:
    return [f"model.path={tiny_dir}", "quant=none", "prompt=custom", f"data.path={data_file}", "data.eval_path=null",
            "data.eval_fraction=0.25", "data.max_seq_len=64", "data.packing=true", "train.micro_batch_size=2",
            "train.grad_accum=1", f"train.max_steps={STEPS}", "train.save_steps=3", "train.eval_steps=3",
            "train.lr=1e-3", f"train.report_to=[{tracker}]", "train.project=sft-test", f"out_dir={out}"]


def tracker_env(tracker: str, root: Path) -> dict[str, str]:
    return {"wandb": {"WANDB_MODE": "offline", "WANDB_SILENT": "true"},
            "mlflow": {"MLFLOW_TRACKING_URI": (root / "mlruns").as_uri()},  # no MLFLOW_ALLOW_FILE_STORE needed
            "trackio": {"TRACKIO_DIR": str(root / "trackio")}}[tracker]


def logged_steps(out: Path) -> list[dict[str, Any]]:
    if not (out / "metrics.jsonl").is_file():
        return []
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def kill_after_a_step_past_the_first_checkpoint(args: list[str], out: Path, env: dict[str, str]) -> None:
    """SIGKILL once a step after checkpoint-3 is logged: the rerun trains those steps again."""
    sigkill_training_when(lambda: (out / "checkpoints" / "checkpoint-3").is_dir() and any(
        r.get("step", 0) >= 4 and "loss" in r for r in logged_steps(out)), args, env, poll=0.02)
    assert not (out / "finished.json").exists(), "killed too late"


def wandb_history(out: Path) -> tuple[set[str], list[tuple[int, str, float]]]:
    """(run ids, (step, key, value) points) read back from the offline run files under <out>/wandb."""
    from sft.run.trackers import wandb_history as history

    ids = {p.name.rsplit("-", 1)[1] for p in (out / "wandb").glob("offline-run-*")}
    points = [(int(row["_step"]), k, v) for run_id in ids for row in history(out / "wandb", run_id)
              for k, v in row.items() if not k.startswith("_")]
    return ids, points


def mlflow_history(root: Path) -> tuple[set[str], list[tuple[int, str, float]], dict[str, str]]:
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 keeps its file store behind this switch
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(root / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("sft-test")
    runs = client.search_runs([experiment.experiment_id])
    points = []
    for run in runs:
        for key in run.data.metrics:
            points += [(m.step, key, m.value) for m in client.get_metric_history(run.info.run_id, key)]
    return {r.info.run_id for r in runs}, points, runs[0].data.params if runs else {}


def trackio_history(root: Path, env: dict[str, str]) -> tuple[set[str], list[tuple[int, str, float]]]:
    script = ("import json, sys; from trackio.sqlite_storage import SQLiteStorage as S; "
              "runs = S.get_runs('sft-test'); "
              "print(json.dumps({r: S.get_logs('sft-test', r) for r in runs}))")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    logs = json.loads(done.stdout.strip().splitlines()[-1])
    points = [(int(row["step"]), k, v) for rows in logs.values() for row in rows for k, v in row.items()
              if k not in ("step", "timestamp") and isinstance(v, (int, float))]
    return set(logs), points


@pytest.mark.parametrize("tracker", ["wandb", "mlflow", "trackio"])
def test_one_tracker_run_across_a_sigkill_and_resume_with_each_step_once(
        tracker: str, tiny_dir: Path, data_file: Path, tmp_path: Path) -> None:
    pytest.importorskip(tracker)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **tracker_env(tracker, tmp_path)}
    out = tmp_path / "run"
    args = overrides(tiny_dir, data_file, out, tracker)
    kill_after_a_step_past_the_first_checkpoint(args, out, env)
    ids = json.loads((out / "trackers.json").read_text())[tracker]
    again = subprocess.run([sys.executable, "-m", "sft", "train", *args], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout
    assert json.loads((out / "trackers.json").read_text())[tracker] == ids  # the same tracker run, reattached

    if tracker == "wandb":
        run_ids, points = wandb_history(out)
    elif tracker == "mlflow":
        run_ids, points, params = mlflow_history(tmp_path)
        assert params["train.lr"] == "0.001" and params["data_report.kept"].isdigit()  # config and data report
    else:
        run_ids, points = trackio_history(tmp_path, env)
    assert len(run_ids) == 1
    losses = sorted((step, value) for step, key, value in points if key == "train/loss")
    assert [step for step, _ in losses] == list(range(1, STEPS + 1))  # each step once, none lost
    expected = {r["step"]: r["loss"] for r in logged_steps(out) if "loss" in r}
    assert all(value == pytest.approx(expected[step]) for step, value in losses)
    evals = sorted(step for step, key, _ in points if key == "eval/loss")
    assert evals == [0, 3, 6, 8]
    assert any(key == "train/lr" for _, key, _ in points) and any(key == "train/grad_norm" for _, key, _ in points)

    ev = subprocess.run([sys.executable, "-m", "sft", "eval", f"adapter={out}", f"report_to=[{tracker}]",
                         "generation.max_new_tokens=2", f"out_dir={tmp_path / 'eval'}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert f"logged to the training run's {tracker} run" in ev.stdout
    if tracker == "mlflow":
        run_ids_after, points, _ = mlflow_history(tmp_path)
        assert run_ids_after == run_ids and any(key == "sft_eval/adapter/token_f1" for _, key, _ in points)


def test_a_missing_tracker_package_is_one_message_naming_the_extra(monkeypatch: Any) -> None:
    import importlib.util

    from sft.errors import ConfigError
    from sft.run.trackers import check_installed

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train.report_to=wandb: the wandb package is not installed; install it "
                                          r"with pip install 'sft\[wandb\]'"):
        check_installed(["tensorboard", "wandb"])
    check_installed(["tensorboard"])


def test_sft_eval_report_to_needs_a_run_that_has_that_tracker(tiny_dir: Path, tmp_path: Path) -> None:
    from conftest import write_run_config

    pytest.importorskip("mlflow")
    data = write_jsonl(tmp_path / "x.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}])
    run = write_run_config(tmp_path / "run", str(tiny_dir), {"path": str(data), "eval_fraction": 0.5})
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_dir),
                                                                     "peft_type": "LORA"}))
    done = run_sft("eval", f"adapter={run}", "report_to=[mlflow]", f"out_dir={tmp_path / 'eval'}")
    assert done.returncode == 1 and "has no mlflow run in its trackers.json" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not (tmp_path / "eval" / "eval.json").exists()


def sft_console(command: str, *args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The console script, from a working directory outside the repo, as a user runs it."""
    return subprocess.run([str(Path(sys.executable).parent / f"sft-{command}"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any tracker setting of the caller, plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_", "TRACKIO_", "PYTHONPATH"))}
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def short_run(tiny_dir: Path, data_file: Path, out: Path, trackers: str) -> list[str]:
    args = [a for a in overrides(tiny_dir, data_file, out, trackers) if not a.startswith("train.project=")]
    return [*args, "train.max_steps=2", "train.eval_steps=0"]


def test_the_users_tracker_variables_win_over_our_defaults(tiny_dir: Path, data_file: Path, tmp_path: Path,
                                                          monkeypatch: Any) -> None:
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from wandb.proto import wandb_internal_pb2

    from sft.run.trackers import wandb_records

    work, out, wandb_dir = tmp_path / "work", tmp_path / "run", tmp_path / "wandb-files"
    work.mkdir()
    env = clean_env(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(wandb_dir), WANDB_PROJECT="w-proj",
                    WANDB_ENTITY="w-team", MLFLOW_TRACKING_URI=(tmp_path / "store").as_uri(),
                    MLFLOW_EXPERIMENT_NAME="m-exp")
    done = sft_console("train", *short_run(tiny_dir, data_file, out, "wandb,mlflow"), cwd=work, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ids = json.loads((out / "trackers.json").read_text())
    assert ids["wandb"]["project"] == "w-proj" and ids["wandb"]["dir"] == str(wandb_dir)
    assert not (out / "wandb").exists()  # WANDB_DIR, not the run directory
    (run_file,) = wandb_dir.glob(f"wandb/offline-run-*-{ids['wandb']['id']}/run-{ids['wandb']['id']}.wandb")
    records = [wandb_internal_pb2.Record.FromString(r) for r in wandb_records(run_file)]
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.entity) == ("w-proj", "w-team")

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for this reader
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tmp_path / "store").as_uri())
    assert client.get_run(ids["mlflow"]["run_id"]).info.experiment_id == client.get_experiment_by_name("m-exp").experiment_id
    # train.project on the command line wins over the variables
    again = sft_console("train", *short_run(tiny_dir, data_file, tmp_path / "run2", "wandb,mlflow"), "train.project=mine",
                        cwd=work, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    ids2 = json.loads((tmp_path / "run2" / "trackers.json").read_text())
    assert ids2["wandb"]["project"] == "mine"
    assert client.get_experiment_by_name("mine").experiment_id == ids2["mlflow"]["experiment_id"]


def test_mlflow_with_nothing_set_writes_a_file_store_in_the_working_directory(
        tiny_dir: Path, data_file: Path, tmp_path: Path, monkeypatch: Any) -> None:
    """No server, no MLFLOW_* variable, the [mlflow] extra (mlflow-skinny): MLflow 3's default (sqlite:) would be
    refused; the run goes to ./mlruns instead, and sft-eval from another directory finds it there."""
    pytest.importorskip("mlflow")
    work, out = tmp_path / "work", tmp_path / "run"
    work.mkdir()
    done = sft_console("train", *short_run(tiny_dir, data_file, out, "mlflow"), cwd=work, env=clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    ids = json.loads((out / "trackers.json").read_text())["mlflow"]
    assert ids["tracking_uri"] == (work / "mlruns").as_uri()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ev = sft_console("eval", f"adapter={out}", "report_to=[mlflow]", "generation.max_new_tokens=2",
                     f"out_dir={tmp_path / 'eval'}", cwd=elsewhere, env=clean_env())
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert not (elsewhere / "mlruns").exists()

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for this reader
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(work / "mlruns").as_uri())
    run = client.get_run(ids["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "sft"
    assert [m.step for m in client.get_metric_history(ids["run_id"], "train/loss")] == [1, 2]
    assert any(k.startswith("sft_eval/") for k in run.data.metrics)
