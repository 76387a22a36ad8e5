"""The command line's grammar, shared by every subcommand of ``pretrainlab.cli``.

Every command that reads config takes ``-c CONFIG``, ``--set KEY=VALUE`` and
``--workdir DIR``, plus one flag per scalar field of its config section (so
`data build --min-chars 100` is `--set data.min_chars=100`); every command that
reads a run takes the run folder as its ``RUN`` positional. Old spellings keep
working for one release through ``deprecated``: they print one warning line.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pretrainlab.config import ProjectConfig, load_config
from pretrainlab.errors import UserError

_SCALARS = (int, float, str, bool, Path)

# Generated flags whose field name means different things in different sections get a distinct name;
# where the field-name spelling was released it stays as a deprecated alias for one release.
FLAG_NAMES = {
    ("train", "tokens"): "--tokens-dir",  # a folder; `plan --tokens` is a token count
    ("experiments", "parallel"): "--parallel-runs",  # a count; `train --parallel` is a strategy (ddp|fsdp2)
    ("tokenize", "tasks"): "--executor-tasks",  # auto|always|never; `eval --tasks` lists tasks
}
UNRELEASED_FLAGS = {("tokenize", "tasks")}  # renamed before any release: no old spelling to keep

PACKAGED_QUICKSTART = "quickstart.yaml"  # src/pretrainlab/configs/, a copy of configs/quickstart.yaml


def deprecated(old: str, new: str) -> None:
    """The one warning line of an old form that still works for this release."""
    print(f"warning: `{old}` is deprecated and goes in the next release; write `{new}`", file=sys.stderr)


class DeprecatedFlag(argparse.Action):
    """An old flag spelling, hidden from --help: stores like the new flag and warns."""

    def __init__(self, option_strings, dest, new_flag: str, **kwargs):
        self.new_flag = new_flag
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        deprecated(f"{parser.prog} {option_string}", f"{parser.prog} {self.new_flag}")
        setattr(namespace, self.dest, values)


def scalar_kind(annotation: Any):
    """The scalar type behind an annotation (unwrapping Optional), or None for lists/dicts/models."""
    origin = get_origin(annotation)
    if origin is Literal:
        return "literal"
    if origin in (list, tuple):
        inner = get_args(annotation)
        return "list" if len(inner) == 1 and scalar_kind(inner[0]) not in (None, "list") else None
    if origin is not None:
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return scalar_kind(args[0])
        return None
    return annotation if annotation in _SCALARS else None


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _override_text(value: Any) -> str:
    """A flag value as the YAML text --set expects (lists and booleans as JSON, which is YAML)."""
    return json.dumps(value) if isinstance(value, (bool, list)) else str(value)


def _flag_kwargs(annotation: Any, kind: Any, name: str, help_text: str) -> dict[str, Any]:
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction, "help": help_text}
    if kind == "list":
        return {"metavar": "A,B,...", "type": _comma_list, "help": f"{help_text} (comma-separated)"}
    if kind == "literal":
        if get_origin(annotation) is not Literal:
            annotation = [a for a in get_args(annotation) if a is not type(None)][0]
        return {"choices": [str(c) for c in get_args(annotation)], "help": help_text}
    return {"metavar": name.upper(), "help": help_text}


def add_section_flags(parser: argparse.ArgumentParser, section: str, only: tuple[str, ...] | None = None) -> None:
    """One --flag per scalar field of ProjectConfig.<section> (``only``: these fields), help from its description."""
    model = ProjectConfig.model_fields[section].annotation
    group = parser.add_argument_group(f"{section} options (same as --set {section}.KEY=VALUE)")
    for name, field in model.model_fields.items():
        kind = scalar_kind(field.annotation)
        if kind is None or (only is not None and name not in only):
            continue
        field_flag = "--" + name.replace("_", "-")
        flag = FLAG_NAMES.get((section, name), field_flag)
        kwargs = _flag_kwargs(field.annotation, kind, flag[2:].replace("-", "_"), field.description or "")
        dest = f"cfg__{section}__{name}"
        group.add_argument(flag, dest=dest, default=None, **kwargs)
        if flag != field_flag and (section, name) not in UNRELEASED_FLAGS:
            group.add_argument(field_flag, dest=dest, default=None, action=DeprecatedFlag, new_flag=flag,
                               **{k: v for k, v in kwargs.items() if k in ("type", "choices", "metavar")})


def add_config_options(parser: argparse.ArgumentParser, old_positional: bool = False) -> None:
    """-c CONFIG, --set, --workdir; ``old_positional``: also the deprecated positional CONFIG."""
    if old_positional:
        parser.add_argument("config_file", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("-c", "--config", metavar="CONFIG", help="YAML config file (see configs/)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    parser.add_argument("--workdir", metavar="DIR", help="folder all stage outputs default to (default: ./work)")


def config_path(args: argparse.Namespace) -> str | None:
    """-c CONFIG, or the deprecated positional CONFIG (with its warning)."""
    old = getattr(args, "config_file", None)
    if old is None:
        return getattr(args, "config", None)
    if getattr(args, "config", None):
        raise UserError(f"config given twice ({old} and -c {args.config}); write only `-c CONFIG`")
    prog = getattr(args, "prog", "pretrainlab COMMAND")
    deprecated(f"{prog} {old}", f"{prog} -c {old}")
    args.config, args.config_file = old, None
    return old


def run_overrides(args: argparse.Namespace) -> list[str]:
    """--set overrides, then the section flags, as KEY=VALUE (for commands that re-load a run's saved config)."""
    overrides = list(getattr(args, "overrides", []) or [])
    for key, value in vars(args).items():
        if key.startswith("cfg__") and value is not None:
            _, section, name = key.split("__", 2)
            overrides.append(f"{section}.{name}={_override_text(value)}")
    return overrides


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """--workdir, then --set overrides, then the section flags."""
    return ([f"workdir={args.workdir}"] if getattr(args, "workdir", None) else []) + run_overrides(args)


def config_from_args(args: argparse.Namespace) -> ProjectConfig:
    return load_config(config_path(args), overrides_from_args(args))


def run_from_args(run: str | None, args: argparse.Namespace) -> Path:
    """The RUN positional, or the config's run directory when it is left out."""
    return Path(run) if run is not None else config_from_args(args).run_dir


def packaged_recipe(name: str) -> Path:
    """A recipe shipped inside the package (src/pretrainlab/configs/), from a checkout or an installed wheel."""
    path = Path(str(resources.files("pretrainlab") / "configs" / name))
    if not path.is_file():
        raise UserError(f"packaged recipe {name} is missing from {path.parent}; reinstall pretrainlab or pass -c CONFIG")
    return path
