"""Checking option values against the dataclass fields they fill: type, choices and range.

A field's metadata may carry ``choices`` and a range: ``min`` (>=), ``max`` (<=), ``gt`` (>) and ``or`` (one
extra allowed value, e.g. ``-1`` for "no limit"). Used for flags, config files and eval configs alike, so a
bad value is always one line that names the flag or key and what it accepts.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from alignkit.errors import InputError


def base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, is_optional) of an annotation such as ``int | None``."""
    args = typing.get_args(tp)
    if args and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return tp, False


def field_name(name: str, source: str) -> str:
    return ("--" + name.replace("_", "-")) if source == "flag" else f"{name!r}"


def describe_range(meta: Any) -> str:
    """The allowed range of a numeric field, in words (``''`` when unbounded)."""
    parts = []
    if "gt" in meta:
        parts.append(f"> {meta['gt']}")
    if "min" in meta:
        parts.append(f">= {meta['min']}")
    if "max" in meta:
        parts.append(f"<= {meta['max']}")
    text = " and ".join(parts)
    if "or" in meta:
        text = f"{text} (or {meta['or']})" if text else str(meta["or"])
    return text


def check_field(cls: type, name: str, value: Any, *, source: str = "key", annotation: Any = None) -> Any:
    """``value`` checked (and normalised: a YAML list becomes a tuple) for field ``name`` of ``cls``."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if annotation is None:
        annotation = typing.get_type_hints(cls)[name]
    tp, optional = base_type(annotation)
    label = field_name(name, source)
    if value is None:
        if optional:
            return None
        raise InputError(f"{source} {label} needs a value, got nothing (null)")
    kind = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp)
    if typing.get_origin(tp) is tuple:
        if (typing.get_args(tp) or (str,))[0] is float:  # a list of numbers
            if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value):
                raise InputError(f"{source} {label} must be a list of numbers, got {value!r}")
            return tuple(float(x) for x in value)
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
            raise InputError(f"{source} {label} must be a list of strings, got {value!r}"
                             + (" (write a YAML list: [\"...\"])" if isinstance(value, str) else ""))
        return tuple(value)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif tp is str:
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise InputError(f"{source} {label} must be {kind}, got {value!r} ({type(value).__name__})")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise InputError(f"{source} {label} must be one of {', '.join(map(str, choices))}, got {value!r}")
    meta = f.metadata
    if tp in (int, float) and any(k in meta for k in ("min", "max", "gt")):
        allowed = value == meta.get("or", object())
        in_range = (math.isfinite(value) and ("gt" not in meta or value > meta["gt"])
                    and ("min" not in meta or value >= meta["min"]) and ("max" not in meta or value <= meta["max"]))
        if not (allowed or in_range):
            raise InputError(f"{source} {label} must be {describe_range(meta)}, got {value!r}")
    return value


def check_mapping(cls: type, values: dict[str, Any], *, what: str) -> dict[str, Any]:
    """Every value of ``values`` checked against the field of ``cls`` it fills; unknown keys are errors."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise InputError(f"unknown key(s) in {what}: {', '.join(map(str, unknown))}; known keys: {', '.join(names)}")
    return {k: check_field(cls, k, v, source=f"{what}: key") for k, v in values.items()}
