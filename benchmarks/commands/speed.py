"""``bench speed``: measure this machine's peak and every hot path of the suite (images/s, GFLOP/s, MFU, memory)."""

from __future__ import annotations

import argparse

HELP = "measure machine peak and the suite's hot paths (images/s, GFLOP/s, model FLOP utilisation, peak memory)"
DESCRIPTION = (
    "Runs each measurement in its own subprocess: the machine's peak (large fp32/bf16 matrix products and "
    "convolutions), then each hot path (context-encoder step, inpainting step, data loader, classification, Fast "
    "R-CNN and FCN steps, selective-search proposals) in fp32 and bf16 where they apply. Prints a table and writes "
    "JSON. Numbers are only comparable within one run on one machine. The measuring processes keep freed memory for "
    "reuse as every bench command does (BENCH_MALLOC=system in the environment measures glibc's defaults instead). "
    "--only names: ce_step, ce_step_before, ce_convs (the step's convolutions alone: its MFU ceiling), inpaint_step, "
    "inpaint_step_before, masks, data_loader, cls_step, det_step, fcn_step, proposals."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="short measurements (about 1.5 s each) and smaller peaks")
    parser.add_argument("--json", default=None, help="write the full report (with environment) to this JSON file")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="measure only these hot paths")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads in each measurement (default: torch's default, one per core). On a machine shared "
        "with other work, 1 thread gives steadier numbers",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from benchmarks.speed import format_table, run_all
    from pretrain.checkpoint import atomic_write_json

    bar = tqdm(desc="bench speed", unit="measurement", leave=False)

    def progress(what: str) -> None:
        bar.set_postfix_str(what)
        bar.update(1)

    report = run_all(quick=args.quick, device=args.device, only=args.only, threads=args.threads, progress=progress)
    bar.close()
    print(format_table(report))
    if args.json:
        atomic_write_json(Path(args.json), report)
        print(f"wrote {args.json}")
    return 0 if not any("error" in r for r in report["results"]) else 1
