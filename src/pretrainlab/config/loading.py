"""Loading a config: YAML files, `--set a.b=value` overrides, run directories, and writing it back.

Unknown keys are errors with a "did you mean" hint and wrong types are errors naming the key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from pretrainlab.config.project import ProjectConfig
from pretrainlab.errors import ConfigError


def _check_keys(data: Any, model: type[BaseModel], where: str, origin: str) -> None:
    """Reject unknown keys with a did-you-mean hint before pydantic sees them."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{where}{near[0]}'?" if near else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{origin}: unknown key '{where}{key}'{hint}")
        ann = nested_model(fields[key].annotation)
        if ann is not None:
            _check_keys(value, ann, f"{where}{key}.", origin)


def nested_model(ann: Any) -> type[BaseModel] | None:
    """The config model behind ``Model`` or ``Model | None`` annotations, else None."""
    if get_origin(ann) is not None and get_origin(ann) is not Literal:
        args = [a for a in get_args(ann) if a is not type(None)]
        ann = args[0] if len(args) == 1 else None
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _format_validation_error(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if p != "__root__")
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    got_txt = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    if "." in loc:
        return f"{origin}: '{loc}': {msg}{got_txt}{more}; fix the value in the file or with --set {loc}=VALUE"
    where = f"section '{loc}'" if loc else "config"
    return f"{origin}: {where}: {msg}{more}; fix these values in the file or with --set"


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as a YAML scalar/list (``1e-3``, ``true``, ``[a, b]``)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=3e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key; write e.g. --set train.steps=100")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[path[-1]] = value
    return data


def read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}; pass an existing YAML file (see configs/)")
    if path.is_dir():
        raise ConfigError(f"config path is a directory: {path}; pass a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the config as UTF-8 YAML") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}; fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections (model:, train:, ...), got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None) -> ProjectConfig:
    """Load a ProjectConfig from YAML (optional) plus ``--set`` overrides."""
    data: dict = dict(base or {})
    origin = "config"
    if path is not None:
        path = Path(path)
        origin = str(path)
        data = _deep_merge(data, read_yaml(path))
    if overrides:
        data = apply_overrides(data, list(overrides))
        origin = f"{origin} with --set" if path else "--set"
    _check_keys(data, ProjectConfig, "", origin)
    try:
        return ProjectConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def _drop_unknown(data: Any, model: type[BaseModel], where: str, dropped: list[str]) -> Any:
    if not isinstance(data, dict):
        return data
    out = {}
    for key, value in data.items():
        if key not in model.model_fields:
            dropped.append(f"{where}{key}")
            continue
        nested = nested_model(model.model_fields[key].annotation)
        out[key] = _drop_unknown(value, nested, f"{where}{key}.", dropped) if nested else value
    return out


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> ProjectConfig:
    """The resolved config saved in a run directory, tolerant of options this version no longer has.

    A run made by an older (or newer) pretrainlab may carry keys that were renamed
    or removed since; they are dropped with one warning line instead of making the
    run impossible to evaluate, export or resume. Overrides are still strict.
    """
    path = Path(run_dir) / "config.yaml"
    data = read_yaml(path)
    dropped: list[str] = []
    data = _drop_unknown(data, ProjectConfig, "", dropped)
    if dropped:
        import sys

        print(f"warning: {path} has options this version does not know, ignored: {', '.join(dropped)}",
              file=sys.stderr)
    return load_config(None, overrides, base=data)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def config_to_dict(cfg: BaseModel) -> dict:
    return cfg.model_dump(mode="json")


def dump_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)
