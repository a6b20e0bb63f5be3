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
from pathlib import Path
from typing import Any

from benchmarks.presets import apply_preset
from benchmarks.presets.pretrain import PRESETS

HELP = "pretrain a context encoder, the autoencoder baseline or a random encoder; export the AlexNet encoder"
DESCRIPTION = __doc__

MASK_FALLBACK = ("center", "random-block", "random-region", "voc-shapes")
METHOD_FALLBACK = ("context-encoder", "autoencoder", "random")


def _preset_help(key: str) -> str:
    return "(preset: " + ", ".join(f"{name} {values.get(key)!r}" for name, values in PRESETS.items()) + ")"


def _methods() -> dict[str, Any]:
    """The METHODS registry; importing it needs torch, so fall back to the built-in names if it is not importable
    (``bench --help`` must work everywhere)."""
    try:
        from pretrain.methods import METHODS
    except ImportError:
        return {}
    return dict(METHODS)


def _mask_choices() -> tuple[str, ...]:
    try:
        from pretrain.masks import MASK_CHOICES
    except ImportError:
        return MASK_FALLBACK
    return tuple(MASK_CHOICES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS  # preset-controlled and optional values: absent unless given, then resolved
    methods = _methods()
    io = parser.add_argument_group("data and run folder")
    io.add_argument(
        "--data",
        default=S,
        help="images to pretrain on: a folder searched recursively (jpg, jpeg, png, bmp, webp, ppm) or "
        "voc:ROOT[:YEAR[:SPLIT]] for the images of a VOC devkit split (required except for --method random)",
    )
    io.add_argument("--out", required=True, help="run folder (created; an existing run needs --resume)")
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
        choices=list(methods) or list(METHOD_FALLBACK),
        help="; ".join(f"{name}: {cls.summary}" for name, cls in methods.items()) or "pretraining method",
    )
    m.add_argument(
        "--mask",
        default=S,
        choices=_mask_choices(),
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
        help="dropout after the channel-wise FC (default 0.5; PAPER.md marks it unverified)",
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


def resolve_config(args: argparse.Namespace) -> Any:
    """``PretrainConfig`` from parsed arguments: flag > method preset override > --preset > built-in default."""
    from pretrain.config import PretrainConfig
    from pretrain.methods import METHODS

    method_cls = METHODS[args.method]
    presets = {name: {**values, **method_cls.preset_overrides.get(name, {})} for name, values in PRESETS.items()}
    apply_preset(args, presets, args.preset)
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    values: dict[str, Any] = {k: v for k, v in vars(args).items() if k in fields and v is not None}
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


class PretrainFailed(RuntimeError):
    """The run cannot start or stopped early (bad run folder, non-finite loss); the message says why."""


def _print_config(config: Any) -> None:
    """DINO style: the sorted resolved arguments at start."""
    for key, value in sorted(config.to_dict().items()):
        print(f"{key}: {value}")


def pretrain_main(config: Any) -> dict[str, Any]:
    """Wire data, method, engine and export for one run (all ranks call it under torchrun). Returns the summary."""
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from pretrain import engine
    from pretrain.checkpoint import atomic_write_json, load_checkpoint
    from pretrain.data import build_pretrain_dataset
    from pretrain.distributed import barrier, cleanup_distributed, init_distributed
    from pretrain.export import EXPORT_NAME, export_checkpoint
    from pretrain.methods import METHODS, NonFiniteLossError
    from pretrain.runinfo import code_version, environment_info, sha256_file, utc_now_iso

    method_cls = METHODS[config.method]
    run_dir = Path(config.out)
    existing = engine.list_checkpoints(run_dir)
    if existing and not config.resume:
        raise PretrainFailed(
            f"{run_dir} already holds checkpoints ({existing[-1].name}); pass --resume to continue "
            "that run or choose another --out"
        )
    problems = config.problems()
    if problems:
        raise PretrainFailed("; ".join(problems))
    if config.resume and not existing:
        print(f"--resume: {run_dir} holds no checkpoint yet, starting a new run", file=sys.stderr)
    dataset = None
    if method_cls.trains:
        if not config.data:
            raise PretrainFailed(f"--data is required for --method {config.method}")
        # the data are scanned before anything is written: a missing or empty folder is an error here
        dataset = build_pretrain_dataset(
            config.data,
            config.crop_size,
            config.resize_short,
            flip=config.flip,
            scan_workers=config.scan_workers,
            cache_dir=config.cache_dir,
        )

    ctx = init_distributed(config.device)
    try:
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            _print_config(config)
            atomic_write_json(run_dir / "config.json", config.to_dict())
            atomic_write_json(
                run_dir / "env.json",
                {
                    "code_version": code_version(),
                    "environment": environment_info(ctx.device),
                    "world_size": ctx.world_size,
                    "started": utc_now_iso(),
                },
            )
        method = method_cls(config, ctx.device)
        start = 0
        if config.resume and existing:
            saved = load_checkpoint(existing[-1]).get("config", {})
            conflicts = config.resume_conflicts(saved)
            if conflicts:
                raise PretrainFailed(f"--resume with settings that change the run: {'; '.join(conflicts)}")
            ckpt = engine.restore_checkpoint(method, existing[-1])
            start = int(ckpt["iteration"])
            if ctx.is_main:
                print(f"resumed from {existing[-1]} at iteration {start}")
        logger = engine.RunLogger(run_dir, enabled=ctx.is_main, tensorboard=config.tensorboard)
        if start > 0:
            logger.truncate_after(start)
        end = config.iterations if config.stop_after is None else min(config.iterations, config.stop_after)
        status, result, error = "completed", None, None
        if not method_cls.trains:
            if ctx.is_main:
                engine.save_checkpoint(method, config, run_dir, 0, config.keep_checkpoints)
            status, end = "initialised", 0
        else:
            assert dataset is not None
            if ctx.distributed:
                device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
                method.wrap_distributed(lambda net: DistributedDataParallel(net, device_ids=device_ids))
            sampler = engine.IterationBatchSampler(
                len(dataset), config.batch_size, start, end, config.seed, ctx.rank, ctx.world_size
            )
            loader = DataLoader(
                engine.SeededDataset(dataset),
                batch_sampler=sampler,
                num_workers=config.workers,
                pin_memory=ctx.device.type == "cuda",
                persistent_workers=False,
            )
            logger.log({"event": "start", "iteration": start, "end": end, "time": utc_now_iso()})
            try:
                result = engine.train_loop(
                    method, loader, config, ctx, run_dir, start, end, logger, progress=tqdm if ctx.is_main else None
                )
            except NonFiniteLossError as exc:
                status, error = "non-finite-loss", str(exc)
                logger.log({"event": "non-finite-loss", "message": error, "time": utc_now_iso()})
            if status == "completed" and end < config.iterations:
                status = "stopped"
        barrier()
        summary: dict[str, Any] = {
            "method": config.method,
            "status": status,
            "iteration": result.iteration if result else (start if status != "initialised" else 0),
            "iterations_target": config.iterations,
            "final_loss": result.last_stats.get("loss") if result and result.last_stats else None,
            "final_stats": result.last_stats if result else {},
            "images_per_second": result.images_per_second if result else None,
            "seconds": result.seconds if result else 0.0,
            "world_size": ctx.world_size,
            "dataset_size": len(dataset) if dataset is not None else 0,
            "skipped_images": len(dataset.skipped) if dataset is not None else 0,
            "skipped": [{"path": str(p), "reason": r} for p, r in (dataset.skipped if dataset is not None else [])],
            "finished": utc_now_iso(),
        }
        if ctx.is_main:
            ckpts = engine.list_checkpoints(run_dir)
            summary["checkpoint"] = str(ckpts[-1]) if ckpts else None
            if status in ("completed", "stopped", "initialised") and ckpts and method.encoder_state_dict() is not None:
                export = export_checkpoint(ckpts[-1], run_dir / EXPORT_NAME)
                summary["export"], summary["export_sha256"] = str(export), sha256_file(export)
            atomic_write_json(run_dir / "summary.json", summary)
        logger.close()
        if error is not None:
            raise PretrainFailed(f"{error} (last good checkpoint: {summary.get('checkpoint')})")
        return summary
    finally:
        cleanup_distributed()


def run(args: argparse.Namespace) -> int:
    from pretrain.checkpoint import CheckpointError
    from pretrain.data import DataError

    config = resolve_config(args)
    try:
        summary = pretrain_main(config)
    except (DataError, PretrainFailed, CheckpointError) as exc:
        print(f"bench pretrain: error: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") != "0":
        return 0
    keys = ("status", "iteration", "final_loss", "skipped_images", "export")
    print(json.dumps({k: summary[k] for k in keys if k in summary}))
    return 0
