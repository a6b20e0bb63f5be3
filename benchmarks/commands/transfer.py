"""``bench transfer --task cls|svm|det|seg``: fine-tune or probe a pretrained AlexNet trunk on PASCAL VOC.

Options shared by every task are defined here; each task adds its own options (in a group of their own) from
``benchmarks/commands/transfer_<task>.py``, which provides ``TITLE``, ``add_arguments(group)`` and
``run(args) -> int``. Options a preset controls default to ``None`` and are filled from
``benchmarks/presets/<task>.py`` by the task's ``run``.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

HELP = "transfer pretrained weights to PASCAL VOC classification, probes, detection or segmentation"
DESCRIPTION = __doc__

#: --task value -> glue module
TASKS: dict[str, str] = {
    "cls": "benchmarks.commands.transfer_cls",
    "svm": "benchmarks.commands.transfer_svm",
    "det": "benchmarks.commands.transfer_det",
    "seg": "benchmarks.commands.transfer_seg",
}


def _task_module(task: str) -> ModuleType | None:
    name = TASKS[task]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    available = [t for t in TASKS if _task_module(t) is not None]
    parser.add_argument(
        "--task",
        required=True,
        choices=available or list(TASKS),
        help="cls: VOC2007 classification fine-tuning; svm: frozen-feature linear SVM probes; "
        "det: VOC2007 Fast R-CNN detection; seg: VOC2012 FCN segmentation",
    )
    parser.add_argument(
        "--voc-root", required=True, help="folder holding VOCdevkit, VOCdevkit itself, or VOCdevkit/VOC20XX"
    )
    parser.add_argument(
        "--weights",
        required=True,
        help="a `bench pretrain` run folder, an encoder.safetensors, a .pt checkpoint, a torchvision "
        "AlexNet state dict, or 'random' (Gaussian init, the paper's baseline)",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="folder for the run record (JSON) and outputs; a second run of the same task, weights and seed on it "
        "stops at once while the first is running",
    )
    parser.add_argument(
        "--preset",
        default="paper",
        choices=["paper", "cpu", "smoke"],
        help="paper: the protocol's published settings; cpu: the same code sized for 2 CPU cores on the demo "
        "dataset, where every harness learns; smoke: the same code at toy scale (checks code paths only)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of re-initialised layers, sampling and augmentation")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "bf16"],
        help="autocast precision of forward passes (preset default: fp32)",
    )
    parser.add_argument("--iterations", type=int, default=None, help="training iterations (preset)")
    parser.add_argument("--lr", type=float, default=None, help="base learning rate (preset)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per training mini-batch (preset)")
    parser.add_argument("--workers", type=int, default=None, help="data-loading worker processes (preset)")
    parser.add_argument("--train-split", default=None, help="training split (task default)")
    parser.add_argument(
        "--eval-split",
        default=None,
        help="evaluation split (task default: test for VOC2007 tasks, val for segmentation)",
    )
    parser.add_argument(
        "--rescale",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="apply Krähenbühl et al.'s data-dependent rescaling (magic_init -cs) to the pretrained layers: cls/svm "
        "on the whole chain below fc8, det/seg on the trunk conv1..conv5 (transfer/rescale.py) (preset: paper "
        "off, cpu on for cls/det/seg, smoke off)",
    )
    parser.add_argument(
        "--input-norm",
        default="auto",
        choices=["auto", "minus1to1", "imagenet", "caffe"],
        help="input convention of the trunk: minus1to1 = RGB in [-1, 1] (how `bench pretrain` trains), imagenet = "
        "torchvision mean/std, caffe = BGR minus (104, 117, 123); auto: imagenet for torchvision state dicts, "
        "minus1to1 otherwise (transfer/input_norm.py)",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip (and count in the record) missing or malformed images, annotations and masks "
        "instead of stopping with an error",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="cls and det: continue the interrupted training whose checkpoint is in OUT/checkpoints/, bit for bit "
        "(model, optimizer, iteration, data order, RNG states)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=1000,
        help="cls and det: iterations between training checkpoints (one is also written when SIGTERM/SIGINT stops "
        "the run; 0 = only then); the checkpoint is removed once the record is written",
    )
    for task in TASKS:
        module = _task_module(task)
        if module is not None:
            module.add_arguments(parser.add_argument_group(f"--task {task}: {module.TITLE}"))


def run_key(args: argparse.Namespace) -> str:
    """What identifies one transfer run in ``--out``: its task, seed and weights. Runs with the same key would
    write the same record name and training checkpoint; runs with different keys can share the folder."""
    import hashlib
    import os

    weights = str(args.weights) if str(args.weights) == "random" else os.path.abspath(args.weights)
    digest = hashlib.sha256(weights.encode()).hexdigest()[:12]
    return f"{args.task}-seed{args.seed}-{digest}"


def run_lock_name(args: argparse.Namespace) -> str:
    """The lock file of one transfer run in ``--out``: only one run of a key (``run_key``) at a time."""
    return f".bench-transfer-{run_key(args)}.lock"


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from pretrain.runlock import RunFolderBusy, command_line, run_folder_lock

    module = _task_module(args.task)
    if module is None:
        raise SystemExit(f"--task {args.task} is not available in this build")
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 holds the lock for all ranks
        return int(module.run(args) or 0)
    try:
        with run_folder_lock(args.out, command_line(), name=run_lock_name(args)):
            return int(module.run(args) or 0)
    except RunFolderBusy as exc:
        print(f"bench transfer: error: {exc}", file=sys.stderr)
        return 1
