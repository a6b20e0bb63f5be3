"""Speed benchmark engine: machine peak, hot-path step rates, achieved FLOP/s and model FLOP utilisation.

Each measurement runs in a fresh subprocess (``python -m benchmarks.speed --worker NAME PRECISION``) so that its
peak memory is its own and one hot path's caches or thread pools cannot flatter the next. FLOPs are counted once
per workload with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions, forward and
backward); achieved GFLOP/s = counted FLOPs per step / median step time. The model FLOP utilisation (MFU) is that
figure divided by the measured peak of the same precision on the same machine, in the same ``bench speed`` run.

What is measured is ``benchmarks.hot_paths`` (the workloads and their registry); this module only times them, so
the dependency runs one way: ``speed`` imports ``hot_paths``, never the reverse.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.hot_paths import HOT_PATHS, Workload
from pretrain.allocator import allocator_mode, keep_freed_memory
from pretrain.distributed import resolve_device
from pretrain.runinfo import environment_info, utc_now_iso


@dataclass
class Measurement:
    name: str
    precision: str
    images_per_step: int
    steps: int
    median_step_s: float
    images_per_s: float
    gflop_per_step: float | None
    gflop_per_s: float | None
    mfu: float | None  # achieved / measured peak of the same precision
    peak_rss_mb: float
    baseline_rss_mb: float
    note: str = ""
    feeds: str | None = None
    #: how ``median_step_s`` was taken: "median", "mean" (loaders) or "min" (peaks)
    aggregate: str = "median"
    #: the measuring process's memory allocator mode (``pretrain.allocator``): heap, system or unsupported
    allocator: str = "system"


def _rss_mb() -> float:
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_steps(
    step: Callable[[], Any], *, warmup: int, min_time_s: float, min_steps: int, sync: Callable[[], None]
) -> list[float]:
    """Per-step wall times after ``warmup`` untimed steps; runs until both minimums are met."""
    for _ in range(warmup):
        step()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_steps or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def count_flops(step: Callable[[], Any]) -> float:
    """FLOPs of one call of ``step`` (matmuls and convolutions, forward and backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


#: environment variable that carries ``--threads`` into the measuring subprocesses
THREADS_ENV = "BENCH_SPEED_THREADS"

# ---------------------------------------------------------------- peak


def _peak_workloads(device: torch.device, precision: str, quick: bool) -> dict[str, Workload]:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = 1024 if quick else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    x = torch.randn(16, 256, 27, 27, device=device, dtype=dtype)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(device=device, dtype=dtype)

    def matmul() -> Any:
        return a @ b

    @torch.no_grad()
    def convolution() -> Any:
        return conv(x)

    return {
        "matmul": Workload(matmul, 0, f"{n}x{n} @ {n}x{n}"),
        "conv": Workload(convolution, 0, "3x3 256->256, 16x27x27"),
    }


def _sync_for(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def run_worker(name: str, precision: str, device_name: str, quick: bool) -> dict[str, Any]:
    """Measure one workload in this process (called in a subprocess by ``run_all``)."""
    device = resolve_device(device_name)
    if os.environ.get(THREADS_ENV):
        torch.set_num_threads(int(os.environ[THREADS_ENV]))
    torch.manual_seed(0)
    baseline = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if name.startswith("peak:"):
        workload = _peak_workloads(device, precision, quick)[name.split(":", 1)[1]]
    else:
        workload = HOT_PATHS[name][1](device, precision, quick)
    sync = _sync_for(device)
    workload.sync = sync
    flops = count_flops(workload.step) if workload.count_flops else None
    times = time_steps(
        workload.step,
        warmup=workload.warmup if workload.warmup is not None else (1 if quick else 3),
        min_time_s=1.5 if quick else 8.0,
        min_steps=3 if quick else 10,
        sync=sync,
    )
    # a peak is the best the machine can do: the fastest repetition; a hot path is typical: the median
    if name.startswith("peak:"):
        median = min(times)
    elif workload.aggregate == "mean":
        median = sum(times) / len(times)
    else:
        median = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb()
    m = Measurement(
        name=name,
        precision=precision,
        images_per_step=workload.images_per_step,
        steps=len(times),
        median_step_s=median,
        images_per_s=workload.images_per_step / median if workload.images_per_step else 0.0,
        gflop_per_step=None if flops is None else flops / 1e9,
        gflop_per_s=None if flops is None else flops / 1e9 / median,
        mfu=None,
        peak_rss_mb=peak,
        baseline_rss_mb=baseline if device.type != "cuda" else 0.0,
        note=workload.note,
        feeds=workload.feeds,
        aggregate="min" if name.startswith("peak:") else workload.aggregate,
        allocator=allocator_mode(),
    )
    return asdict(m)


def _spawn(name: str, precision: str, device: str, quick: bool, threads: int | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.speed", "--worker", name, precision, device]
    if quick:
        cmd.append("--quick")
    env = dict(os.environ)
    if threads:
        env[THREADS_ENV] = str(threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        return {"name": name, "precision": precision, "error": tail or f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_all(
    *,
    quick: bool,
    device: str,
    only: list[str] | None,
    threads: int | None = None,
    progress: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Peak first, then every selected hot path in each of its precisions; MFU filled in against the peak."""
    dev = resolve_device(device)
    precisions = ("fp32", "bf16")
    peaks: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    for kind in ("matmul", "conv"):
        for prec in precisions:
            progress(f"peak {kind} {prec}")
            r = _spawn(f"peak:{kind}", prec, device, quick, threads)
            rows.append(r)
            if r.get("gflop_per_s"):
                peaks[prec] = max(peaks.get(prec, 0.0), r["gflop_per_s"])
    names = [n for n in HOT_PATHS if not only or n in only]
    unknown = sorted(set(only or []) - set(HOT_PATHS) - {"peak"})
    if unknown:
        raise SystemExit(f"unknown hot path(s) {unknown}; choose from {sorted(HOT_PATHS)}")
    for name in names:
        for prec in HOT_PATHS[name][2]:
            progress(f"{name} {prec}")
            rows.append(_spawn(name, prec, device, quick, threads))
    for r in rows:
        if r.get("gflop_per_s") and peaks.get(r["precision"]):
            r["mfu"] = r["gflop_per_s"] / peaks[r["precision"]]
    _add_feed_ratios(rows)
    return {
        "quick": quick,
        "device": str(dev),
        "threads": threads or torch.get_num_threads(),
        "allocator": sorted({r["allocator"] for r in rows if "allocator" in r}),
        "load_average": list(os.getloadavg()),
        "peak_gflop_per_s": peaks,
        "measured_at": utc_now_iso(),
        "environment": environment_info(dev),
        "results": rows,
    }


def _add_feed_ratios(rows: list[dict[str, Any]]) -> None:
    """``feed_ratio`` = images/s of a feeder (the data loader) / images/s of the fastest measured precision of the
    step it feeds (the most demanding consumer), both measured alone in this run."""
    for r in rows:
        target = r.get("feeds")
        if not target or not r.get("images_per_s"):
            continue
        rates = [x["images_per_s"] for x in rows if x.get("name") == target and x.get("images_per_s")]
        if rates:
            r["feed_ratio"] = r["images_per_s"] / max(rates)
            r["feeds_images_per_s"] = max(rates)


def format_table(report: dict[str, Any]) -> str:
    head = f"{'hot path':<26}{'prec':<6}{'batch':>6}{'img/s':>10}{'GFLOP/s':>10}{'MFU':>7}{'peak MB':>9}  note"
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"{r['name']:<26}{r['precision']:<6}  ERROR: {r['error'].splitlines()[-1]}")
            continue
        ips = f"{r['images_per_s']:.1f}" if r["images_per_step"] else "-"
        gf = f"{r['gflop_per_s']:.0f}" if r["gflop_per_s"] else "-"
        mfu = f"{100 * r['mfu']:.0f}%" if r.get("mfu") else "-"
        lines.append(
            f"{r['name']:<26}{r['precision']:<6}{r['images_per_step'] or '-':>6}{ips:>10}{gf:>10}{mfu:>7}"
            f"{r['peak_rss_mb']:>9.0f}  {r['note']}"
        )
        if r.get("feed_ratio"):
            lines[-1] += f"; {r['feed_ratio']:.1f}x the {r['feeds']} rate ({r['feeds_images_per_s']:.1f} img/s)"
    peaks = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in report["peak_gflop_per_s"].items())
    load = ", ".join(f"{x:.1f}" for x in report.get("load_average", []))
    lines.append(
        f"measured peak: {peaks}  (device {report['device']}, {report.get('threads')} threads, "
        f"quick={report['quick']}, allocator {'/'.join(report.get('allocator') or ['?'])}, "
        f"load average at the end {load})"
    )
    return "\n".join(lines)


def _main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        keep_freed_memory()  # as the `bench` commands do, so that the figures are theirs
        name, precision, device = argv[1:4]
        print(json.dumps(run_worker(name, precision, device, "--quick" in argv)))
        return 0
    raise SystemExit("usage: python -m benchmarks.speed --worker NAME PRECISION DEVICE [--quick] (use `bench speed`)")


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
