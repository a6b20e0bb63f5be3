"""Fast R-CNN harness: data loading with bad input, RoI sampling, the model, a real training step, detection and the
smoke `bench transfer --task det` run on the VOC-layout fixture tree."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.sampling import IterationBatchSampler, SampleKey
from transfer.detection.boxes import BoxCoder, box_iou_inclusive
from transfer.detection.data import (
    DetectionImage,
    DetectionTrainSet,
    RoISampler,
    collate_detection,
    has_training_rois,
    image_scale,
    load_detection_split,
    train_views,
)
from transfer.detection.evaluate import EvalConfig, detect_image, evaluate, ground_truth_by_class
from transfer.detection.model import FastRCNN, freeze_trunk
from transfer.detection.proposals import ProposalCache, compute_proposals
from transfer.detection.train import fast_rcnn_loss, train_step
from transfer.detection_ap import ClassDetections, evaluate_detections
from transfer.engine import caffe_param_groups
from transfer.records import read_record
from transfer.voc import VOC_CLASSES, VOCError, image_path, read_image_set, resolve_year_dir
from transfer.weights import load_alexnet_trunk


def _edit_xml(path: Path, edit: Callable[[ET.Element], None]) -> None:
    tree = ET.parse(path)
    edit(tree.getroot())
    tree.write(path)


@pytest.fixture(scope="module")
def det_tree(tmp_path_factory: pytest.TempPathFactory, voc_root: Path) -> dict[str, object]:
    """A copy of the fixture tree with a test image without objects, a train box reaching outside its image, one
    entirely outside, and a proposal cache (computed once) in which one test image has no proposals."""
    root = tmp_path_factory.mktemp("det") / "voc"
    shutil.copytree(voc_root, root)
    year_dir = resolve_year_dir(root, "2007")
    test_ids, train_ids = read_image_set(year_dir, "test"), read_image_set(year_dir, "trainval")
    no_objects, no_proposals, outside = test_ids[0], test_ids[1], train_ids[0]

    def drop_objects(xml: ET.Element) -> None:
        for obj in xml.findall("object"):
            xml.remove(obj)

    def push_outside(xml: ET.Element) -> None:
        width = int(xml.findtext("size/width") or 0)
        bnd = xml.find("object/bndbox")
        assert bnd is not None
        bnd.find("xmax").text = str(width + 40)  # type: ignore[union-attr]
        bnd.find("ymin").text = "-5"  # type: ignore[union-attr]

    def move_away(xml: ET.Element) -> None:
        width = int(xml.findtext("size/width") or 0)
        bnd = xml.find("object/bndbox")
        assert bnd is not None
        bnd.find("xmin").text = str(width + 10)  # type: ignore[union-attr]
        bnd.find("xmax").text = str(width + 50)  # type: ignore[union-attr]

    _edit_xml(year_dir / "Annotations" / f"{no_objects}.xml", drop_objects)
    _edit_xml(year_dir / "Annotations" / f"{train_ids[1]}.xml", move_away)
    _edit_xml(year_dir / "Annotations" / f"{outside}.xml", push_outside)
    cache = ProposalCache(root.parent / "proposals", "fast")
    images = {i: image_path(year_dir, i) for i in dict.fromkeys(train_ids + test_ids)}
    stats = compute_proposals(images, cache, workers=1, progress=False)
    assert stats.computed == len(images) and not stats.failed
    cache.save(no_proposals, np.zeros((0, 4), np.float32))
    return {
        "root": root,
        "year_dir": year_dir,
        "cache": cache,
        "no_objects": no_objects,
        "no_proposals": no_proposals,
        "outside": outside,
    }


def _proposals(cache: ProposalCache, cap: int = 300) -> Callable[[str, int, int], np.ndarray]:
    return lambda image_id, w, h: cache.load(image_id)[:cap] if cache.has(image_id) else np.zeros((0, 4), np.float32)


def test_loading_counts_bad_input_instead_of_crashing(det_tree: dict) -> None:
    year_dir, cache = det_tree["year_dir"], det_tree["cache"]
    train, train_report = load_detection_split(year_dir, "trainval", _proposals(cache))
    test, test_report = load_detection_split(year_dir, "test", _proposals(cache))
    assert train_report.clipped_boxes == 1 and train_report.dropped_boxes == 1  # reaching out / entirely outside
    assert train_report.images == len(train) == 40
    clipped = next(im for im in train if im.image_id == det_tree["outside"])
    assert clipped.boxes[:, 2].max() <= clipped.width - 1 and clipped.boxes[:, 1].min() >= 0
    assert test_report.no_objects == 1 and test_report.no_proposals == 1 and len(test) == 20
    empty = next(im for im in test if im.image_id == det_tree["no_objects"])
    assert empty.boxes.shape == (0, 4) and not has_training_rois(empty, RoISampler())


def test_missing_and_malformed_files_stop_or_are_skipped(det_tree: dict, tmp_path: Path) -> None:
    root = tmp_path / "voc"
    shutil.copytree(det_tree["root"], root)
    year_dir = resolve_year_dir(root, "2007")
    ids = read_image_set(year_dir, "test")
    image_path(year_dir, ids[2]).unlink()
    (year_dir / "Annotations" / f"{ids[3]}.xml").write_text("<annotation><size>")
    with pytest.raises(VOCError, match=ids[2] + r"\.jpg"):
        load_detection_split(year_dir, "test", _proposals(det_tree["cache"]))
    images, report = load_detection_split(year_dir, "test", _proposals(det_tree["cache"]), skip_bad=True)
    assert len(images) == 18 and len(report.skipped) == 2
    assert any(f"{ids[3]}.xml" in s for s in report.skipped)


def test_roi_sampler_follows_fast_rcnn_fractions_and_thresholds() -> None:
    gen = torch.Generator().manual_seed(0)
    gt = torch.tensor([[10.0, 10, 59, 59], [100.0, 40, 149, 99]])
    xy = torch.rand(3000, 2, generator=gen) * 150
    rois = torch.cat([gt, torch.cat([xy, xy + torch.rand(3000, 2, generator=gen) * 60 + 5], 1)])
    sampler = RoISampler()
    out, labels, targets = sampler.sample(rois, gt, torch.tensor([3, 7]), gen)
    assert len(out) == 64
    fg = labels > 0
    assert int(fg.sum()) == 16  # 25% of 64 when enough foreground exists
    iou = box_iou_inclusive(out, gt).max(dim=1).values
    assert (iou[fg] >= 0.5).all() and ((iou[~fg] >= 0.1) & (iou[~fg] < 0.5)).all()
    assert set(labels[fg].tolist()) <= {3, 7} and (targets[~fg] == 0).all()
    matched = gt[box_iou_inclusive(out[fg], gt).argmax(dim=1)]
    torch.testing.assert_close(BoxCoder().decode(out[fg], targets[fg]), matched, atol=1e-3, rtol=1e-5)
    none = sampler.sample(rois, gt[:0], torch.zeros(0, dtype=torch.long), gen)
    assert all(len(t) == 0 for t in none)


def test_each_epoch_has_every_image_as_is_and_mirrored(det_tree: dict) -> None:
    """Fast R-CNN's flipped roidb through the one sampler: two views per image (view 1 = mirrored), each once per
    epoch; without flips one view. The dataset mirrors the image of view 1 and samples RoIs from the key's seed."""
    n, per_batch = 3, 2
    keys = [k for b in IterationBatchSampler(n, per_batch, 0, 3, seed=0, views=train_views(flip=True)) for k in b]
    assert sorted((k.item, k.view) for k in keys) == [(i, v) for i in range(n) for v in (0, 1)]
    plain = [k for b in IterationBatchSampler(n, per_batch, 0, 3, seed=0, views=train_views(flip=False)) for k in b]
    assert {k.view for k in plain} == {0} and sorted(k.item for k in plain) == sorted([*range(n), *range(n)])
    images, _ = load_detection_split(det_tree["year_dir"], "trainval", _proposals(det_tree["cache"]))
    dataset = DetectionTrainSet([im for im in images if has_training_rois(im, RoISampler())], 128, 200)
    as_is, mirrored = dataset[SampleKey(0, 0, 7)], dataset[SampleKey(0, 1, 7)]
    torch.testing.assert_close(mirrored["image"], as_is["image"].flip(-1), atol=0.05, rtol=0)
    assert not torch.allclose(mirrored["image"], as_is["image"], atol=0.05)
    again = dataset[SampleKey(0, 0, 7)]
    assert torch.equal(again["rois"], as_is["rois"]) and torch.equal(again["labels"], as_is["labels"])


