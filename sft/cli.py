"""Console entry points: choose the C allocator (sft.allocator), compose the Hydra config, turn it into typed
config, call `<stage>.run(cfg)`. Nothing else; the only module that reads Hydra's state.

User mistakes (SftError) print one message and exit 1 without a traceback; `debug=true` shows it.
"""

from __future__ import annotations

import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sft.config import register_configs
from sft.errors import ConfigError, SftError
from sft.quiet import quiet_libraries

CONFIG_PATH = "pkg://sft.conf"
register_configs()


def collect_problems(node: Any, key: str = "") -> list[str]:
    """Every problem of a config tree, keys written as Hydra overrides spell them."""
    out: list[str] = []
    if hasattr(node, "problems"):
        out += node.problems(key)
    for f in fields(node):
        child = getattr(node, f.name)
        if is_dataclass(child):
            out += collect_problems(child, f"{key}.{f.name}" if key else f.name)
    return out


def validate(cfg: Any) -> None:
    problems = collect_problems(cfg)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def typed(cfg: DictConfig) -> Any:
    """DictConfig -> validated dataclass; every invalid value reported in one message."""
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{key}: {str(getattr(e, 'msg', e)).splitlines()[0]}" if key else str(e)) from None
    validate(obj)
    return obj


def run_command(command: Callable[[Any], Any], cfg: DictConfig) -> Any:
    debug = bool(cfg.get("debug", False))
    try:
        return command(typed(cfg))
    except SftError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def data_keys_set_by_user() -> set[str]:
    """The data.* keys the command line set ("path" also when it chose a data group): with a training run
    directory, sft-generate and sft-eval put these on top of the run's own data settings."""
    keys = set()
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "data" or key.startswith("data@"):
            keys.add("path")
        elif key.startswith("data."):
            keys.add(key.removeprefix("data.").split(".")[0])
    return keys


@hydra.main(config_path=CONFIG_PATH, config_name="prepare", version_base="1.3")
def prepare_main(cfg: DictConfig) -> None:
    quiet_libraries(bool(cfg.get("debug", False)))  # before the stage imports its libraries
    from sft import data

    run_command(data.run, cfg)


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
def train_main(cfg: DictConfig) -> None:
    quiet_libraries(bool(cfg.get("debug", False)))  # before the stage imports its libraries
    from sft import train

    status = run_command(train.run, cfg)
    if status:  # preempted: a checkpoint was saved; rerunning the same command resumes
        sys.exit(status)


@hydra.main(config_path=CONFIG_PATH, config_name="merge", version_base="1.3")
def merge_main(cfg: DictConfig) -> None:
    quiet_libraries(bool(cfg.get("debug", False)))  # before the stage imports its libraries
    from sft import export

    run_command(export.run, cfg)


@hydra.main(config_path=CONFIG_PATH, config_name="generate", version_base="1.3")
def generate_main(cfg: DictConfig) -> None:
    quiet_libraries(bool(cfg.get("debug", False)))  # before the stage imports its libraries
    from sft import generate

    run_command(lambda typed_cfg: generate.run(typed_cfg, data_keys_set_by_user()), cfg)


@hydra.main(config_path=CONFIG_PATH, config_name="eval", version_base="1.3")
def eval_main(cfg: DictConfig) -> None:
    quiet_libraries(bool(cfg.get("debug", False)))  # before the stage imports its libraries
    from sft import evaluate

    run_command(lambda typed_cfg: evaluate.run(typed_cfg, data_keys_set_by_user()), cfg)


@hydra.main(config_path=CONFIG_PATH, config_name="bench", version_base="1.3")
def bench_main(cfg: DictConfig) -> None:
    quiet_libraries(bool(cfg.get("debug", False)))  # before the stage imports its libraries
    from hydra.types import RunMode

    from sft.evaluate import benchmarks

    hydra_cfg = HydraConfig.get()
    sweep = Path(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None  # one row per job's adapter
    run_command(lambda typed_cfg: benchmarks.run(typed_cfg, sweep), cfg)


def console(main: Callable[[], Any]) -> Callable[[], None]:
    """A console entry point (`sft-<command>`, `python -m sft <command>`): choose the C allocator first
    (sft.allocator: restarts the process once under jemalloc when the system has it), register the Slurm
    launcher (sft.slurm.register_launcher: an editable install hides it from Hydra's scan), then run Hydra."""

    def entry() -> None:
        from sft.allocator import choose_allocator
        from sft.slurm import register_launcher

        try:
            choose_allocator()
        except SftError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        register_launcher()
        main()

    entry.__doc__ = main.__doc__
    return entry


COMMANDS = {"prepare": console(prepare_main), "train": console(train_main), "merge": console(merge_main),
            "generate": console(generate_main), "eval": console(eval_main), "bench": console(bench_main)}
prepare, train, merge, generate, evaluate, bench = (
    COMMANDS[c] for c in ("prepare", "train", "merge", "generate", "eval", "bench"))
