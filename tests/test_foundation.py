"""The shared foundation: VOC parsing, weight adapters, records, atomic writes, the AlexNet trunk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from pretrain.checkpoint import CheckpointError, atomic_torch_save, load_checkpoint
from pretrain.models.alexnet import alexnet_trunk
from transfer.records import RecordError, make_record, read_record, write_record
from transfer.voc import (
    IGNORE,
    NEGATIVE,
    POSITIVE,
    VOC_CLASSES,
    VOCError,
    classification_labels,
    load_annotation,
    load_segmentation_mask,
    parse_annotation,
    read_image_set,
    resolve_year_dir,
)
from transfer.weights import WeightsError, load_alexnet_trunk


def _weight(layers: torch.nn.Sequential, index: int) -> torch.Tensor:
    """The weight of convolution ``index`` of an AlexNet ``features`` chain."""
    layer = layers[index]
    assert isinstance(layer, torch.nn.Conv2d), layer
    return layer.weight


def test_trunk_matches_torchvision_features() -> None:
    ours = alexnet_trunk().state_dict()
    theirs = torchvision.models.alexnet().features.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert alexnet_trunk()(torch.zeros(1, 3, 227, 227)).shape == (1, 256, 6, 6)


def test_voc_root_forms(voc_root: Path) -> None:
    expected = voc_root / "VOCdevkit" / "VOC2007"
    assert resolve_year_dir(voc_root, "2007") == expected
    assert resolve_year_dir(voc_root / "VOCdevkit", "2007") == expected
    assert resolve_year_dir(expected, "2007") == expected
    assert resolve_year_dir(expected, "2012") == voc_root / "VOCdevkit" / "VOC2012"
    with pytest.raises(VOCError, match="no VOC2010"):
        resolve_year_dir(voc_root, "2010")


def test_annotation_and_labels(tmp_path: Path) -> None:
    xml = tmp_path / "x.xml"
    xml.write_text(
        "<annotation><size><width>100</width><height>50</height></size>"
        "<object><name>dog</name><difficult>1</difficult><truncated>0</truncated>"
        "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>"
        "<object><name>cat</name><difficult>0</difficult><truncated>1</truncated>"
        "<bndbox><xmin>5</xmin><ymin>5</ymin><xmax>50</xmax><ymax>45</ymax></bndbox></object>"
        "<object><name>cat</name><difficult>1</difficult>"
        "<bndbox><xmin>5</xmin><ymin>5</ymin><xmax>50</xmax><ymax>45</ymax></bndbox></object>"
        "</annotation>"
    )
    ann = parse_annotation(xml)
    assert (ann.width, ann.height) == (100, 50)
    assert ann.objects[0].box == (0.0, 1.0, 9.0, 19.0) and ann.objects[0].difficult
    assert ann.objects[1].truncated and not ann.objects[1].difficult
    labels = classification_labels(ann)
    assert labels[VOC_CLASSES.index("dog")] == IGNORE
    assert labels[VOC_CLASSES.index("cat")] == POSITIVE
    assert labels[VOC_CLASSES.index("car")] == NEGATIVE


def test_malformed_xml_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.xml"
    bad.write_text("<annotation><size>")
    with pytest.raises(VOCError, match=r"broken\.xml"):
        parse_annotation(bad)


def test_fixture_tree_is_consistent(voc_root: Path) -> None:
    ydir = resolve_year_dir(voc_root, "2007")
    ids = read_image_set(ydir, "trainval")
    per_class = (ydir / "ImageSets" / "Main" / "dog_trainval.txt").read_text().split()
    assert per_class[0::2] == ids
    for image_id, flag in zip(per_class[0::2], per_class[1::2]):
        assert int(flag) == classification_labels(load_annotation(ydir, image_id))[VOC_CLASSES.index("dog")]
    y12 = resolve_year_dir(voc_root, "2012")
    sid = read_image_set(y12, "val", "Segmentation")[0]
    ann = load_annotation(y12, sid)
    mask = load_segmentation_mask(y12, sid, (ann.width, ann.height))
    assert mask.shape == (ann.height, ann.width)


def test_mask_errors_name_file(voc_root: Path, tmp_path: Path) -> None:
    y12 = shutil.copytree(resolve_year_dir(voc_root, "2012"), tmp_path / "VOC2012")
    sid = read_image_set(y12, "train", "Segmentation")[0]
    with pytest.raises(VOCError, match=f"{sid}.png: mask is"):
        load_segmentation_mask(y12, sid, (7, 7))
    from PIL import Image

    Image.new("L", (4, 4), 30).save(y12 / "SegmentationClass" / f"{sid}.png")
    with pytest.raises(VOCError, match=r"labels \[30\]"):
        load_segmentation_mask(y12, sid)


def test_weight_sources(tmp_path: Path) -> None:
    tv = torchvision.models.alexnet()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    trunk, info = load_alexnet_trunk(tmp_path / "tv.pth")
    assert info.kind == "torchvision"
    assert torch.equal(_weight(trunk, 0), _weight(tv.features, 0))

    save_file(
        {k: v.contiguous() for k, v in tv.features.state_dict().items()},
        str(tmp_path / "encoder.safetensors"),
        metadata={"method": "context-encoder", "iterations": "20"},
    )
    trunk, info = load_alexnet_trunk(tmp_path / "encoder.safetensors")
    assert (info.method, info.iterations, info.kind) == ("context-encoder", 20, "safetensors")
    assert torch.equal(_weight(trunk, 10), _weight(tv.features, 10))

    run = tmp_path / "run"
    atomic_torch_save(
        {"method": "autoencoder", "iteration": 7, "encoder": tv.features.state_dict(), "config": {}},
        run / "checkpoints" / "ckpt-00000007.pt",
    )
    trunk, info = load_alexnet_trunk(run)
    assert (info.method, info.iterations, info.kind) == ("autoencoder", 7, "checkpoint")

    r1, _ = load_alexnet_trunk("random", seed=1)
    r2, _ = load_alexnet_trunk("random", seed=1)
    assert torch.equal(_weight(r1, 0), _weight(r2, 0))
    assert abs(float(_weight(r1, 3).detach().std()) - 0.01) < 1e-3


def test_mismatched_weights_list_keys(tmp_path: Path) -> None:
    sd = alexnet_trunk("caffe").state_dict()
    torch.save(sd, tmp_path / "caffe.pt")
    with pytest.raises(WeightsError, match=r"caffe.pt does not fit .*shape mismatches.*0.weight"):
        load_alexnet_trunk(tmp_path / "caffe.pt")
    torch.save({"0.weight": sd["0.weight"]}, tmp_path / "partial.pt")
    with pytest.raises(WeightsError, match=r"missing keys \['0.bias'"):
        load_alexnet_trunk(tmp_path / "partial.pt", widths="caffe")


def test_checkpoint_refuses_pickled_code(tmp_path: Path) -> None:
    torch.save({"obj": Path("x")}, tmp_path / "evil.pt")  # a non-tensor object needs unpickling
    with pytest.raises(CheckpointError, match=r"evil\.pt"):
        load_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(CheckpointError, match=r"trunc\.pt"):
        load_checkpoint(tmp_path / "trunc.pt")


def _record(**over: object) -> dict:
    kwargs = dict(
        task="cls",
        protocol_id="voc07-cls-finetune",
        protocol_version=1,
        protocol_description="test",
        dataset="VOC2007",
        train_split="trainval",
        eval_split="test",
        metrics={"mAP": 50.0},
        primary_metric="mAP",
        weights={"source": "random", "method": "random", "sha256": None},
        seed=0,
        config={"lr": 0.001},
        started_at="2026-01-01T00:00:00Z",
        wall_time_s=1.0,
        per_class={"AP": {"cat": 50.0}},
    )
    kwargs.update(over)
    return make_record(**kwargs)  # type: ignore[arg-type]


def test_records_roundtrip_and_never_overwrite(tmp_path: Path) -> None:
    rec = _record()
    p1 = write_record(rec, tmp_path)
    p2 = write_record(rec, tmp_path)
    assert p1 != p2 and p1.exists() and p2.exists()
    assert read_record(p1)["metrics"] == {"mAP": 50.0}
    with pytest.raises(RecordError, match="primary_metric"):
        _record(primary_metric="mIoU")
    with pytest.raises(RecordError, match="metric 'mAP' is nan"):
        _record(metrics={"mAP": float("nan")})
    bad = json.loads(p1.read_text())
    del bad["seed"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(RecordError, match=r"bad.json: missing field 'seed'"):
        read_record(tmp_path / "bad.json")


def test_bench_version_prints_version_and_commit() -> None:
    import subprocess
    import sys

    from pretrain import __version__

    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.cli", "--version"], capture_output=True, text=True, check=True, cwd=repo
    ).stdout
    assert out.startswith(f"bench (context-encoders-bench) {__version__}, ")
    if (repo / ".git").exists():
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert f"commit {head.stdout.strip()}" in out
    else:
        assert "commit unknown" in out
