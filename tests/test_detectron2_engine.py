"""The detectron2 engine of the Fast R-CNN protocol: the one-line error without detectron2, the model's equivalence
to the torchvision engine's at the start, a smoke `bench transfer --task det --engine detectron2` run, the export
for detectron2 users, the suite's AP against detectron2's VOC evaluator, the learning check and the agreement of
the two engines (slow).

Tests that need detectron2 are skipped, with the reason, where it is not installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import fit_detection_split
from transfer.detection.detectron2_engine import detectron2_available
from transfer.voc import VOC_CLASSES, image_path, read_image_set, resolve_year_dir

needs_detectron2 = pytest.mark.skipif(
    not detectron2_available(),
    reason="detectron2 is not installed (install it from its repository as its INSTALL.md says, then '.[detectron2]')",
)
CPU = torch.device("cpu")

#: a meta path finder that makes ``import detectron2`` fail, as on a machine without it
BLOCK_DETECTRON2 = textwrap.dedent(
    """
    import sys
    class _NoDetectron2:
        def find_spec(self, name, path=None, target=None):
            if name == "detectron2" or name.startswith("detectron2."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, _NoDetectron2())
    """
)


@pytest.fixture(scope="module")
def det_data(tmp_path_factory: pytest.TempPathFactory, voc_root: Path) -> dict[str, object]:
    """The fixture tree's VOC2007 with a proposal cache, loaded as the det command loads it (cap 300)."""
    from transfer.detection.data import RoISampler, has_training_rois, load_detection_split
    from transfer.detection.proposals import ProposalCache, compute_proposals

    year_dir = resolve_year_dir(voc_root, "2007")
    cache = ProposalCache(tmp_path_factory.mktemp("d2-proposals"), "fast")
    ids = dict.fromkeys(read_image_set(year_dir, "trainval") + read_image_set(year_dir, "test"))
    compute_proposals({i: image_path(year_dir, i) for i in ids}, cache, progress=False)
    train, _ = load_detection_split(year_dir, "trainval", lambda i, w, h: cache.load(i)[:300])
    test, _ = load_detection_split(year_dir, "test", lambda i, w, h: cache.load(i)[:300])
    usable = [im for im in train if has_training_rois(im, RoISampler())]
    return {"root": voc_root, "year_dir": year_dir, "cache": cache, "train": usable, "test": test}