def _small_model(seed: int = 0) -> FastRCNN:
    trunk, _ = load_alexnet_trunk("random", seed=seed)
    return FastRCNN(trunk, hidden=128, seed=seed)


def test_model_shapes_and_roi_pool_at_stride_16() -> None:
    model = _small_model().eval()
    rois = torch.tensor([[0.0, 0, 0, 63, 63], [1.0, 16, 16, 200, 150]])
    with torch.no_grad():
        cls, deltas = model(torch.randn(2, 3, 160, 224), rois)
    assert cls.shape == (2, 21) and deltas.shape == (2, 84)
    assert model.roi_pool.spatial_scale == 1 / 16 and model.roi_pool.output_size == (6, 6)
    assert len(model.features) == 12  # conv1..relu5, no pool5


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_step_updates_unfrozen_layers_only(det_tree: dict, precision: str) -> None:
    images, _ = load_detection_split(det_tree["year_dir"], "trainval", _proposals(det_tree["cache"]))
    usable = [im for im in images if has_training_rois(im, RoISampler())]
    dataset = DetectionTrainSet(usable, scale=128, max_size=200)
    batch = collate_detection([dataset[SampleKey(0, 0, 1)], dataset[SampleKey(1, 1, 2)]])
    assert batch["rois"].shape[1] == 5 and set(batch["rois"][:, 0].tolist()) == {0.0, 1.0}
    model = _small_model()
    assert freeze_trunk(model, "conv1") == ["conv1"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(caffe_param_groups(model, 0.001, 5e-4), lr=0.001, momentum=0.9)
    stats = train_step(model, batch, optimizer, torch.device("cpu"), precision)
    after = model.state_dict()
    assert np.isfinite(stats["loss"]) and stats["fg_rois"] > 0
    assert torch.equal(before["features.0.weight"], after["features.0.weight"])
    assert not torch.equal(before["features.3.weight"], after["features.3.weight"])
    assert not torch.equal(before["cls_score.weight"], after["cls_score.weight"])


def test_loss_is_hand_computable() -> None:
    logits = torch.zeros(2, 3)
    deltas = torch.zeros(2, 12)
    deltas[0, 4:8] = torch.tensor([0.5, 0.0, 2.0, 0.0])  # class 1 of RoI 0
    labels = torch.tensor([1, 0])
    targets = torch.zeros(2, 4)
    loss_cls, loss_box = fast_rcnn_loss(logits, deltas, labels, targets)
    assert loss_cls.item() == pytest.approx(np.log(3))
    # smooth L1: 0.5 * 0.5^2 + (2 - 0.5) = 1.625, divided by the 2 RoIs
    assert loss_box.item() == pytest.approx(1.625 / 2)


def test_detection_on_images_without_proposals_or_objects(det_tree: dict) -> None:
    images, _ = load_detection_split(det_tree["year_dir"], "test", _proposals(det_tree["cache"], cap=50))
    picked = [im for im in images if im.image_id in (det_tree["no_objects"], det_tree["no_proposals"])]
    model = _small_model()
    cfg = EvalConfig(scale=128, max_size=200, score_threshold=0.0, max_per_image=10)
    no_props = next(im for im in picked if im.image_id == det_tree["no_proposals"])
    boxes, scores, labels = detect_image(model, no_props, cfg, torch.device("cpu"))
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)
    no_objs = next(im for im in picked if im.image_id == det_tree["no_objects"])
    boxes, scores, labels = detect_image(model, no_objs, cfg, torch.device("cpu"))
    assert 0 < len(boxes) <= 10 and (np.diff(scores) <= 0).all() and labels.min() >= 1
    assert (boxes[:, 2] <= no_objs.width - 1).all() and (boxes[:, 0] >= 0).all()
    result, detections = evaluate(model, picked, list(VOC_CLASSES), cfg, torch.device("cpu"), progress=False)
    assert result["mAP"] == 0.0 and result["detections"] == len(boxes)
    # the only image with objects has no proposals: no class has detections that could be right
    assert sum(len(d.scores) for d in detections.values()) == len(boxes)


