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


#: files that mark a folder as holding a run (with ``checkpoints/``); --overwrite removes them
RUN_FILES = ("config.json", "env.json", "summary.json", "log.jsonl", "encoder.safetensors", "generator.safetensors")
#: folders of a run that --overwrite removes
RUN_FOLDERS = ("checkpoints", "samples", "tensorboard")


def _run_files(run_dir: Path) -> list[str]:
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def _clear_run(run_dir: Path) -> list[str]:
    """--overwrite: remove the files and folders of the earlier run in ``run_dir`` (nothing else)."""
    import shutil

    removed = []
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            (run_dir / name).unlink()
            removed.append(name)
    for name in RUN_FOLDERS:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)
            removed.append(f"{name}/")
    return removed


def _resume_point(config: Any, run_dir: Path, method_name: str) -> tuple[Path, dict[str, Any]] | None:
    """Check the run folder before anything is written to it; return the checkpoint to resume from (None: a new
    run). A finished or started run is never trained over unless --resume finds a real checkpoint or --overwrite
    is given; the refusal says which."""
    from pretrain import engine

    ckpts = engine.list_checkpoints(run_dir)
    others = _run_files(run_dir)
    if config.overwrite:
        if config.resume:
            raise PretrainFailed("--resume and --overwrite contradict each other; choose one")
        return None
    if ckpts and not config.resume:
        raise PretrainFailed(
            f"{run_dir} already holds checkpoints ({ckpts[-1].name}); pass --resume to continue that run, "
            "--overwrite to start a new one in its place, or choose another --out"
        )
    if not ckpts:
        if others:
            raise PretrainFailed(
                f"{run_dir} holds a run ({', '.join(others)}) but no checkpoint to "
                f"{'resume from' if config.resume else 'continue'}; refusing to train over it. Pass --overwrite "
                "to start a new run in its place, or choose another --out"
            )
        if config.resume:
            print(f"--resume: {run_dir} holds no run yet, starting a new one", file=sys.stderr)
        return None
    path, ckpt, problems = engine.newest_readable_checkpoint(run_dir)
    for problem in problems:
        print(f"--resume: passing over an unreadable checkpoint: {problem}", file=sys.stderr)
    if path is None or ckpt is None:
        raise PretrainFailed(
            f"--resume: no checkpoint in {run_dir / 'checkpoints'} can be read ({len(problems)} tried); "
            "pass --overwrite to start again, or choose another --out"
        )
    if problems:
        print(f"--resume: falling back to {path}, the newest readable checkpoint", file=sys.stderr)
    engine.check_resumable(ckpt, path, method_name)
    conflicts = config.resume_conflicts(ckpt.get("config") or {})
    if conflicts:
        raise PretrainFailed(f"--resume with settings that change the run: {'; '.join(conflicts)}")
    return path, ckpt


def pretrain_main(config: Any) -> dict[str, Any]:
    """One run (all ranks call it under torchrun): rank 0 holds the run folder's lock for the whole run, so a
    second process on the same folder stops at once. Returns the summary."""
    import contextlib

    from pretrain.runlock import command_line, run_folder_lock

    run_dir = Path(config.out)
    if os.environ.get("RANK", "0") != "0":
        return _pretrain_locked(config, run_dir)
    created = not run_dir.exists()
    try:
        with run_folder_lock(run_dir, command_line()):
            return _pretrain_locked(config, run_dir)
    finally:
        # a run refused before it wrote anything leaves no empty folder behind
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            with contextlib.suppress(OSError):
                run_dir.rmdir()


