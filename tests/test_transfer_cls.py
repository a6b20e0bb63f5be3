"""VOC2007 classification fine-tuning: data, labels, model, loss, rescaling and a smoke run of the CLI."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.cli import main
from pretrain.sampling import SampleKey
from transfer.classification import (
    ClassificationConfig,
    VOCClassificationEval,
    VOCClassificationTrain,
    build_classifier,
    load_classification_items,
    masked_sigmoid_cross_entropy,
    resolve_classes,
)
from transfer.records import read_record
from transfer.rescale import between_layer_scale_correction, within_layer_init_
from transfer.voc import VOC_CLASSES, VOCError, resolve_year_dir
from transfer.weights import load_alexnet_trunk


def _smoke_args(voc: Path, out: Path, *extra: str) -> list[str]:
    return ["transfer", "--task", "cls", "--voc-root", str(voc), "--weights", "random", "--out", str(out),
            "--preset", "smoke", *extra]  # fmt: skip


def test_items_match_devkit_label_files(voc_root: Path) -> None:
    ydir = resolve_year_dir(voc_root, "2007")
    items, skipped = load_classification_items(ydir, "trainval", VOC_CLASSES)
    assert not skipped and len(items) == 40
    for k, name in enumerate(VOC_CLASSES):
        rows = (ydir / "ImageSets" / "Main" / f"{name}_trainval.txt").read_text().split()
        flags = dict(zip(rows[0::2], map(int, rows[1::2])))
        assert [int(it.labels[k]) for it in items] == [flags[it.image_id] for it in items]
    all_labels = np.stack([it.labels for it in items])
    assert (all_labels == 0).any(), "the fixture should hold difficult-only labels"
    assert resolve_classes("data", ydir, "trainval") == tuple(sorted(VOC_CLASSES))
    assert resolve_classes("cat, dog", ydir, "trainval") == ("cat", "dog")


def test_bad_items_name_file_or_are_skipped(voc_root: Path, tmp_path: Path) -> None:
    ydir = shutil.copytree(resolve_year_dir(voc_root, "2007"), tmp_path / "VOC2007")
    first = (ydir / "ImageSets" / "Main" / "trainval.txt").read_text().split()[0]
    (ydir / "Annotations" / f"{first}.xml").write_text("<annotation><size>")
    with pytest.raises(VOCError, match=rf"{first}\.xml: malformed XML"):
        load_classification_items(ydir, "trainval", VOC_CLASSES)
    (ydir / "JPEGImages" / "000002.jpg").write_bytes(b"not a jpeg")
    items, skipped = load_classification_items(ydir, "trainval", VOC_CLASSES, skip_bad=True)
    assert len(items) == 38 and len(skipped) == 2
    assert f"{first}.xml" in skipped[0] and "000002.jpg" in skipped[1]


def test_views_and_model_shapes(voc_root: Path) -> None:
    ydir = resolve_year_dir(voc_root, "2007")
    items, _ = load_classification_items(ydir, "test", VOC_CLASSES)
    cfg = ClassificationConfig(crop_size=67, eval_crops=3, fc_width=32, input_norm="minus1to1")
    train = VOCClassificationTrain(items, cfg)
    image, labels = train[SampleKey(0, 0, 5)]
    assert image.shape == (3, 67, 67) and labels.shape == (20,)
    assert float(image.min()) >= -1.0 and float(image.max()) <= 1.0
    assert torch.equal(train[SampleKey(0, 0, 5)][0], image)  # the key's seed fixes the view
    assert not torch.equal(train[SampleKey(0, 0, 6)][0], image)
    views, _ = VOCClassificationEval(items, cfg, seed=0)[1]
    again, _ = VOCClassificationEval(items, cfg, seed=0)[1]
    assert views.shape == (4, 3, 67, 67) and torch.equal(views, again)  # random crops are reproducible
    trunk, _ = load_alexnet_trunk("random")
    model = build_classifier(trunk, 20, cfg, seed=0)
    assert model(views).shape == (4, 20)
    assert float(model.fc("fc8").bias[0].detach()) == pytest.approx(0.1)
    assert abs(float(model.fc("fc6").weight.detach().std()) - 0.01) < 1e-3
    trained = model.set_trainable("fc8")
    assert trained == ["classifier.fc8.weight", "classifier.fc8.bias"]
    assert len(model.set_trainable("fc6")) == 6 and len(model.set_trainable("all")) == 16
    clipped = build_classifier(load_alexnet_trunk("random")[0], 20, ClassificationConfig(clip="pool5"), seed=0)
    assert clipped.fc("fc8").in_features == 9216 and not hasattr(clipped.classifier, "fc6")
    with pytest.raises(ValueError, match="clip pool5"):
        clipped.set_trainable("fc6")


def test_loss_ignores_difficult_entries() -> None:
    logits = torch.tensor([[2.0, -1.0, 5.0], [0.0, 0.0, -3.0]])
    labels = torch.tensor([[1, -1, 0], [-1, 1, 0]])
    want = (
        torch.nn.functional.softplus(torch.tensor(-2.0))
        + torch.nn.functional.softplus(torch.tensor(-1.0))
        + 2 * math.log(2.0)
    ) / 2
    assert float(masked_sigmoid_cross_entropy(logits, labels)) == pytest.approx(float(want))
    changed = logits.clone()
    changed[:, 2] = torch.tensor([-40.0, 40.0])  # the ignored column cannot change the loss
    assert float(masked_sigmoid_cross_entropy(changed, labels)) == pytest.approx(float(want))


def _ratios(chain: list[nn.Module], x: torch.Tensor, seed: int) -> list[float]:
    from transfer.rescale import _param_layers, _ratios

    return _ratios(chain, x, _param_layers(chain), seed)[0]


def test_rescale_equalises_gradient_ratios_by_per_layer_scalars() -> None:
    torch.manual_seed(0)
    chain: list[nn.Module] = [
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Linear(32, 16),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(16, 5),
    ]
    for i, m in enumerate(m for m in chain if isinstance(m, nn.Conv2d | nn.Linear)):
        with torch.no_grad():
            m.weight.mul_(10.0 ** (i - 1))  # badly scaled layers
            m.bias.fill_(0.1)  # type: ignore[union-attr]
    x = torch.randn(6, 3, 8, 8)
    before = [m.weight.detach().clone() for m in chain if isinstance(m, nn.Conv2d | nn.Linear)]
    net = nn.Sequential(*chain[:6], nn.Flatten(), *chain[6:])
    out_before = net.eval()(x).detach()
    spread_before = np.ptp(np.log(_ratios(chain, x, 5)))  # measured in eval mode (no dropout), as the rescaling
    net.train()
    report = between_layer_scale_correction(chain, x, seed=5)
    after = [m.weight.detach() for m in chain if isinstance(m, nn.Conv2d | nn.Linear)]
    assert report.converged and spread_before > 1.0
    assert all(m.training for m in chain)  # modes restored
    net.eval()
    ratios = _ratios(chain, x, 5)
    assert np.ptp(np.log(ratios)) < 0.02  # equal relative change rate in every layer
    assert report.output_std_after == pytest.approx(1.0, abs=0.05)  # the output is pulled to unit std
    for w0, w1, s in zip(before, after, report.weight_scale):
        assert torch.allclose(w1, w0 * s, rtol=1e-4, atol=1e-9)  # each layer is only multiplied by a scalar
    out_after = net.eval()(x).detach()
    total = math.prod(report.weight_scale)
    assert torch.allclose(out_after, out_before * total, rtol=1e-3, atol=1e-5)  # same function up to scale


def test_within_layer_init_standardises_units() -> None:
    torch.manual_seed(0)
    chain: list[nn.Module] = [nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 50)]
    x = torch.rand(64, 3, 8, 8)
    within_layer_init_(chain, x, [3], bias=0.1, seed=0)
    out = nn.Sequential(*chain)(x).detach()
    assert torch.allclose(out.mean(0), torch.full((50,), 0.1), atol=1e-4)
    assert torch.allclose(out.std(0, unbiased=False), torch.ones(50), atol=1e-3)


def test_smoke_finetune_writes_record_and_counts_skips(voc_root: Path, tmp_path: Path) -> None:
    voc = shutil.copytree(voc_root, tmp_path / "voc")
    ydir = resolve_year_dir(voc, "2007")
    bad = (ydir / "ImageSets" / "Main" / "test.txt").read_text().split()[3]
    (ydir / "Annotations" / f"{bad}.xml").write_text("<annotation>")
    with pytest.raises(SystemExit, match=rf"{bad}\.xml: malformed XML"):
        main(_smoke_args(voc, tmp_path / "out"))
    argv = _smoke_args(voc, tmp_path / "out", "--skip-bad", "--rescale", "--iterations", "3", "--save-model")
    assert main(argv) == 0
    records = list((tmp_path / "out").glob("*.json"))
    assert len(records) == 1
    rec = read_record(records[0])
    assert rec["task"] == "cls" and rec["protocol"]["id"] == "voc07-cls-finetune"
    assert rec["skipped"]["count"] == 1 and bad in rec["skipped"]["items"][0]
    assert rec["train_split"] == "trainval" and rec["eval_split"] == "test"
    assert rec["primary_metric"] == "mAP" and rec["metrics"]["mAP"] == rec["metrics"]["mAP_2crop"]
    assert {"mAP_1crop", "mAP_2crop_voc07", "mAP_1crop_voc07"} <= set(rec["metrics"])  # smoke: 2 random crops
    # both Krähenbühl variants are stored; the scikit-learn <= 0.18 trapezoids never exceed the step-wise sum
    assert rec["metrics"]["mAP_2crop"] <= rec["metrics"]["mAP_2crop_stepwise"] + 1e-9
    assert rec["config"]["ap"] == "krahenbuhl" and rec["protocol"]["version"] == 3
    assert rec["per_class"]["AP"] == rec["per_class"]["AP_2crop"]
    test_items, _ = load_classification_items(ydir, "test", VOC_CLASSES, skip_bad=True)
    with_positives = {c for k, c in enumerate(VOC_CLASSES) if any(i.labels[k] > 0 for i in test_items)}
    assert 0.0 <= rec["metrics"]["mAP"] <= 100.0 and set(rec["per_class"]["AP"]) == with_positives
    assert set(rec["extra"]["classes_without_positives"]) == set(VOC_CLASSES) - with_positives
    assert rec["config"]["iterations"] == 3 and rec["config"]["crop_size"] == 67
    assert rec["extra"]["rescale"]["converged"] and rec["extra"]["rescale"]["layers"][-1] == "fc7"
    saved = torch.load(rec["extra"]["model_path"], weights_only=True)
    assert saved["model"]["classifier.fc8.weight"].shape == (20, 256)


def test_mismatched_weights_fail_with_message(voc_root: Path, tmp_path: Path) -> None:
    from pretrain.models.alexnet import alexnet_trunk

    torch.save(alexnet_trunk("caffe").state_dict(), tmp_path / "caffe.pt")
    with pytest.raises(SystemExit, match=r"caffe\.pt does not fit the AlexNet trunk: .*shape mismatches"):
        main(_smoke_args(voc_root, tmp_path / "out", "--weights", str(tmp_path / "caffe.pt")))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.json"))


def test_every_weight_source_builds_a_classifier(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from pretrain.checkpoint import atomic_torch_save
    from pretrain.models.alexnet import alexnet_trunk
    from transfer.input_norm import resolve_input_norm

    features = alexnet_trunk()  # torchvision's alexnet().features layout (the classifier is not read)
    trunk_sd = {k: v.contiguous() for k, v in features.state_dict().items()}
    tv_sd = {f"features.{k}": v for k, v in trunk_sd.items()} | {"classifier.6.bias": torch.zeros(1000)}
    torch.save(tv_sd, tmp_path / "tv.pth")
    save_file(trunk_sd, str(tmp_path / "encoder.safetensors"), metadata={"method": "context-encoder"})
    atomic_torch_save(
        {"method": "autoencoder", "iteration": 3, "encoder": trunk_sd, "config": {}},
        tmp_path / "run" / "checkpoints" / "ckpt_00000003.pt",
    )
    sources = {
        "random": ("random", "minus1to1"),
        str(tmp_path / "tv.pth"): ("torchvision", "imagenet"),
        str(tmp_path / "encoder.safetensors"): ("context-encoder", "minus1to1"),
        str(tmp_path / "run"): ("autoencoder", "minus1to1"),
        str(tmp_path / "run" / "checkpoints" / "ckpt_00000003.pt"): ("autoencoder", "minus1to1"),
    }
    x = torch.zeros(1, 3, 67, 67)
    for source, (method, norm) in sources.items():
        trunk, info = load_alexnet_trunk(source)
        assert info.method == method and resolve_input_norm("auto", info.kind) == norm
        model = build_classifier(trunk, 20, ClassificationConfig(fc_width=16), seed=0)
        assert model(x).shape == (1, 20)
        if source != "random":
            assert torch.equal(model.features.state_dict()["0.weight"], trunk_sd["0.weight"])  # trunk kept


def test_help_of_cls_and_svm_lists_their_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["transfer", "--task", "cls", "--help"])
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--train-from", "--clip", "--eval-crops", "--classes", "--voc-root"))
    assert "--costs" not in text and "--primary-layer" not in text
    with pytest.raises(SystemExit):
        main(["transfer", "--task", "svm", "--help"])
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--costs", "--primary-layer", "--classes", "--voc-root"))
    assert "--train-from" not in text and "--eval-crops" not in text


def test_torchvision_fc6_fc7_are_used_when_present() -> None:
    from transfer.classification import load_pretrained_fc

    trunk, _ = load_alexnet_trunk("random")
    model = build_classifier(trunk, 20, ClassificationConfig(fc_width=64), seed=0)
    state = {
        "classifier.1.weight": torch.full((64, 9216), 0.5),
        "classifier.1.bias": torch.full((64,), 0.25),
        "classifier.4.weight": torch.ones(32, 32),  # wrong shape: fc7 stays re-initialised
        "classifier.4.bias": torch.ones(32),
    }
    fc8_before = model.fc("fc8").weight.detach().clone()
    assert load_pretrained_fc(model, state) == ["fc6"]
    assert float(model.fc("fc6").weight.detach().min()) == 0.5 and float(
        model.fc("fc7").bias.detach()[0]
    ) == pytest.approx(0.1)
    assert torch.equal(model.fc("fc8").weight.detach(), fc8_before)
    clipped = build_classifier(load_alexnet_trunk("random")[0], 20, ClassificationConfig(clip="pool5"), seed=0)
    assert load_pretrained_fc(clipped, state) == []


def _bench(args: list[str], env: dict[str, str], nproc: int = 1) -> None:
    import subprocess
    import sys

    REPO_ROOT = Path(__file__).resolve().parent.parent

    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m"]
    cmd = [*(launcher if nproc > 1 else [sys.executable, "-m"]), "benchmarks.cli", *args]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_process_torchrun_gives_the_same_map(
    voc_root: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """1 process and 2 gloo ranks fine-tune the same seeded network at lr 0 (DDP steps that leave the weights as
    they are) and score the test images, each rank its share: the gathered scores, so every AP, must be equal."""
    common = ["transfer", "--task", "cls", "--voc-root", str(voc_root), "--weights", "random", "--preset", "smoke"]
    common += ["--device", "cpu", "--lr", "0"]
    _bench([*common, "--out", str(tmp_path / "one")], subprocess_env)
    _bench([*common, "--out", str(tmp_path / "two")], subprocess_env, nproc=2)
    (one,) = [read_record(p) for p in (tmp_path / "one").glob("*.json")]
    (two,) = [read_record(p) for p in (tmp_path / "two").glob("*.json")]
    assert one["config"]["world_size"] == 1 and two["config"]["world_size"] == 2
    keys = [k for k in one["metrics"] if k.startswith("mAP")]
    assert len(keys) >= 6 and {k: two["metrics"][k] for k in keys} == {k: one["metrics"][k] for k in keys}
    assert two["per_class"] == one["per_class"]
