"""``bench transfer --task seg``: FCN semantic segmentation on VOC2012 with the transferred AlexNet encoder.

Trains FCN-32s (or the 16s/8s skip variants) on VOC2012 ``train`` (plus SBD with ``--sbd-root``, VOC2012 ``val``
images removed), evaluates on VOC2012 ``val`` (mean IoU over the 21 classes, per-class IoU, pixel and mean
accuracy), writes one run record into ``--out`` and prints the results table. ``--iterations 0`` with
``--fcn-weights FILE`` evaluates a saved FCN without training. Protocol: docs/protocols/segmentation.md.
"""

from __future__ import annotations

from typing import Any

from transfer.segmentation.config import PRESETS, SegmentationConfig
from transfer.segmentation.protocol import run_segmentation

TITLE = "FCN segmentation on VOC2012 (Long et al. 2015; FCN-AlexNet's solver)"
CONFIG = SegmentationConfig
PROTOCOL = run_segmentation
__all__ = ["CONFIG", "PRESETS", "PROTOCOL", "TITLE", "format_results", "print_results"]


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


def print_results(record: dict[str, Any]) -> None:
    print(format_results(record))
