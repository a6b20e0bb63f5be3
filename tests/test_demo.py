"""`bench demo`: the synthetic dataset it makes, the sweep wiring (fast), and the whole demo end to end (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _demo(tmp_path: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.cli",
            "demo",
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "demo"),
            "--quiet-cells",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )


def test_demo_makes_voc_data_once_and_prints_tables(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    proc = _demo(tmp_path, subprocess_env, "--tasks", "none")
    voc = tmp_path / "cache" / "voc" / "VOCdevkit"
    for year, split in (("VOC2007", "test"), ("VOC2007", "trainval"), ("VOC2012", "val")):
        ids = (voc / year / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        assert ids and (voc / year / "JPEGImages" / f"{ids[0]}.jpg").exists()
        assert (voc / year / "Annotations" / f"{ids[0]}.xml").exists()
    assert any((voc / "VOC2012" / "SegmentationClass").glob("*.png"))
    assert len(list((tmp_path / "cache" / "images").rglob("*.*"))) >= 24
    assert "### Table 2: transfer to PASCAL VOC" in proc.stdout and "[reported]" in proc.stdout
    assert "making the synthetic dataset" in proc.stderr
    again = _demo(tmp_path, subprocess_env, "--tasks", "none")
    assert "making the synthetic dataset" not in again.stderr  # the cache is reused
    assert "ran 0 cells" in again.stderr


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    """The README's main-job command: every available stage on the synthetic data, then the tables."""
    proc = _demo(tmp_path, subprocess_env)
    plan = json.loads((tmp_path / "demo" / "plan.json").read_text())
    statuses = {c["id"]: c["status"] for c in plan["cells"]}
    assert "failed" not in statuses.values(), statuses
    assert statuses["report/table"] == "done" and statuses["report/plot"] == "done"
    records = sorted((tmp_path / "demo" / "records").glob("*.json"))
    done_transfer = [i for i, s in statuses.items() if i.startswith("transfer/") and s == "done"]
    assert len(records) == len(done_transfer)
    if done_transfer:  # with transfer commands in the build, Table 2 has measured rows
        assert "(n=1)" in proc.stdout
    if statuses.get("pretrain/context-encoder") == "done":
        assert (tmp_path / "demo" / "figures" / "pretrain_loss.png").exists()
