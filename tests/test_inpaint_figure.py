"""The inpainting comparison figure of `bench plot`: real records from `bench inpaint-eval`, a real (small, untrained)
generator, real image files; the PNG is read back and checked tile by tile."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.cli import main as bench
from benchmarks.inpaint_figure import CAPTION_H, GAP, HEADER_H, MASK_FILL_RGB, evenly_spaced_ranks
from pretrain.inpainting_eval import centre_hole, load_eval_image

BASELINES = ("mean", "shiftmap", "fsr-fast")
LIMIT = 5


def test_evenly_spaced_ranks() -> None:
    assert evenly_spaced_ranks(12, 6) == [0, 2, 4, 7, 9, 11]  # round(i * 11 / 5)
    assert evenly_spaced_ranks(5, 3) == [0, 2, 4]
    assert evenly_spaced_ranks(4, 6) == [0, 1, 2, 3]  # fewer images than rows: all of them
    assert evenly_spaced_ranks(7, 1) == [3]  # the median
    with pytest.raises(ValueError, match="at least 1"):
        evenly_spaced_ranks(5, 0)


@pytest.fixture(scope="module")
def evaluated(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Records (and per-image CSVs) of three baselines and a generator on the first 5 images of a folder."""
    root = tmp_path_factory.mktemp("inpaint_figure")
    images = root / "heldout"
    shutil.copytree(image_folder / "a", images)
    torch.manual_seed(0)
    from pretrain.models.inpainting import InpaintingGenerator

    torch.save(InpaintingGenerator(bottleneck=16).state_dict(), root / "generator.pt")
    common = ["--images", str(images), "--limit", str(LIMIT)]
    for b in BASELINES:
        assert bench(["inpaint-eval", "--baseline", b, *common, "--out", str(root / "records" / b)]) == 0
    net = ["inpaint-eval", "--weights", str(root / "generator.pt"), "--device", "cpu"]
    assert bench([*net, *common, "--out", str(root / "records" / "net")]) == 0
    return root


def _plot(root: Path, out: Path, rows: int = 3) -> None:
    assert bench(["plot", "--records", str(root / "records"), "--out", str(out), "--inpaint-images", str(rows)]) == 0


def _per_image_psnr(root: Path) -> dict[str, dict[str, float]]:
    """method -> image -> PSNR_hole, from the per-image CSVs `bench inpaint-eval` wrote."""
    out = {}
    for csv_path in (root / "records").rglob("*_per_image.csv"):
        record = json.loads(csv_path.with_name(csv_path.name.replace("_per_image.csv", ".json")).read_text())
        with open(csv_path) as fh:
            out[record["weights"]["method"]] = {r["image"]: float(r["PSNR_hole"]) for r in csv.DictReader(fh)}
    return out


def test_figure_has_one_column_per_method_and_the_evaluated_psnr(evaluated: Path, tmp_path: Path) -> None:
    _plot(evaluated, tmp_path)
    png, meta = tmp_path / "inpainting_heldout.png", json.loads((tmp_path / "inpainting_heldout.json").read_text())
    methods = ["baseline-mean", "baseline-shiftmap", "baseline-fsr-fast", "inpainting"]  # Table 1 order
    assert meta["methods"] == methods and meta["ranked_by"] == "inpainting"
    assert meta["columns"] == [
        "masked input",
        "Mean fill",
        "Shift-map (OpenCV xphoto)",
        "FSR, fast (OpenCV xphoto)",
        "Context encoder (joint loss)",
        "original",
    ]
    rows = meta["rows"]
    assert [r["rank"] for r in rows] == [1, 3, 5] and meta["images_evaluated"] == LIMIT
    # the rule: best first by the network's PSNR, and the figure's numbers are the evaluation's per-image values
    per_image = _per_image_psnr(evaluated)
    net = [r["PSNR_hole"]["inpainting"] for r in rows]
    assert net == sorted(net, reverse=True)
    assert max(per_image["inpainting"].values()) == pytest.approx(net[0], abs=1e-5)
    assert min(per_image["inpainting"].values()) == pytest.approx(net[-1], abs=1e-5)
    for row in rows:
        for method in methods:
            assert row["PSNR_hole"][method] == pytest.approx(per_image[method][row["image"]], abs=1e-5)

    grid = np.asarray(Image.open(png).convert("RGB"))
    tile, columns = 128, len(meta["columns"])
    assert grid.shape[1] == GAP + columns * (tile + GAP)  # one column per method, plus masked input and original
    hole = centre_hole(128, 7)
    for r, row in enumerate(rows):
        y = HEADER_H + r * (tile + CAPTION_H)
        tiles = [grid[y : y + tile, GAP + c * (tile + GAP) : GAP + c * (tile + GAP) + tile] for c in range(columns)]
        crop = np.rint(load_eval_image(evaluated / "heldout" / row["image"]) * 255).astype(np.uint8)
        assert np.array_equal(tiles[-1], crop)  # the original, at its native pixels
        assert np.all(tiles[0][hole] == MASK_FILL_RGB) and np.array_equal(tiles[0][~hole], crop[~hole])
        for c in range(1, columns - 1):  # every method keeps the context and fills the hole its own way
            assert np.array_equal(tiles[c][~hole], crop[~hole])
        assert len({tiles[c][hole].tobytes() for c in range(1, columns - 1)}) == columns - 2


def test_figure_is_byte_identical_for_the_same_inputs(evaluated: Path, tmp_path: Path) -> None:
    _plot(evaluated, tmp_path / "one", rows=2)
    _plot(evaluated, tmp_path / "two", rows=2)
    one, two = (tmp_path / d / "inpainting_heldout.png" for d in ("one", "two"))
    assert one.read_bytes() == two.read_bytes()
    assert (tmp_path / "one" / "inpainting_heldout.json").read_bytes() == (
        tmp_path / "two" / "inpainting_heldout.json"
    ).read_bytes()


def test_figure_is_skipped_with_a_reason_when_a_method_cannot_be_redone(
    evaluated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(evaluated, copy)
    # records name the original folders; point them at the copy, then change the copy's generator
    for path in (copy / "records").rglob("*.json"):
        path.write_text(path.read_text().replace(str(evaluated), str(copy)))
    torch.manual_seed(1)
    from pretrain.models.inpainting import InpaintingGenerator

    torch.save(InpaintingGenerator(bottleneck=16).state_dict(), copy / "generator.pt")
    _plot(copy, tmp_path / "figs")
    err = capsys.readouterr().err
    assert "inpainting_heldout.png not written" in err and "generator.pt changed since it was evaluated" in err
    assert not (tmp_path / "figs" / "inpainting_heldout.png").exists()
    shutil.rmtree(copy / "heldout")
    _plot(copy, tmp_path / "figs")
    assert f"the evaluated images {copy / 'heldout'} are gone" in capsys.readouterr().err


def test_the_sweeps_plot_cell_draws_the_figure_from_the_collected_records(
    evaluated: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    from benchmarks.reproduce import collect_record

    sweep = tmp_path / "sweep"
    for folder in sorted((evaluated / "records").iterdir()):  # as the inpaint-eval cells leave them
        collect_record({"id": f"inpaint-eval/{folder.name}", "out": str(folder)}, sweep)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.cli", "reproduce", "--tasks", "none", "--out", str(sweep), "--quiet-cells"],
        env=subprocess_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((sweep / "figures" / "inpainting_heldout.json").read_text())
    assert len(meta["methods"]) == 4 and len(meta["rows"]) == LIMIT  # 5 images, fewer than the default 6 rows
    assert (sweep / "figures" / "inpainting_heldout.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
