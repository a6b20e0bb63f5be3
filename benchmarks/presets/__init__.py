"""Presets: named sets of option values (``paper`` and ``smoke``) per stage.

Each stage keeps its presets in its own module here (``pretrain.py``, ``cls.py``, ...) as
``PRESETS = {"paper": {...}, "smoke": {...}}``; keys are argparse destinations. The ``paper`` preset holds the
paper's values (the docstring of the option says where each comes from); ``smoke`` runs the same code with CPU-scale
numbers. Options that a preset controls default to ``None`` in argparse so that any flag given on the command line
overrides the preset.
"""

from __future__ import annotations

import argparse
from typing import Any


def apply_preset(args: argparse.Namespace, presets: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """Fill every option of ``args`` that is still ``None`` from preset ``name``; return the values applied."""
    if name not in presets:
        raise SystemExit(f"unknown preset {name!r}; choose one of {sorted(presets)}")
    applied = {}
    for key, value in presets[name].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
            applied[key] = value
    return applied
