"""``bench selftest --faults``: try the failures an unlucky user meets and show that nothing is lost."""

from __future__ import annotations

import argparse
import sys

HELP = "fault injection: crashes, signals, busy folders, bad files; prints case, outcome, nothing lost"
DESCRIPTION = (
    "With --faults, runs real `bench` processes in a scratch folder (removed afterwards) on a few generated "
    "photographs and injects each failure: a finished run whose checkpoints were deleted, two writers on one run "
    "folder, SIGTERM and kill -9 during training followed by --resume, a truncated checkpoint with a stray "
    "temporary file, a checkpoint of the wrong kind, a records folder that cannot be written, weights with NaN, a "
    "1x1500 image. Prints one row per case and exits non-zero when any case lost work or showed a traceback. "
    "Takes a few minutes on a CPU."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from benchmarks.faults import CASES

    parser.add_argument("--faults", action="store_true", help="run the fault-injection cases (required)")
    parser.add_argument(
        "--only", nargs="+", default=None, choices=sorted(CASES), metavar="CASE",
        help=f"run only these cases: {', '.join(CASES)}",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from benchmarks.faults import format_table, run_faults

    if not args.faults:
        print("bench selftest: nothing to do; pass --faults to run the fault-injection cases", file=sys.stderr)
        return 2
    results = run_faults(args.only, progress=lambda name: print(f"selftest: {name} ...", file=sys.stderr))
    print(format_table(results))
    failed = [r.case for r in results if not r.passed]
    if failed:
        print(f"bench selftest: {len(failed)} of {len(results)} cases failed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    print(f"bench selftest: all {len(results)} cases passed", file=sys.stderr)
    return 0
