"""``bench transfer --task cls``: VOC2007 multi-label classification fine-tuning (Krähenbühl et al. protocol).

Protocol details and every choice the paper leaves open: docs/protocols/classification.md.
"""

from __future__ import annotations

from typing import Any

from transfer.classification.config import PRESETS, ClassificationConfig
from transfer.classification.protocol import PROTOCOL_ID, PROTOCOL_VERSION, run_classification

TITLE = "VOC2007 classification fine-tuning (Krähenbühl et al. 2015 protocol)"
CONFIG = ClassificationConfig
PROTOCOL = run_classification
__all__ = ["CONFIG", "PRESETS", "PROTOCOL", "TITLE", "print_results", "print_table"]


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}")
    print("-" * (width + 14))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("-" * (width + 14))


def print_results(record: dict[str, Any]) -> None:
    metrics, per_class = record["metrics"], record["per_class"]
    rows = [(k, f"{metrics[k]:.2f}") for k in sorted(metrics) if k.startswith("mAP")]
    rows += [(f"AP {c}", f"{v:.2f}") for c, v in per_class["AP"].items()]
    rows += [("skipped items", str(record["skipped"]["count"]))]
    print_table(f"VOC2007 classification ({PROTOCOL_ID} v{PROTOCOL_VERSION}), weights {record['weights']['method']}",
                rows)  # fmt: skip