def test_empty_image_record_has_no_training_rois() -> None:
    empty = DetectionImage("x", Path("x.jpg"), 10, 10, np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                           np.zeros(0, bool), np.zeros((0, 4), np.float32))  # fmt: skip
    assert not has_training_rois(empty, RoISampler())


def test_smoke_transfer_det_writes_a_valid_record(det_tree: dict, tmp_path: Path) -> None:
    from benchmarks.cli import main

    proposals = tmp_path / "proposals"
    shutil.copytree(det_tree["cache"].folder.parent, proposals)
    out = tmp_path / "out"
    argv = ["transfer", "--task", "det", "--voc-root", str(det_tree["root"]), "--weights", "random"]
    argv += ["--out", str(out), "--preset", "smoke", "--iterations", "3", "--proposals", str(proposals)]
    argv += ["--write-voc-results", "--proposal-workers", "1", "--rescale"]
    assert main(argv) == 0
    (path,) = out.glob("det_*.json")
    record = read_record(path)
    assert record["task"] == "det" and record["primary_metric"] == "mAP" and record["eval_split"] == "test"
    assert set(record["per_class"]["AP"]) == set(VOC_CLASSES) - set(record["extra"]["classes_without_gt"])
    assert 0.0 <= record["metrics"]["mAP"] <= 100.0 and "mAP_auc" in record["metrics"]
    assert "mAP_py_faster_rcnn" in record["metrics"] and "AP_py_faster_rcnn" in record["per_class"]
    assert record["extra"]["proposals"]["computed"] == 0  # everything came from the cache
    assert record["extra"]["eval_data"]["no_objects"] == 1 and record["extra"]["eval_data"]["no_proposals"] == 1
    assert record["extra"]["train_data"]["clipped_boxes"] == 1 and record["extra"]["train"]["iterations"] == 3
    assert record["config"]["fc_width"] == 512 and record["weights"]["method"] == "random"
    assert record["config"]["input_norm"] == "minus1to1"  # auto, for non-torchvision weights
    results = sorted((out / "results").glob("comp4_det_test_*.txt"))
    assert len(results) == 20
    lines = [line.split() for f in results for line in f.read_text().splitlines()]
    assert len(lines) == record["extra"]["detections"] > 0 and all(len(parts) == 6 for parts in lines)
    assert (out / "fast_rcnn.pt").is_file()
    assert record["extra"]["rescale"]["scope"].startswith("trunk conv1..conv5 + fc6, fc7")  # ran on training images


