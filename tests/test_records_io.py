"""Run records are written atomically under a free name, with the user's file mode, and never lost.

Concurrent writers are real processes; the full disk is a real file-size limit on a real `bench` process (the
kernel refuses the write as it would on a full disk), the read-only folder a real folder without write permission.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from transfer.records import make_record, read_record, write_record


def _record(seed: int = 0) -> dict:
    return make_record(
        task="cls",
        protocol_id="test-protocol",
        protocol_version=1,
        protocol_description="a record written by the tests",
        dataset="VOC2007",
        train_split="trainval",
        eval_split="test",
        metrics={"mAP": 50.0},
        primary_metric="mAP",
        weights={"source": "random", "method": "random", "sha256": None},
        seed=seed,
        config={},
        started_at="2026-01-01T00:00:00Z",
        wall_time_s=1.0,
    )


def _write_after_barrier(barrier: multiprocessing.synchronize.Barrier, folder: str, record: dict, queue) -> None:
    barrier.wait()  # every writer finishes at the same moment
    queue.put(str(write_record(record, folder)))


def test_concurrent_writers_never_lose_a_record(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    writers, rounds = 6, 3
    records = [{**_record(), "config": {"writer": i}} for i in range(writers)]  # the same file name for all
    for round_ in range(rounds):
        folder = tmp_path / f"round{round_}"
        barrier, queue = ctx.Barrier(writers), ctx.Queue()
        procs = [ctx.Process(target=_write_after_barrier, args=(barrier, str(folder), records[i], queue))
                 for i in range(writers)]  # fmt: skip
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
            assert p.exitcode == 0
        paths = sorted(queue.get(timeout=10) for _ in range(writers))
        assert len(set(paths)) == writers  # every writer got its own file
        files = sorted(folder.glob("*.json"))
        assert [str(f) for f in files] == paths and not list(folder.glob(".*"))  # no temporaries left
        assert sorted(read_record(f)["config"]["writer"] for f in files) == list(range(writers))


def test_records_and_checkpoints_get_the_normal_file_mode(tmp_path: Path) -> None:
    import torch

    from pretrain.checkpoint import atomic_torch_save

    old = os.umask(0o022)
    try:
        record = write_record(_record(), tmp_path)
        ckpt = atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "ckpt.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(record.stat().st_mode) == 0o644
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o644


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))


def _inpaint_eval(images: Path, out: Path, env: dict[str, str], **popen) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "benchmarks.cli", "inpaint-eval", "--baseline", "mean", "--images", str(images)]
    return subprocess.run([*argv, "--out", str(out)], env=env, capture_output=True, text=True, **popen)


def _printed_record(stdout: str) -> dict:
    start = stdout.index('{\n  "code_version"')
    return json.loads(stdout[start : stdout.index("\n}\n", start) + 2])


def test_a_record_that_cannot_be_written_is_printed(
    image_folder: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    out = tmp_path / "records"
    out.mkdir()
    proc = _inpaint_eval(image_folder, out, subprocess_env, preexec_fn=_limit_file_size)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot write the run record" in proc.stderr and str(out) in proc.stderr
    record = _printed_record(proc.stdout)
    assert record["task"] == "inpaint" and record["metrics"]
    assert not list(out.iterdir())  # no partial file


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_records_folder(image_folder: Path, tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    out = tmp_path / "records"
    out.mkdir()
    out.chmod(0o555)
    try:
        proc = _inpaint_eval(image_folder, out, subprocess_env)
    finally:
        out.chmod(0o755)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and str(out) in proc.stderr
    assert _printed_record(proc.stdout)["task"] == "inpaint"
