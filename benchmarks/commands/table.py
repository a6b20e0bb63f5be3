"""``bench table``: regenerate the paper's tables from run records (markdown, LaTeX booktabs, CSV).

Reads every ``*.json`` record under the given folders (default ``results/records/``) and writes, under ``--out``:
``table2.*`` (transfer: one row per pretraining method, one column per task/protocol version/dataset/split/metric,
mean ± std over seeds with n), ``table1.*`` (inpainting L1/L2/PSNR), ``per_class_*.*`` (per-class AP/IoU) and
``tables.md`` (all markdown tables). The paper's printed numbers (``results/reported.json``) are shown beside the
measured rows and marked "[reported]". Invalid records are named on stderr and left out. The same records always give
byte-identical files. See docs/records.md for the record schema.
"""

from __future__ import annotations

import argparse
import sys

HELP = "regenerate Table 1/Table 2 and per-class tables (markdown, LaTeX, CSV) from run records"
DESCRIPTION = __doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "record_dirs",
        nargs="*",
        metavar="RECORD_DIRS",
        default=["results/records"],
        help="folders (searched recursively for *.json) or record files",
    )
    parser.add_argument("--out", default="results", help="folder for the tables (created if missing)")
    parser.add_argument(
        "--ci",
        action="store_true",
        help="show mean ± half-width of the 95%% confidence interval (Student t, n-1 dof) instead of mean ± std",
    )
    parser.add_argument(
        "--reported",
        default=None,
        help="the paper's reported numbers (JSON, format version 1; default: results/reported.json of this package)",
    )
    parser.add_argument("--no-reported", action="store_true", help="leave the paper's reported rows out")
    parser.add_argument(
        "--all-per-class",
        action="store_true",
        help="a per-class table for every per-class metric of the records (default: only the one the primary metric "
        "averages, e.g. AP for mAP)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not print the markdown tables")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when any record was left out")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from benchmarks.tables import REPORTED_PATH, build_tables, write_tables

    reported = None if args.no_reported else (args.reported or REPORTED_PATH)
    missing = [d for d in args.record_dirs if not Path(d).exists()]
    if missing:
        print(f"bench table: record path does not exist: {', '.join(missing)}", file=sys.stderr)
        return 2
    tables = build_tables(args.record_dirs, reported_path=reported, ci=args.ci, all_per_class=args.all_per_class)
    for path, message in tables.loaded.invalid:
        print(f"bench table: left out invalid record: {message}", file=sys.stderr)
        del path
    for message in tables.loaded.duplicates:
        print(f"bench table: duplicate record {message}", file=sys.stderr)
    written = write_tables(tables, args.out)
    if not args.quiet:
        print((Path(args.out) / "tables.md").read_text())
    print(
        f"bench table: {len(tables.loaded.records)} records used, {len(tables.loaded.invalid)} left out as invalid; "
        f"wrote {len(written)} files to {args.out}",
        file=sys.stderr,
    )
    return 1 if (args.strict and tables.loaded.invalid) else 0
