"""Fault injection: the failures an unlucky user meets, tried for real, with what happened and whether work was lost.

``bench selftest --faults`` runs each case in a scratch folder with real ``bench`` processes on a few generated
photographs: a finished run whose checkpoints were deleted, two writers on one folder, SIGTERM and ``kill -9``
during training, a truncated checkpoint with a stray temporary file, a checkpoint of the wrong kind, a records
folder that cannot be written, weights with NaN, an extreme image. Every case checks that nothing was lost and
that no Python traceback reached the user, and prints one row: case, outcome, nothing lost.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY = ["--preset", "smoke", "--crop-size", "99", "--resize-short", "110", "--batch-size", "2", "--device", "cpu",
        "--sample-every", "0", "--workers", "0", "--checkpoint-every", "2", "--keep-checkpoints", "0"]  # fmt: skip


@dataclass
class CaseResult:
    case: str
    outcome: str
    nothing_lost: bool
    no_traceback: bool

    @property
    def passed(self) -> bool:
        return self.nothing_lost and self.no_traceback


class Scratch:
    """A scratch folder with a few photographs and helpers that run ``bench`` as a user would."""

    def __init__(self, root: Path) -> None:
        from benchmarks.demo_data import make_image_folder

        self.root = root
        self.images = make_image_folder(root / "images", count=8, seed=0)
        self.env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")

    def bench(self, *args: str, **popen: object) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "benchmarks.cli", *args]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, **popen)  # type: ignore[call-overload]

    def pretrain(self, out: Path, *extra: str) -> subprocess.CompletedProcess:
        return self.bench("pretrain", "--data", str(self.images), "--out", str(out), *TINY, *extra)

    def start_pretrain(self, out: Path, *extra: str) -> subprocess.Popen:
        argv = [sys.executable, "-m", "benchmarks.cli", "pretrain", "--data", str(self.images), "--out", str(out)]
        return subprocess.Popen([*argv, *TINY, "--iterations", "100000", *extra], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip

    def finished_run(self, name: str) -> Path:
        out = self.root / name
        proc = self.pretrain(out, "--iterations", "4")
        if proc.returncode != 0:
            raise RuntimeError(f"the setup run failed: {proc.stderr[-500:]}")
        return out


def _wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, limit: float = 600.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the run ended or stalled before the fault could be injected")
        time.sleep(0.1)


def _clean(*procs: subprocess.CompletedProcess) -> bool:
    return all("Traceback" not in (p.stderr or "") for p in procs)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def case_deleted_checkpoints(s: Scratch) -> CaseResult:
    out = s.finished_run("exported")
    shutil.rmtree(out / "checkpoints")
    before = _snapshot(out)
    proc = s.pretrain(out, "--iterations", "4", "--resume")
    kept = _snapshot(out) == before and proc.returncode == 1
    outcome = f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1][:90]}"
    return CaseResult("finished run without checkpoints, pretrain --resume again", outcome, kept, _clean(proc))


def case_two_writers(s: Scratch) -> CaseResult:
    out = s.finished_run("busy")
    first = s.start_pretrain(out, "--resume")
    try:
        _wait_for(lambda: (out / "log.jsonl").read_text().count('"event": "start"') > 1, first)  # the resumed run
        second = s.pretrain(out, "--iterations", "100000", "--resume")
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=600)
    named = f"process {first.pid}" in second.stderr
    ok = second.returncode == 1 and named and first.returncode == 75
    outcome = f"second exit {second.returncode}, names the holder: {named}; first exit {first.returncode}"
    return CaseResult("second writer on a busy run folder", outcome, ok, _clean(second) and "Traceback" not in err)


def _signal_case(s: Scratch, sig: signal.Signals) -> CaseResult:
    out = s.root / f"signal-{sig.name}"
    proc = s.start_pretrain(out)
    _wait_for(lambda: (out / "checkpoints" / "ckpt_00000002.pt").exists(), proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    reached = int(summary.get("iteration") or 2)
    resumed = s.pretrain(out, "--iterations", str(reached + 2), "--resume")
    final = json.loads((out / "summary.json").read_text())
    ok = resumed.returncode == 0 and final["iteration"] == reached + 2
    if sig != signal.SIGKILL:
        ok = ok and proc.returncode == 75
    outcome = f"exit {proc.returncode}, resumed from iteration {reached} to {final['iteration']}"
    clean = "Traceback" not in err and _clean(resumed)
    return CaseResult(f"{sig.name} during pretrain, then --resume", outcome, ok, clean)


def case_sigterm(s: Scratch) -> CaseResult:
    return _signal_case(s, signal.SIGTERM)


def case_kill9(s: Scratch) -> CaseResult:
    return _signal_case(s, signal.SIGKILL)


def case_truncated_checkpoint(s: Scratch) -> CaseResult:
    out = s.finished_run("truncated")
    newest = out / "checkpoints" / "ckpt_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    (out / "checkpoints" / ".ckpt_00000006.pt.x.tmp").write_bytes(b"half")
    proc = s.pretrain(out, "--iterations", "6", "--resume")
    ok = proc.returncode == 0 and "falling back" in proc.stderr and not list(out.rglob(".*.tmp"))
    return CaseResult("truncated newest checkpoint and a stray temporary", "fell back to ckpt_00000002, stray removed"
                      if ok else f"exit {proc.returncode}", ok, _clean(proc))  # fmt: skip


def case_wrong_checkpoint(s: Scratch) -> CaseResult:
    import torch

    out = s.finished_run("wrong-kind")
    newest = out / "checkpoints" / "ckpt_00000004.pt"
    torch.save(torch.load(newest, weights_only=True)["encoder"], newest)  # a plain state dict
    proc = s.pretrain(out, "--iterations", "6", "--resume")
    last = proc.stderr.strip().splitlines()[-1]
    return CaseResult("plain state dict where a checkpoint should be", last[:100],
                      proc.returncode == 1 and str(newest) in last, _clean(proc))  # fmt: skip


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))


def case_record_not_writable(s: Scratch) -> CaseResult:
    out = s.root / "records"
    out.mkdir()
    proc = s.bench("inpaint-eval", "--baseline", "mean", "--images", str(s.images), "--out", str(out),
                   preexec_fn=_limit_file_size)  # fmt: skip
    printed = '"schema": "context-encoders-bench/run-record"' in proc.stdout
    return CaseResult("records folder that cannot be written (file-size limit)", f"exit {proc.returncode}, record "
                      f"printed to stdout: {printed}", printed and proc.returncode == 1, _clean(proc))  # fmt: skip


def case_nan_weights(s: Scratch) -> CaseResult:
    import torch
    from safetensors.torch import load_file, save_file

    out = s.root / "nan-weights"
    proc = s.bench("pretrain", "--method", "random", "--out", str(out), "--device", "cpu")
    state = load_file(str(out / "encoder.safetensors"))
    state["3.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(out / "encoder.safetensors"))
    from transfer.weights import WeightsError, load_alexnet_trunk

    try:
        load_alexnet_trunk(out)
        message, ok = "loaded", False
    except WeightsError as exc:
        message, ok = str(exc).split(": ", 1)[-1][:90], "3.weight" in str(exc)
    del torch
    return CaseResult("encoder with a NaN weight given to transfer", message, ok and proc.returncode == 0, True)


def case_strip_image(s: Scratch) -> CaseResult:
    import numpy as np
    from PIL import Image

    data = s.root / "with-strip"
    shutil.copytree(s.images, data)
    Image.fromarray(np.full((1500, 1, 3), 128, np.uint8)).save(data / "strip.png")
    out = s.root / "strip-run"
    proc = s.bench("pretrain", "--data", str(data), "--out", str(out), *TINY, "--iterations", "2")
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    skipped = [Path(item["path"]).name for item in summary.get("skipped", [])]
    return CaseResult("a 1x1500 image among the training photographs", f"exit {proc.returncode}, skipped {skipped}",
                      proc.returncode == 0 and skipped == ["strip.png"], _clean(proc))  # fmt: skip


CASES: dict[str, Callable[[Scratch], CaseResult]] = {
    "deleted-checkpoints": case_deleted_checkpoints,
    "two-writers": case_two_writers,
    "sigterm": case_sigterm,
    "kill-9": case_kill9,
    "truncated-checkpoint": case_truncated_checkpoint,
    "wrong-checkpoint": case_wrong_checkpoint,
    "record-not-writable": case_record_not_writable,
    "nan-weights": case_nan_weights,
    "strip-image": case_strip_image,
}


def run_faults(only: list[str] | None = None, progress: Callable[[str], None] | None = None) -> list[CaseResult]:
    """Run the cases (all, or those named in ``only``) in a scratch folder that is removed afterwards."""
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        scratch = Scratch(Path(tmp))
        for name, case in CASES.items():
            if only and name not in only:
                continue
            if progress is not None:
                progress(name)
            try:
                results.append(case(scratch))
            except Exception as exc:  # a case that cannot even run is a failed case, reported in its row
                results.append(CaseResult(name, f"could not run: {type(exc).__name__}: {exc}", False, True))
    return results


def format_table(results: list[CaseResult]) -> str:
    rows = [("case", "outcome", "nothing lost", "no traceback")]
    rows += [(r.case, r.outcome, "yes" if r.nothing_lost else "NO", "yes" if r.no_traceback else "NO") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
