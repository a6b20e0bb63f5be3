"""End-to-end inpainting checks that take minutes on CPU (``pytest -m slow tests/test_inpainting_slow.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.demo_data import make_image_folder
from transfer.records import read_record

#: the acceptance run of docs/protocols/inpainting.md, "Checking that training works"
ITERATIONS = 200
BOTTLENECK = 500


def _bench(args: list[str], env: dict[str, str]) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.cli", *args], env=env, capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]


@pytest.mark.slow
def test_short_cpu_training_beats_mean_fill(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    train = make_image_folder(tmp_path / "train", count=48, seed=1)
    test = make_image_folder(tmp_path / "test", count=16, seed=2)
    env = {**subprocess_env, "OMP_NUM_THREADS": "2"}
    run = tmp_path / "run"
    _bench(
        ["pretrain", "--method", "inpainting", "--preset", "smoke", "--data", str(train), "--out", str(run),
         "--iterations", str(ITERATIONS), "--bottleneck", str(BOTTLENECK), "--device", "cpu"],
        env,
    )  # fmt: skip
    records = tmp_path / "records"
    _bench(["inpaint-eval", "--weights", str(run), "--images", str(test), "--out", str(records)], env)
    _bench(["inpaint-eval", "--baseline", "mean", "--images", str(test), "--out", str(records)], env)
    net = read_record(next(records.glob("inpaint_inpainting_*.json")))["metrics"]
    mean = read_record(next(records.glob("inpaint_baseline-mean_*.json")))["metrics"]
    print({"network": net, "mean fill": mean})
    for region in ("center", "hole"):
        assert net[f"L2_{region}"] < mean[f"L2_{region}"]
        assert net[f"PSNR_{region}"] > mean[f"PSNR_{region}"]


@pytest.mark.slow
def test_inpainting_trains_under_torchrun(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    """Two gloo processes: both networks wrapped in DistributedDataParallel, three discriminator forwards per step."""
    data = make_image_folder(tmp_path / "data", count=8, seed=0)
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "benchmarks.cli", "pretrain",
         "--method", "inpainting", "--preset", "smoke", "--data", str(data), "--out", str(tmp_path / "run"),
         "--iterations", "2", "--batch-size", "2", "--bottleneck", "16", "--device", "cpu"],
        env=subprocess_env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    assert (tmp_path / "run" / "checkpoints" / "ckpt_00000002.pt").is_file()
