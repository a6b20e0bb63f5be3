"""``bench transfer --task det --engine detectron2``: the det command's glue to the detectron2 engine.

The det command loads the weights, the proposals and both splits as for the torchvision engine, then hands them to
:func:`run_engine`, which trains and detects with :func:`transfer.detection.detectron2_engine.run_detectron2` and
writes the same run record (``extra.engine`` names the engine; ``extra.detectron2_evaluator`` holds detectron2's
``PascalVOCDetectionEvaluator`` result on the same detections). detectron2 is imported only by the engine module.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

ENGINES = ("torchvision", "detectron2")


def check_engine(engine: str, distributed: bool, resume: bool) -> None:
    """Stop with a one-line error, before any long work, when the detectron2 engine cannot run this command."""
    if engine != "detectron2":
        return
    from transfer.detection.detectron2_engine import Detectron2Unavailable, require_detectron2

    try:
        require_detectron2()
    except Detectron2Unavailable as exc:
        raise SystemExit(f"error: {exc}") from None
    if distributed:
        raise SystemExit("error: --engine detectron2 runs in one process; launch it without torchrun")
    if resume:
        raise SystemExit("error: --engine detectron2 has no --resume; rerun the command without it")


def run_engine(
    args: Any,
    *,
    device: Any,
    trunk: Any,
    weights_info: Any,
    year_dir: Path,
    train_images: list[Any],
    usable: list[Any],
    eval_images: list[Any],
    train_report: Any,
    eval_report: Any,
    proposal_info: dict[str, Any],
    started: str,
    t0: float,
) -> int:
    """Train, detect and write the record of one detectron2-engine run; returns the exit status."""
    from benchmarks.commands import transfer_det as det
    from transfer.detection.detectron2_engine import NonFiniteLoss, run_detectron2, settings_from_options
    from transfer.detection.evaluate import write_voc_results
    from transfer.records import make_record, write_record
    from transfer.voc import VOCError

    out = Path(args.out)
    try:
        outcome = run_detectron2(
            usable, eval_images, trunk, settings_from_options(vars(args)), args.seed, device, out,
            voc_eval=(year_dir, args.eval_split), progress=True,
        )  # fmt: skip
    except NonFiniteLoss as exc:
        raise SystemExit(f"error: {exc}; lower --lr or check the weights") from exc
    except VOCError as exc:
        raise SystemExit(f"error: {exc}") from exc
    result = outcome["result"]
    if args.write_voc_results:
        write_voc_results(outcome["detections"], out / "results", args.eval_split)
    metrics, per_class = det._metrics(result, args.det_ap)
    record = make_record(
        task="det",
        protocol_id=det.PROTOCOL_ID,
        protocol_version=det.PROTOCOL_VERSION,
        protocol_description=det.PROTOCOL_DESCRIPTION,
        dataset="VOC2007",
        train_split=args.train_split,
        eval_split=args.eval_split,
        metrics=metrics,
        primary_metric="mAP",
        per_class=per_class,
        weights=weights_info.to_dict(),
        seed=args.seed,
        config=det._config(args),
        started_at=started,
        wall_time_s=time.time() - t0,
        skipped_items=[*train_report.skipped, *eval_report.skipped],
        device=device,
        extra={
            "engine": outcome["engine"],
            "detectron2_evaluator": outcome["evaluator"],
            "detectron2_config": str(out / "detectron2" / "config.yaml"),
            "train_data": {**train_report.to_dict(), "without_training_rois": len(train_images) - len(usable)},
            "eval_data": eval_report.to_dict(),
            "proposals": {k: v for k, v in proposal_info.items() if k != "failed"}
            | {"failed": len(proposal_info["failed"])},
            "train": outcome["train"],
            "detections": result["detections"],
            "classes_without_gt": result["classes_without_gt"],
            "frozen_layers": outcome["frozen_layers"],
            "rescale": outcome["rescale"],
            "ap_definition": f"VOC2007 11-point interpolated AP as {args.det_ap} (AP); the other convention "
            "(AP_devkit or AP_py_faster_rcnn); VOC2010+ area under the curve as the devkit (AP_auc); "
            "detectron2_evaluator: detectron2's PascalVOCDetectionEvaluator on the same detections (AP50 is its "
            "VOC2007 11-point AP at IoU > 0.5, AP the mean over IoU 0.50:0.95)",
        },
    )
    path = write_record(record, out)
    det._print_table(per_class["AP"], per_class["AP_auc"], metrics)
    evaluator = outcome["evaluator"] or {}
    if "AP50" in evaluator:
        print(f"detectron2 PascalVOCDetectionEvaluator AP50 {evaluator['AP50']:.1f}")
    print(f"record: {path}")
    return 0
