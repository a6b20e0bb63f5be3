"""Classification fine-tuning, Fast R-CNN and FCN survive SIGTERM: a checkpoint, exit status 75, and a `--resume` that
ends with the same weights, bit for bit, as a run that never stopped (real processes on the fixture VOC tree)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import load_checkpoint

TASK_ARGS = {
    "cls": ["--save-model"],
    "det": ["--proposal-workers", "1", "--max-proposals", "50"],
    "seg": ["--save-model"],
}
FINAL_MODEL = {"cls": "cls_random_seed0_final.pt", "det": "fast_rcnn.pt", "seg": "fcn.safetensors"}


def _final_weights(task: str, folder: Path) -> dict[str, torch.Tensor]:
    path = folder / FINAL_MODEL[task]
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return load_checkpoint(path)["model"]


def _argv(task: str, voc: Path, out: Path, *extra: str) -> list[str]:
    argv = [sys.executable, "-m", "benchmarks.cli", "transfer", "--task", task, "--voc-root", str(voc)]
    argv += ["--weights", "random", "--out", str(out), "--preset", "smoke", "--checkpoint-every", "2"]
    return [*argv, *TASK_ARGS[task], *extra]


def _run(argv: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "workers"),
    [
        ("cls", ("0", "0", "0")),
        ("cls", ("2", "0", "1")),
        ("det", ("0", "0", "0")),
        ("seg", ("1", "0", "0")),
    ],
    ids=["cls", "cls-workers", "det", "seg"],
)
def test_sigterm_then_resume_is_bit_identical(
    task: str, workers: tuple[str, str, str], voc_root: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """``workers``: DataLoader workers of the interrupted, the resumed and the reference run (the data of an
    iteration do not depend on them)."""
    out = tmp_path / "preempted"
    first = _argv(task, voc_root, out, "--iterations", "100000", "--workers", workers[0])
    proc = subprocess.Popen(first, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 1200
    while not list((out / "checkpoints").glob("*.pt")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 75 and "SIGTERM" in err and "--resume" in err and "Traceback" not in err
    (ckpt_path,) = (out / "checkpoints").glob("*.pt")
    stopped = load_checkpoint(ckpt_path)["iteration"]
    assert stopped >= 2 and not list(out.glob("*_seed0*.json"))  # no record for an unfinished run
    target = str(stopped + 2)
    _run(_argv(task, voc_root, out, "--iterations", target, "--resume", "--workers", workers[1]), subprocess_env)
    reference = tmp_path / "reference"
    _run(_argv(task, voc_root, reference, "--iterations", target, "--workers", workers[2]), subprocess_env)
    assert not list((out / "checkpoints").glob("*.pt"))  # removed once the record was written
    a, b = _final_weights(task, out), _final_weights(task, reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if task == "seg":  # the log has each logged iteration once, as the uninterrupted run's
        logged = [line.split(",")[0] for line in (out / "train_log.jsonl").read_text().splitlines()]
        ref_logged = [line.split(",")[0] for line in (reference / "train_log.jsonl").read_text().splitlines()]
        assert logged == ref_logged


@pytest.mark.parametrize("task", ["cls", "seg"])
def test_a_left_checkpoint_needs_resume_and_a_bad_one_is_named(
    task: str, voc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:

    from benchmarks.cli import main
    from transfer.config import TransferRun

    out = tmp_path / "out"
    left = out / "checkpoints" / f"{TransferRun(str(voc_root), 'random', str(tmp_path / 'out')).key(task)}.pt"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"cut short")
    base = ["transfer", "--task", task, "--voc-root", str(voc_root), "--weights", "random", "--out", str(out),
            "--preset", "smoke", "--iterations", "2"]  # fmt: skip
    assert main(base) == 1
    err = capsys.readouterr().err
    assert str(left) in err and "--resume" in err and "Traceback" not in err
    assert main([*base, "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("bench transfer: error:") and str(left) in err


@pytest.mark.parametrize("task", ["cls", "det"])
def test_a_checkpoint_of_the_old_samplers_is_refused_in_one_line(
    task: str, voc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A checkpoint without a version (written while batches came from shuffling loaders, cls with its data-stream
    position) cannot be continued: --resume says to rerun without it, before any training."""
    from benchmarks.cli import main
    from pretrain.checkpoint import atomic_torch_save
    from transfer.config import TransferRun
    from transfer.resumable import TRANSFER_CHECKPOINT_FORMAT

    out = tmp_path / "out"
    left = out / "checkpoints" / f"{TransferRun(str(voc_root), 'random', str(out)).key(task)}.pt"
    old = {"format": TRANSFER_CHECKPOINT_FORMAT, "iteration": 2, "model": {}, "optimizer": {}, "rng": {}}
    old |= {"stream": {"epoch_start": [torch.Generator().get_state()], "taken": 1}} if task == "cls" else {}
    atomic_torch_save(old, left)
    argv = ["transfer", "--task", task, "--voc-root", str(voc_root), "--weights", "random", "--out", str(out),
            "--preset", "smoke", "--iterations", "4", "--resume", *TASK_ARGS[task]]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("bench transfer: error:") and str(left) in last and "rerun without --resume" in last
    assert "Traceback" not in err and left.is_file()  # the file is the user's to delete


def _torchrun(argv: list[str]) -> list[str]:
    """``argv`` (``python -m benchmarks.cli ...``) launched as 2 gloo processes by torchrun."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    return [*launcher, *argv[2:]]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["cls", "det", "seg"])
def test_sigterm_then_resume_under_torchrun_is_bit_identical(
    task: str, voc_root: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """Two processes: every rank's RNG states are in the checkpoint and the sampler gives each rank's share of any
    iteration, so a resumed torchrun run continues each rank's dropout, augmentation and batch order."""
    out = tmp_path / "preempted"
    cpu = ["--device", "cpu", "--batch-size", "4"]
    proc = subprocess.Popen(_torchrun(_argv(task, voc_root, out, "--iterations", "100000", *cpu)),
                            env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 1200
    while not list((out / "checkpoints").glob("*.pt")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    _, err = proc.communicate(timeout=600)
    # torchrun's agent reports the signal with its own traceback; the ranks each say where they stopped
    assert proc.returncode != 0 and "stopped by SIGTERM" in err and "--resume" in err
    (ckpt_path,) = (out / "checkpoints").glob("*.pt")
    ckpt = load_checkpoint(ckpt_path)
    stopped = ckpt["iteration"]
    assert stopped >= 2 and ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2
    assert not torch.equal(ckpt["ranks"][0]["rng"]["torch"], ckpt["ranks"][1]["rng"]["torch"])  # ranks differ
    target = str(stopped + 2)
    _run(_torchrun(_argv(task, voc_root, out, "--iterations", target, "--resume", *cpu)), subprocess_env)
    reference = tmp_path / "reference"
    _run(_torchrun(_argv(task, voc_root, reference, "--iterations", target, *cpu)), subprocess_env)
    a, b = _final_weights(task, out), _final_weights(task, reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
