"""Command-line options generated from a config dataclass's knobs (``transfer.config.knob``).

Each knob becomes one option named after the field (``crop_size`` -> ``--crop-size``; a bool becomes
``--name/--no-name``). Its help is the knob's description, its source, and its value in every preset, e.g.
"(paper: 0.001, cpu: 0.001, smoke: 0.01)", or its default when no preset sets it; so help text and defaults come
from the one place the protocol defines them. An option the user does not give is absent from the parsed
namespace (argparse.SUPPRESS), and :func:`given_values` returns only what the user gave, for the preset to fill the
rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from transfer.config import knobs


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _show(value: Any) -> str:
    if value is None:
        return "not given"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _value_help(f: dataclasses.Field, presets: dict[str, dict[str, Any]]) -> str:
    if any(f.name in values for values in presets.values()):
        return "(" + ", ".join(f"{name}: {_show(values.get(f.name))}" for name, values in presets.items()) + ")"
    if f.default is dataclasses.MISSING:
        return "(required)"
    return f"(default: {_show(f.default)})"


def _base_type(hint: Any) -> tuple[type, bool]:
    """The value type of a field annotation and whether it may be None (``int | None`` -> (int, True))."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def add_config_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    config_class: type,
    presets: dict[str, dict[str, Any]] | None = None,
) -> None:
    """One option per knob of ``config_class``; a knob without a default (and not set by a preset) is required."""
    presets = presets or {}
    hints = typing.get_type_hints(config_class)
    for f in knobs(config_class):
        kind, _ = _base_type(hints[f.name])
        text = f.metadata["help"]
        if f.metadata.get("source"):
            text += f"; source: {f.metadata['source']}"
        text = f"{text} {_value_help(f, presets)}".replace("%", "%%")
        required = f.default is dataclasses.MISSING and not any(f.name in v for v in presets.values())
        kwargs: dict[str, Any] = {"dest": f.name, "help": text, "default": argparse.SUPPRESS}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
            if f.metadata.get("metavar"):
                kwargs["metavar"] = f.metadata["metavar"]
            elif not f.metadata.get("choices"):
                kwargs["metavar"] = {int: "N", float: "X"}.get(kind, "VALUE")
            if required:
                kwargs["required"] = True
        parser.add_argument(option_name(f.name), **kwargs)


def given_values(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """The knobs of ``config_class`` that the command line gave."""
    return {f.name: getattr(args, f.name) for f in knobs(config_class) if hasattr(args, f.name)}


def option_names(config_class: type) -> list[str]:
    """The option strings generated for ``config_class`` (bools also as ``--no-...``)."""
    hints = typing.get_type_hints(config_class)
    names = []
    for f in knobs(config_class):
        names.append(option_name(f.name))
        if _base_type(hints[f.name])[0] is bool:
            names.append("--no-" + f.name.replace("_", "-"))
    return names
