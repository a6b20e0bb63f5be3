"""``bench plot``: PNG figures from run folders and records.

From the ``bench pretrain`` run folders under ``--runs``: ``pretrain_loss.png``, the training-loss curves (read from
each folder's ``log.jsonl``; every logged point marked, a running mean over long curves) and ``samples_<run>.png``,
the newest sample grid of each run with its columns named (masked input, raw prediction, prediction pasted into the
hole, original). From the records under ``--records`` (found as ``bench table`` finds them): ``table2_<preset>.png``,
Table 2 as bars with ±1 standard deviation over seeds and n, titled with the records' preset, and
``per_class_*.png``, per-class AP/IoU of each method (background first), one chart per transfer protocol.
``inpainting_<dataset>.png``: for the ``bench inpaint-eval`` records under ``--records``, a grid of
--inpaint-images held-out images (masked input, every evaluated method, original; the PSNR of the hole under each
tile), chosen at evenly spaced ranks of the network's PSNR and recomputed from what the records name (details in
docs/protocols/inpainting.md).
"""

from __future__ import annotations

import argparse
import sys

HELP = "draw training-loss curves, sample grids, Table 2 bars and per-class AP/IoU comparisons (PNG)"
DESCRIPTION = __doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="*", default=[], help="pretraining run folders (searched for log.jsonl)")
    parser.add_argument("--records", nargs="*", default=[], help="record folders or files (as for `bench table`)")
    parser.add_argument("--out", default="results/figures", help="folder for the PNG files")
    parser.add_argument(
        "--inpaint-images",
        type=int,
        default=6,
        help="rows of the inpainting comparison: images at evenly spaced ranks of the network's PSNR (0: no figure)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from benchmarks.figures import plot_loss_curves, plot_per_class, plot_sample_grids, plot_table2

    runs = [r for r in args.runs if Path(r).exists()]
    records = [r for r in args.records if Path(r).exists()]
    for missing in sorted(set(args.runs + args.records) - set(runs + records)):
        print(f"bench plot: {missing} does not exist; skipped", file=sys.stderr)
    written = []
    loss = plot_loss_curves(runs, args.out) if runs else None
    if loss is not None:
        written.append(loss)
    elif runs:
        print("bench plot: no log.jsonl with loss values under --runs", file=sys.stderr)
    if runs:
        written += plot_sample_grids(runs, args.out)
    if records:
        written += plot_table2(records, args.out)
        written += plot_per_class(records, args.out)
    if records and args.inpaint_images > 0:
        from benchmarks.inpaint_figure import plot_inpainting

        figures, problems = plot_inpainting(records, args.out, args.inpaint_images)
        written += figures
        for problem in problems:
            print(f"bench plot: {problem}", file=sys.stderr)
    for path in written:
        print(path)
    print(f"bench plot: wrote {len(written)} figures to {args.out}", file=sys.stderr)
    return 0
