"""The rows of the configuration reference: every field under a model, with its dotted path,
type, default, allowed values and description (the attribute docstring in the model)."""

from __future__ import annotations

import math
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from unit_gateway.config.schema import GatewayConfig
from unit_gateway.config.secret_refs import SecretRef


@dataclass(frozen=True, slots=True)
class Entry:
    """One documented field. ``path`` is dotted; ``[]`` stands for every item of a list."""

    path: str
    type: str
    default: str
    allowed: str
    description: str


# --------------------------------------------------------------------------------------------
# Walking the schema


def entries(model: type[BaseModel] = GatewayConfig, prefix: str = "") -> list[Entry]:
    """Every field under ``model``, depth first, in declaration order."""
    return list(_walk(model, prefix, None))


def _walk(model: type[BaseModel], prefix: str, effective: BaseModel | None) -> Iterator[Entry]:
    """``effective`` is the section's default instance when the whole section is left out;
    its values can differ from the fields' own defaults (``tokens.customer.default_scopes``)."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        yield Entry(
            path=path,
            type=_type_name(info.annotation),
            default=_default(info, path, prefix, effective, name),
            allowed=_allowed(info),
            description=_one_line(info.description or ""),
        )
        for child, in_list in _child_models(info.annotation):
            if child is SecretRef and not in_list:
                child_effective = None
            else:
                child_effective = _section_default(info, effective, name)
            yield from _walk(child, f"{path}[]." if in_list else f"{path}.", child_effective)


def _child_models(annotation: Any) -> Iterator[tuple[type[BaseModel], bool]]:
    """The models a field holds, each with whether it is a list item."""
    seen: set[type[BaseModel]] = set()
    for arg, in_list in _leaves(annotation, in_list=False):
        if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in seen:
            seen.add(arg)
            yield arg, in_list


def _leaves(annotation: Any, *, in_list: bool) -> Iterator[tuple[Any, bool]]:
    origin = get_origin(annotation)
    if origin is Annotated:
        yield from _leaves(get_args(annotation)[0], in_list=in_list)
    elif origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            yield from _leaves(arg, in_list=in_list)
    elif origin is list:
        yield from _leaves(get_args(annotation)[0], in_list=True)
    else:
        yield annotation, in_list


def _section_default(info: FieldInfo, effective: BaseModel | None, name: str) -> BaseModel | None:
    value = getattr(effective, name) if effective is not None else _default_value(info)
    return value if isinstance(value, BaseModel) else None


def _section_model(info: FieldInfo) -> type[BaseModel]:
    models = [model for model, _ in _child_models(info.annotation)]
    assert len(models) == 1, f"a top-level block is one section model, not {models}"
    return models[0]


# --------------------------------------------------------------------------------------------
# Cells


_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _type_name(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = get_args(annotation)
        names = [_type_name(arg) for arg in args if arg is not type(None)]
        if type(None) in args:
            names.append("null")
        return " or ".join(names)
    if origin is list:
        return f"list of {_type_name(get_args(annotation)[0])}s"
    if origin is Literal:
        return _SCALARS.get(type(get_args(annotation)[0]), "value")
    if annotation is SecretRef:
        return "secret reference"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return _SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _allowed(info: FieldInfo) -> str:
    base = _strip_optional(info.annotation)
    parts = _constraints(info.metadata, base)
    parts += _annotation_rules(info.annotation)
    return "; ".join(parts)


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _constraints(metadata: Iterable[Any], base: Any) -> list[str]:
    found: dict[str, Any] = {}
    for item in metadata:
        for key in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern"):
            value = getattr(item, key, None)
            if value is not None:
                found[key] = value
    parts: list[str] = []
    if "ge" in found and "le" in found:
        parts.append(f"{_number(found['ge'])}..{_number(found['le'])}")
    else:
        for key, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if key in found:
                parts.append(f"{op} {_number(found[key])}")
    is_list = get_origin(base) is list
    if "min_length" in found:
        n = found["min_length"]
        if is_list:
            parts.append(f"at least {n} item{'s' if n != 1 else ''}")
        elif n == 1:
            parts.append("non-empty")
        else:
            parts.append(f"at least {n} characters")
    if "max_length" in found:
        n = found["max_length"]
        parts.append(f"at most {n} {'items' if is_list else 'characters'}")
    if "pattern" in found:
        parts.append(f"matches `{found['pattern']}`")
    return parts


def _annotation_rules(annotation: Any) -> list[str]:
    """Rules carried by the type itself: Literal choices, secret references, item rules."""
    annotation = _strip_optional(annotation)
    origin = get_origin(annotation)
    if origin is Literal:
        return ["one of " + ", ".join(f"`{_yaml(v)}`" for v in get_args(annotation))]
    if annotation is SecretRef:
        return ["`{env: NAME}` or `{file: PATH}`"]
    if origin is list:
        item = get_args(annotation)[0]
        rules: list[str] = []
        if get_origin(item) is Annotated:
            metadata: list[Any] = []
            for extra in get_args(item)[1:]:
                metadata.extend(extra.metadata if isinstance(extra, FieldInfo) else [extra])
            rules += _constraints(metadata, get_args(item)[0])
        rules += _annotation_rules(item)
        return [f"each item: {rule}" for rule in rules]
    return []


def _default_value(info: FieldInfo) -> Any:
    return info.get_default(call_default_factory=True, validated_data={})


def _default(
    info: FieldInfo, path: str, prefix: str, effective: BaseModel | None, name: str
) -> str:
    if info.is_required():
        return "**required**"
    value = _default_value(info)
    if isinstance(value, BaseModel):
        return "see below"
    shown = f"`{_yaml(value)}`"
    if effective is not None:
        section_value = getattr(effective, name)
        if section_value != value:
            section = prefix.rstrip(".")
            shown += f"; `{_yaml(section_value)}` when `{section}` is left out"
    return shown


def _yaml(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump()
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def cell(text: str) -> str:
    """``text`` as one Markdown table cell."""
    return _one_line(text).replace("|", "\\|")
