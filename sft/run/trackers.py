"""Experiment trackers of a run (`train.report_to`): W&B, MLflow and trackio, one tracker run per sft run.

The tracker's run identity is chosen (W&B id, trackio name) or created (MLflow run) when the run directory is first
trained, and stored in `<run>/trackers.json`; a resumed or requeued run, and `sft-eval` on it, attach to the same
tracker run. The steps a restart trains again that the tracker run already holds (`Tracker.last_step`: asked of
the tracker, so points a kill kept from reaching it are sent) are not sent again: their figures are the
bitwise-same ones (tokens/s aside), so each step is in the tracker's history once. TensorBoard is written by the
Trainer's own callback (sft.train.job). Only rank 0 reports.

The transformers integrations are not used for these three: they start a new tracker run per process start, and
trackio's would publish a Space at the end of training, which a cluster node without network cannot.

The user's environment wins over our defaults: WANDB_DIR (else the run directory), WANDB_PROJECT and
MLFLOW_EXPERIMENT_NAME (when train.project is null; else "sft"), WANDB_ENTITY, MLFLOW_TRACKING_URI (else a file
store ./mlruns in the working directory) and TRACKIO_DIR. Without a server, MLflow writes a file store: it needs no
database package (mlflow-skinny, the [mlflow] extra, has none and refuses MLflow 3's sqlite: default), and jobs of
a sweep on a shared file system each write their own run's files (SQLite locking on NFS is unreliable).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

from sft.errors import ConfigError
from sft.io import flatten, write_json_atomic
from sft.run.wandb_files import offline_last_step, wandb_history, wandb_records  # noqa: F401 -- read by the tests
from sft.schemas import TRACKERS  # noqa: F401 -- the names report_to takes

TRACKERS_FILE = "trackers.json"
DEFAULT_PROJECT = "sft"


def project_name(project: str | None, env_var: str) -> str:
    """train.project when set, else the tracker's own variable (WANDB_PROJECT, MLFLOW_EXPERIMENT_NAME), else "sft"."""
    return project or os.environ.get(env_var) or DEFAULT_PROJECT


def mlflow_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else a file store `mlruns/` in the working directory (absolute, so a restart
    or sft-eval from elsewhere attaches to the same store)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (Path.cwd() / "mlruns").as_uri()