def test_rcnn_mat_files_feed_the_proposal_cache(det_tree: dict, tmp_path: Path) -> None:
    import scipy.io

    from pretrain.distributed import init_distributed
    from transfer.config import ProtocolError
    from transfer.detection.config import DetectionConfig
    from transfer.detection.protocol import proposal_source

    year_dir, cache = det_tree["year_dir"], det_tree["cache"]
    for split in ("trainval", "test"):
        ids = read_image_set(year_dir, split)
        boxes = np.empty(len(ids), dtype=object)
        for k, i in enumerate(ids):
            b = cache.load(i)[:50]
            boxes[k] = b[:, (1, 0, 3, 2)] + 1.0  # back to R-CNN's 1-based y1 x1 y2 x2
        scipy.io.savemat(tmp_path / f"voc_2007_{split}.mat", {"boxes": boxes})  # no 'images': split order
    cfg = DetectionConfig(proposals=str(tmp_path / "cache"), rcnn_mat=str(tmp_path))
    ctx = init_distributed("cpu")
    mat_cache, info = proposal_source(cfg, tmp_path, year_dir, ["trainval", "test"], ctx)
    assert info["source"] == "rcnn-mat" and info["imported"] == 60
    some = read_image_set(year_dir, "test")[5]
    np.testing.assert_array_equal(mat_cache.load(some), cache.load(some)[:50])
    with pytest.raises(ProtocolError, match=r"voc_2007_val\.mat"):
        proposal_source(cfg, tmp_path, year_dir, ["val"], ctx)


def test_cli_errors_name_the_bad_argument_before_any_work(det_tree: dict, tmp_path: Path) -> None:
    from benchmarks.cli import main

    base = ["transfer", "--task", "det", "--preset", "smoke", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"nope\.safetensors"):
        main([*base, "--voc-root", str(det_tree["root"]), "--weights", str(tmp_path / "nope.safetensors")])
    assert not (tmp_path / "out" / "proposals").exists()  # failed before the proposal pass
    with pytest.raises(SystemExit, match="does not exist"):
        main([*base, "--voc-root", str(tmp_path / "missing"), "--weights", "random"])