def _pretrain_locked(config: Any, run_dir: Path) -> dict[str, Any]:
    """Wire data, method, engine and export for one run. Returns the summary."""
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from pretrain import engine
    from pretrain.checkpoint import atomic_write_json
    from pretrain.data import build_pretrain_dataset
    from pretrain.distributed import barrier, cleanup_distributed, init_distributed
    from pretrain.export import EXPORT_NAME, export_checkpoint
    from pretrain.methods import METHODS, NonFiniteLossError
    from pretrain.preemption import Preempted, PreemptionGuard, ignore_stop_signals
    from pretrain.runinfo import code_version, environment_info, sha256_file, utc_now_iso

    method_cls = METHODS[config.method]
    is_main = os.environ.get("RANK", "0") == "0"
    problems = config.problems()
    if problems:
        raise PretrainFailed("; ".join(problems))
    if is_main:
        for tmp in engine.remove_stray_temporaries(run_dir):
            print(f"removed {tmp}, left by an interrupted write", file=sys.stderr)
    resume_from = _resume_point(config, run_dir, method_cls.name)
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
    if config.overwrite and is_main:
        removed = _clear_run(run_dir)
        if removed:
            print(f"--overwrite: removed the earlier run's {', '.join(removed)} from {run_dir}", file=sys.stderr)

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
        if resume_from is not None:
            path, ckpt = resume_from
            engine.restore_checkpoint(method, path, ckpt)
            start = int(ckpt["iteration"])
            if ctx.is_main:
                print(f"resumed from {path} at iteration {start}")
        logger = engine.RunLogger(run_dir, enabled=ctx.is_main, tensorboard=config.tensorboard)
        if start > 0:
            logger.truncate_after(start)
        end = config.iterations if config.stop_after is None else min(config.iterations, config.stop_after)
        status, result, error, failed_at = "completed", None, None, None
        preempted: Preempted | None = None
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
                worker_init_fn=ignore_stop_signals,
            )
            logger.log({"event": "start", "iteration": start, "end": end, "time": utc_now_iso()})
            try:
                with PreemptionGuard() as guard:
                    result = engine.train_loop(
                        method,
                        loader,
                        config,
                        ctx,
                        run_dir,
                        start,
                        end,
                        logger,
                        progress=tqdm if ctx.is_main else None,
                        preemption=guard,
                    )
            except NonFiniteLossError as exc:
                status, error, failed_at = "non-finite-loss", str(exc), exc.iteration
                logger.log(
                    {"event": "non-finite-loss", "message": error, "iteration": failed_at, "time": utc_now_iso()}
                )
            except Preempted as exc:
                status, preempted = "preempted", exc
                logger.log({"event": "preempted", "signal": exc.signal_name, "iteration": exc.iteration,
                            "time": utc_now_iso()})  # fmt: skip
            if status == "completed" and end < config.iterations:
                status = "stopped"
        barrier()
        if result is not None:
            reached = result.iteration
        elif preempted is not None:
            reached = preempted.iteration
        elif failed_at is not None:
            reached = failed_at - 1  # the iterations completed before the one that failed
        else:
            reached = start if status != "initialised" else 0
        summary: dict[str, Any] = {
            "method": config.method,
            "status": status,
            "iteration": reached,
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
        if failed_at is not None:
            summary["failed_iteration"] = failed_at
        if preempted is not None:
            summary["signal"] = preempted.signal_name
        if ctx.is_main:
            ckpts = engine.list_checkpoints(run_dir)
            summary["checkpoint"] = str(ckpts[-1]) if ckpts else None
            if status in ("completed", "stopped", "initialised") and ckpts and method.encoder_state_dict() is not None:
                export = export_checkpoint(ckpts[-1], run_dir / EXPORT_NAME)
                summary["export"], summary["export_sha256"] = str(export), sha256_file(export)
            atomic_write_json(run_dir / "summary.json", summary)
        logger.close()
        if error is not None:
            raise PretrainFailed(f"{error} (last good checkpoint: {summary.get('checkpoint') or 'none'})")
        if preempted is not None:
            raise preempted
        return summary
    finally:
        cleanup_distributed()


def run(args: argparse.Namespace) -> int:
    from pretrain.checkpoint import CheckpointError
    from pretrain.data import DataError
    from pretrain.preemption import EXIT_PREEMPTED, Preempted
    from pretrain.runlock import RunFolderBusy

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
