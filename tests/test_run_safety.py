"""Run folders are never trained over, one process writes a folder at a time, resume picks a readable checkpoint.

Everything here runs real `bench pretrain` steps on real image files; the behaviours about processes (two writers,
kill -9) use real subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.cli import main
from pretrain.checkpoint import load_checkpoint

TINY = ["--preset", "smoke", "--crop-size", "99", "--resize-short", "110", "--batch-size", "2", "--device", "cpu"]
SHORT = ["--sample-every", "0", "--workers", "0", "--checkpoint-every", "2", "--keep-checkpoints", "0"]


def _pretrain(data: Path, out: Path, *extra: str) -> int:
    return main(["pretrain", "--data", str(data), "--out", str(out), *TINY, *SHORT, *extra])


def _bench_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.cli", *args]


@pytest.fixture(scope="module")
def run4(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-iteration run (checkpoints at 2 and 4, all kept)."""
    out = tmp_path_factory.mktemp("safety") / "run4"
    assert _pretrain(image_folder, out, "--iterations", "4") == 0
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------- a finished run is kept
@pytest.mark.parametrize("resume", [False, True])
def test_run_without_checkpoints_is_not_trained_over(
    run4: Path, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture, resume: bool
) -> None:
    out = tmp_path / "exported"
    shutil.copytree(run4, out)
    shutil.rmtree(out / "checkpoints")  # deleted to save disk after the export
    before = _snapshot(out)
    assert _pretrain(image_folder, out, "--iterations", "4", *(["--resume"] if resume else [])) == 1
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err and "encoder.safetensors" in err
    assert _snapshot(out) == before  # export, log, config and summary untouched