class _OracleDetector(torch.nn.Module):
    """Stands in for a perfectly trained head: for each RoI it outputs the class and the regression deltas of the
    ground-truth box it overlaps most (IoU >= 0.5). Exercises scaling, decoding, clipping, NMS and AP together."""

    def __init__(self, image: DetectionImage, factor: float) -> None:
        super().__init__()
        self.gt, self.labels, self.factor = torch.from_numpy(image.boxes), torch.from_numpy(image.labels), factor

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def forward_rois(self, features: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes = rois[:, 1:] / self.factor  # back to original pixels
        logits, deltas = torch.zeros(len(rois), 21), torch.zeros(len(rois), 84)
        if len(self.gt):
            iou, j = box_iou_inclusive(boxes, self.gt).max(dim=1)
            cls = torch.where(iou >= 0.5, self.labels[j], torch.zeros_like(j))
            logits[torch.arange(len(rois)), cls] = 10.0 + iou  # better-overlapping RoIs score higher
            enc = BoxCoder().encode(boxes, self.gt[j])
            for k in range(4):
                deltas[torch.arange(len(rois)), 4 * cls + k] = enc[:, k]
        else:
            logits[:, 0] = 10.0
        return logits, deltas


def test_a_perfect_detector_scores_100_map(det_tree: dict) -> None:
    images, _ = load_detection_split(det_tree["year_dir"], "test", _proposals(det_tree["cache"], cap=100))
    cfg = EvalConfig(scale=128, max_size=200)
    per_image = {}
    for im in images:  # ground truth among the proposals, so every object is reachable
        im.proposals = np.concatenate([im.boxes, im.proposals])
        factor = image_scale(im.width, im.height, cfg.scale, cfg.max_size)
        boxes, scores, labels = detect_image(_OracleDetector(im, factor), im, cfg, torch.device("cpu"))
        per_image[im.image_id] = (boxes, scores, labels)
        if len(im.boxes):
            # one detection per object after NMS, exactly on it (clipping and decoding are exact inverses)
            assert len(boxes) == len(im.boxes)
            np.testing.assert_allclose(np.sort(boxes, axis=0), np.sort(im.boxes, axis=0), atol=1e-3)
    detections = {}
    for k, cls in enumerate(VOC_CLASSES, start=1):
        items = [(i, b, sc) for i, (bs, ss, ls) in per_image.items() for b, sc, lab in zip(bs, ss, ls) if lab == k]
        detections[cls] = ClassDetections(
            [i for i, _, _ in items], np.array([sc for *_, sc in items]), np.array([b for _, b, _ in items])
        )
    result = evaluate_detections(detections, ground_truth_by_class(images, VOC_CLASSES), VOC_CLASSES)
    assert result["mAP"] == pytest.approx(100.0) and result["mAP_auc"] == pytest.approx(100.0)


def test_two_process_torchrun_gives_the_same_map(
    det_tree: dict, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """2 gloo ranks compute the missing proposals (half each) into the shared cache, run DDP steps at lr 0 (the
    weights stay those of the seed) and detect on half of the test images each: the gathered detections must score
    exactly as a single process's."""
    import subprocess
    import sys

    REPO_ROOT = Path(__file__).resolve().parent.parent

    cache = det_tree["cache"]
    year_dir = det_tree["year_dir"]
    common = ["benchmarks.cli", "transfer", "--task", "det", "--voc-root", str(det_tree["root"]), "--weights"]
    common += ["random", "--preset", "smoke", "--iterations", "2", "--lr", "0", "--device", "cpu"]
    common += ["--proposal-workers", "1"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    records = {}
    for name, launcher in (("one", [sys.executable, "-m"]), ("two", torchrun)):
        proposals = tmp_path / f"proposals-{name}"
        shutil.copytree(cache.folder.parent, proposals)
        if name == "two":  # four images without cached proposals: the ranks compute them
            for image_id in read_image_set(year_dir, "trainval")[2:6]:
                ProposalCache(proposals, "fast").path(image_id).unlink()
        cmd = [*launcher, *common, "--out", str(tmp_path / name), "--proposals", str(proposals)]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (path,) = (tmp_path / name).glob("det_*.json")
        records[name] = read_record(path)
    one, two = records["one"], records["two"]
    assert one["config"]["world_size"] == 1 and two["config"]["world_size"] == 2
    assert two["extra"]["proposals"]["computed"] == 4 and one["extra"]["proposals"]["computed"] == 0
    assert one["extra"]["detections"] > 0 and two["extra"]["detections"] == one["extra"]["detections"]
    assert two["metrics"]["mAP"] == one["metrics"]["mAP"] and two["per_class"] == one["per_class"]
    assert two["metrics"]["mAP_py_faster_rcnn"] == one["metrics"]["mAP_py_faster_rcnn"]
