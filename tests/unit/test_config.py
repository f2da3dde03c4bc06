"""Every file of the config tree composes onto its schema; bad values fail at start-up naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sft.cli import typed
from sft.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"
PRIMARIES = sorted(p.stem for p in CONF.glob("*.yaml"))
GROUP_FILES = sorted(
    p.relative_to(CONF) for p in CONF.rglob("*.yaml") if p.parent != CONF and p.relative_to(CONF).parts[0] != "local"
)


def compose_with(primary: str, overrides: list[str], hydra_cfg: bool = False):
    with initialize_config_module(config_module="sft.conf", version_base="1.3"):
        return compose(primary, overrides=overrides, return_hydra_config=hydra_cfg)


def check_complete(cfg) -> None:
    """Turn a composed config into its schema, when nothing is left for the user to fill in (???)."""
    cfg.out_dir = "/tmp/unused"  # normally ${hydra:runtime.output_dir}, which exists only inside a run
    if "data" in cfg and cfg.data.path is None and not cfg.data.sources:
        cfg.data.path = "/tmp/unused.jsonl"  # data=alpaca and data=messages leave the file to the user
    if not OmegaConf.missing_keys(cfg):
        typed(cfg)


@pytest.mark.parametrize("primary", PRIMARIES)
def test_primary_config_composes(primary):
    check_complete(compose_with(primary, []))


@pytest.mark.parametrize("path", GROUP_FILES, ids=str)
def test_group_file_composes(path):
    group, name = "/".join(path.parent.parts), path.stem
    if group == "local.example":  # cluster values for conf/local/: each key must be a launcher field
        cfg = compose_with(PRIMARIES[0], [f"hydra/launcher={name}"], hydra_cfg=True)
        OmegaConf.merge(cfg.hydra.launcher, OmegaConf.load(CONF / path))
        return
    if group.startswith("hydra/"):
        cfg = compose_with(PRIMARIES[0], [f"{group}={name}"], hydra_cfg=True)
        assert cfg.hydra.launcher is not None
        return
    override = f"+{group}={name}" if group == "experiment" else f"{group}={name}"
    composed = 0
    for primary in PRIMARIES:
        if group == "experiment" and primary != "train":
            continue  # experiments record training runs
        if group != "experiment" and group.split("/")[0] not in compose_with(primary, []):
            continue  # this primary has no such group
        extra = ["prompt=chat"] if str(path) in ("data/messages.yaml", "data/sharegpt.yaml") else []  # chats need a template
        check_complete(compose_with(primary, [override, *extra]))
        composed += 1
    assert composed, f"no primary config uses {path}"


def test_every_bad_value_is_named_in_one_message():
    cfg = compose_with("prepare", ["data.max_seq_len=0", "data.truncation=middle", "prompt.name=custom"])
    cfg.out_dir = "/tmp/unused"
    with pytest.raises(ConfigError) as err:
        typed(cfg)
    message = str(err.value)
    for key in ("data.max_seq_len=0", "data.truncation='middle'", "prompt.template_input", "prompt.template_no_input"):
        assert key in message


def test_unknown_key_and_wrong_type_fail_at_compose():
    with pytest.raises(Exception, match="data.max_seq_lenn"):
        compose_with("prepare", ["data.max_seq_lenn=3"])
    with pytest.raises(Exception, match="data.max_seq_len"):
        compose_with("prepare", ["data.max_seq_len=long"])


def test_optimizer_and_scheduler_names_are_checked_before_anything_loads():
    cfg = compose_with("train", ["train.optim=adamw_foo", "train.scheduler=cosine_foo", "out_dir=/tmp/unused"])
    with pytest.raises(ConfigError) as err:
        typed(cfg)
    assert "train.optim='adamw_foo'" in str(err.value) and "train.scheduler='cosine_foo'" in str(err.value)
    good = compose_with("train", ["train.optim=paged_adamw_32bit", "train.scheduler=constant_with_warmup",
                                  "out_dir=/tmp/unused"])
    assert typed(good).train.optim == "paged_adamw_32bit"


@pytest.mark.parametrize("primary", PRIMARIES)
def test_help_and_log_carry_the_command_name(primary):
    cfg = compose_with(primary, [], hydra_cfg=True)
    assert cfg.hydra.job.name == cfg.hydra.help.app_name == f"sft-{primary}"
    assert cfg.hydra.help.header.startswith(f"sft-{primary}: ")


def test_the_demo_held_out_file_applies_only_to_the_demo_data():
    from sft.config import resource_path

    demo = typed(compose_with("train", ["out_dir=/tmp/unused"])).data
    assert demo.path == resource_path("demo_train.jsonl") and demo.eval_path == resource_path("demo_eval.jsonl")
    mine = typed(compose_with("train", ["data.path=my.jsonl", "data.eval_fraction=0.05", "out_dir=/tmp/unused"])).data
    assert mine.path == "my.jsonl" and mine.eval_path is None and mine.eval_fraction == 0.05
    chosen = typed(compose_with("train", ["data.path=my.jsonl", "data.eval_path=held.jsonl", "out_dir=/tmp/unused"])).data
    assert chosen.eval_path == "held.jsonl"


@pytest.mark.parametrize("group", ["quant", "prompt"])
def test_a_named_option_is_what_it_says_in_every_command(group):
    """conf/ holds only what differs from the schema defaults, and those differ by command (quant is none for
    sft-generate and sft-eval, nf4 for sft-train): each option must still name itself wherever it is chosen."""
    for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        for primary in (p for p in PRIMARIES if f"  - {group}: " in (CONF / f"{p}.yaml").read_text()):
            assert compose_with(primary, [f"{group}={option}"])[group].name == option, (primary, option)


def test_every_package_is_installed():
    """pyproject lists the packages by name (conf/ ships as sft.conf): a new one missing from it would work from the
    checkout and be absent from a wheel."""
    import tomllib

    listed = set(tomllib.loads((CONF.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(CONF.parent).parts) for top in ("sft", "hydra_plugins")
             for p in (CONF.parent / top).rglob("__init__.py")}
    assert found | {"sft.conf"} == listed
