"""``bench transfer --task det``: Fast R-CNN detection on VOC2007 with the transferred AlexNet encoder.

Trains on VOC2007 ``trainval`` and evaluates on ``test`` (the paper's "det" column, PAPER.md §6); the protocol and
every choice the paper leaves open are in docs/protocols/detection.md.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

TITLE = "Fast R-CNN detection on VOC2007"
#: options that may change between an interrupted run and its --resume (they do not change the trained weights)
RESUME_MUTABLE = frozenset(
    {"resume", "checkpoint_every", "iterations", "workers", "proposal_workers", "write_voc_results", "device"}
)
PROTOCOL_ID = "voc07-fast-rcnn"
PROTOCOL_VERSION = 2  # v2: 11-point recall levels as MATLAB's 0:0.1:1 (v1 used numpy's rounding)
PROTOCOL_DESCRIPTION = (
    "Fast R-CNN (Girshick 2015) on the transferred AlexNet conv1-conv5, RoI max pooling 6x6 at stride 16, fc6/fc7 "
    "re-initialised; selective-search proposals; 2 images x 64 RoIs (25% fg IoU>=0.5, bg IoU [0.1,0.5)), flip; SGD "
    "momentum 0.9, wd 5e-4; per-class NMS 0.3; VOC07 11-point AP at IoU 0.5, difficult ignored"
)


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--proposals",
        default=None,
        metavar="DIR",
        help="proposal cache folder (one .npy per image; interrupted passes resume, later runs reuse it). "
        "None: OUT/proposals; pass a shared folder to reuse proposals across runs",
    )
    group.add_argument(
        "--proposal-mode",
        default="fast",
        choices=["fast", "quality"],
        help="OpenCV selective-search mode; fast is Fast R-CNN's setting, quality has higher recall and is slower",
    )
    group.add_argument(
        "--max-proposals",
        type=int,
        metavar="N",
        default=None,
        help="keep the first N proposals per image in selective-search order (preset; paper: 2000, Fast R-CNN's ~2k)",
    )
    group.add_argument(
        "--proposal-workers",
        type=int,
        metavar="N",
        default=None,
        help="worker processes for selective search (None: the number of CPU cores; 1 computes in-process)",
    )
    group.add_argument(
        "--rcnn-mat",
        default=None,
        metavar="DIR",
        help="use R-CNN's released selective-search boxes instead: DIR holds voc_2007_<split>.mat "
        "(1-based y1 x1 y2 x2, converted on import)",
    )
    group.add_argument(
        "--write-voc-results",
        action="store_true",
        help="also write the detections as VOC results files OUT/results/comp4_det_<split>_<class>.txt",
    )
    group.add_argument(
        "--det-scale", type=int, default=None, help="shorter image side in pixels (preset; paper: 600, Fast R-CNN)"
    )
    group.add_argument(
        "--det-max-size", type=int, default=None, help="cap on the longer image side (preset; paper: 1000, Fast R-CNN)"
    )
    group.add_argument(
        "--det-lr-step",
        type=int,
        default=None,
        help="iteration at which the learning rate drops x0.1 (preset; paper: 30000 of 40000, Fast R-CNN VOC07)",
    )
    group.add_argument(
        "--rois-per-image", type=int, default=None, help="RoIs sampled per training image (preset; paper: 64)"
    )
    group.add_argument(
        "--det-freeze-through",
        default="conv1",
        choices=["none", "conv1", "conv2", "conv3", "conv4", "conv5"],
        help="freeze trunk convolutions up to this one; Fast R-CNN fine-tunes conv2 and up for CaffeNet-sized "
        "models (paper §4.5), so conv1 is frozen by default",
    )
    group.add_argument(
        "--det-score-threshold",
        type=float,
        default=None,
        help="drop detections below this class probability before NMS (preset; paper: 0.05, py-faster-rcnn; "
        "smoke: 0, so that a barely trained model still produces detections to score)",
    )
    group.add_argument(
        "--det-fc-dim",
        type=int,
        default=None,
        help="width of the re-initialised fc6 and fc7 (preset; paper: 4096 as AlexNet/Fast R-CNN; smoke: 512)",
    )
    group.add_argument(
        "--det-nms", type=float, default=0.3, help="per-class NMS IoU threshold at test time (Fast R-CNN: 0.3)"
    )
    group.add_argument(
        "--det-max-per-image",
        type=int,
        default=100,
        help="keep the highest-scoring N detections per image over all classes (py-faster-rcnn: 100)",
    )
    group.add_argument(
        "--det-ap",
        default="devkit",
        choices=["devkit", "py-faster-rcnn"],
        help="convention of the primary mAP: devkit = the VOC2007 MATLAB devkit (VOCevaldet.m: IoU >= 0.5, recall "
        "levels of MATLAB's 0:0.1:1, stable sort), which produced Fast R-CNN's published numbers; py-faster-rcnn = "
        "its Python voc_eval (IoU > 0.5, np.arange levels, numpy's default sort). The other one is stored too",
    )
    group.add_argument(
        "--engine",
        default="torchvision",
        choices=["torchvision", "detectron2"],
        help="implementation of the protocol: torchvision (this suite's) or detectron2 (needs detectron2 installed; "
        "docs/protocols/detection.md)",
    )


def _proposal_source(args: argparse.Namespace, year_dir: Path, splits: list[str]) -> tuple[Any, dict[str, Any]]:
    """Fill the proposal cache for ``splits``; return ``(cache, info)`` where ``info`` describes what was done."""
    from pretrain.distributed import barrier, gather_objects, shard_indices, world
    from transfer.detection.proposals import ProposalCache, compute_proposals, import_rcnn_mat
    from transfer.voc import VOCError, image_path, load_annotation, read_image_set

    root = Path(args.proposals) if args.proposals else Path(args.out) / "proposals"
    ids = list(dict.fromkeys(i for s in splits for i in read_image_set(year_dir, s)))
    info: dict[str, Any] = {"cache": str(root), "failed": {}}
    rank, world_size = world()
    if args.rcnn_mat:
        cache = ProposalCache(root, "rcnn")
        imported = 0
        for split in splits if rank == 0 else []:  # rank 0 imports, the others wait for it
            mat = Path(args.rcnn_mat) / f"voc_2007_{split}.mat"
            if not mat.is_file():
                raise SystemExit(f"--rcnn-mat: {mat} not found (expected R-CNN's voc_2007_<split>.mat files)")
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
    cache = ProposalCache(root, args.proposal_mode)
    # under torchrun every rank computes its share of the images into the shared cache (rank r: r, r + world, ...)
    workers = args.proposal_workers
    if workers is None:
        workers = max(1, (os.cpu_count() or 1) // world_size)
    paths = {i: image_path(year_dir, i) for i in ids}
    present = [i for i, p in paths.items() if p.is_file()]
    mine = {present[k]: paths[present[k]] for k in shard_indices(len(present), rank, world_size)}
    stats = compute_proposals(mine, cache, workers=workers, progress=rank == 0)
    parts = gather_objects((stats.computed, stats.cached, stats.failed))  # also waits until every share is written
    failed = {k: v for _, _, f in parts for k, v in f.items()}
    info.update(
        source=f"opencv-selective-search-{args.proposal_mode}",
        computed=sum(p[0] for p in parts),
        cached=sum(p[1] for p in parts),
        failed=failed,
        workers=workers,
        processes=world_size,
    )
    return cache, info


def _print_table(ap07: dict[str, float], ap_auc: dict[str, float], metrics: dict[str, float]) -> None:
    width = max([len("class"), *(len(c) for c in ap07)])
    print(f"\n{'class':<{width}}  VOC07 AP  AUC AP")
    for cls, value in ap07.items():
        print(f"{cls:<{width}}  {value:8.1f}  {ap_auc[cls]:6.1f}")
    print(f"{'mAP':<{width}}  {metrics['mAP']:8.1f}  {metrics['mAP_auc']:6.1f}")


def run(args: argparse.Namespace) -> int:
    """One process, or every rank of a torchrun launch: proposals, training (DDP, each rank its images of every
    mini-batch) and test detections are shared out; rank 0 writes the model, results files and the record."""
    from pretrain.distributed import cleanup_distributed, init_distributed

    ctx = init_distributed(args.device)
    try:
        return _run(args, ctx)
    finally:
        cleanup_distributed()


def _detect_sharded(model: Any, images: list[Any], classes: list[str], cfg: Any, device: Any, ctx: Any) -> Any:
    """Detections of every image, rank r detecting images r, r + world, ..., gathered and put back in image order
    (so tied scores keep the order a single process gives them), then scored against the whole split."""
    from tqdm import tqdm

    from pretrain.distributed import gather_objects, shard_indices
    from transfer.detection.evaluate import detect_image, score_detections

    mine = []
    for k in tqdm(shard_indices(len(images), ctx.rank, ctx.world_size), desc="fast r-cnn test", unit="img",
                  disable=not ctx.is_main):  # fmt: skip
        mine.append((k, *detect_image(model, images[k], cfg, device)))
    found = sorted((d for part in gather_objects(mine) for d in part), key=lambda d: d[0])
    return score_detections(images, [d[1:] for d in found], classes)


def _run(args: argparse.Namespace, ctx: Any) -> int:
    import numpy as np
    import torch

    from benchmarks.commands.transfer import run_key
    from benchmarks.presets import apply_preset
    from benchmarks.presets.det import PRESETS
    from pretrain.checkpoint import atomic_torch_save
    from pretrain.distributed import RankBatches
    from pretrain.preemption import Preempted, PreemptionGuard, ignore_stop_signals
    from pretrain.runinfo import utc_now_iso
    from transfer.detection.data import (
        DetectionTrainSet,
        RoISampler,
        TrainBatchSampler,
        collate_detection,
        has_training_rois,
        load_detection_split,
    )
    from transfer.detection.evaluate import EvalConfig, write_voc_results
    from transfer.detection.model import FastRCNN, freeze_trunk, parameter_groups, rescale_fast_rcnn
    from transfer.detection.proposals import ProposalError
    from transfer.detection.train import NonFiniteLossError, TrainConfig, train
    from transfer.input_norm import resolve_input_norm
    from transfer.records import make_record, write_record
    from transfer.resumable import TrainingCheckpoint
    from transfer.voc import VOC_CLASSES, VOCError, resolve_year_dir
    from transfer.weights import WeightsError, load_alexnet_trunk

    started, t0 = utc_now_iso(), time.time()
    apply_preset(args, PRESETS, args.preset)
    args.train_split = args.train_split or "trainval"
    args.eval_split = args.eval_split or "test"
    log = print if ctx.is_main else _quiet
    overlapping = {args.train_split, args.eval_split}
    if len(overlapping) == 1 or overlapping in ({"trainval", "train"}, {"trainval", "val"}):
        raise SystemExit(
            f"error: --eval-split {args.eval_split} overlaps --train-split {args.train_split}; evaluation needs "
            "held-out images (VOC2007 trainval -> test is the protocol)"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = ctx.device
    torch.manual_seed(args.seed)
    from benchmarks.commands.transfer_det_detectron2 import check_engine, run_engine

    check_engine(args.engine, ctx.distributed, args.resume)

    try:  # the weights first: a wrong path fails before the long proposal pass
        trunk, weights_info = load_alexnet_trunk(args.weights, seed=args.seed)
    except WeightsError as exc:
        raise SystemExit(f"error: {exc}") from exc
    args.input_norm = resolve_input_norm(args.input_norm, weights_info.kind)
    settings = {k: v for k, v in _config(args).items() if k not in RESUME_MUTABLE}
    checkpoints = TrainingCheckpoint(out, run_key(args), args.checkpoint_every, settings)
    resume = checkpoints.load(args.resume)  # before the proposal pass: a refused --resume costs nothing
    try:
        year_dir = resolve_year_dir(args.voc_root, "2007")
        cache, proposal_info = _proposal_source(args, year_dir, [args.train_split, args.eval_split])
        failed: dict[str, str] = proposal_info["failed"]

        def proposals(image_id: str, width: int, height: int) -> np.ndarray:
            if image_id in failed:
                raise VOCError(f"proposals failed for {image_id}: {failed[image_id]}")
            if not cache.has(image_id):
                return np.zeros((0, 4), np.float32)
            return cache.load(image_id)[: args.max_proposals]

        train_images, train_report = load_detection_split(year_dir, args.train_split, proposals, skip_bad=args.skip_bad)
        eval_images, eval_report = load_detection_split(year_dir, args.eval_split, proposals, skip_bad=args.skip_bad)
    except (VOCError, ProposalError) as exc:
        raise SystemExit(f"error: {exc}") from exc

    sampler = RoISampler(rois_per_image=args.rois_per_image)
    usable = [im for im in train_images if has_training_rois(im, sampler)]
    log(
        f"VOC2007 {args.train_split}: {len(train_images)} images ({len(train_images) - len(usable)} without "
        f"training RoIs left out); {args.eval_split}: {len(eval_images)} images; proposals in {proposal_info['cache']}"
    )
    if not usable:
        raise SystemExit(f"error: no image of VOC2007 {args.train_split} has a non-difficult object to train on")
    if not eval_images:
        raise SystemExit(f"error: no usable image in VOC2007 {args.eval_split}")

    if args.engine == "detectron2":
        return run_engine(
            args, device=device, trunk=trunk, weights_info=weights_info, year_dir=year_dir, train_images=train_images,
            usable=usable, eval_images=eval_images, train_report=train_report, eval_report=eval_report,
            proposal_info=proposal_info, started=started, t0=t0,
        )  # fmt: skip
    model = FastRCNN(trunk, hidden=args.det_fc_dim, seed=args.seed)
    rescale_info = None
    if args.rescale:  # Krähenbühl's magic_init: within-layer init of fc6/fc7, between-layer correction conv1..fc7
        rescale_info = rescale_fast_rcnn(model, [im.path for im in usable], args.input_norm, seed=args.seed)
    frozen = freeze_trunk(model, args.det_freeze_through)
    model.to(device)
    optimizer = torch.optim.SGD(parameter_groups(model, args.lr, 5e-4), lr=args.lr, momentum=0.9)
    train_cfg = TrainConfig(iterations=args.iterations, lr=args.lr, lr_step=args.det_lr_step, precision=args.precision)
    start = checkpoints.restore(resume, model, optimizer) if resume is not None else 0
    dataset = DetectionTrainSet(usable, args.det_scale, args.det_max_size, args.input_norm, sampler)
    batches: Any = TrainBatchSampler(len(usable), args.batch_size, args.iterations, args.seed, start=start)
    net: torch.nn.Module = model
    if ctx.distributed:  # every rank draws the same global mini-batches and trains on its images of each
        if resume is not None:
            raise SystemExit("error: --resume of a detection run is supported in one process only (for now)")
        if args.batch_size % ctx.world_size:
            raise SystemExit(
                f"error: --batch-size {args.batch_size} must be a multiple of the {ctx.world_size} processes"
            )
        batches = RankBatches(batches, ctx.rank, ctx.world_size)
        torch.manual_seed(args.seed * 1000 + ctx.rank)  # dropout masks differ between ranks, reproducibly
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate_detection,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=ignore_stop_signals,
        # its own generator: starting the loader must not draw from the global RNG that dropout uses, or a resumed
        # run's dropout would be one draw off
        generator=torch.Generator().manual_seed(args.seed),
    )
    try:
        with PreemptionGuard() as guard:

            def after_step(done: int) -> None:
                if guard.requested or checkpoints.due(done, args.iterations):
                    path = checkpoints.save(done, model, optimizer) if ctx.is_main else None
                    if guard.requested:
                        raise Preempted(str(guard.signal_name), done, str(path))

            train_summary = train(
                net, loader, optimizer, train_cfg, device, progress=ctx.is_main, start=start, after_step=after_step
            )
    except NonFiniteLossError as exc:
        raise SystemExit(f"error: {exc}; lower --lr or check the weights") from exc
    except VOCError as exc:
        raise SystemExit(f"error: {exc}") from exc
    if ctx.is_main:
        atomic_torch_save({"model": model.state_dict(), "config": _config(args)}, out / "fast_rcnn.pt")

    test_cfg = EvalConfig(
        scale=args.det_scale,
        max_size=args.det_max_size,
        norm=args.input_norm,
        nms_threshold=args.det_nms,
        score_threshold=args.det_score_threshold,
        max_per_image=args.det_max_per_image,
        precision=args.precision,
    )
    try:
        result, detections = _detect_sharded(model, eval_images, list(VOC_CLASSES), test_cfg, device, ctx)
    except VOCError as exc:
        raise SystemExit(f"error: {exc}") from exc
    if not ctx.is_main:
        return 0
    if args.write_voc_results:
        write_voc_results(detections, out / "results", args.eval_split)

    metrics, per_class = _metrics(result, args.det_ap)
    ap07, ap_auc = per_class["AP"], per_class["AP_auc"]
    skipped = [*train_report.skipped, *eval_report.skipped]
    record = make_record(
        task="det",
        protocol_id=PROTOCOL_ID,
        protocol_version=PROTOCOL_VERSION,
        protocol_description=PROTOCOL_DESCRIPTION,
        dataset="VOC2007",
        train_split=args.train_split,
        eval_split=args.eval_split,
        metrics=metrics,
        primary_metric="mAP",
        per_class=per_class,
        weights=weights_info.to_dict(),
        seed=args.seed,
        config=_config(args),
        started_at=started,
        wall_time_s=time.time() - t0,
        skipped_items=skipped,
        device=device,
        extra={
            "train_data": {**train_report.to_dict(), "without_training_rois": len(train_images) - len(usable)},
            "eval_data": eval_report.to_dict(),
            "proposals": {k: v for k, v in proposal_info.items() if k != "failed"}
            | {"failed": len(proposal_info["failed"])},
            "train": train_summary,
            "detections": result["detections"],
            "classes_without_gt": result["classes_without_gt"],
            "frozen_layers": frozen,
            "rescale": rescale_info,
            "ap_definition": f"VOC2007 11-point interpolated AP as {args.det_ap} (AP); the other convention "
            "(AP_devkit or AP_py_faster_rcnn); VOC2010+ area under the curve as the devkit (AP_auc)",
        },
    )
    path = write_record(record, out)
    checkpoints.finish()
    _print_table(ap07, ap_auc, metrics)
    print(f"record: {path}")
    return 0


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


def _config(args: argparse.Namespace) -> dict[str, Any]:
    from pretrain.distributed import world

    config = {k: v for k, v in sorted(vars(args).items()) if not k.startswith("_") and k != "command"}
    return config | {"world_size": world()[1]}


def _quiet(*_: object, **__: object) -> None:
    """``print`` on ranks other than 0."""
