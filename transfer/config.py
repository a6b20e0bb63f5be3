"""What every transfer protocol's configuration is made of: documented knobs, named presets and the run settings.

A protocol's config is a dataclass whose fields are its knobs. Each field is declared with :func:`knob`, which
keeps a one-line description and the knob's source (a paper section, a reference implementation) next to it; the
``bench transfer`` options are generated from these fields, so option names, help text and defaults cannot drift
from the config. A task's presets (``paper``, ``cpu``, ``smoke``) are a table next to its config; a preset sets
some knobs, the dataclass defaults the rest, and a value given by the user wins over both
(:func:`config_from_preset`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

#: the presets every task has, in the order help lists them
PRESET_NAMES = ("paper", "cpu", "smoke")

C = TypeVar("C")


class ProtocolError(ValueError):
    """A setting or an input makes the protocol impossible; the message names it and what would fix it."""


def knob(
    help: str,
    *,
    default: Any = dataclasses.MISSING,
    source: str | None = None,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
) -> Any:
    """A config field that is a user-facing knob: ``help`` says what it does, ``source`` where its value comes
    from, ``choices`` its allowed values (for string knobs)."""
    metadata = {"help": help, "source": source, "choices": choices, "metavar": metavar}
    if isinstance(default, (list, dict, set)):
        raise TypeError("knob defaults must be immutable")
    return field(default=default, metadata=metadata)


def constant(value: Any, help: str, *, source: str | None = None) -> Any:
    """A config field that is part of the protocol but not a user-facing knob (no option): documented here, stored
    in the record."""
    return field(default=value, metadata={"constant": help, "source": source})


def input_norm_knob() -> Any:
    """The trunk's input convention, the same knob in every transfer task."""
    return knob(
        "input convention of the trunk: minus1to1 = RGB in [-1, 1] (how `bench pretrain` trains), imagenet = "
        "torchvision mean/std, caffe = BGR minus (104, 117, 123); auto: imagenet for torchvision state dicts, "
        "minus1to1 otherwise",
        default="auto",
        choices=("auto", "minus1to1", "imagenet", "caffe"),
    )


def resume_knob() -> Any:
    """``--resume`` of the tasks that train from checkpoints (classification, detection, segmentation)."""
    return knob(
        "continue the interrupted training whose checkpoint is in OUT/checkpoints/, bit for bit (model, optimizer, "
        "iteration, data order, RNG states)",
        default=False,
    )


def checkpoint_every_knob() -> Any:
    """``--checkpoint-every`` of the tasks that train from checkpoints (classification, detection, segmentation)."""
    return knob(
        "iterations between training checkpoints (one is also written when SIGTERM/SIGINT stops the run; 0 = only "
        "then); the checkpoint is removed once the record is written",
        default=1000,
    )


def knobs(config_class: type) -> list[dataclasses.Field]:
    """The fields of ``config_class`` declared with :func:`knob`, in declaration order."""
    return [f for f in dataclasses.fields(config_class) if "help" in f.metadata]


def config_from_preset(
    config_class: type[C], presets: dict[str, dict[str, Any]], preset: str, given: dict[str, Any]
) -> C:
    """``config_class`` with the values of ``presets[preset]`` and, above them, the ``given`` ones."""
    if preset not in presets:
        raise ProtocolError(f"unknown preset {preset!r}; choose one of {', '.join(presets)}")
    names = {f.name for f in dataclasses.fields(config_class)}  # type: ignore[arg-type]
    unknown = sorted(set(given) - names)
    if unknown:
        raise ProtocolError(f"{config_class.__name__} has no setting {', '.join(unknown)}")
    return config_class(**{**presets[preset], **given})


def check_presets(config_class: type, presets: dict[str, dict[str, Any]]) -> None:
    """Every preset names only knobs of ``config_class``, and every preset sets the same knobs (so that choosing a
    preset never leaves a value of another preset behind)."""
    names = {f.name for f in knobs(config_class)}
    keys = {name: set(values) for name, values in presets.items()}
    for name, k in keys.items():
        if not k <= names:
            raise TypeError(f"preset {name} of {config_class.__name__} sets unknown knobs {sorted(k - names)}")
    if len({frozenset(k) for k in keys.values()}) > 1:
        raise TypeError(f"the presets of {config_class.__name__} set different knobs: {keys}")


@dataclass(frozen=True)
class TransferRun:
    """What every transfer run needs besides its protocol's knobs: data, weights, output folder, seed, device."""

    voc_root: str = knob("folder holding VOCdevkit, VOCdevkit itself, or VOCdevkit/VOC20XX", metavar="DIR")
    weights: str = knob(
        "a `bench pretrain` run folder, an encoder.safetensors, a .pt checkpoint, a torchvision AlexNet state "
        "dict, or 'random' (Gaussian init, the paper's baseline)"
    )
    out: str = knob(
        "folder for the run record (JSON) and outputs; a second run of the same task, weights and seed on it stops "
        "at once while the first is running",
        metavar="DIR",
    )
    preset: str = knob(
        "paper: the protocol's published settings; cpu: the same code sized for 2 CPU cores on the demo dataset, "
        "where every harness fits its training data; smoke: the same code at toy scale (checks code paths only)",
        default="paper",
        choices=PRESET_NAMES,
    )
    seed: int = knob("seed of re-initialised layers, sampling and augmentation", default=0)
    device: str = knob("auto (CUDA when available), cpu, cuda, cuda:N", default="auto")
    skip_bad: bool = knob(
        "skip (and count in the record) missing or malformed images, annotations and masks instead of stopping "
        "with an error",
        default=False,
    )

    def key(self, task: str) -> str:
        """What identifies one run in ``out``: task, seed and weights. Runs with the same key would write the same
        record name and training checkpoint; runs with different keys can share the folder."""
        import hashlib
        import os

        weights = self.weights if self.weights == "random" else os.path.abspath(self.weights)
        return f"{task}-seed{self.seed}-{hashlib.sha256(weights.encode()).hexdigest()[:12]}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
