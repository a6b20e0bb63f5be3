"""``bench transfer --task seg``: FCN semantic segmentation on VOC2012 with the transferred AlexNet encoder.

Trains FCN-32s (or the 16s/8s skip variants) on VOC2012 ``train`` (plus SBD with ``--sbd-root``, VOC2012 ``val``
images removed), evaluates on VOC2012 ``val`` (mean IoU over the 21 classes, per-class IoU, pixel and mean
accuracy), writes one run record into ``--out`` and prints the results table. Runs under ``torchrun`` as well
(DistributedDataParallel; the confusion matrix is summed over ranks; rank 0 writes). ``--iterations 0`` with
``--fcn-weights FILE`` evaluates a saved FCN without training. Protocol: docs/protocols/segmentation.md.
"""

from __future__ import annotations

import argparse
from typing import Any

TITLE = "FCN segmentation on VOC2012 (Long et al. 2015; FCN-AlexNet's solver)"


def add_arguments(group: Any) -> None:
    group.add_argument(
        "--sbd-root",
        default=None,
        help="SBD 'dataset' folder (cls/*.mat, img/, train.txt, val.txt) whose extra annotations join the "
        "training set; images in the VOC2012 evaluation split are removed, VOC2012 train only when not given",
    )
    group.add_argument(
        "--fcn-variant",
        default="32s",
        choices=["32s", "16s", "8s"],
        help="FCN-32s (FCN-AlexNet as released, the usual choice), or skip variants fusing relu5 (16s) and also "
        "relu2 (8s) scores",
    )
    group.add_argument(
        "--seg-crop-size",
        type=int,
        default=None,
        help="train on random square crops of this size (padded with ignore where the image is smaller) so that "
        "images can be stacked; not given: whole images, as FCN trains",
    )
    group.add_argument(
        "--save-predictions",
        action="store_true",
        help="write each evaluation prediction as a VOC palette PNG into OUT/predictions/",
    )
    group.add_argument(
        "--seg-momentum", type=float, default=None, help="SGD momentum (preset; paper: 0.9, FCN-AlexNet solver)"
    )
    group.add_argument(
        "--seg-weight-decay", type=float, default=None, help="weight decay (preset; paper: 5e-4, FCN solvers)"
    )
    group.add_argument(
        "--seg-loss-norm",
        default=None,
        choices=["valid", "none"],
        help="per-image loss: mean over labelled pixels ('valid', Caffe normalize:true, FCN-AlexNet with lr 1e-4) "
        "or their sum ('none', normalize:false, FCN-VGG's lr 1e-10 / momentum 0.99 / batch 1) (preset: valid)",
    )
    group.add_argument(
        "--fcn-fc-channels",
        type=int,
        default=None,
        help="maps of the fc6 (6x6) and fc7 (1x1) convolutions (preset; paper: 4096, AlexNet's fc width)",
    )
    group.add_argument(
        "--seg-no-flip", action="store_true", help="no horizontal-flip augmentation (flip with p=0.5 when not given)"
    )
    group.add_argument(
        "--fcn-learn-upsampling",
        action="store_true",
        help="learn the bilinear-initialised up-sampling (when not given it is frozen, lr_mult 0 as in the "
        "released FCNs)",
    )
    group.add_argument(
        "--fcn-weights",
        default=None,
        help="start from a saved FCN (fcn.safetensors of an earlier run, see --save-fcn); with --iterations 0 "
        "the run only evaluates it",
    )
    group.add_argument(
        "--engine",
        default="native",
        choices=["native", "mmseg"],
        help="native: the suite's FCN; mmseg: the same protocol through mmsegmentation (needs the mmseg extra, "
        "FCN-32s only, one process; docs/protocols/segmentation.md)",
    )
    group.add_argument(
        "--save-fcn", action="store_true", help="write the trained FCN as OUT/fcn.safetensors (about 230 MB at 4096)"
    )


def format_results(record: dict[str, Any]) -> str:
    """The table printed at the end of a run: summary metrics then per-class IoU."""
    m = record["metrics"]
    lines = [
        f"FCN-{record['config']['variant']} on {record['dataset']} {record['eval_split']} "
        f"(weights: {record['weights']['method']}, {record['extra']['eval_images']} images, "
        f"{record['skipped']['count']} skipped)",
        f"{'metric':<22}{'value':>8}",
        *(f"{name:<22}{m[name]:8.2f}" for name in ("mIoU", "pixel_acc", "mean_acc", "fwIoU")),
        "",
        f"{'class':<22}{'IoU':>8}",
    ]
    iou = record["per_class"]["IoU"]
    for cls in record["extra"]["classes"]:
        lines.append(f"{cls:<22}{iou[cls]:8.2f}" if cls in iou else f"{cls:<22}{'absent':>8}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from benchmarks.presets import apply_preset
    from benchmarks.presets.seg import PRESETS
    from pretrain.distributed import cleanup_distributed, init_distributed
    from transfer.records import write_record
    from transfer.segmentation.protocol import SegmentationConfig, SegmentationError, run_segmentation
    from transfer.voc import VOCError
    from transfer.weights import WeightsError

    applied = apply_preset(args, PRESETS, args.preset)
    if args.iterations < 0:
        raise SystemExit(f"--iterations must be >= 0, got {args.iterations}")
    if args.seg_crop_size is not None and args.seg_crop_size < 1:
        raise SystemExit(f"--seg-crop-size must be positive, got {args.seg_crop_size}")
    cfg = SegmentationConfig(
        voc_root=args.voc_root,
        weights=args.weights,
        out=args.out,
        sbd_root=args.sbd_root,
        train_split=args.train_split or "train",
        eval_split=args.eval_split or "val",
        variant=args.fcn_variant,
        iterations=args.iterations,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.seg_momentum,
        weight_decay=args.seg_weight_decay,
        loss_normalization=args.seg_loss_norm,
        fc_channels=args.fcn_fc_channels,
        crop_size=args.seg_crop_size,
        flip=not args.seg_no_flip,
        learn_upsampling=args.fcn_learn_upsampling,
        input_norm=args.input_norm,
        precision=args.precision,
        workers=args.workers,
        seed=args.seed,
        skip_bad=args.skip_bad,
        rescale=args.rescale,
        save_predictions=args.save_predictions,
        save_model=args.save_fcn,
        fcn_weights=args.fcn_weights,
        preset=args.preset,
        extra_config={"preset_applied": applied, "device": args.device},
    )
    runner = run_segmentation
    if args.engine == "mmseg":
        from transfer.segmentation.mmseg_engine import run_mmseg_segmentation as runner
    ctx = init_distributed(args.device)
    try:
        record = runner(cfg, ctx)
    except (VOCError, WeightsError, SegmentationError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    finally:
        cleanup_distributed()
    if ctx.is_main:
        path = write_record(record, args.out)
        print(format_results(record))
        print(f"record: {path}")
    return 0
