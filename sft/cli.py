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

from sft.config import SCHEMAS, register_configs
from sft.errors import ConfigError, SftError
from sft.keys import extra_keys, unknown_keys_message, unknown_override_keys
from sft.quiet import quiet_libraries

CONFIG_PATH = "pkg://sft.conf"
register_configs()
COMMAND_OF = {schema: command for command, schema in SCHEMAS.items()}


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
    schema = OmegaConf.get_type(cfg)
    extra = extra_keys(cfg, schema) if schema is not None and is_dataclass(schema) else []
    if extra:  # appended with +key=value or by a config file: to_object would drop them without a word
        raise ConfigError(unknown_keys_message(schema, extra, COMMAND_OF.get(schema, "<command>")))
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{key}: {str(getattr(e, 'msg', e)).splitlines()[0]}" if key else str(e)) from None
    validate(obj)
    return obj


def run_command(command: Callable[[Any], Any], cfg: DictConfig) -> Any:
    from sft.consolelog import console_log

    debug = bool(cfg.get("debug", False))
    log = command_log()
    logged_before = log.stat().st_size if log.is_file() else 0
    try:
        with console_log(log):  # the run directory keeps what the command printed
            return command(typed(cfg))
    except SftError as e:
        if debug:
            raise
        remove_hydra_leftovers(log, logged_before)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def command_log() -> Path:
    """Hydra's log file for this command, in its run directory (out_dir): sft-<command>.log."""
    hydra_cfg = HydraConfig.get()
    return Path(hydra_cfg.runtime.output_dir) / f"{hydra_cfg.job.name}.log"


def remove_hydra_leftovers(log: Path, logged_before: int) -> None:
    """A command refused before it wrote anything leaves no directory: Hydra made its run directory (out_dir,
    with .hydra/ and the log, empty before this command, whatever it printed) before the command ran."""
    import shutil

    out = log.parent
    if not (out / ".hydra").is_dir() or {p.name for p in out.iterdir()} - {".hydra", log.name}:
        return  # not Hydra's making (sft-merge's is the working directory), or the command wrote there
    if logged_before == 0:
        shutil.rmtree(out, ignore_errors=True)


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
    import os

    # Arrow's buffers from malloc, not its default mimalloc pool, which keeps the pages a reader has freed:
    # streaming 1M records from a Hub-style Parquet directory, the main process held 60 MB less (reading alone,
    # 305 -> 244 MB; the whole preparation's peak, 1,020 -> 972 MB). Before pyarrow is imported; the workers
    # inherit it; a user's own choice stands.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
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


def config_groups(config_dir: str | None) -> set[str]:
    """The top-level config groups: conf/'s folders, and those of a --config-dir."""
    from importlib.resources import files

    roots = [files("sft.conf"), *([Path(config_dir)] if config_dir else [])]
    return {p.name for root in roots if root.is_dir() for p in root.iterdir() if p.is_dir() and p.name != "__pycache__"}


def check_override_keys(command: str, args: list[str]) -> None:
    """Unknown keys on the command line, with or without `+`: one error naming the nearest real key, before Hydra
    composes (Hydra would advise `+key=value`, which then trains on the defaults)."""
    from hydra._internal.utils import get_args_parser

    try:
        parsed = get_args_parser().parse_args(args)
    except SystemExit:  # a malformed command line: Hydra says what is wrong
        return
    clash = clashing_flags(parsed)
    if clash:
        raise ConfigError(clash)
    schema = SCHEMAS[command]
    unknown = unknown_override_keys(schema, parsed.overrides, config_groups(parsed.config_dir))
    if unknown:
        raise ConfigError(unknown_keys_message(schema, unknown, command))


def clashing_flags(parsed: Any) -> str | None:
    """Hydra's flags that cannot go together (it would answer with a ValueError traceback): what to do instead."""
    given = [flag for flag, on in (("--run", parsed.run), ("--multirun", parsed.multirun),
                                   ("--cfg", parsed.cfg is not None), ("--info", parsed.info is not None),
                                   ("--shell-completion", parsed.shell_completion)) if on]
    if len(given) > 1:
        return (f"{' and '.join(given)} cannot be given together: one of --run (the default), --multirun (-m: a "
                "sweep), --cfg (-c: print the config, run nothing), --info (-i)")
    if parsed.resolve and parsed.cfg is None and not parsed.help:
        return "--resolve goes with --cfg (e.g. --cfg job --resolve) or --help"
    return None


PRINTING = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i")


def hydra_args(args: list[str]) -> list[str]:
    """What Hydra is given. Commands that only print (--help, --cfg) end quietly when the reader stops reading
    (`--help | head`), as other Unix tools do. `--cfg job --resolve` composes without running, so Hydra has set
    no run directory for `out_dir: ${hydra:runtime.output_dir}`: it is given the one a run would use."""
    import signal

    if not any(a.split("=")[0] in PRINTING for a in args):
        return args
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if "--resolve" in args and not any(a.startswith("hydra.runtime.output_dir=") for a in args):
        # next to the other overrides: argparse takes them as one run of positional arguments
        at = next((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")), len(args))
        return [*args[:at], "hydra.runtime.output_dir=${..run.dir}", *args[at:]]
    return args


def console(command: str, main: Callable[[], Any]) -> Callable[[], None]:
    """A console entry point (`sft-<command>`, `python -m sft <command>`): choose the C allocator first
    (sft.allocator: restarts the process once under jemalloc when the system has it), check the keys of the
    overrides, register the Slurm launcher (sft.slurm.register_launcher: an editable install hides it from Hydra's
    scan), then run Hydra."""

    def entry() -> None:
        from sft.allocator import choose_allocator
        from sft.slurm import register_launcher

        try:
            choose_allocator()
            check_override_keys(command, sys.argv[1:])
        except SftError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        sys.argv[1:] = hydra_args(sys.argv[1:])
        register_launcher()
        main()

    entry.__doc__ = main.__doc__
    return entry


COMMANDS = {name: console(name, main) for name, main in (
    ("prepare", prepare_main), ("train", train_main), ("merge", merge_main), ("generate", generate_main),
    ("eval", eval_main), ("bench", bench_main))}
prepare, train, merge, generate, evaluate, bench = (
    COMMANDS[c] for c in ("prepare", "train", "merge", "generate", "eval", "bench"))
