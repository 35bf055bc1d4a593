"""Typed plugin options from ``--set NAME.KEY=VALUE`` strings or pipeline files.

Options are declared as a dataclass per plugin; values arrive either as
strings from the command line or already typed from a TOML pipeline file,
and are converted to the field's annotated type here, with errors that name
the plugin, the key and the expected type.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from surgeon.errors import UsageError


def parse_set(assignments: list[str]) -> dict[str, dict[str, str]]:
    """``["a.b=1", "a.c=x"]`` -> ``{"a": {"b": "1", "c": "x"}}``."""
    options: dict[str, dict[str, str]] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        plugin, dot, name = key.strip().partition(".")
        if not (sep and dot and plugin and name):
            raise UsageError(f"--set {assignment!r}: expected PLUGIN.KEY=VALUE, e.g. rename_outputs.names=output:result")
        options.setdefault(plugin, {})[name] = value
    return options


def merge(*layers: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Merge option layers; later layers win key by key."""
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for plugin, values in layer.items():
            merged.setdefault(plugin, {}).update(values)
    return merged


def build(plugin: str, options_type: type, raw: Mapping[str, Any]) -> Any:
    """An instance of ``options_type`` from raw values, validated and converted."""
    fields = {f.name: f for f in dataclasses.fields(options_type)}
    hints = typing.get_type_hints(options_type)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        known = ", ".join(fields) or "none"
        raise UsageError(f"plugin {plugin!r} has no option {unknown[0]!r} (its options: {known})")
    values = {}
    for key, value in raw.items():
        try:
            values[key] = convert(value, hints[key])
        except (TypeError, ValueError) as error:
            raise UsageError(
                f"option {plugin}.{key}: {error} (expected {type_name(hints[key])}, got {value!r})"
            ) from None
    try:
        return options_type(**values)
    except (TypeError, ValueError) as error:
        raise UsageError(f"options of plugin {plugin!r}: {error}") from None


def convert(value: Any, annotation: Any) -> Any:
    """Convert ``value`` (a string from the command line, or a TOML value)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(value, arg)
            except (TypeError, ValueError) as error:
                errors.append(str(error))
        raise ValueError("; ".join(errors) or "no type accepts it")
    if origin is Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ValueError(f"must be one of {', '.join(map(repr, args))}")
    if origin in (list, tuple):
        items = _split_list(value)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise ValueError(f"needs {len(args)} items")
            return tuple(convert(item, arg) for item, arg in zip(items, args))
        item_type = args[0] if args else Any
        converted = [convert(item, item_type) for item in items]
        return tuple(converted) if origin is tuple else converted
    if origin is dict:
        key_type, value_type = args or (Any, Any)
        return {convert(k, key_type): convert(v, value_type) for k, v in _split_dict(value).items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("not a boolean")
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("not an integer")
        return int(value)
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError("not a number")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError("not a string")
        return str(value)
    if isinstance(annotation, type):
        return annotation(value)
    raise TypeError(f"unsupported option type {annotation!r}")


def _split_list(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if not isinstance(value, str):
        raise ValueError("not a list")
    if value.lstrip().startswith("["):
        parsed = _json(value)
        if not isinstance(parsed, list):
            raise ValueError("not a JSON list")
        return parsed
    return [item.strip() for item in value.split(",") if item.strip()]


def _split_dict(value: Any) -> dict:
    """A dict from a mapping, a JSON object, or ``k:v,k:v`` (split at each item's last colon)."""
    if isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, str):
        raise ValueError("not a mapping")
    if value.lstrip().startswith("{"):
        parsed = _json(value)
        if not isinstance(parsed, dict):
            raise ValueError("not a JSON object")
        return parsed
    pairs = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        key, sep, val = item.rpartition(":")
        if not sep or not key:
            raise ValueError(f"{item!r} is not KEY:VALUE")
        pairs[key] = val
    return pairs


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid JSON: {error}") from None


def type_name(annotation: Any) -> str:
    """A readable name for an option type, for listings and errors."""
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return annotation.__name__
    return str(annotation).replace("typing.", "")
