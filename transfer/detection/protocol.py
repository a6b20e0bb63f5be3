"""The Fast R-CNN detection protocol in one function: proposals, data, the transferred network, (resumable)
training, test detections, the run record. Trains on VOC2007 ``trainval`` and evaluates on ``test``; the protocol
and every choice the paper leaves open are in docs/protocols/detection.md. Under torchrun, proposals, training
(DDP, each rank its images of every mini-batch) and test detections are shared out; rank 0 writes the model,
results files and the record."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pretrain.checkpoint import atomic_torch_save
from pretrain.distributed import DistributedContext, barrier, gather_objects, shard_indices
from pretrain.preemption import Preempted, PreemptionGuard, ignore_stop_signals
from pretrain.runinfo import utc_now_iso
from pretrain.sampling import IterationBatchSampler
from transfer.config import ProtocolError, TransferRun
from transfer.detection.config import RESUME_MUTABLE, DetectionConfig
from transfer.detection.data import (
    DetectionImage,
    DetectionTrainSet,
    RoISampler,
    collate_detection,
    has_training_rois,
    load_detection_split,
    train_views,
)
from transfer.detection.detectron2_engine import check_engine, run_detectron2, settings_from_options
from transfer.detection.evaluate import EvalConfig, detect_image, score_detections, write_voc_results
from transfer.detection.model import FastRCNN, freeze_trunk, rescale_fast_rcnn
from transfer.detection.proposals import ProposalCache, compute_proposals, import_rcnn_mat
from transfer.detection.train import train
from transfer.engine import caffe_param_groups
from transfer.input_norm import resolve_input_norm
from transfer.records import make_record, write_record
from transfer.resumable import TrainingCheckpoint
from transfer.voc import VOC_CLASSES, VOCError, image_path, load_annotation, read_image_set, resolve_year_dir
from transfer.weights import load_alexnet_trunk

PROTOCOL_ID = "voc07-fast-rcnn"
#: v2: 11-point recall levels as MATLAB's 0:0.1:1 (v1 used numpy's rounding); v3: mini-batches, flips and RoI
#: samples from the one seeded iteration sampler (pretrain/sampling.py)
PROTOCOL_VERSION = 3
PROTOCOL_DESCRIPTION = (
    "Fast R-CNN (Girshick 2015) on the transferred AlexNet conv1-conv5, RoI max pooling 6x6 at stride 16, fc6/fc7 "
    "re-initialised; selective-search proposals; 2 images x 64 RoIs (25% fg IoU>=0.5, bg IoU [0.1,0.5)), flip; SGD "
    "momentum 0.9, wd 5e-4; per-class NMS 0.3; VOC07 11-point AP at IoU 0.5, difficult ignored"
)


def _quiet(*_: object, **__: object) -> None:
    """``print`` on ranks other than 0."""


def proposal_source(
    cfg: DetectionConfig, out: str | Path, year_dir: Path, splits: list[str], ctx: DistributedContext
) -> tuple[ProposalCache, dict[str, Any]]:
    """Fill the proposal cache for ``splits``; return ``(cache, info)`` where ``info`` describes what was done."""
    root = Path(cfg.proposals) if cfg.proposals else Path(out) / "proposals"
    ids = list(dict.fromkeys(i for s in splits for i in read_image_set(year_dir, s)))
    info: dict[str, Any] = {"cache": str(root), "failed": {}}
    rank, world_size = ctx.rank, ctx.world_size
    if cfg.rcnn_mat:
        cache = ProposalCache(root, "rcnn")
        imported = 0
        for split in splits if rank == 0 else []:  # rank 0 imports, the others wait for it
            mat = Path(cfg.rcnn_mat) / f"voc_2007_{split}.mat"
            if not mat.is_file():
                raise ProtocolError(f"--rcnn-mat: {mat} not found (expected R-CNN's voc_2007_<split>.mat files)")
            sizes = {}
            for image_id in read_image_set(year_dir, split):
                try:
                    ann = load_annotation(year_dir, image_id)
                except VOCError:
                    continue  # reported when the split is loaded
                sizes[image_id] = (ann.width, ann.height)
            imported += import_rcnn_mat(mat, cache, sizes)
        barrier()
        info.update(source="rcnn-mat", imported=imported)
        return cache, info
    cache = ProposalCache(root, cfg.proposal_mode)
    # under torchrun every rank computes its share of the images into the shared cache (rank r: r, r + world, ...)
    workers = cfg.proposal_workers
    if workers is None:
        workers = max(1, (os.cpu_count() or 1) // world_size)
    paths = {i: image_path(year_dir, i) for i in ids}
    present = [i for i, p in paths.items() if p.is_file()]
    mine = {present[k]: paths[present[k]] for k in shard_indices(len(present), rank, world_size)}
    stats = compute_proposals(mine, cache, workers=workers, progress=rank == 0)
    parts = gather_objects((stats.computed, stats.cached, stats.failed))  # also waits until every share is written
    failed = {k: v for _, _, f in parts for k, v in f.items()}
    info.update(
        source=f"opencv-selective-search-{cfg.proposal_mode}",
        computed=sum(p[0] for p in parts),
        cached=sum(p[1] for p in parts),
        failed=failed,
        workers=workers,
        processes=world_size,
    )
    return cache, info


def _detect_sharded(
    model: FastRCNN, images: list[DetectionImage], classes: list[str], cfg: EvalConfig, ctx: DistributedContext
) -> Any:
    """Detections of every image, rank r detecting images r, r + world, ..., gathered and put back in image order
    (so tied scores keep the order a single process gives them), then scored against the whole split."""
    mine = []
    for k in tqdm(shard_indices(len(images), ctx.rank, ctx.world_size), desc="fast r-cnn test", unit="img",
                  disable=not ctx.is_main):  # fmt: skip
        mine.append((k, *detect_image(model, images[k], cfg, ctx.device)))
    found = sorted((d for part in gather_objects(mine) for d in part), key=lambda d: d[0])
    return score_detections(images, [d[1:] for d in found], classes)


def _metrics(result: dict[str, Any], convention: str) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Record metrics and per-class APs: the primary 11-point AP under ``convention``, the other convention's
    11-point AP, and the devkit's area-under-curve AP."""
    devkit = (float(result["mAP"]), result["ap07"])
    pyfrcnn = (float(result["mAP_py_faster_rcnn"]), result["ap07_py_faster_rcnn"])
    (primary, primary_pc), (other, other_pc), suffix = (
        (devkit, pyfrcnn, "py_faster_rcnn") if convention == "devkit" else (pyfrcnn, devkit, "devkit")
    )
    metrics = {"mAP": primary, "mAP_auc": float(result["mAP_auc"]), f"mAP_{suffix}": other}
    return metrics, {"AP": primary_pc, "AP_auc": result["ap_auc"], f"AP_{suffix}": other_pc}


