"""Config dataclasses -> command-line flags, with ``defaults < --config file.yaml < flags``.

Each field is documented once, in its ``metadata["help"]``, which becomes the flag's help text. (A
``metadata`` entry rather than an attribute docstring, so the help is available at run time without
parsing source.) Unknown keys in a config file are errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from alignkit.errors import InputError
from alignkit.validate import base_type, check_field, describe_range


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, group: str | None = None,
                            helps: dict[str, str] | None = None) -> None:
    """Add one flag per field of ``cls``; defaults are SUPPRESSed so only given flags reach the namespace.
    ``helps``: a command's own wording of some fields' help (its range, default and choices are still added)."""
    target = parser.add_argument_group(group) if group else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        helptext = (helps or {}).get(f.name, f.metadata.get("help", ""))
        if f.metadata.get("choices"):
            helptext += f" (one of: {', '.join(f.metadata['choices'])})"
        if tp is bool:
            target.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                help=f"{helptext} (default: {default})",
            )
            continue
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name}
        if typing.get_origin(tp) is tuple:
            kwargs.update(action="append", type=str, metavar="TEXT")
            helptext += " (repeatable)"
        else:
            kwargs.update(type=tp if tp in (int, float, str) else str)
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        if describe_range(f.metadata):
            helptext += f" (allowed: {describe_range(f.metadata)})"
        if f.metadata.get("required"):
            helptext += " (required)"
        elif default not in (None, ()):
            helptext += f" (default: {default})"
        target.add_argument(flag, help=helptext, **kwargs)


def build(cls: type, args: argparse.Namespace, file_values: dict[str, Any] | None = None) -> Any:
    """Instantiate ``cls`` from defaults, then config-file values, then flags given on the command line.

    Every value is checked against its field's type, choices and range (metadata ``min``, ``max``, ``gt``)
    before anything runs, so a bad value is one line naming the flag or key and what it accepts."""
    names = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for k, v in (file_values or {}).items():
        if k in names:
            values[k] = check_field(cls, k, v, source="config key", annotation=hints[k])
    for k in names:
        if k in vars(args):
            v = getattr(args, k)
            values[k] = check_field(cls, k, tuple(v) if isinstance(v, list) else v, source="flag", annotation=hints[k])
    missing = [f.name for f in dataclasses.fields(cls) if f.metadata.get("required") and values.get(f.name) in (None, "")]
    if missing:
        raise InputError("missing required option(s): " + ", ".join("--" + m.replace("_", "-") for m in missing))
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise InputError(f"bad option value: {e}") from e


def read_yaml_mapping(path: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping, with clear errors."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file {path!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"config file {path!r} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise InputError(f"config file {path!r} must hold a mapping of option: value")
    return data


def load_config_file(path: str | None, *classes: type) -> dict[str, Any]:
    """Read a YAML config file; every key must be a field of one of ``classes``."""
    if not path:
        return {}
    data = read_yaml_mapping(path)
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = {f.name for c in classes for f in dataclasses.fields(c)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"unknown key(s) in {path}: {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    return data
