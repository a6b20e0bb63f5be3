"""``bench demo``: the whole suite end to end on a small synthetic PASCAL VOC dataset, on CPU, in minutes.

1. Makes (once; kept in ``--cache``) a VOC2007 + VOC2012 devkit tree of real JPEG images, XML annotations with boxes
   and difficult flags, palette-PNG segmentation masks and ImageSets files, objects drawn onto the sample photographs
   that scikit-image ships (``benchmarks/demo_data.py``), plus folders of unlabelled photographs for pretraining and
   held-out photographs for the inpainting evaluation. Nothing is downloaded.
2. Runs ``bench reproduce --preset smoke`` on it: pretrain the context encoder and the autoencoder, transfer them and
   random init to every available task, evaluate inpainting, then write the tables and figures.
3. Prints the tables (``<out>/tables/tables.md``).

The numbers measure nothing (a few iterations on synthetic data); the demo shows that every stage runs and how the
tables are made. Re-running resumes the same sweep (finished cells are not redone).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "run the whole suite on a small synthetic VOC dataset (CPU, minutes) and print the tables"
DESCRIPTION = __doc__

#: data made for the demo; changing anything here changes DATA_VERSION so old caches are remade
DATA_VERSION = 1
VOC_SPLITS_2007 = {"train": 24, "val": 12, "test": 24}
VOC_SPLITS_2012 = {"train": 24, "val": 16}
VOC_IMAGE_SIZE = (160, 120)
PRETRAIN_IMAGES = 48
HELDOUT_IMAGES = 8
#: the demo's tasks; inpainting is left out by default since the 128-px network alone takes minutes on 2 cores
DEFAULT_TASKS = "cls,svm,det,seg"


def _default_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "context-encoders-bench", "demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", default=_default_cache(), help="folder for the synthetic dataset (made once)")
    parser.add_argument("--out", default="runs/demo", help="folder of the sweep (plan, runs, records, tables, figures)")
    parser.add_argument(
        "--tasks",
        default=DEFAULT_TASKS,
        help="comma-separated tasks out of cls, svm, det, seg, inpaint (as `bench reproduce`)",
    )
    parser.add_argument("--seeds", type=int, default=1, help="transfer seeds per task and method")
    parser.add_argument("--quiet-cells", action="store_true", help="keep each cell's output in its log only")


def make_demo_data(cache: Path) -> dict[str, Path]:
    """Make (or reuse) the demo's VOC tree and image folders under ``cache``; returns their paths."""
    from pretrain.checkpoint import atomic_write_text

    paths = {"voc": cache / "voc", "images": cache / "images", "heldout": cache / "heldout"}
    marker = cache / f"complete-v{DATA_VERSION}"
    if marker.exists():
        return paths
    import shutil

    from benchmarks.demo_data import make_image_folder, make_voc_tree

    print(f"bench demo: making the synthetic dataset in {cache} (once)", file=sys.stderr)
    for p in paths.values():
        if p.exists():
            shutil.rmtree(p)
    make_voc_tree(
        paths["voc"], splits_2007=VOC_SPLITS_2007, splits_2012=VOC_SPLITS_2012, image_size=VOC_IMAGE_SIZE, seed=0
    )
    make_image_folder(paths["images"], count=PRETRAIN_IMAGES, size=(256, 256), seed=1)
    make_image_folder(paths["heldout"], count=HELDOUT_IMAGES, size=(160, 160), seed=2)
    atomic_write_text(marker, "demo data complete\n")
    return paths


def run(args: argparse.Namespace) -> int:
    from benchmarks.commands.reproduce import add_arguments as reproduce_arguments
    from benchmarks.commands.reproduce import run as reproduce_run

    paths = make_demo_data(Path(args.cache))
    parser = argparse.ArgumentParser(prog="bench reproduce")
    reproduce_arguments(parser)
    argv = [
        "--preset",
        "smoke",
        "--voc-root",
        str(paths["voc"]),
        "--data",
        str(paths["images"]),
        "--seeds",
        str(args.seeds),
        "--tasks",
        args.tasks,
        "--out",
        args.out,
        "--inpaint-eval-images",
        str(paths["heldout"]),
    ]
    if args.quiet_cells:
        argv.append("--quiet-cells")
    print(f"bench demo: bench reproduce {' '.join(argv)}", file=sys.stderr)
    rc = reproduce_run(parser.parse_args(argv))
    tables = Path(args.out) / "tables" / "tables.md"
    if tables.exists():
        print(tables.read_text())
        print(f"bench demo: tables in {tables.parent}, figures in {Path(args.out) / 'figures'}", file=sys.stderr)
    return rc