# ------------------------------------------------------------------------------------------- without detectron2
def test_engine_without_detectron2_is_a_one_line_error(voc_root: Path, tmp_path: Path, subprocess_env: dict) -> None:
    """In a process where detectron2 cannot be imported, the suite imports (the engine modules too) and
    `--engine detectron2` stops before any work with one line saying how to install it."""
    argv = ["transfer", "--task", "det", "--engine", "detectron2", "--voc-root", str(voc_root), "--weights", "random"]
    argv += ["--preset", "smoke", "--out", str(tmp_path / "out"), "--proposals", str(tmp_path / "proposals")]
    script = BLOCK_DETECTRON2 + textwrap.dedent(
        f"""
        import transfer.detection.detectron2_engine as engine
        assert not engine.detectron2_available()
        from benchmarks.cli import main
        sys.exit(main({argv!r}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=subprocess_env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "detectron2" in lines[-1] and "INSTALL.md" in lines[-1] and ".[detectron2]" in lines[-1], lines[-1]
    assert not (tmp_path / "proposals").exists()  # stopped before the proposal pass


def test_detectron2_is_imported_only_by_the_engine_modules() -> None:
    """The suite works without detectron2: only transfer/detection/detectron2_*.py import it (function-local
    imports count too), so nothing else can fail for its absence."""
    from tests.test_layering import REPO_ROOT, project_imports

    found = [i for i in project_imports(REPO_ROOT) if i.target.split(".")[0] == "detectron2"]
    assert found, "the parser found no detectron2 import at all; the check would pass vacuously"
    outside = [
        f"{i.path}:{i.line}: {i.module}" for i in found if not i.module.startswith("transfer.detection.detectron2_")
    ]
    assert not outside, "detectron2 imported outside the engine modules:\n" + "\n".join(outside)


def test_export_without_detectron2_is_a_one_line_error(tmp_path: Path, subprocess_env: dict) -> None:
    from pretrain.models.alexnet import alexnet_trunk

    torch.save(alexnet_trunk().state_dict(), tmp_path / "trunk.pt")
    script = BLOCK_DETECTRON2 + textwrap.dedent(
        f"""
        from benchmarks.cli import main
        sys.exit(main(["export", {str(tmp_path / "trunk.pt")!r}, "--format", "detectron2"]))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=subprocess_env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "INSTALL.md" in proc.stderr


# --------------------------------------------------------------------------------------------- with detectron2
@needs_detectron2
def test_detectron2_model_starts_as_the_torchvision_engine_model(det_data: dict) -> None:
    """Same trunk, seed and fillers: in eval mode both models give the same class scores (detectron2's class order:
    background last) and the same class-specific box deltas for the same RoIs."""
    from detectron2.structures import Boxes

    from transfer.detection.data import load_scaled_image
    from transfer.detection.detectron2_engine import Detectron2Settings, build_detectron2_model
    from transfer.detection.model import FastRCNN
    from transfer.weights import load_alexnet_trunk

    image = det_data["train"][0]
    trunk, _ = load_alexnet_trunk("random", seed=3)
    settings = Detectron2Settings(scale=160, max_size=267, fc_width=256)
    d2: Any
    d2, _, _ = build_detectron2_model(trunk, settings, seed=5, device=CPU)
    reference = FastRCNN(trunk, hidden=256, seed=5).eval()
    d2.eval()
    blob, factor, _ = load_scaled_image(image.path, 160, 267, "minus1to1")
    rois = torch.from_numpy(image.proposals[:40]) * factor
    with torch.no_grad():
        ref_cls, ref_box = reference(blob[None], torch.cat([torch.zeros(len(rois), 1), rois], 1))
        pixels = (blob + 1.0) * 127.5  # detectron2 normalises 0..255 pixels with mean = std = 127.5
        features = d2.backbone(d2.preprocess_image([{"image": pixels}]).tensor)
        pooled = d2.roi_heads.box_pooler([features["conv5"]], [Boxes(rois)])
        cls, box = d2.roi_heads.box_predictor(d2.roi_heads.box_head(pooled))
    torch.testing.assert_close(cls, torch.cat([ref_cls[:, 1:], ref_cls[:, :1]], 1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(box, ref_box[:, 4:], rtol=1e-4, atol=1e-5)
    frozen = [n for n, p in d2.named_parameters() if not p.requires_grad]
    assert frozen == ["backbone.conv1.weight", "backbone.conv1.bias"]


def _load_with_checkpointer(config: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """A model built from the written config, its ``MODEL.WEIGHTS`` loaded by ``DetectionCheckpointer``, and the
    checkpoint's own state dict (to check that every saved tensor reached the model)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import transfer.detection.detectron2_model  # noqa: F401  registers the backbone and box head

    cfg = get_cfg()
    cfg.merge_from_file(str(config))
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model, torch.load(cfg.MODEL.WEIGHTS, weights_only=True)["model"]


def _assert_loaded(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> list[str]:
    """Every saved tensor is a model tensor of the same name and shape and now holds the saved values (nothing
    unexpected, nothing renamed by heuristics); returns the model keys the checkpoint did not cover."""
    state = model.state_dict()
    assert set(saved) <= set(state), sorted(set(saved) - set(state))
    for key, value in saved.items():
        torch.testing.assert_close(state[key].cpu(), value, rtol=0, atol=0, msg=key)
    return sorted(set(state) - set(saved))


@needs_detectron2
def test_smoke_detectron2_run_writes_a_valid_record(det_data: dict, tmp_path: Path) -> None:
    from benchmarks.cli import main
    from transfer.records import read_record, validate_record

    proposals = tmp_path / "proposals"
    shutil.copytree(det_data["cache"].folder.parent, proposals)
    out = tmp_path / "out"
    argv = ["transfer", "--task", "det", "--engine", "detectron2", "--voc-root", str(det_data["root"])]
    argv += ["--weights", "random", "--out", str(out), "--preset", "smoke", "--iterations", "3"]
    argv += ["--proposals", str(proposals), "--proposal-workers", "1", "--write-voc-results"]
    assert main(argv) == 0
    (path,) = out.glob("det_*.json")
    record = read_record(path)
    assert validate_record(record) == []
    assert record["task"] == "det" and record["protocol"]["id"] == "voc07-fast-rcnn"
    assert record["config"]["engine"] == "detectron2" and record["extra"]["engine"]["name"] == "detectron2"
    assert record["extra"]["train"]["iterations"] == 3 and record["extra"]["frozen_layers"] == ["conv1"]
    assert 0.0 <= record["metrics"]["mAP"] <= 100.0 and "mAP_py_faster_rcnn" in record["metrics"]
    assert record["extra"]["detections"] > 0
    evaluator = record["extra"]["detectron2_evaluator"]
    assert set(evaluator) == {"AP", "AP50", "AP75"} and 0.0 <= evaluator["AP50"] <= 100.0
    assert len(list((out / "results").glob("comp4_det_test_*.txt"))) == 20
    # the trained model loads into a model built from the written config, every key
    model, saved = _load_with_checkpointer(out / "detectron2" / "config.yaml")
    assert _assert_loaded(model, saved) == []


@needs_detectron2
def test_export_loads_strictly_into_a_model_built_from_the_written_config(tmp_path: Path) -> None:
    from benchmarks.cli import main
    from pretrain.models.alexnet import alexnet_trunk, gaussian_init_

    trunk = gaussian_init_(alexnet_trunk(), std=0.02, bias=0.1, generator=torch.Generator().manual_seed(1))
    torch.save(trunk.state_dict(), tmp_path / "trunk.pt")
    assert main(["export", str(tmp_path / "trunk.pt"), "--format", "detectron2", "--output", str(tmp_path / "d2")]) == 0
    config = tmp_path / "d2" / "fast_rcnn_alexnet.yaml"
    model, backbone = _load_with_checkpointer(config)
    # every checkpoint key is a backbone key of the model; only the re-initialised head is left to train
    missing = _assert_loaded(model, backbone)
    assert missing and all(k.startswith("roi_heads.") for k in missing)
    model.backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in backbone.items()}, strict=True)
    for name, index in (("conv1", 0), ("conv3", 6), ("conv5", 10)):
        torch.testing.assert_close(getattr(model.backbone, name).weight, trunk[index].weight)
    text = config.read_text()
    assert "build_alexnet_backbone" in text and "ROIPool" in text and "PrecomputedProposals" in text
    assert model.roi_heads.box_head.fc6.out_features == 4096  # the paper preset's width
    assert model.roi_heads.box_pooler.level_poolers[0].output_size == (6, 6)


@needs_detectron2
def test_suite_ap_and_detectron2_evaluator_agree_on_the_same_detections(det_data: dict) -> None:
    """Jittered ground truth plus false positives, scored by the suite and by PascalVOCDetectionEvaluator.

    With the scores and boxes rounded as the evaluator's results files round them (3 and 1 decimals), its AP50 is
    the suite's py-faster-rcnn-convention 11-point AP with classes without ground truth counted as 0 in the mean;
    the devkit convention (IoU >= 0.5, MATLAB's recall levels, stable sort) may differ only where those apply."""
    from transfer.detection.detectron2_engine import voc_evaluator_result
    from transfer.detection.evaluate import score_detections

    images = det_data["test"]
    rng = np.random.default_rng(0)
    found = []
    for im in images:
        boxes, labels = [], []
        for box, label in zip(im.boxes, im.labels):
            w, h = box[2] - box[0], box[3] - box[1]
            boxes.append(box + rng.normal(0.0, 0.15, 4) * [w, h, w, h])
            labels.append(label)
        for _ in range(4):  # false positives
            x, y = rng.uniform(0, im.width - 20), rng.uniform(0, im.height - 20)
            boxes.append(np.array([x, y, x + rng.uniform(10, 60), y + rng.uniform(10, 60)]))
            labels.append(int(rng.integers(1, 21)))
        boxes_arr = np.round(np.asarray(boxes, np.float64), 1).astype(np.float32)
        found.append((boxes_arr, np.round(rng.uniform(0, 1, len(boxes)), 3).astype(np.float32), np.asarray(labels)))
    suite, _ = score_detections(images, found, list(VOC_CLASSES))
    d2 = voc_evaluator_result(images, found, det_data["year_dir"], "test")
    ap50 = d2["AP50"]
    assert ap50 is not None  # finite
    per_class = suite["ap07_py_faster_rcnn"]
    expected = sum(per_class.values()) / len(VOC_CLASSES)  # type: ignore[attr-defined]
    print(f"\n[detectron2 evaluator] AP50 {ap50:.4f}; suite py-faster-rcnn {suite['mAP_py_faster_rcnn']:.4f} "
          f"over {len(per_class)} classes with gt, devkit {suite['mAP']:.4f}")  # type: ignore[arg-type]  # fmt: skip
    assert ap50 == pytest.approx(expected, abs=1e-6)
    assert 10.0 < ap50 < 95.0  # the detections are neither perfect nor useless: the check can fail
    assert abs(float(suite["mAP"]) - float(suite["mAP_py_faster_rcnn"])) < 2.0  # type: ignore[arg-type]


@needs_detectron2
def test_every_detection_knob_reaches_the_detectron2_config() -> None:
    """The engine's settings take each knob of the detection config by its name (the solver's momentum, weight
    decay and lr factor were once fixed at the paper's values whatever the command line said)."""
    from transfer.detection.config import DetectionConfig
    from transfer.detection.detectron2_engine import settings_from_options
    from transfer.detection.detectron2_model import protocol_config

    options = DetectionConfig(
        momentum=0.95, weight_decay=1e-4, lr_gamma=0.5, nms=0.4, batch_size=4, fc_width=512, freeze_through="conv2",
        lr=0.02, lr_step=7, iterations=10, rois_per_image=32, scale=160, max_size=267, score_threshold=0.0,
        max_per_image=50, input_norm="caffe",
    ).to_dict()  # fmt: skip
    cfg = protocol_config(settings_from_options(options))
    solver = cfg.SOLVER
    assert (solver.MOMENTUM, solver.WEIGHT_DECAY, solver.GAMMA, solver.BASE_LR) == (0.95, 1e-4, 0.5, 0.02)
    assert (cfg.SOLVER.STEPS, cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH) == ((7,), 10, 4)
    assert (cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST, cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST) == (0.4, 0.0)
    assert (cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE, cfg.TEST.DETECTIONS_PER_IMAGE) == (32, 50)
    assert (cfg.MODEL.ROI_BOX_HEAD.FC_DIM, cfg.MODEL.BACKBONE.FREEZE_AT) == (512, 2)
    assert (cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.FORMAT) == ((160,), 267, "BGR")


# ----------------------------------------------------------------------------------------- learning, agreement
@needs_detectron2
@pytest.mark.learning
def test_detectron2_engine_fits_its_training_set(fit_tree: Path, tmp_path: Path) -> None:
    """The torchvision engine's learning check (tests/test_learning.py) on the same tree, proposals and settings:
    a rescaled random trunk, 600 iterations at lr 0.01 (step at 450), bf16, fc6/fc7 512 wide, 32 VOC2007 train
    images of 200x150 scored on themselves, with the same bar (train mAP >= 50)."""
    from transfer.detection.detectron2_engine import Detectron2Settings, run_detectron2
    from transfer.weights import load_alexnet_trunk

    usable, images = fit_detection_split(fit_tree, tmp_path)
    trunk, _ = load_alexnet_trunk("random", seed=0)
    settings = Detectron2Settings(
        iterations=600, lr=0.01, lr_step=450, scale=160, max_size=267, fc_width=512, rescale=True, precision="bf16",
        score_threshold=0.0,
    )  # fmt: skip
    outcome = run_detectron2(usable, images, trunk, settings, seed=0, device=CPU)
    train_map = float(outcome["result"]["mAP"])
    print(f"\n[learning] detectron2 Fast R-CNN, {len(images)} train images, 600 it: train VOC07 mAP {train_map:.1f}")
    assert train_map >= 50.0


#: the largest |torchvision - detectron2| test mAP accepted at the cpu preset (docs/protocols/detection.md)
ENGINE_AGREEMENT_TOLERANCE = 1.5


@needs_detectron2
@pytest.mark.slow  # two cpu-preset detection runs: several minutes each on 2 cores
def test_engines_agree_at_the_cpu_preset(tmp_path: Path, subprocess_env: dict) -> None:
    """Both engines through `bench transfer --task det --preset cpu` on the demo's VOC2007 layout (1,000 trainval,
    500 test images of 200x150), the same proposal cache, random weights and seed 0."""
    from benchmarks.commands.demo import VOC_IMAGE_SIZE, VOC_SPLITS_2007
    from benchmarks.demo_data import make_voc_tree

    make_voc_tree(tmp_path / "voc", splits_2007=VOC_SPLITS_2007, splits_2012={"train": 1, "val": 1},
                  image_size=VOC_IMAGE_SIZE, seed=0)  # fmt: skip
    maps = {}
    for engine in ("torchvision", "detectron2"):
        out = tmp_path / engine
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.cli",
            "transfer",
            "--task",
            "det",
            "--engine",
            engine,
            "--preset",
            "cpu",
        ]
        cmd += ["--voc-root", str(tmp_path / "voc"), "--weights", "random", "--seed", "0", "--device", "cpu"]
        cmd += ["--proposals", str(tmp_path / "proposals"), "--out", str(out)]
        proc = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=7200)
        assert proc.returncode == 0, proc.stderr[-2000:]
        (path,) = out.glob("det_*.json")
        maps[engine] = json.loads(path.read_text())["metrics"]["mAP"]
    print(
        f"\n[agreement] cpu preset test mAP: torchvision {maps['torchvision']:.2f}, detectron2 {maps['detectron2']:.2f}"
    )
    assert abs(maps["torchvision"] - maps["detectron2"]) <= ENGINE_AGREEMENT_TOLERANCE
