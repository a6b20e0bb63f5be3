"""Pretraining methods, one module each, and their registry ``METHODS`` (``--method`` value -> class).

The contract a method follows is ``pretrain.methods.base.PretrainMethod``. Every module of this package imports
only ``base`` (never this file), so the registry below is filled by plain imports, in the order ``bench pretrain
--help`` lists the methods.
"""

from __future__ import annotations

from pretrain.methods.base import MethodOption, NonFiniteLossError, PretrainMethod
from pretrain.methods.inpainting import InpaintingMethod
from pretrain.methods.random_init import RandomInitMethod
from pretrain.methods.reconstruction import AutoencoderMethod, ContextEncoderMethod

__all__ = [
    "METHODS",
    "AutoencoderMethod",
    "ContextEncoderMethod",
    "InpaintingMethod",
    "MethodOption",
    "NonFiniteLossError",
    "PretrainMethod",
    "RandomInitMethod",
    "register_method",
]

METHODS: dict[str, type[PretrainMethod]] = {}


def register_method(cls: type[PretrainMethod]) -> type[PretrainMethod]:
    """Add ``cls`` to ``METHODS`` under ``cls.name`` (the ``--method`` value); usable as a class decorator."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    METHODS[cls.name] = cls
    return cls


for _builtin in (ContextEncoderMethod, AutoencoderMethod, RandomInitMethod, InpaintingMethod):
    register_method(_builtin)