def test_refused_resume_leaves_config_as_it_was(run4: Path, image_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "copy"
    shutil.copytree(run4, out)
    before = _snapshot(out)
    assert _pretrain(image_folder, out, "--iterations", "8", "--resume", "--lr", "0.1") == 1
    assert "lr: run has 0.0002, now 0.1" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_overwrite_starts_a_new_run_in_place(run4: Path, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    shutil.copytree(run4, out)
    (out / "notes.txt").write_text("the user's own file\n")
    assert _pretrain(image_folder, out, "--iterations", "2", "--overwrite") == 0
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in logged if "loss" in r] == [2]  # the old run's lines are gone, not appended to
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt_00000002.pt"]
    assert json.loads((out / "summary.json").read_text())["iteration"] == 2
    assert (out / "notes.txt").read_text() == "the user's own file\n"
    assert _pretrain(image_folder, out, "--iterations", "2", "--overwrite", "--resume") == 1


# ---------------------------------------------------------------------------------- one writer per folder
def _wait_for(predicate, what: str, proc: subprocess.Popen | None = None, limit: float = 300.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}: {err[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _start_long_pretrain(data: Path, out: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    argv = _bench_argv("pretrain", "--data", str(data), "--out", str(out), *TINY, *SHORT, "--iterations", "100000")
    return subprocess.Popen(
        [*argv, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _training(out: Path) -> bool:
    log = out / "log.jsonl"
    return log.is_file() and '"event": "start"' in log.read_text()


def test_second_writer_stops_at_once_naming_the_holder(
    run4: Path, image_folder: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    out = tmp_path / "busy"
    shutil.copytree(run4, out)
    starts_of_run4 = (out / "log.jsonl").read_text().count('"event": "start"')
    first = _start_long_pretrain(image_folder, out, subprocess_env, "--resume")
    try:
        # the copied log already holds run4's start: wait for the first run's own one (it holds the lock by then)
        started = lambda: (out / "log.jsonl").read_text().count('"event": "start"') > starts_of_run4  # noqa: E731
        _wait_for(started, "the first run to start training", first)
        lines_before = (out / "log.jsonl").read_text().count('"event": "start"')
        second = subprocess.run(
            _bench_argv("pretrain", "--data", str(image_folder), "--out", str(out), *TINY, "--resume"),
            env=subprocess_env,
            capture_output=True,
            text=True,
        )
        assert second.returncode == 1
        assert f"process {first.pid}" in second.stderr and "in use" in second.stderr
        assert "Traceback" not in second.stderr
        assert (out / "log.jsonl").read_text().count('"event": "start"') == lines_before
    finally:
        first.kill()  # kill -9: the kernel releases the lock with the process
        first.communicate()
    from pretrain.runlock import run_folder_lock

    with run_folder_lock(out, "test"):  # free again after kill -9
        pass


def test_transfer_and_reproduce_refuse_a_busy_folder(tmp_path: Path, subprocess_env: dict[str, str]) -> None:

    from benchmarks.commands.transfer import run_lock_name
    from pretrain.runlock import run_folder_lock
    from transfer.config import TransferRun

    out = tmp_path / "records"
    run = TransferRun(str(tmp_path), "random", str(out), seed=0)
    with run_folder_lock(out, "bench transfer --task cls (test holder)", name=run_lock_name(run, "cls")):
        proc = subprocess.run(
            _bench_argv("transfer", "--task", "cls", "--voc-root", str(tmp_path), "--weights", "random", "--out",
                        str(out), "--seed", "0"),
            env=subprocess_env, capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 1 and f"process {os.getpid()}" in proc.stderr and "Traceback" not in proc.stderr
        other_seed = subprocess.run(
            _bench_argv("transfer", "--task", "cls", "--voc-root", str(tmp_path), "--weights", "random", "--out",
                        str(out), "--seed", "1"),
            env=subprocess_env, capture_output=True, text=True,
        )  # fmt: skip
        assert "in use" not in other_seed.stderr  # another run may share the records folder
    sweep = tmp_path / "sweep"
    with run_folder_lock(sweep, "bench reproduce (test holder)", name="plan.lock"):
        proc = subprocess.run(
            _bench_argv("reproduce", "--tasks", "none", "--out", str(sweep), "--quiet-cells"),
            env=subprocess_env, capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 2 and f"process {os.getpid()}" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------- resume chooses well
def test_resume_falls_back_past_a_truncated_checkpoint(run4: Path, image_folder: Path, tmp_path: Path, capsys):
    out = tmp_path / "truncated"
    shutil.copytree(run4, out)
    newest = out / "checkpoints" / "ckpt_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a disk that filled up mid-write, or a copy cut short
    stray = out / "checkpoints" / ".ckpt_00000006.pt.abc123.tmp"
    stray.write_bytes(b"half a checkpoint")  # what a killed atomic write leaves
    assert _pretrain(image_folder, out, "--iterations", "6", "--resume") == 0
    err = capsys.readouterr().err
    assert "ckpt_00000004.pt" in err and "falling back to" in err and "ckpt_00000002.pt" in err
    assert str(stray) in err and not stray.exists()
    assert load_checkpoint(out / "checkpoints" / "ckpt_00000004.pt")["iteration"] == 4  # rewritten, readable
    assert json.loads((out / "summary.json").read_text())["iteration"] == 6


def test_resume_with_only_unreadable_checkpoints_is_an_error(run4: Path, image_folder: Path, tmp_path: Path, capsys):
    out = tmp_path / "unreadable"
    shutil.copytree(run4, out)
    for ckpt in (out / "checkpoints").glob("*.pt"):
        ckpt.write_bytes(b"garbage")
    assert _pretrain(image_folder, out, "--iterations", "6", "--resume") == 1
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "can be read" in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["other-method", "state-dict", "no-rng"])
def test_resume_from_the_wrong_kind_of_checkpoint_is_one_line(
    run4: Path, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture, kind: str
) -> None:
    import torch

    out = tmp_path / kind
    shutil.copytree(run4, out)
    newest = out / "checkpoints" / "ckpt_00000004.pt"
    ckpt = load_checkpoint(newest)
    if kind == "other-method":
        ckpt["method"] = "autoencoder"
    elif kind == "state-dict":
        ckpt = ckpt["encoder"]
    else:
        del ckpt["rng"]
    torch.save(ckpt, newest)
    assert _pretrain(image_folder, out, "--iterations", "6", "--resume") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(newest) in err and err.startswith("bench pretrain: error:")
    expected = {"other-method": "--method autoencoder", "state-dict": "plain state dict", "no-rng": "lacks rng"}
    assert expected[kind] in err


# ---------------------------------------------------------------------------------- preemption
def test_sigterm_writes_a_checkpoint_and_resume_is_bit_identical(
    image_folder: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    import torch

    out = tmp_path / "preempted"
    proc = _start_long_pretrain(image_folder, out, subprocess_env, "--workers", "1")
    _wait_for(lambda: (out / "checkpoints" / "ckpt_00000002.pt").exists(), "the first checkpoint", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-2000:]
    assert "SIGTERM" in err and "--resume" in err and "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    stopped = summary["iteration"]
    assert summary["status"] == "preempted" and summary["signal"] == "SIGTERM"
    assert load_checkpoint(summary["checkpoint"])["iteration"] == stopped >= 2
    # continue to two iterations past the preemption, and compare with a run that was never interrupted (both in
    # subprocesses with the environment of the first: the thread count changes the floating-point sums)
    target = str(stopped + 2)
    reference = tmp_path / "reference"
    for folder, extra in ((out, ["--resume"]), (reference, [])):
        argv = _bench_argv("pretrain", "--data", str(image_folder), "--out", str(folder), *TINY, *SHORT, *extra)
        done = subprocess.run([*argv, "--iterations", target], env=subprocess_env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    a = load_checkpoint(sorted((out / "checkpoints").glob("*.pt"))[-1])["model"]
    b = load_checkpoint(sorted((reference / "checkpoints").glob("*.pt"))[-1])["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reproduce_passes_sigterm_to_its_cell_and_marks_it_interrupted(
    image_folder: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    sweep = tmp_path / "sweep"
    long_pretrain = "pretrain=--iterations 100000 " + " ".join(TINY + SHORT)
    argv = _bench_argv("reproduce", "--tasks", "cls", "--methods", "context-encoder", "--voc-root", str(tmp_path))
    argv += ["--data", str(image_folder), "--out", str(sweep), "--quiet-cells", "--stage-args", long_pretrain]
    proc = subprocess.Popen(argv, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = sweep / "runs" / "context-encoder"
    try:
        _wait_for(lambda: (run / "checkpoints" / "ckpt_00000002.pt").exists(), "the cell's first checkpoint", proc)
        proc.send_signal(signal.SIGTERM)  # to the sweep only: it must pass it on
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 75 and "SIGTERM" in err and "Traceback" not in err
    cell = {c["id"]: c for c in json.loads((sweep / "plan.json").read_text())["cells"]}["pretrain/context-encoder"]
    assert cell["status"] == "interrupted" and cell["returncode"] == 75
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "preempted" and load_checkpoint(summary["checkpoint"])["iteration"] >= 2


@pytest.mark.slow
def test_selftest_faults_loses_nothing(subprocess_env: dict[str, str]) -> None:
    proc = subprocess.run(_bench_argv("selftest", "--faults"), env=subprocess_env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "outcome" not in line]
    cells = [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]
    assert len(rows) == 9 and all(c[-2:] == ["yes", "yes"] for c in cells)
