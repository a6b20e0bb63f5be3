"""``bench transfer --task cls|svm|det|seg``: fine-tune or probe a pretrained AlexNet trunk on PASCAL VOC.

The options below are those of every task; each task's own options (its protocol's settings, with the value each
preset gives them) are listed by ``bench transfer --task TASK --help``. A value given on the command line wins over
the --preset's.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

from benchmarks.options import add_config_options, given_values
from pretrain.distributed import cleanup_distributed, init_distributed
from pretrain.runlock import RunFolderBusy, command_line, run_folder_lock
from transfer.config import ProtocolError, TransferRun, config_from_preset
from transfer.detection.proposals import ProposalError
from transfer.voc import VOCError
from transfer.weights import WeightsError

HELP = "transfer pretrained weights to PASCAL VOC classification, probes, detection or segmentation"
DESCRIPTION = __doc__

#: --task value -> the module that names its config, presets, protocol and results table
TASKS: dict[str, str] = {
    "cls": "benchmarks.commands.transfer_cls",
    "svm": "benchmarks.commands.transfer_svm",
    "det": "benchmarks.commands.transfer_det",
    "seg": "benchmarks.commands.transfer_seg",
}

#: option names of earlier versions -> today's, per task (``bench reproduce`` maps the command lines of stored plans)
RENAMED_OPTIONS: dict[str, dict[str, str]] = {
    "cls": {
        "--cls-crop-size": "--crop-size",
        "--cls-min-scale": "--min-scale",
        "--cls-max-scale": "--max-scale",
        "--cls-lr-step": "--lr-step",
        "--cls-dropout": "--dropout",
        "--cls-eval-crops": "--eval-crops",
        "--cls-ap": "--ap",
        "--cls-pretrained-fc": "--pretrained-fc",
        "--cls-fc-width": "--fc-width",
        "--cls-save-model": "--save-model",
        "--no-cls-save-model": "--no-save-model",
    },
    "svm": {
        "--svm-costs": "--costs",
        "--svm-layers": "--layers",
        "--svm-pooling": "--pooling",
        "--svm-image-size": "--crop-size",
        "--svm-primary-layer": "--primary-layer",
        "--svm-jobs": "--jobs",
    },
    "det": {
        "--det-scale": "--scale",
        "--det-max-size": "--max-size",
        "--det-lr-step": "--lr-step",
        "--det-freeze-through": "--freeze-through",
        "--det-score-threshold": "--score-threshold",
        "--det-fc-dim": "--fc-width",
        "--det-nms": "--nms",
        "--det-max-per-image": "--max-per-image",
        "--det-ap": "--ap",
    },
    "seg": {
        "--fcn-variant": "--variant",
        "--seg-crop-size": "--crop-size",
        "--seg-momentum": "--momentum",
        "--seg-weight-decay": "--weight-decay",
        "--seg-loss-norm": "--loss-norm",
        "--fcn-fc-channels": "--fc-width",
        "--seg-no-flip": "--no-flip",
        "--fcn-learn-upsampling": "--learn-upsampling",
        "--save-fcn": "--save-model",
    },
}


def task_module(task: str) -> ModuleType:
    return importlib.import_module(TASKS[task])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task",
        required=True,
        choices=list(TASKS),
        default=argparse.SUPPRESS,
        help="cls: VOC2007 classification fine-tuning; svm: frozen-feature linear SVM probes; det: VOC2007 Fast "
        "R-CNN detection; seg: VOC2012 FCN segmentation. `bench transfer --task TASK --help` lists its options",
    )
    add_config_options(parser.add_argument_group("options of every task"), TransferRun)


def _task_of(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--task" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--task="):
            return arg.partition("=")[2]
    return None


def prepare_parser(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Add the options of the command line's --task (before parsing), and refuse the options of other tasks."""
    task = _task_of(argv)
    if task not in TASKS or getattr(parser, "task_options_of", None) == task:
        return  # argparse reports a missing or unknown --task
    parser.task_options_of = task  # type: ignore[attr-defined]
    module = task_module(task)
    add_config_options(parser.add_argument_group(f"--task {task}: {module.TITLE}"), module.CONFIG, module.PRESETS)
    known = parser._option_string_actions
    for arg in argv:
        if arg == "--":
            break
        name = arg.partition("=")[0]
        if not name.startswith("--") or any(option.startswith(name) for option in known):
            continue
        renamed = RENAMED_OPTIONS[task].get(name)
        if renamed is not None:
            parser.error(f"{name} is now called {renamed}")
        parser.error(f"{name} is not an option of --task {task}; `bench transfer --task {task} --help` lists them")


def run(args: argparse.Namespace) -> int:
    module = task_module(args.task)
    try:
        run_settings = TransferRun(**given_values(args, TransferRun))
        cfg = config_from_preset(module.CONFIG, module.PRESETS, run_settings.preset, given_values(args, module.CONFIG))
    except (ProtocolError, TypeError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 holds the lock for all ranks
        return _run_protocol(module, cfg, run_settings)
    try:
        with run_folder_lock(run_settings.out, command_line(), name=run_lock_name(run_settings, args.task)):
            return _run_protocol(module, cfg, run_settings)
    except RunFolderBusy as exc:
        print(f"bench transfer: error: {exc}", file=sys.stderr)
        return 1


def run_lock_name(run_settings: TransferRun, task: str) -> str:
    """The lock file of one transfer run in its output folder: one run of a task, weights and seed at a time."""
    return f".bench-transfer-{run_settings.key(task)}.lock"


def _run_protocol(module: ModuleType, cfg: object, run_settings: TransferRun) -> int:
    ctx = init_distributed(run_settings.device)
    try:
        record = module.PROTOCOL(cfg, run_settings, ctx)
    except (ProtocolError, VOCError, WeightsError, ProposalError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    finally:
        cleanup_distributed()
    if ctx.is_main:
        module.print_results(record)
    return 0
