"""``bench pretrain``: train a context encoder (or a baseline) on a folder of images and export its AlexNet encoder.

The run folder (--out) receives config.json (the resolved configuration), env.json (code version and machine),
log.jsonl (one JSON line every --log-every iterations), samples/ (PNG grids: masked input | prediction | original),
checkpoints/ (atomic, the last --keep-checkpoints kept, loadable with weights_only=True), summary.json (final loss,
speed, skipped images) and encoder.safetensors (torchvision AlexNet `features` keys; see `bench export`).
Under `torchrun --nproc_per_node N` the same command trains with DistributedDataParallel (--batch-size is per
process). Option values: an explicit flag wins over the method's preset values, which win over --preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from pretrain.checkpoint import CheckpointError
from pretrain.config import PRESETS, PretrainConfig
from pretrain.data import DataError
from pretrain.masks import MASK_CHOICES
from pretrain.methods import METHODS
from pretrain.preemption import EXIT_PREEMPTED, Preempted
from pretrain.run import PretrainFailed, pretrain_main
from pretrain.runlock import RunFolderBusy

HELP = "pretrain a context encoder, the autoencoder baseline or a random encoder; export the AlexNet encoder"
DESCRIPTION = __doc__


def _preset_help(key: str) -> str:
    return "(preset: " + ", ".join(f"{name} {values.get(key)!r}" for name, values in PRESETS.items()) + ")"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS  # preset-controlled and optional values: absent unless given, then resolved
    methods = dict(METHODS)
    io = parser.add_argument_group("data and run folder")
    io.add_argument(
        "--data",
        default=S,
        help="images to pretrain on: a folder searched recursively (jpg, jpeg, png, bmp, webp, ppm) or "
        "voc:ROOT[:YEAR[:SPLIT]] for the images of a VOC devkit split (required except for --method random)",
    )
    io.add_argument(
        "--out",
        required=True,
        help="run folder (created; an existing run needs --resume or --overwrite; one process per folder)",
    )
    io.add_argument(
        "--preset",
        default="paper",
        choices=sorted(PRESETS),
        help="paper: 227 px, batch 64, Adam lr 2e-4, 100k iterations (the paper and its official Lua code); "
        "cpu: 128 px, batch 16, lr 1e-3, 3,000 iterations in bf16, sized for 2 CPU cores on the demo dataset; "
        "smoke: toy scale (code paths only)",
    )
    io.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its newest checkpoint, "
        "bit for bit (model, optimizer, schedule, data order, RNG states)",
    )
    io.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an --out that holds an earlier one (its config, log, summary, export, "
        "checkpoints, samples are removed first); without it such a folder is refused",
    )
    io.add_argument(
        "--crop-size", type=int, default=S, help="random square crop side in px " + _preset_help("crop_size")
    )
    io.add_argument(
        "--resize-short", type=int, default=S, help="shorter image side before cropping " + _preset_help("resize_short")
    )
    io.add_argument(
        "--no-flip",
        dest="flip",
        action="store_false",
        default=S,
        help="disable random horizontal flips (default: flip, the paper's augmentation)",
    )
    io.add_argument(
        "--scan-workers",
        type=int,
        default=S,
        help="threads that check image files before training (default 0: scan in the main thread)",
    )
    io.add_argument(
        "--cache-dir",
        default=S,
        metavar="DIR",
        help="pre-resized uint8 image cache: each image decoded and resized to --resize-short once, stored as "
        "DIR/<key>.npy and memory-mapped in later epochs (same crops as without it; default: no cache). Reusable "
        "across runs with the same --resize-short and --crop-size",
    )

    m = parser.add_argument_group("method and masks")
    m.add_argument(
        "--method",
        default="context-encoder",
        choices=list(methods),
        help="; ".join(f"{name}: {cls.summary}" for name, cls in methods.items()),
    )
    m.add_argument(
        "--mask",
        default=S,
        choices=tuple(MASK_CHOICES),
        help="region dropped from the input: center (1/4 area square), random-block (blocks up to 1/4), "
        "random-region (official code: thresholded upscaled noise, 20-30%% coverage), voc-shapes (VOC2012 object "
        "shapes, the paper's description; needs --voc-root) " + _preset_help("mask"),
    )
    m.add_argument(
        "--mask-per-batch",
        action="store_true",
        default=S,
        help="one mask for the whole batch (the Lua code's behaviour; default: one mask per image)",
    )
    m.add_argument(
        "--voc-root", default=S, help="VOC devkit with VOC2012 SegmentationObject masks, for --mask voc-shapes"
    )

    n = parser.add_argument_group("network (AlexNet context encoder)")
    n.add_argument(
        "--widths",
        choices=["torchvision", "caffe"],
        default=S,
        help="AlexNet channel widths; torchvision (default) loads into torchvision's alexnet().features",
    )
    n.add_argument(
        "--dropout",
        type=float,
        default=S,
        help="dropout after the channel-wise FC (default 0.5; an open choice, see docs/protocols/sources.md)",
    )
    n.add_argument(
        "--decoder-channels",
        default=S,
        help="comma-separated output channels of the first four 4x4 stride-2 up-convolutions "
        "(default 128,64,64,32; the paper does not give them)",
    )
    n.add_argument(
        "--output-align",
        choices=["resize", "none"],
        default=S,
        help="resize: bilinear resize of the 192 px prediction to the input size (default); none: compare "
        "it with the input's centre crop",
    )
    n.add_argument(
        "--init",
        choices=["default", "gaussian"],
        default=S,
        help="default: PyTorch's initialisation (default); gaussian: N(0, 0.01), Caffe's AlexNet filler",
    )

    o = parser.add_argument_group("optimisation")
    o.add_argument("--iterations", type=int, default=S, help="training iterations " + _preset_help("iterations"))
    o.add_argument(
        "--stop-after",
        type=int,
        default=S,
        help="stop (with a checkpoint) after this many iterations without changing the schedule, e.g. to "
        "split a run into jobs; continue with --resume",
    )
    o.add_argument(
        "--batch-size", type=int, default=S, help="images per process and iteration " + _preset_help("batch_size")
    )
    o.add_argument("--lr", type=float, default=S, help="Adam learning rate, constant " + _preset_help("lr"))
    o.add_argument("--beta1", type=float, default=S, help="Adam beta1 (default 0.5: official Lua code)")
    o.add_argument("--beta2", type=float, default=S, help="Adam beta2 (default 0.999: Adam/Torch default)")
    o.add_argument("--weight-decay", type=float, default=S, help="Adam weight decay (default 0: none in the paper)")
    o.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default=S,
        help="autocast precision of forward passes on CPU and GPU " + _preset_help("precision"),
    )

    x = parser.add_argument_group("execution and bookkeeping")
    x.add_argument(
        "--seed", type=int, default=S, help="seed of initialisation, data order, augmentation and masks (default 0)"
    )
    x.add_argument("--device", default=S, help="auto (CUDA when available; default), cpu, cuda, cuda:N")
    x.add_argument("--workers", type=int, default=S, help="DataLoader worker processes " + _preset_help("workers"))
    x.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        default=S,
        help="keep networks and inputs in the contiguous NCHW layout (default: channels-last, the same arithmetic "
        "with faster convolutions; docs/performance.md)",
    )
    x.add_argument(
        "--log-every", type=int, default=S, help="iterations between log.jsonl lines " + _preset_help("log_every")
    )
    x.add_argument(
        "--sample-every",
        type=int,
        default=S,
        help="iterations between PNG sample grids, 0 = only at the end " + _preset_help("sample_every"),
    )
    x.add_argument(
        "--checkpoint-every",
        type=int,
        default=S,
        help="iterations between checkpoints (one is always written at the end) " + _preset_help("checkpoint_every"),
    )
    x.add_argument(
        "--keep-checkpoints",
        type=int,
        default=S,
        help="newest checkpoints kept, 0 = all " + _preset_help("keep_checkpoints"),
    )
    x.add_argument(
        "--tensorboard", action="store_true", default=S, help="also write TensorBoard scalars to RUN/tensorboard"
    )

    for name, cls in methods.items():
        if not cls.options:
            continue
        g = parser.add_argument_group(f"options of --method {name}")
        for opt in cls.options:
            g.add_argument(
                f"--{opt.name.replace('_', '-')}",
                type=opt.type,
                default=S,
                help=f"{opt.help} (default {opt.default!r})",
            )


def resolve_config(args: argparse.Namespace) -> PretrainConfig:
    """``PretrainConfig`` from parsed arguments: flag > method preset override > --preset > built-in default."""
    method_cls = METHODS[args.method]
    preset = {**PRESETS[args.preset], **method_cls.preset_overrides.get(args.preset, {})}
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    values: dict[str, Any] = {**preset, **{k: v for k, v in vars(args).items() if k in fields and v is not None}}
    values.setdefault("data", "")
    if isinstance(values.get("decoder_channels"), str):
        try:
            values["decoder_channels"] = tuple(int(c) for c in values["decoder_channels"].split(","))
        except ValueError as exc:
            raise SystemExit(
                f"--decoder-channels must be comma-separated integers, got {values['decoder_channels']!r}"
            ) from exc
    values["method_options"] = {
        opt.name: getattr(args, opt.name) if getattr(args, opt.name, None) is not None else opt.default
        for opt in method_cls.options
    }
    return PretrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    try:
        summary = pretrain_main(config)
    except (DataError, PretrainFailed, CheckpointError, RunFolderBusy) as exc:
        print(f"bench pretrain: error: {exc}", file=sys.stderr)
        return 1
    except Preempted as exc:
        print(f"bench pretrain: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    if os.environ.get("RANK", "0") != "0":
        return 0
    keys = ("status", "iteration", "final_loss", "skipped_images", "export")
    print(json.dumps({k: summary[k] for k in keys if k in summary}))
    return 0
