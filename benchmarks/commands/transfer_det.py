"""``bench transfer --task det``: Fast R-CNN detection on VOC2007 with the transferred AlexNet encoder.

Trains on VOC2007 ``trainval`` and evaluates on ``test`` (Pathak et al. 2016, Table 2 "det"); the protocol and
every choice the paper leaves open are in docs/protocols/detection.md.
"""

from __future__ import annotations

from typing import Any

from transfer.detection.config import PRESETS, DetectionConfig
from transfer.detection.protocol import run_detection

TITLE = "Fast R-CNN detection on VOC2007"
CONFIG = DetectionConfig
PROTOCOL = run_detection
__all__ = ["CONFIG", "PRESETS", "PROTOCOL", "TITLE", "print_results"]


def print_results(record: dict[str, Any]) -> None:
    ap07, ap_auc, metrics = record["per_class"]["AP"], record["per_class"]["AP_auc"], record["metrics"]
    width = max([len("class"), *(len(c) for c in ap07)])
    print(f"\n{'class':<{width}}  VOC07 AP  AUC AP")
    for cls, value in ap07.items():
        print(f"{cls:<{width}}  {value:8.1f}  {ap_auc[cls]:6.1f}")
    print(f"{'mAP':<{width}}  {metrics['mAP']:8.1f}  {metrics['mAP_auc']:6.1f}")
    evaluator = record["extra"].get("detectron2_evaluator") or {}
    if evaluator.get("AP50") is not None:  # --engine detectron2: its own evaluator on the same detections
        print(f"detectron2 PascalVOCDetectionEvaluator AP50 {evaluator['AP50']:.1f}")
