"""Classification fine-tuning and Fast R-CNN survive SIGTERM: a checkpoint, exit status 75, and a `--resume` that
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
}
FINAL_MODEL = {"cls": "cls_random_seed0_final.pt", "det": "fast_rcnn.pt"}


def _argv(task: str, voc: Path, out: Path, *extra: str) -> list[str]:
    argv = [sys.executable, "-m", "benchmarks.cli", "transfer", "--task", task, "--voc-root", str(voc)]
    argv += ["--weights", "random", "--out", str(out), "--preset", "smoke", "--checkpoint-every", "2"]
    return [*argv, *TASK_ARGS[task], *extra]


def _run(argv: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["cls", "det"])
def test_sigterm_then_resume_is_bit_identical(
    task: str, voc_root: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    out = tmp_path / "preempted"
    proc = subprocess.Popen(_argv(task, voc_root, out, "--iterations", "100000"), env=subprocess_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
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
    _run(_argv(task, voc_root, out, "--iterations", target, "--resume"), subprocess_env)
    reference = tmp_path / "reference"
    _run(_argv(task, voc_root, reference, "--iterations", target), subprocess_env)
    assert not list((out / "checkpoints").glob("*.pt"))  # removed once the record was written
    a = load_checkpoint(out / FINAL_MODEL[task])["model"]
    b = load_checkpoint(reference / FINAL_MODEL[task])["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_left_checkpoint_needs_resume_and_a_bad_one_is_named(
    voc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:

    from benchmarks.cli import main
    from transfer.config import TransferRun

    out = tmp_path / "out"
    left = out / "checkpoints" / f"{TransferRun(str(voc_root), 'random', str(tmp_path / 'out')).key('cls')}.pt"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"cut short")
    base = ["transfer", "--task", "cls", "--voc-root", str(voc_root), "--weights", "random", "--out", str(out),
            "--preset", "smoke", "--iterations", "2"]  # fmt: skip
    assert main(base) == 1
    err = capsys.readouterr().err
    assert str(left) in err and "--resume" in err and "Traceback" not in err
    assert main([*base, "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("bench transfer: error:") and str(left) in err


def _torchrun(argv: list[str]) -> list[str]:
    """``argv`` (``python -m benchmarks.cli ...``) launched as 2 gloo processes by torchrun."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    return [*launcher, *argv[2:]]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["cls", "det"])
def test_sigterm_then_resume_under_torchrun_is_bit_identical(
    task: str, voc_root: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """Two processes: every rank's RNG states and data-stream position are in the checkpoint, so a resumed torchrun
    run continues each rank's dropout, augmentation and batch order where they stopped."""
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
    a = load_checkpoint(out / FINAL_MODEL[task])["model"]
    b = load_checkpoint(reference / FINAL_MODEL[task])["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
