"""One ``bench pretrain`` run from its resolved ``PretrainConfig``: check the run folder, wire data, method,
engine and export, write config.json, env.json, log.jsonl, samples/, checkpoints/, summary.json and
encoder.safetensors. Works the same in one process and under torchrun (DistributedDataParallel)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from pretrain import engine, sampling
from pretrain.checkpoint import atomic_write_json
from pretrain.config import PretrainConfig
from pretrain.data import UnlabeledImageDataset, build_pretrain_dataset
from pretrain.distributed import barrier, cleanup_distributed, init_distributed
from pretrain.encoder_health import dead_warning, encoder_dead_channels
from pretrain.export import EXPORT_NAME, export_checkpoint
from pretrain.methods import METHODS, NonFiniteLossError
from pretrain.preemption import Preempted, PreemptionGuard, ignore_stop_signals
from pretrain.runinfo import code_version, environment_info, sha256_file, utc_now_iso
from pretrain.runlock import command_line, run_folder_lock


class PretrainFailed(RuntimeError):
    """The run cannot start or stopped early (bad run folder, non-finite loss); the message says why."""


def _dead_channels(method: Any, config: PretrainConfig, dataset: Any) -> dict[str, float]:
    """The trained encoder's dead-channel fractions per convolution (``pretrain/encoder_health.py``) on up to 64
    training images (fixed crops: seed 0), with a warning on stderr where most of a layer's channels are dead."""
    if isinstance(dataset, UnlabeledImageDataset):  # the same crops without writing into a --cache-dir
        dataset = UnlabeledImageDataset(
            dataset.paths[:64], dataset.crop_size, dataset.resize_short, flip=dataset.flip, scan=False
        )
    with sampling.seeded_rngs(0):
        images = torch.stack([dataset[i] for i in range(min(64, len(dataset)))])
    fractions = encoder_dead_channels(method.encoder_state_dict(), config.widths, images)
    warning = dead_warning(fractions)
    if warning:
        print(f"bench pretrain: warning: {warning}", file=sys.stderr)
    return fractions


def _print_config(config: PretrainConfig) -> None:
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


def _resume_point(config: PretrainConfig, run_dir: Path, method_name: str) -> tuple[Path, dict[str, Any]] | None:
    """Check the run folder before anything is written to it; return the checkpoint to resume from (None: a new
    run). A finished or started run is never trained over unless --resume finds a real checkpoint or --overwrite
    is given; the refusal says which."""
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


def pretrain_main(config: PretrainConfig) -> dict[str, Any]:
    """One run (all ranks call it under torchrun): rank 0 holds the run folder's lock for the whole run, so a
    second process on the same folder stops at once. Returns the summary."""
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


def _pretrain_locked(config: PretrainConfig, run_dir: Path) -> dict[str, Any]:
    """Wire data, method, engine and export for one run. Returns the summary."""
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
            sampler = sampling.IterationBatchSampler(
                len(dataset), config.batch_size, start, end, config.seed, ctx.rank, ctx.world_size
            )
            loader = DataLoader(
                sampling.SeededDataset(dataset),
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
                if dataset is not None and len(dataset) > 0:
                    summary["dead_channels"] = _dead_channels(method, config, dataset)
            atomic_write_json(run_dir / "summary.json", summary)
        logger.close()
        if error is not None:
            raise PretrainFailed(f"{error} (last good checkpoint: {summary.get('checkpoint') or 'none'})")
        if preempted is not None:
            raise preempted
        return summary
    finally:
        cleanup_distributed()
