"""`bench pretrain` end to end on real image files: run folder, resume, export, errors, torchrun."""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file

from benchmarks.cli import build_parser, main
from pretrain.checkpoint import load_checkpoint

# tiny but real: 99 px crops (pool5 is then 2x2) and 2 images per iteration keep a CPU step fast
TINY = ["--preset", "smoke", "--crop-size", "99", "--resize-short", "110", "--batch-size", "2", "--device", "cpu"]


def _pretrain(data: Path, out: Path, *extra: str) -> int:
    return main(["pretrain", "--data", str(data), "--out", str(out), *TINY, *extra])


def _final(out: Path) -> dict:
    ckpts = sorted((out / "checkpoints").glob("ckpt_*.pt"))
    return load_checkpoint(ckpts[-1])


@pytest.fixture(scope="module")
def run20(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 20-iteration context-encoder run."""
    out = tmp_path_factory.mktemp("runs") / "ce20"
    common = ["--iterations", "20", "--checkpoint-every", "5", "--keep-checkpoints", "2"]
    assert _pretrain(image_folder, out, *common, "--sample-every", "10", "--log-every", "5", "--workers", "0") == 0
    return out


def test_run_folder_holds_everything(run20: Path) -> None:
    for name in ("config.json", "env.json", "log.jsonl", "summary.json", "encoder.safetensors"):
        assert (run20 / name).is_file(), name
    ckpts = sorted(p.name for p in (run20 / "checkpoints").glob("*.pt"))
    assert ckpts == ["ckpt_00000015.pt", "ckpt_00000020.pt"]  # every 5 iterations, the last 2 kept
    assert not list((run20 / "checkpoints").glob(".*tmp"))  # no temporary files left behind
    assert sorted(p.name for p in (run20 / "samples").glob("*.png")) == ["iter_00000010.png", "iter_00000020.png"]
    from PIL import Image

    with Image.open(run20 / "samples" / "iter_00000020.png") as im:
        # torchvision make_grid, padding 2: 4 columns x 2 rows (the batch), the columns named in the PNG
        assert im.size == (4 * 99 + 5 * 2, 2 * 99 + 3 * 2)
        assert im.text["columns"] == "masked input|prediction|pasted into the hole|original"
    lines = [json.loads(line) for line in (run20 / "log.jsonl").read_text().splitlines()]
    logged = [r for r in lines if "loss" in r]
    assert [r["iteration"] for r in logged] == [5, 10, 15, 20]
    assert all(r["loss"] > 0 and r["images_per_s"] > 0 for r in logged)
    summary = json.loads((run20 / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["iteration"] == 20
    assert summary["skipped_images"] == 0 and summary["dataset_size"] == 24
    assert set(summary["dead_channels"]) == {"conv1", "conv2", "conv3", "conv4", "conv5"}
    assert all(0.0 <= f <= 1.0 for f in summary["dead_channels"].values())
    config = json.loads((run20 / "config.json").read_text())
    assert config["iterations"] == 20 and config["mask"] == "random-region" and config["lr"] == 2e-4
    env = json.loads((run20 / "env.json").read_text())
    assert "commit" in env["code_version"] and env["environment"]["torch"] == torch.__version__


def test_checkpoint_layout_loads_weights_only(run20: Path) -> None:
    ckpt = _final(run20)  # load_checkpoint uses weights_only=True
    assert ckpt["format"] == "context-encoders-bench/checkpoint" and ckpt["iteration"] == 20
    assert ckpt["method"] == "context-encoder"
    assert set(ckpt["encoder"]) == set(torchvision.models.alexnet().features.state_dict())
    assert any(k.startswith("model.channel_fc.") for k in ckpt["model"])
    assert {"torch", "numpy", "python"} <= set(ckpt["rng"])
    assert "model" in ckpt["optimizer"] and ckpt["config"]["iterations"] == 20


def test_export_loads_strict_into_torchvision(run20: Path) -> None:
    path = run20 / "encoder.safetensors"
    features = torchvision.models.alexnet(weights=None).features
    state = load_file(str(path))
    features.load_state_dict(state, strict=True)
    assert torch.equal(features[0].weight, _final(run20)["encoder"]["0.weight"])
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["method"] == "context-encoder" and meta["mask"] == "random-region"
    assert meta["iterations"] == "20" and meta["widths"] == "torchvision"
    from pretrain.runinfo import sha256_file

    assert meta["source_checkpoint_sha256"] == sha256_file(run20 / "checkpoints" / "ckpt_00000020.pt")


def test_export_loads_in_timm_offline(run20: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import timm

    import pretrain.timm_models  # noqa: F401  (registers alexnet_context_encoder)

    file = str(run20 / "encoder.safetensors")
    # timm's models are nn.Module to a type checker; their attributes depend on the creation options
    model: Any = timm.create_model("alexnet_context_encoder", pretrained=True, pretrained_cfg_overlay=dict(file=file))
    assert torch.equal(model.features[10].weight, load_file(file)["10.weight"])
    assert model(torch.zeros(1, 3, 227, 227)).shape == (1, 9216)
    clf: Any = timm.create_model(
        "alexnet_context_encoder", pretrained=True, num_classes=20, pretrained_cfg_overlay=dict(file=file)
    )
    assert torch.equal(clf.features[3].weight, load_file(file)["3.weight"])
    assert clf(torch.zeros(1, 3, 227, 227)).shape == (1, 20)


def test_timm_features_only_and_data_config(run20: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import timm
    from PIL import Image

    import pretrain.timm_models  # noqa: F401  (registers alexnet_context_encoder)

    file = str(run20 / "encoder.safetensors")
    overlay = dict(file=file)
    model: Any = timm.create_model("alexnet_context_encoder", pretrained=True, pretrained_cfg_overlay=overlay).eval()
    feats: Any = timm.create_model(
        "alexnet_context_encoder", pretrained=True, features_only=True, pretrained_cfg_overlay=overlay
    ).eval()
    x = torch.randn(2, 3, 227, 227)
    maps = feats(x)
    assert [m.shape[1:] for m in maps] == [(64, 56, 56), (192, 27, 27), (384, 13, 13), (256, 13, 13), (256, 13, 13)]
    assert feats.feature_info.reduction() == [4, 8, 16, 16, 16]
    with torch.no_grad():
        assert torch.allclose(maps[4], model.features[:12](x))  # conv5 after ReLU, from the exported weights
        assert torch.allclose(maps[0], model.features[:2](x))
    two = timm.create_model("alexnet_context_encoder", features_only=True, out_indices=(1, 3))
    assert [m.shape[1] for m in two(x)] == [192, 256]
    # the data config reproduces pretraining's input: RGB in [-1, 1] at 227 px
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    white = transform(Image.new("RGB", (300, 250), (255, 255, 255)))
    black = transform(Image.new("RGB", (300, 250), (0, 0, 0)))
    assert (
        white.shape == (3, 227, 227) and torch.allclose(white, torch.ones(1)) and torch.allclose(black, -torch.ones(1))
    )
    head: Any = timm.create_model("alexnet_context_encoder", num_classes=7)
    assert head(x).shape == (2, 7) and head.get_classifier()[-1].out_features == 7


def test_transfer_weights_read_the_run_folder(run20: Path) -> None:
    from transfer.weights import load_alexnet_trunk

    trunk, info = load_alexnet_trunk(run20)
    assert info.method == "context-encoder" and info.iterations == 20 and info.kind == "safetensors"
    conv4 = trunk[8]
    assert isinstance(conv4, torch.nn.Conv2d)
    assert torch.equal(conv4.weight, load_file(str(run20 / "encoder.safetensors"))["8.weight"])


def test_bench_export_rewrites_the_same_encoder(run20: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "again.safetensors"
    assert main(["export", str(run20), "--output", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["iterations"] == "20"
    a, b = load_file(str(out)), load_file(str(run20 / "encoder.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main(["export", str(tmp_path / "not-a-run")]) == 1
    assert "holds no checkpoints" in capsys.readouterr().err


def test_interrupted_and_resumed_run_is_bit_identical(run20: Path, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "split"
    common = ["--iterations", "20", "--checkpoint-every", "5", "--keep-checkpoints", "2", "--sample-every", "0"]
    assert _pretrain(image_folder, out, *common, "--stop-after", "10", "--workers", "0") == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "stopped"
    assert _final(out)["iteration"] == 10
    # what an interrupted process may leave after its last checkpoint: a later log line and a cut one
    with open(out / "log.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"iteration": 12, "loss": 1.0}) + "\n" + '{"iteration": 13, "lo')
    # resume in a new process state, with DataLoader workers this time: the data order must not depend on them
    torch.manual_seed(12345)
    assert _pretrain(image_folder, out, *common, "--resume", "--workers", "1") == 0
    a, b = _final(out), _final(run20)
    assert a["iteration"] == b["iteration"] == 20
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in logged if "loss" in r] == [5, 10, 15, 20]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    state_a, state_b = a["optimizer"]["model"]["state"], b["optimizer"]["model"]["state"]
    for idx in state_a:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state_a[idx][name], state_b[idx][name]), (idx, name)


def test_existing_run_needs_resume_and_same_settings(run20: Path, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(run20, out)
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert _pretrain(image_folder, out, "--iterations", "20") == 1  # no --resume: refused, nothing touched
    assert _pretrain(image_folder, out, "--iterations", "30", "--resume", "--lr", "0.1") == 1  # lr differs
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_corrupt_and_empty_images_are_skipped_and_counted(image_folder: Path, tmp_path: Path) -> None:
    data = tmp_path / "images"
    shutil.copytree(image_folder, data)
    (data / "empty.jpg").write_bytes(b"")
    good = sorted(data.rglob("*.jpg"))[0].read_bytes()
    (data / "sub_bad").mkdir()
    (data / "sub_bad" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (data / "garbage.png").write_bytes(b"not a png at all" * 10)
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="skipped"):
        assert _pretrain(data, out, "--iterations", "2", "--sample-every", "0", "--workers", "0") == 0
    summary = json.loads((out / "summary.json").read_text())
    skipped = {Path(s["path"]).name for s in summary["skipped"]}
    assert {"empty.jpg", "garbage.png"} <= skipped
    assert summary["skipped_images"] == len(summary["skipped"]) >= 2
    assert summary["dataset_size"] == 24 + 3 - summary["skipped_images"]


def test_missing_data_is_an_error_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert _pretrain(tmp_path / "no-such-folder", out, "--iterations", "2") == 1
    assert "no-such-folder" in capsys.readouterr().err
    assert not out.exists()
    (tmp_path / "empty").mkdir()
    assert _pretrain(tmp_path / "empty", out, "--iterations", "2") == 1
    assert not out.exists()


def _nan_run(image_folder: Path, out: Path, lr: str) -> int:
    common = ["--iterations", "6", "--checkpoint-every", "1", "--sample-every", "0", "--workers", "0"]
    return _pretrain(image_folder, out, "--lr", lr, *common)


def test_non_finite_loss_stops_with_last_good_checkpoint(image_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "nan"
    # a huge learning rate: the first Adam step moves every weight by ~1e6 (finite, kept), the next forward
    # pass overflows
    assert _nan_run(image_folder, out, "1e6") == 1
    err = capsys.readouterr().err
    assert "not finite" in err and "iteration 2" in err and "ckpt_00000001.pt" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "non-finite-loss" and "export" not in summary
    assert summary["failed_iteration"] == 2 and summary["iteration"] == 1
    assert summary["checkpoint"].endswith("ckpt_00000001.pt")
    ckpt = load_checkpoint(out / "checkpoints" / "ckpt_00000001.pt")
    assert ckpt["iteration"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (out / "checkpoints" / "ckpt_00000002.pt").exists()
    events = [json.loads(x).get("event") for x in (out / "log.jsonl").read_text().splitlines()]
    assert "non-finite-loss" in events


@pytest.mark.parametrize(("lr", "problem"), [("1e30", "diverged"), ("1e39", "NaN or Inf")])
def test_weights_broken_by_an_update_are_never_kept(image_folder: Path, tmp_path: Path, capsys, lr, problem) -> None:
    # the loss of iteration 1 is finite, but its update leaves weights of ~1e30 (or Inf in float32): the
    # checkpoint of iteration 1 must not be written as a "good" one
    out = tmp_path / "diverged"
    assert _nan_run(image_folder, out, lr) == 1
    err = capsys.readouterr().err
    assert "iteration 1" in err and problem in err and "last good checkpoint: none" in err
    assert not list((out / "checkpoints").glob("*.pt")) if (out / "checkpoints").exists() else True
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed_iteration"] == 1 and summary["iteration"] == 0 and summary["checkpoint"] is None


def test_autoencoder_and_bf16(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "ae"
    assert (
        _pretrain(
            image_folder,
            out,
            "--method",
            "autoencoder",
            "--iterations",
            "2",
            "--precision",
            "bf16",
            "--sample-every",
            "2",
            "--workers",
            "0",
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final_loss"] > 0
    with safe_open(str(out / "encoder.safetensors"), framework="pt") as fh:
        assert fh.metadata()["method"] == "autoencoder" and fh.metadata()["mask"] == "none"


def test_random_method_writes_the_gaussian_encoder(tmp_path: Path) -> None:
    from transfer.weights import load_alexnet_trunk

    out = tmp_path / "random"
    assert main(["pretrain", "--method", "random", "--out", str(out), "--seed", "3", "--device", "cpu"]) == 0
    state = load_file(str(out / "encoder.safetensors"))
    reference, _ = load_alexnet_trunk("random", seed=3)
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())
    assert 0.009 < float(state["3.weight"].std()) < 0.011
    assert json.loads((out / "summary.json").read_text())["status"] == "initialised"


def test_help_documents_every_option(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "pretrain" in top and "export" in top
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    assert isinstance(commands, argparse._SubParsersAction)
    sub = commands.choices["pretrain"]
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for action in sub._actions:
        if action.dest == "help":
            continue
        assert action.help and len(action.help) > 15, action.option_strings
        assert action.option_strings[0] in text
    needles: tuple[str, ...] = ("context-encoder", "autoencoder", "random", "voc-shapes", "paper 64", "smoke")
    needles += ("docs/protocols/sources.md",)  # the help cites what the repository holds
    for needle in needles:
        assert needle in text, needle


def test_torchrun_two_processes_gloo(image_folder: Path, tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "benchmarks.cli",
        "pretrain",
        "--data",
        str(image_folder),
        "--out",
        str(out),
        *TINY,
        "--iterations",
        "4",
        "--checkpoint-every",
        "2",
        "--sample-every",
        "4",
        "--workers",
        "0",
    ]
    proc = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "completed" and summary["iteration"] == 4
    # a `bench` process keeps freed memory for reuse (pretrain.allocator) and says so in env.json
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    environment = json.loads((out / "env.json").read_text())["environment"]
    assert environment["allocator"] == ("heap" if glibc else "unsupported")
    assert (out / "encoder.safetensors").is_file() and (out / "samples" / "iter_00000004.png").is_file()
    assert _final(out)["iteration"] == 4
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert sum("loss" in r for r in logged) == 1  # rank 0 only writes the log (log-every 5 from the smoke preset)


def test_unusable_values_are_refused_before_work(image_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bad"
    assert _pretrain(image_folder, out, "--checkpoint-every", "0", "--dropout", "1.5") == 1
    err = capsys.readouterr().err
    assert "--checkpoint-every must be positive" in err and "--dropout" in err
    assert _pretrain(image_folder, out, "--mask", "voc-shapes") == 1
    assert "--voc-root" in capsys.readouterr().err
    assert not out.exists()


def test_voc_source_with_voc_shape_masks(voc_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "voc"
    rc = main(
        [
            "pretrain",
            "--data",
            f"voc:{voc_root}",
            "--out",
            str(out),
            *TINY,
            "--iterations",
            "2",
            "--mask",
            "voc-shapes",
            "--voc-root",
            str(voc_root),
            "--sample-every",
            "0",
            "--workers",
            "0",
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["dataset_size"] > 0
    assert 0 < summary["final_stats"]["masked_fraction"] <= 0.5
    with safe_open(str(out / "encoder.safetensors"), framework="pt") as fh:
        assert fh.metadata()["mask"] == "voc-shapes"