def _check_splits(cfg: DetectionConfig) -> None:
    overlapping = {cfg.train_split, cfg.eval_split}
    if len(overlapping) == 1 or overlapping in ({"trainval", "train"}, {"trainval", "val"}):
        raise ProtocolError(
            f"--eval-split {cfg.eval_split} overlaps --train-split {cfg.train_split}; evaluation needs held-out "
            "images (VOC2007 trainval -> test is the protocol)"
        )


def run_detection(cfg: DetectionConfig, run: TransferRun, ctx: DistributedContext) -> dict[str, Any]:
    """Train and evaluate Fast R-CNN (every rank of a torchrun launch calls it); rank 0 writes the model, the
    results files and the record into ``run.out``, and every rank returns the record."""
    started, t0 = utc_now_iso(), time.time()
    log = print if ctx.is_main else _quiet
    _check_splits(cfg)
    check_engine(cfg.engine, ctx.distributed, cfg.resume)  # before the weights and proposals: a refusal costs nothing
    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    device = ctx.device
    torch.manual_seed(run.seed)

    # the weights first: a wrong path fails before the long proposal pass
    trunk, weights_info = load_alexnet_trunk(run.weights, seed=run.seed)
    cfg = dataclasses.replace(cfg, input_norm=resolve_input_norm(cfg.input_norm, weights_info.kind))
    settings = {k: v for k, v in cfg.to_dict().items() if k not in RESUME_MUTABLE} | {"seed": run.seed}
    checkpoints = TrainingCheckpoint(out, run.key("det"), cfg.checkpoint_every, settings, ctx)
    resume = checkpoints.load(cfg.resume)  # before the proposal pass: a refused --resume costs nothing
    year_dir = resolve_year_dir(run.voc_root, "2007")
    cache, proposal_info = proposal_source(cfg, out, year_dir, [cfg.train_split, cfg.eval_split], ctx)
    failed: dict[str, str] = proposal_info["failed"]

    def proposals(image_id: str, width: int, height: int) -> np.ndarray:
        if image_id in failed:
            raise VOCError(f"proposals failed for {image_id}: {failed[image_id]}")
        if not cache.has(image_id):
            return np.zeros((0, 4), np.float32)
        return cache.load(image_id)[: cfg.max_proposals]

    train_images, train_report = load_detection_split(year_dir, cfg.train_split, proposals, skip_bad=run.skip_bad)
    eval_images, eval_report = load_detection_split(year_dir, cfg.eval_split, proposals, skip_bad=run.skip_bad)

    sampler = RoISampler(rois_per_image=cfg.rois_per_image)
    usable = [im for im in train_images if has_training_rois(im, sampler)]
    log(
        f"VOC2007 {cfg.train_split}: {len(train_images)} images ({len(train_images) - len(usable)} without "
        f"training RoIs left out); {cfg.eval_split}: {len(eval_images)} images; proposals in {proposal_info['cache']}"
    )
    if not usable:
        raise ProtocolError(f"no image of VOC2007 {cfg.train_split} has a non-difficult object to train on")
    if not eval_images:
        raise ProtocolError(f"no usable image in VOC2007 {cfg.eval_split}")

    config = cfg.to_dict() | run.to_dict() | {"device": str(device), "world_size": ctx.world_size}
    if cfg.engine == "detectron2":
        saved = out if cfg.save_model else None
        outcome = run_detectron2(usable, eval_images, trunk, settings_from_options(cfg.to_dict()), run.seed, device,
                                 saved, voc_eval=(year_dir, cfg.eval_split), progress=ctx.is_main)  # fmt: skip
        engine_extra = {
            "engine": outcome["engine"],
            "detectron2_evaluator": outcome["evaluator"],
            "detectron2_config": str(out / "detectron2" / "config.yaml") if saved is not None else None,
        }
        ap_note = (
            "; detectron2_evaluator: detectron2's PascalVOCDetectionEvaluator on the same detections (AP50 is its "
            "VOC2007 11-point AP at IoU > 0.5, AP the mean over IoU 0.50:0.95)"
        )
    else:
        outcome = _torchvision_engine(cfg, run, ctx, trunk, usable, eval_images, sampler, checkpoints, resume, config)
        engine_extra, ap_note = {}, ""
    result, detections = outcome["result"], outcome["detections"]
    if ctx.is_main and cfg.write_voc_results:
        write_voc_results(detections, out / "results", cfg.eval_split)

    metrics, per_class = _metrics(result, cfg.ap)
    skipped = [*train_report.skipped, *eval_report.skipped]
    record = make_record(
        task="det",
        protocol_id=PROTOCOL_ID,
        protocol_version=PROTOCOL_VERSION,
        protocol_description=PROTOCOL_DESCRIPTION,
        dataset="VOC2007",
        train_split=cfg.train_split,
        eval_split=cfg.eval_split,
        metrics=metrics,
        primary_metric="mAP",
        per_class=per_class,
        weights=weights_info.to_dict(),
        seed=run.seed,
        config=config,
        started_at=started,
        wall_time_s=time.time() - t0,
        skipped_items=skipped,
        device=device,
        extra={
            **engine_extra,
            "train_data": {**train_report.to_dict(), "without_training_rois": len(train_images) - len(usable)},
            "eval_data": eval_report.to_dict(),
            "proposals": {k: v for k, v in proposal_info.items() if k != "failed"}
            | {"failed": len(proposal_info["failed"])},
            "train": outcome["train"],
            "detections": result["detections"],
            "classes_without_gt": result["classes_without_gt"],
            "frozen_layers": outcome["frozen_layers"],
            "rescale": outcome["rescale"],
            "ap_definition": f"VOC2007 11-point interpolated AP as {cfg.ap} (AP); the other convention "
            f"(AP_devkit or AP_py_faster_rcnn); VOC2010+ area under the curve as the devkit (AP_auc){ap_note}",
        },
    )
    if ctx.is_main:
        path = write_record(record, out)
        checkpoints.finish()
        log(f"record: {path}")
    return record


