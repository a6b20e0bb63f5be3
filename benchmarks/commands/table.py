"""``bench table``: regenerate the paper's tables from run records (markdown, LaTeX booktabs, CSV).

Reads the run records under the given folders (default ``results/records/``), searched recursively, so a whole tree
of run folders can be given (``bench table runs/``): a record is a ``*.json`` file that carries the record schema
marker; the other JSON files of run folders (``config.json``, ``env.json``, ``summary.json``, ``plan.json``...) are
passed over, and byte-identical copies of a record count once. Writes, under ``--out``:
``table2.*`` (transfer: one row per pretraining method, one column per task/protocol version/dataset/split/metric,
mean ± std over seeds with n), ``table1.*`` (inpainting L1/L2/PSNR), ``per_class_*.*`` (per-class AP/IoU) and
``tables.md`` (all markdown tables). The paper's printed numbers (``results/reported.json``) are shown beside the
measured rows and marked "[reported]". Invalid records (unreadable, off the schema, or holding a metric outside its
possible range, e.g. an AP outside [0, 100]) are named on stderr and left out. Finding no record at all is an error
(exit status 1) unless ``--allow-empty``. The same records always give byte-identical files. See docs/records.md for
the record schema.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.tables import LoadedRecords

HELP = "regenerate Table 1/Table 2 and per-class tables (markdown, LaTeX, CSV) from run records"
DESCRIPTION = __doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "record_dirs",
        nargs="*",
        metavar="RECORD_DIRS",
        default=["results/records"],
        help="folders (searched recursively for run records, e.g. a whole runs/ tree) or record files",
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
    parser.add_argument(
        "--lead-se",
        action="store_true",
        help="mark with a dagger the best measured cell of each Table 1/Table 2 column that is ahead of the next row "
        "by more than their combined standard error, sqrt(sd1^2/n1 + sd2^2/n2)",
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="write the tables (the paper's rows only) even when no run record is found, and exit 0",
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
    tables = build_tables(
        args.record_dirs,
        reported_path=reported,
        ci=args.ci,
        all_per_class=args.all_per_class,
        lead_se=args.lead_se,
    )
    loaded = tables.loaded
    for _, message in loaded.invalid:
        print(f"bench table: left out invalid record: {message}", file=sys.stderr)
    for message in loaded.duplicates:
        print(f"bench table: duplicate record {message}", file=sys.stderr)
    if loaded.copies:
        print(
            f"bench table: {len(loaded.copies)} files are byte-identical copies of other records; each counted once",
            file=sys.stderr,
        )
    if not loaded.records and not args.allow_empty:
        print(_no_records_message(args.record_dirs, loaded), file=sys.stderr)
        return 1
    written = write_tables(tables, args.out)
    if not args.quiet:
        print((Path(args.out) / "tables.md").read_text())
    print(
        f"bench table: {len(loaded.records)} records used, {len(loaded.invalid)} left out as invalid, "
        f"{len(loaded.passed_over)} other JSON files passed over; wrote {len(written)} files to {args.out}",
        file=sys.stderr,
    )
    return 1 if (args.strict and loaded.invalid) else 0


def _no_records_message(record_dirs: list[str], loaded: LoadedRecords) -> str:
    where = ", ".join(record_dirs)
    found = []
    if loaded.invalid:
        found.append(f"{len(loaded.invalid)} invalid (named above)")
    if loaded.passed_over:
        found.append(f"{len(loaded.passed_over)} other JSON files that are not run records")
    seen = f" (found {' and '.join(found)})" if found else ""
    return (
        f"bench table: found no run records under {where}{seen}; nothing written. Records are the *.json files that "
        "`bench transfer` and `bench inpaint-eval` write into their --out folders; give those folders (or a tree "
        "holding them), or --allow-empty for tables with the paper's rows only"
    )
