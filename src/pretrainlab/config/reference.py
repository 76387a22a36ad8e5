"""docs/CONFIG.md, generated from the config models: every option with its type, default and description."""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from pretrainlab.config.loading import nested_model
from pretrainlab.config.project import ProjectConfig


def _type_name(ann: Any) -> str:
    origin = get_origin(ann)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(ann))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in get_args(ann))
        name = getattr(origin, "__name__", str(origin)).replace("UnionType", "")
        return f"{name}[{args}]" if name else args.replace(", ", " | ")
    return getattr(ann, "__name__", str(ann))


def _sub_section_rows(prefix: str, model: type[BaseModel], value: BaseModel | None) -> list[str]:
    """Rows of a nested section's keys (recursing into its own sub-sections)."""
    rows = []
    for k2, f2 in model.model_fields.items():
        d2 = getattr(value, k2) if value is not None else f2.get_default(call_default_factory=True)
        nested = nested_model(f2.annotation)
        about = f2.description or (" ".join((nested.__doc__ or "").split()) if nested else "")
        shown = "sub-section" if isinstance(d2, BaseModel) else repr(d2)
        rows.append(f"| `{prefix}.{k2}` | `{_type_name(f2.annotation)}` | `{shown}` | {about} |")
        if nested is not None and isinstance(d2, BaseModel):
            rows += _sub_section_rows(f"{prefix}.{k2}", nested, d2)
    return rows


def config_reference_markdown() -> str:
    """docs/CONFIG.md: every option with its type, default and description, from the models."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `pretrainlab.config` by `pretrainlab config docs`; do not edit by hand.",
        "Every key can be set in a YAML file or with `--set section.key=value`.",
        "",
    ]
    root = ProjectConfig()
    for name, field in ProjectConfig.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines += [f"## `{name}`", "", (ann.__doc__ or "").strip(), "", "| key | type | default | description |", "|---|---|---|---|"]
            section = getattr(root, name)
            for key, sub in ann.model_fields.items():
                default = getattr(section, key)
                nested = nested_model(sub.annotation)
                shown = "sub-section" if isinstance(default, BaseModel) else repr(default)
                about = sub.description or (" ".join((nested.__doc__ or "").split()) if nested else "")
                lines.append(f"| `{name}.{key}` | `{_type_name(sub.annotation)}` | `{shown}` | {about} |")
                if nested is not None and (default is None or isinstance(default, BaseModel)):  # a sub-section: list its keys
                    lines += _sub_section_rows(f"{name}.{key}", nested, default)
            lines.append("")
        else:
            lines += [f"## `{name}`", "", f"`{_type_name(ann)}`, default `{getattr(root, name)!r}`: {field.description}", ""]
    return "\n".join(lines)
