"""``bench transfer --task svm``: frozen-feature VOC2007 linear SVM probes on conv1..conv5 and pool5 (Goyal et al.
2019). The protocol (``voc07-svm``, versioned) is in transfer/svm_probe/ and docs/protocols/svm-probe.md.
"""

from __future__ import annotations

from typing import Any

from benchmarks.commands.transfer_cls import print_table
from transfer.svm_probe.config import PRESETS, SVMProbeConfig
from transfer.svm_probe.protocol import run_svm_probe

TITLE = "frozen-feature VOC2007 linear SVM probes (Goyal et al. 2019)"
CONFIG = SVMProbeConfig
PROTOCOL = run_svm_probe
__all__ = ["CONFIG", "PRESETS", "PROTOCOL", "TITLE", "print_results"]


def print_results(record: dict[str, Any]) -> None:
    metrics, protocol = record["metrics"], record["config"]["protocol"]
    rows = [(layer, f"{metrics[f'mAP_{layer}']:.2f}" if f"mAP_{layer}" in metrics else "n/a")
            for layer in protocol["layers"]]  # fmt: skip
    rows += [("primary (mAP)", f"{metrics['mAP']:.2f} = mAP_{record['config']['primary_layer']}")]
    print_table(f"VOC2007 SVM probe mAP ({protocol['id']} v{protocol['version']}), weights "
                f"{record['weights']['method']}", rows)  # fmt: skip