def _torchvision_engine(
    cfg: DetectionConfig,
    run: TransferRun,
    ctx: DistributedContext,
    trunk: torch.nn.Sequential,
    usable: list[DetectionImage],
    eval_images: list[DetectionImage],
    sampler: RoISampler,
    checkpoints: TrainingCheckpoint,
    resume: dict[str, Any] | None,
    config: dict[str, Any],
) -> dict[str, Any]:
    """This suite's implementation: train (resumable, DDP under torchrun) on ``usable``, save the model, detect on
    ``eval_images``; returns what the record needs, with the keys of :func:`run_detectron2`'s result."""
    device, out = ctx.device, Path(run.out)
    model = FastRCNN(trunk, hidden=cfg.fc_width, seed=run.seed)
    rescale_info = None
    if cfg.rescale:  # Krähenbühl's magic_init: within-layer init of fc6/fc7, between-layer correction conv1..fc7
        rescale_info = rescale_fast_rcnn(model, [im.path for im in usable], cfg.input_norm, seed=run.seed)
    frozen = freeze_trunk(model, cfg.freeze_through)
    model.to(device)
    optimizer = torch.optim.SGD(caffe_param_groups(model, cfg.lr, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
    start = int(resume["iteration"]) if resume is not None else 0
    dataset = DetectionTrainSet(usable, cfg.scale, cfg.max_size, cfg.input_norm, sampler)
    if cfg.batch_size % ctx.world_size:
        raise ProtocolError(f"--batch-size {cfg.batch_size} must be a multiple of the {ctx.world_size} processes")
    # every rank computes the same global mini-batches and trains on its share of each (pretrain/sampling.py)
    batches = IterationBatchSampler(len(usable), cfg.batch_size // ctx.world_size, start, cfg.iterations, run.seed,
                                    ctx.rank, ctx.world_size, views=train_views(flip=True))  # fmt: skip
    net: torch.nn.Module = model
    if ctx.distributed:
        torch.manual_seed(run.seed * 1000 + ctx.rank)  # dropout masks differ between ranks, reproducibly
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if resume is not None:  # after the seeding above: each rank continues its own RNG streams
        checkpoints.restore(resume, model, optimizer)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate_detection,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=ignore_stop_signals,
        # its own generator: starting the loader must not draw from the global RNG that dropout uses, or a resumed
        # run's dropout would be one draw off
        generator=torch.Generator().manual_seed(run.seed),
    )
    with PreemptionGuard() as guard:

        def after_step(done: int) -> None:
            stop = checkpoints.stop_requested(guard.requested)
            if stop or checkpoints.due(done, cfg.iterations):
                path = checkpoints.save(done, model, optimizer)
                if stop:
                    raise Preempted(guard.signal_name or "a signal to another process", done, str(path))

        train_summary = train(
            net, loader, optimizer, cfg, device, progress=ctx.is_main, start=start, after_step=after_step
        )
    if cfg.save_model and ctx.is_main:
        atomic_torch_save({"model": model.state_dict(), "config": config}, out / "fast_rcnn.pt")

    test_cfg = EvalConfig(
        scale=cfg.scale,
        max_size=cfg.max_size,
        norm=cfg.input_norm,
        nms_threshold=cfg.nms,
        score_threshold=cfg.score_threshold,
        max_per_image=cfg.max_per_image,
        precision=cfg.precision,
    )
    result, detections = _detect_sharded(model, eval_images, list(VOC_CLASSES), test_cfg, ctx)
    return {
        "result": result,
        "detections": detections,
        "train": train_summary,
        "frozen_layers": frozen,
        "rescale": rescale_info,
    }