def allow_file_store(uri: str) -> None:
    """MLflow 3 refuses a file store unless MLFLOW_ALLOW_FILE_STORE=true; a file: URI (or a plain path) is the
    store chosen here or by the user, so the switch is turned on unless the user set it themselves."""
    if urlparse(uri).scheme in ("", "file"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def chosen(report_to: list[str]) -> list[str]:
    """The trackers asked for, `none` meaning none."""
    return [] if report_to in ([], ["none"]) else list(dict.fromkeys(report_to))


def check_installed(report_to: list[str], key: str = "train.report_to") -> None:
    """Before any model loads: each tracker's package is there, or one error naming the extra to install."""
    for name in chosen(report_to):
        if name != "tensorboard" and importlib.util.find_spec(name) is None:
            raise ConfigError(f"{key}={name}: the {name} package is not installed; install it with "
                              f"pip install 'sft[{name}]' (or pip install {name})")


def metric_name(key: str) -> str | None:
    """Trainer log key (or metrics.jsonl key) -> tracker metric name (None: not a metric)."""
    names = {"loss": "train/loss", "learning_rate": "train/lr", "lr": "train/lr", "grad_norm": "train/grad_norm",
             "trained_tokens": "train/trained_tokens", "tokens_per_s": "train/tokens_per_s", "epoch": "train/epoch",
             "eval_loss": "eval/loss"}
    if key in names:
        return names[key]
    return "eval/loss/" + key.removeprefix("eval_loss/") if key.startswith("eval_loss/") else None


def read_ids(run_dir: Path) -> dict[str, Any]:
    path = run_dir / TRACKERS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


class Tracker:
    """One tracker run: attach (creating it the first time), log metrics by step, summarize, finish."""

    name = ""

    def __init__(self, ids: dict[str, Any]) -> None:
        self.ids = ids

    def last_step(self) -> int:
        """The last step this tracker run holds (from before a restart), -1 when none."""
        return -1

    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def summarize(self, values: dict[str, Any]) -> None: ...
    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None: ...
    def finish(self) -> None: ...


class Wandb(Tracker):
    name = "wandb"

    @staticmethod
    def new_ids(run_dir: Path, project: str | None, run_name: str) -> dict[str, Any]:
        """W&B writes <dir>/wandb/: dir is WANDB_DIR when the user set it, else the run directory."""
        run_dir = Path(os.environ.get("WANDB_DIR") or run_dir)
        return {"id": secrets.token_hex(4), "project": project_name(project, "WANDB_PROJECT"), "name": run_name,
                "dir": str(run_dir.resolve())}

    def __init__(self, ids: dict[str, Any], config: dict[str, Any] | None = None) -> None:
        import wandb

        super().__init__(ids)
        self.wandb = wandb
        self.run = wandb.init(id=ids["id"], resume="allow", project=ids["project"], name=ids["name"], dir=ids["dir"],
                              config=config, settings=wandb.Settings(quiet=True, console="off", x_disable_stats=True))

    def last_step(self) -> int:
        """Online, W&B resumes the run at its last step; offline, the earlier offline files of this id hold it."""
        last = int(getattr(self.run, "starting_step", 0) or 0) - 1
        return max(last, offline_last_step(Path(self.ids["dir"]) / "wandb", self.ids["id"]))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def summarize(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.run.log({key: self.wandb.Table(columns=columns, data=rows)})

    def finish(self) -> None:
        self.run.finish()


class Mlflow(Tracker):
    name = "mlflow"

    @staticmethod
    def new_ids(run_dir: Path, project: str | None, run_name: str) -> dict[str, Any]:
        """MLflow names its runs itself: the run is created now, in the experiment named `project`."""
        from mlflow.tracking import MlflowClient

        uri = mlflow_tracking_uri()
        allow_file_store(uri)
        client = MlflowClient(tracking_uri=uri)
        experiment_id = experiment_id_for(client, project_name(project, "MLFLOW_EXPERIMENT_NAME"))
        run = client.create_run(experiment_id, run_name=run_name)
        return {"run_id": run.info.run_id, "experiment_id": experiment_id, "tracking_uri": uri}

    def __init__(self, ids: dict[str, Any], config: dict[str, Any] | None = None) -> None:
        from mlflow.tracking import MlflowClient

        super().__init__(ids)
        allow_file_store(ids.get("tracking_uri") or "")
        self.client = MlflowClient(tracking_uri=ids.get("tracking_uri"))
        self.run_id = ids["run_id"]
        self.client.update_run(self.run_id, status="RUNNING")
        if config:
            logged = self.client.get_run(self.run_id).data.params
            fresh = {k: str(v)[:6000] for k, v in config.items() if k not in logged}  # params cannot change
            if fresh:
                from mlflow.entities import Param

                self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in fresh.items()])

    def last_step(self) -> int:
        steps = [m.step for key in self.client.get_run(self.run_id).data.metrics
                 for m in self.client.get_metric_history(self.run_id, key) if key.startswith(("train/", "eval/"))]
        return max(steps, default=-1)

    def log(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def summarize(self, values: dict[str, Any]) -> None:
        numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numbers:
            self.log(numbers, 0)
        for k, v in values.items():
            if k not in numbers:
                self.client.set_tag(self.run_id, k, str(v)[:5000])

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.client.log_table(self.run_id, {c: [r[i] for r in rows] for i, c in enumerate(columns)}, f"{key}.json")

    def finish(self) -> None:
        self.client.set_terminated(self.run_id)


def experiment_id_for(client: Any, name: str) -> str:
    """The experiment's id, created when missing; two sweep jobs creating it at once both get the one that won."""
    experiment = client.get_experiment_by_name(name)
    if experiment:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # MlflowException(RESOURCE_ALREADY_EXISTS) when another job created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class Trackio(Tracker):
    name = "trackio"

    @staticmethod
    def new_ids(run_dir: Path, project: str | None, run_name: str) -> dict[str, Any]:
        return {"project": project or DEFAULT_PROJECT, "name": f"{run_name}-{secrets.token_hex(3)}"}

    def __init__(self, ids: dict[str, Any], config: dict[str, Any] | None = None) -> None:
        import trackio

        super().__init__(ids)
        self.trackio = trackio
        self.run = trackio.init(project=ids["project"], name=ids["name"], resume="allow", config=config,
                                auto_log_cpu=False, auto_log_gpu=False)

    def last_step(self) -> int:
        from trackio.sqlite_storage import SQLiteStorage

        last = SQLiteStorage.get_max_step_for_run(self.ids["project"], self.ids["name"])
        return -1 if last is None else int(last)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Written through at once: trackio batches its writes every 0.5 s, and a kill would lose that batch."""
        self.trackio.log(metrics, step=step)
        flush, lock = getattr(self.run, "_flush_queues_inline", None), getattr(self.run, "_client_lock", None)
        if flush is not None and lock is not None:
            with lock:
                flush()

    def summarize(self, values: dict[str, Any]) -> None:
        numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numbers:
            self.trackio.log(numbers)

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.trackio.log({key: self.trackio.Table(columns=columns, data=rows)})

    def finish(self) -> None:
        self.trackio.finish()


KINDS: dict[str, type[Tracker]] = {"wandb": Wandb, "mlflow": Mlflow, "trackio": Trackio}


def attach(run_dir: Path, report_to: list[str], project: str | None, run_name: str, config: dict[str, Any] | None = None,
           create: bool = True) -> list[Tracker]:
    """The run's trackers, attached to the tracker runs named in trackers.json; a tracker the file does not name yet
    gets its run now (create=False, as sft-eval: only those the file names). Rank 0 only."""
    ids = read_ids(run_dir)
    names = [n for n in chosen(report_to) if n in KINDS]
    missing = [n for n in names if n not in ids]
    if missing and create:
        for n in missing:
            with tracker_errors(n):
                ids[n] = KINDS[n].new_ids(run_dir, project, run_name)  # type: ignore[attr-defined]
        write_json_atomic(run_dir / TRACKERS_FILE, ids)
    flat = {k: v for k, v in flatten(config or {}).items() if v is not None}
    trackers = []
    for n in names:
        if n in ids:
            with tracker_errors(n):
                trackers.append(KINDS[n](ids[n], flat))  # type: ignore[call-arg]
    return trackers


@contextlib.contextmanager
def tracker_errors(name: str) -> Iterator[None]:
    """A tracker that cannot start its run (a store it cannot use, a server it cannot reach) is one message."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as e:  # each library raises its own types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"report_to={name}: cannot start its run: {first}") from None

