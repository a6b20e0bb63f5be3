"""The segmentation transfer protocol in one place: data, FCN, training, evaluation on VOC2012 val, run record.

FCN (Long et al. 2015) on the transferred AlexNet (FCN-32s is the usual choice; Pathak et al. 2016, Table 2),
VOC2012 train (optionally + SBD) -> val, mean IoU over 21 classes, label 255 ignored. ``SegmentationConfig``
(transfer/segmentation/config.py) holds every setting with its source; docs/protocols/segmentation.md lists the
choices where the papers are silent. ``run_segmentation`` works the same in one process and under torchrun; every
rank returns the record and rank 0 writes it. ``--engine mmseg`` hands the run to ``mmseg_engine`` (one process).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from pretrain.checkpoint import atomic_write_bytes
from pretrain.distributed import DistributedContext, barrier
from pretrain.runinfo import sha256_file, utc_now_iso
from transfer.config import ProtocolError, TransferRun
from transfer.input_norm import resolve_input_norm
from transfer.records import make_record, write_record
from transfer.resumable import TrainingCheckpoint
from transfer.segmentation.config import RESUME_MUTABLE, SegmentationConfig
from transfer.segmentation.data import (
    ItemList,
    SegItem,
    SegmentationDataset,
    build_train_items,
    check_items,
    voc_items,
)
from transfer.segmentation.evaluate import evaluate_fcn
from transfer.segmentation.model import build_fcn, rescale_fcn
from transfer.segmentation.train import train_fcn
from transfer.segmentation_iou import per_class_iou, segmentation_scores
from transfer.voc import SEG_CLASSES
from transfer.weights import load_alexnet_trunk

PROTOCOL_VERSION = 2  # v2: batches and augmentation from the one seeded iteration sampler (pretrain/sampling.py)


class SegmentationError(ProtocolError):
    """A setting or an input makes the protocol impossible; the message names it."""


def _load_fcn_weights(model: torch.nn.Module, path: Path) -> None:
    if not path.is_file():
        raise SegmentationError(f"--fcn-weights file not found: {path}")
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise SegmentationError(f"cannot read FCN weights {path}: {exc}") from exc
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise SegmentationError(f"{path} does not fit this FCN (--variant/--fc-width?): {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise SegmentationError(
            f"{path} does not fit this FCN (--variant/--fc-width?): missing {sorted(result.missing_keys)}, "
            f"unexpected {sorted(result.unexpected_keys)}"
        )


def _save_fcn_weights(model: torch.nn.Module, path: Path) -> Path:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_write_bytes(path, save(state, metadata={"format": "fcn-alexnet", "classes": ",".join(SEG_CLASSES)}))


def check_settings(cfg: SegmentationConfig) -> None:
    """The settings checks every engine makes before any work."""
    if cfg.iterations < 0:
        raise SegmentationError(f"--iterations must be >= 0, got {cfg.iterations}")
    if cfg.crop_size is not None and cfg.crop_size < 1:
        raise SegmentationError(f"--crop-size must be positive, got {cfg.crop_size}")


def load_items(cfg: SegmentationConfig, run: TransferRun) -> tuple[ItemList, list[SegItem], list[SegItem], list[str]]:
    """``(training list with its SBD counts, train items, eval items, skipped messages)``: listed and checked before
    any work (bad masks stop the run or are skipped and counted); the training images must be held out from the
    evaluation split. Training items are only checked when ``cfg.iterations`` > 0."""
    train_list = build_train_items(run.voc_root, cfg.train_split, cfg.eval_split, cfg.sbd_root)
    eval_all = voc_items(run.voc_root, cfg.eval_split)
    overlap = {i.image_id for i in train_list.items} & {i.image_id for i in eval_all}
    if cfg.iterations > 0 and overlap:
        raise SegmentationError(
            f"training split {cfg.train_split!r} shares {len(overlap)} images with evaluation split "
            f"{cfg.eval_split!r} (e.g. {sorted(overlap)[0]}); evaluation must be on held-out images"
        )
    train, train_skipped = check_items(train_list.items, run.skip_bad) if cfg.iterations > 0 else ([], [])
    evals, eval_skipped = check_items(eval_all, run.skip_bad)
    if cfg.iterations > 0 and not train:
        raise SegmentationError(f"no usable training image in VOC2012 {cfg.train_split} (all skipped)")
    if not evals:
        raise SegmentationError(f"no usable evaluation image in VOC2012 {cfg.eval_split} (all skipped)")
    return train_list, train, evals, train_skipped + eval_skipped


def run_segmentation(cfg: SegmentationConfig, run: TransferRun, ctx: DistributedContext) -> dict[str, Any]:
    """Train (``cfg.iterations`` > 0) and evaluate (every rank of a torchrun launch calls it); rank 0 writes the
    record into ``run.out`` and every rank returns it. ``cfg.engine == "mmseg"`` runs the same protocol through
    mmsegmentation (``transfer.segmentation.mmseg_engine``)."""
    if cfg.engine == "mmseg":
        # imported here: the engine builds on this module (its record and errors), and mmseg is optional
        from transfer.segmentation.mmseg_engine import run_mmseg_segmentation

        return run_mmseg_segmentation(cfg, run, ctx)
    started_at, t0 = utc_now_iso(), time.perf_counter()
    check_settings(cfg)
    out = Path(run.out)
    torch.manual_seed(run.seed * 1000 + ctx.rank)  # dropout masks differ between ranks, reproducibly
    train_list, train_items, eval_items, skipped = load_items(cfg, run)

    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    barrier()

    # model: transferred trunk + re-initialised FCN head (same seed on every rank)
    trunk, winfo = load_alexnet_trunk(run.weights, seed=run.seed)
    cfg = replace(cfg, input_norm=resolve_input_norm(cfg.input_norm, winfo.kind))
    # what --resume must not change
    settings = {k: v for k, v in cfg.to_dict().items() if k not in RESUME_MUTABLE} | {"seed": run.seed}
    checkpoints = TrainingCheckpoint(out, run.key("seg"), cfg.checkpoint_every, settings, ctx)
    resume = checkpoints.load(cfg.resume) if cfg.iterations > 0 else None  # before the rescaling pass
    model = build_fcn(
        trunk,
        variant=cfg.variant,  # type: ignore[arg-type]
        num_classes=len(SEG_CLASSES),
        fc_channels=cfg.fc_width,
        learn_upsampling=cfg.learn_upsampling,
        seed=run.seed,
    )
    rescale_info = None
    if cfg.rescale:  # deterministic: the same images and seed on every rank
        if not train_items:
            raise SegmentationError("--rescale needs training images (it is computed on the training split)")
        rescale_info = rescale_fcn(model, [i.image for i in train_items], cfg.input_norm, seed=run.seed)
    weights = winfo.to_dict()
    if rescale_info is not None:
        weights["rescale"] = rescale_info
    if cfg.fcn_weights:
        _load_fcn_weights(model, Path(cfg.fcn_weights))
        weights["fcn_weights"] = str(cfg.fcn_weights)
        weights["fcn_weights_sha256"] = sha256_file(cfg.fcn_weights)
    model.to(ctx.device)

    train_summary: dict[str, Any] = {"iterations": 0}
    if cfg.iterations > 0:
        train_ds = SegmentationDataset(
            train_items,
            train=True,
            input_norm=cfg.input_norm,
            flip=cfg.flip,
            crop_size=cfg.crop_size,
        )
        train_summary = train_fcn(
            model,
            train_ds,
            ctx=ctx,
            iterations=cfg.iterations,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            normalization=cfg.loss_norm,  # type: ignore[arg-type]
            precision=cfg.precision,
            workers=cfg.workers,
            seed=run.seed,
            log_path=out / "train_log.jsonl",
            progress=cfg.progress,
            checkpoints=checkpoints,
            resume=resume,
        )
    if cfg.save_model and ctx.is_main:
        weights["saved_fcn"] = str(_save_fcn_weights(model, out / "fcn.safetensors"))

    eval_ds = SegmentationDataset(eval_items, train=False, input_norm=cfg.input_norm)
    hist = evaluate_fcn(
        model,
        eval_ds,
        ctx=ctx,
        num_classes=len(SEG_CLASSES),
        precision=cfg.precision,
        workers=cfg.workers,
        predictions_dir=out / "predictions" if cfg.save_predictions else None,
        progress=cfg.progress,
    )
    record = build_record(
        cfg, run, hist, weights, train_list.sbd_added, train_list.sbd_removed_val, train_summary,
        skipped, model.crop_offset, ctx, started_at, time.perf_counter() - t0,
        n_train=len(train_items), n_eval=len(eval_items),
    )  # fmt: skip
    if ctx.is_main:
        record_path = write_record(record, run.out)
        checkpoints.finish()
        if cfg.progress:
            print(f"record: {record_path}")
    return record


def build_record(
    cfg: SegmentationConfig,
    run: TransferRun,
    hist: torch.Tensor,
    weights: dict[str, Any],
    sbd_added: int,
    sbd_removed_val: int,
    train_summary: dict[str, Any],
    skipped: list[str],
    crop_offset: int,
    ctx: DistributedContext,
    started_at: str,
    wall_time_s: float,
    *,
    n_train: int,
    n_eval: int,
) -> dict[str, Any]:
    """The run record: metrics in percent, per-class IoU and accuracy of the classes present, the confusion matrix."""
    scores = segmentation_scores(hist)
    iou = per_class_iou(hist)
    h = hist.numpy().astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.diag(h) / h.sum(1)
    present = [i for i in range(len(SEG_CLASSES)) if not np.isnan(iou[i])]
    config = {**cfg.to_dict(), **run.to_dict(), "device": str(ctx.device), "world_size": ctx.world_size}
    config.pop("progress")
    train_split = cfg.train_split + ("+sbd" if cfg.sbd_root else "") if cfg.iterations > 0 else None
    return make_record(
        task="seg",
        protocol_id=cfg.protocol_id(),
        protocol_version=PROTOCOL_VERSION,
        protocol_description=cfg.description(),
        dataset="VOC2012",
        train_split=train_split,
        eval_split=cfg.eval_split,
        metrics={k: 100.0 * v for k, v in scores.items()},
        primary_metric="mIoU",
        per_class={
            "IoU": {SEG_CLASSES[i]: 100.0 * float(iou[i]) for i in present},
            "accuracy": {SEG_CLASSES[i]: 100.0 * float(acc[i]) for i in range(len(SEG_CLASSES)) if h[i].sum() > 0},
        },
        weights=weights,
        seed=run.seed,
        config=config,
        started_at=started_at,
        wall_time_s=wall_time_s,
        skipped_items=skipped,
        device=ctx.device,
        extra={
            "classes": list(SEG_CLASSES),
            "absent_classes": [SEG_CLASSES[i] for i in range(len(SEG_CLASSES)) if np.isnan(iou[i])],
            "confusion_matrix": hist.tolist(),
            "labelled_pixels": int(hist.sum()),
            "train_images": n_train,
            "eval_images": n_eval,
            "sbd": {"added": sbd_added, "removed_in_eval_split": sbd_removed_val} if cfg.sbd_root else None,
            "train": train_summary,
            "crop_offset": crop_offset,
            "world_size": ctx.world_size,
        },
    )
