"""`bench plot` figures: readable loss curves, labelled sample grids with the pasted prediction, Table 2 bars with
the preset in the title, per-class charts with background first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.figures import (
    FEW_POINTS,
    SMOOTH_FROM,
    loss_figure,
    per_class_figures,
    sample_grid_columns,
    sample_grid_figure,
    table2_figures,
)
from pretrain.config import PretrainConfig
from pretrain.engine import save_sample_grid
from pretrain.methods import METHODS
from transfer.records import make_record, write_record


def _log(run: Path, points: int, every: int, method: str) -> None:
    """A ``log.jsonl`` as ``bench pretrain`` writes it (plus a resume marker line without values)."""
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"method": method}))
    lines = [{"event": "resume", "iteration": 0}]
    lines += [
        {"iteration": every * (i + 1), "lr": 2e-4, "images_per_s": 10.0, "loss": 1.0 / (i + 1) + 0.01 * (i % 3)}
        for i in range(points)
    ]
    (run / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_loss_curve_marks_few_points_and_smooths_many(tmp_path: Path) -> None:
    _log(tmp_path / "runs" / "short", 4, 5, "context-encoder")
    _log(tmp_path / "runs" / "long", SMOOTH_FROM + 10, 20, "autoencoder")
    fig = loss_figure([tmp_path / "runs"])
    assert fig is not None
    ax = fig.axes[0]
    labelled = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    short = labelled["short (context-encoder): loss (4 points)"]
    assert short.get_marker() == "o" and list(short.get_xdata()) == [5.0, 10.0, 15.0, 20.0]
    long = labelled[f"long (autoencoder): loss ({SMOOTH_FROM + 10} points)"]
    raw = [line for line in ax.get_lines() if line.get_label().startswith("_")]
    assert len(raw) == 1 and len(raw[0].get_xdata()) == SMOOTH_FROM + 10  # the faint raw curve under the mean
    assert max(abs(a - b) for a, b in zip(long.get_ydata()[1:-1], raw[0].get_ydata()[1:-1])) > 0  # smoothed
    assert "lower --log-every" in ax.get_title()  # 4 < FEW_POINTS
    assert FEW_POINTS > 4
    only_long = loss_figure([tmp_path / "runs" / "long"])
    assert only_long is not None
    assert "lower --log-every" not in only_long.axes[0].get_title()


def test_sample_grid_shows_the_prediction_pasted_into_the_hole(tmp_path: Path) -> None:
    config = PretrainConfig(data="", out="", method="context-encoder", mask="center", crop_size=64)
    method = METHODS["context-encoder"](config, torch.device("cpu"))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    run = tmp_path / "ce"
    save_sample_grid(method, images, run / "samples" / "iter_00000010.png", 0, 10, write=True)
    assert sample_grid_columns(run / "samples" / "iter_00000010.png") == (
        "masked input",
        "prediction",
        "pasted into the hole",
        "original",
    )
    from PIL import Image

    with Image.open(run / "samples" / "iter_00000010.png") as im:
        pixels = torch.from_numpy(np.array(im))
    tile = lambda col: pixels[2:66, 2 + col * 66 : 66 + col * 66].int()  # noqa: E731  (row 0, column col)
    masked, pred, pasted, original = (tile(c) for c in range(4))
    hole = (masked != original).any(-1)  # the dropped pixels differ from the original (fill colour)
    assert hole.any() and not hole.all()
    assert torch.equal(pasted[~hole], original[~hole])  # outside the hole: the original
    assert torch.equal(pasted[hole], pred[hole])  # inside: the prediction
    assert not torch.equal(pred[~hole], original[~hole])  # the raw prediction is shown as it is
    (run / "log.jsonl").write_text('{"iteration": 10, "loss": 0.5}\n')
    fig = sample_grid_figure(run)
    assert fig is not None
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["masked input", "prediction", "pasted into the hole", "original"]
    assert "iteration 10" in fig.axes[0].get_title()


def test_legacy_sample_grids_keep_three_columns(tmp_path: Path) -> None:
    from torchvision.utils import save_image

    path = tmp_path / "old" / "samples" / "iter_00000005.png"
    path.parent.mkdir(parents=True)
    save_image(torch.rand(6, 3, 16, 16), str(path), nrow=3, padding=2)
    assert sample_grid_columns(path) == ("masked input", "prediction", "original")
    old = sample_grid_figure(tmp_path / "old")
    assert old is not None
    assert [t.get_text() for t in old.axes[0].get_xticklabels()] == [
        "masked input",
        "prediction",
        "original",
    ]


def _record(method: str, seed: int, value: float, preset: str, task: str = "cls", **kw: object) -> dict:
    fields: dict = dict(
        task=task,
        protocol_id=f"{task}-test",
        protocol_version=1,
        protocol_description="d",
        dataset="VOC2007",
        train_split="trainval",
        eval_split="test",
        primary_metric="mAP",
        metrics={"mAP": value},
        per_class={"AP": {"aeroplane": value}},
        config={"preset": preset},
    )
    fields.update(kw)
    return make_record(
        weights={"source": "-", "method": method},
        seed=seed,
        started_at="2026-01-01T00:00:00Z",
        wall_time_s=1.0,
        **fields,
    )


def test_table2_figure_bars_with_std_and_the_preset_in_the_title(tmp_path: Path) -> None:
    out = tmp_path / "records"
    values = {"random": [40.0, 42.0, 44.0], "context-encoder": [50.0, 51.0, 52.0]}
    for method, vals in values.items():
        for seed, v in enumerate(vals):
            write_record(_record(method, seed, v, "cpu"), out)
            write_record(
                _record(method, seed, v / 2, "cpu", task="seg", primary_metric="mIoU", metrics={"mIoU": v / 2}), out
            )
    write_record(_record("random", 0, 10.0, "smoke"), out)
    figures = dict(table2_figures([out]))
    assert sorted(figures) == ["cpu", "smoke"]
    cpu = figures["cpu"]
    assert "preset 'cpu'" in cpu._suptitle.get_text() and "std" in cpu._suptitle.get_text()
    cls_ax, seg_ax = cpu.axes
    assert cls_ax.get_title().startswith("cls mAP") and seg_ax.get_title().startswith("seg mIoU")
    heights = [round(p.get_height(), 6) for p in cls_ax.patches]
    assert heights == [42.0, 51.0]  # random, then context encoder
    # error bars: one vertical segment per bar, mean ± sample std (2.0 and 1.0)
    segments = [seg for coll in cls_ax.collections for seg in coll.get_segments()]
    spans = sorted(round(float(s[1][1] - s[0][1]), 6) for s in segments)
    assert spans == [2.0, 4.0]
    assert sorted(t.get_text() for t in cls_ax.texts) == ["n=3", "n=3"]
    assert "preset 'smoke'" in figures["smoke"]._suptitle.get_text()


def test_per_class_chart_background_first(tmp_path: Path) -> None:
    out = tmp_path / "records"
    for method in ("random", "context-encoder"):
        rec = _record(
            method,
            0,
            20.0,
            "cpu",
            task="seg",
            dataset="VOC2012",
            eval_split="val",
            primary_metric="mIoU",
            metrics={"mIoU": 20.0},
            per_class={"IoU": {"aeroplane": 10.0, "background": 80.0, "cat": 5.0}},
        )
        write_record(rec, out)
    ((_, fig),) = per_class_figures([out])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][:3] == ["background", "aeroplane", "cat"]


def test_bench_plot_writes_every_figure(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    _log(tmp_path / "runs" / "ce", 3, 5, "context-encoder")
    from torchvision.utils import save_image

    (tmp_path / "runs" / "ce" / "samples").mkdir()
    save_image(torch.rand(3, 3, 16, 16), str(tmp_path / "runs" / "ce" / "samples" / "iter_00000015.png"), nrow=3)
    records = tmp_path / "records"
    write_record(_record("random", 0, 40.0, "cpu"), records)
    args = ["plot", "--runs", str(tmp_path / "runs"), "--records", str(records), "--out", str(tmp_path / "fig")]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.cli", *args],
        capture_output=True,
        text=True,
        env=subprocess_env,
        check=True,
    )
    names = sorted(p.name for p in (tmp_path / "fig").iterdir())
    assert names == [
        "per_class_cls-cls-test-v1-cpu-voc2007-test-ap.png",
        "pretrain_loss.png",
        "samples_ce.png",
        "table2_cpu.png",
    ], proc.stderr
