"""`sft-<command> --help`: every setting with its value and the comment the schema gives it (sft/schemas.py,
sft/config.py), so the reason and unit of a key are read where it is set.

conf/*.yaml set `hydra.help.template: ${sft_help:}`; Hydra resolves it with the composed config (overrides
included) and substitutes its $APP_CONFIG_GROUPS and $FLAGS_HELP in the text returned here.
"""

from __future__ import annotations

import inspect
import io
import textwrap
import tokenize
from dataclasses import is_dataclass
from functools import cache
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from sft.keys import field_types


@cache
def field_comments(schema: type) -> dict[str, tuple[list[str], str]]:
    """Each field's comments: the block of lines right above it, and the one at the end of its line."""
    out: dict[str, tuple[list[str], str]] = {}
    for cls in reversed([c for c in schema.__mro__ if is_dataclass(c)]):
        source = textwrap.dedent(inspect.getsource(cls))
        comments = {tok.start[0]: tok.string.lstrip("# ").rstrip() for tok in
                    tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT
                    and not tok.string.lstrip("# ").startswith(("type:", "noqa"))}  # lint pragmas say nothing to users
        lines = source.splitlines()
        for number, line in enumerate(lines, start=1):
            name = line.strip().split(":", 1)[0]
            if line.startswith("    ") and not line.startswith("     ") and name.isidentifier() and ":" in line:
                above, k = [], number - 1
                while k in comments and lines[k - 1].lstrip().startswith("#"):
                    above.insert(0, comments[k])
                    k -= 1
                out[name] = above, comments.get(number, "")
    return out


def value_text(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True).strip()
    return text.removesuffix("\n...").strip()


def commented_yaml(cfg: DictConfig, schema: type, indent: str = "") -> list[str]:
    """The config as YAML, each key with its schema comment (several lines: above the key)."""
    comments, types = field_comments(schema), field_types(schema)
    out = []
    for key in cfg.keys():
        key = str(key)
        if key == "hydra":
            continue
        above, after = comments.get(key, ([], ""))
        node = cfg._get_node(key)
        out += [f"{indent}# {line}" for line in above]
        tp = types.get(key)
        if is_dataclass(tp) and isinstance(node, DictConfig) and not node._is_none() and not node._is_missing():
            out.append(f"{indent}{key}:" + (f"  # {after}" if after else ""))
            out += commented_yaml(node, tp, indent + "  ")
        else:
            value = OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) or OmegaConf.is_list(node) \
                else node._value()
            out.append(f"{indent}{key}: {value_text(value)}" + (f"  # {after}" if after else ""))
    return out


def help_template(*, _root_: DictConfig) -> str:
    """The whole --help text (Hydra's string.Template: `$` doubled, except its own placeholders)."""
    schema = OmegaConf.get_type(_root_)
    body = "\n".join(commented_yaml(_root_, schema)) if schema is not None and is_dataclass(schema) else ""
    header, footer = (str(_root_.hydra.help.get(k) or "") for k in ("header", "footer"))
    escaped = [t.replace("$", "$$") for t in (header, body, footer)]
    return (f"{escaped[0]}\n== Configuration groups ==\nChoose one option per group (group=option)\n\n$APP_CONFIG_GROUPS\n\n"
            f"== Settings ==\nSet any of them with key=value (defaults shown, each with its meaning)\n\n{escaped[1]}\n\n"
            f"{escaped[2]}\n")
