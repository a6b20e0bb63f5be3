"""``bench plot``: PNG figures from run folders and records.

``pretrain_loss.png``: the training-loss curves of every ``bench pretrain`` run folder under ``--runs`` (read from
each folder's ``log.jsonl``). ``per_class_*.png``: per-class AP/IoU of each method, one chart per transfer
protocol, from the records under ``--records`` (the same grouping as ``bench table``). ``inpainting_<dataset>.png``:
for the ``bench inpaint-eval`` records under ``--records``, a grid of --inpaint-images held-out images (masked input,
every evaluated method, original; the PSNR of the hole under each tile), chosen at evenly spaced ranks of the
network's PSNR and recomputed from what the records name (details in docs/protocols/inpainting.md).
"""

from __future__ import annotations

import argparse
import sys

HELP = "draw training-loss curves and per-class AP/IoU comparisons (PNG)"
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

    from benchmarks.figures import plot_loss_curves, plot_per_class

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
    if records:
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
