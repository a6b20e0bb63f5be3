"""``bench demo``: the whole suite end to end on a synthetic PASCAL VOC dataset, on CPU, in about 15 minutes.

1. Makes (once; kept in ``--cache``) a VOC2007 + VOC2012 devkit tree of real JPEG images, XML annotations with boxes
   and difficult flags, palette-PNG segmentation masks and ImageSets files (20 classes of textured shapes drawn onto
   the sample photographs that scikit-image ships, ``benchmarks/demo_data.py``), 3,000 unlabelled scenes of the same
   kind for pretraining and 100 held-out ones for the inpainting evaluation. Nothing is downloaded.
2. Runs ``bench reproduce --preset cpu`` on it with one seed and shorter training (``DEMO_STAGE_ARGS``): pretrain the
   context encoder and the autoencoder, transfer them and random init to cls, det and seg, train and evaluate the 128-px
   inpainting network and its classical baselines, then write the tables and figures.
3. Prints a banner that says what the numbers can and cannot show, then the tables (``<out>/tables/tables.md``).

Re-running resumes the same sweep (finished cells are not redone). The full ``cpu`` sweep (3 seeds, full length) is
``bench reproduce --preset cpu`` on the same data (docs/results-cpu.md).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

HELP = "run the whole suite on a small synthetic VOC dataset (CPU, minutes) and print the tables"
DESCRIPTION = __doc__

#: data made for the demo; changing anything here changes DATA_VERSION so old caches are remade
DATA_VERSION = 3
#: VOC2007 trainval 1000 / test 500 and VOC2012 train 500 / val 250 labelled images of 20 shape x texture classes
#: (with 250 trainval images every fine-tuned network memorised its training set and stayed at chance on held-out
#: images: docs/protocols/cpu-preset.md)
VOC_SPLITS_2007 = {"train": 500, "val": 500, "test": 500}
VOC_SPLITS_2012 = {"train": 500, "val": 250}
VOC_IMAGE_SIZE = (200, 150)
#: unlabelled scenes of the same kind for pretraining, and held-out ones for the inpainting evaluation
PRETRAIN_IMAGES = 3000
PRETRAIN_IMAGE_SIZE = (256, 192)
HELDOUT_IMAGES = 100
HELDOUT_IMAGE_SIZE = (192, 160)
#: the demo's tasks: the fine-tuning tasks and the 128-px inpainting network with its baselines (Table 1); the SVM
#: probe (``--tasks cls,svm,det,seg,inpaint``) adds about 2-4 minutes per method on 2 cores
DEFAULT_TASKS = "cls,det,seg,inpaint"


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

    from benchmarks.demo_data import make_scene_folder, make_voc_tree

    print(f"bench demo: making the synthetic dataset in {cache} (once)", file=sys.stderr)
    for p in paths.values():
        if p.exists():
            shutil.rmtree(p)
    make_voc_tree(
        paths["voc"], splits_2007=VOC_SPLITS_2007, splits_2012=VOC_SPLITS_2012, image_size=VOC_IMAGE_SIZE, seed=0
    )
    make_scene_folder(paths["images"], count=PRETRAIN_IMAGES, size=PRETRAIN_IMAGE_SIZE, seed=1)
    make_scene_folder(paths["heldout"], count=HELDOUT_IMAGES, size=HELDOUT_IMAGE_SIZE, seed=2)
    atomic_write_text(marker, "demo data complete\n")
    return paths


#: the demo is the ``cpu`` sweep with one seed and shorter training, so that it fits about 15 minutes on 2 cores
#: (19 minutes with 600 / 400 / 500 / 300 pretraining / cls / det / seg iterations and the fsr-fast baseline)
DEMO_STAGE_ARGS: dict[str, str] = {
    "pretrain": "--iterations 300",
    "inpaint-pretrain": "--iterations 200",
    "cls": "--iterations 300 --lr-step 225",
    "det": "--iterations 300 --lr-step 240",
    "seg": "--iterations 200",
}
#: Table 1's classical rows in the demo (the sweep adds fsr-fast, about a minute on 100 held-out images)
DEMO_INPAINT_BASELINES = "mean,telea,ns,shiftmap"

BANNER = """\
======================================================================================================================
bench demo: the cpu-preset sweep, shortened to minutes, on the synthetic dataset it builds (20 classes of textured
shapes on photographs; {n_train} VOC2007 trainval / {n_test} test images, {n_seg} VOC2012 segmentation images,
{n_pretrain} unlabelled scenes). Pretraining runs {pretrain} iterations at 128 px (the paper: 100k at 227 px on 1.2M
images), one transfer seed per cell.
What these numbers CAN show: that every stage runs end to end and how the tables and figures are made. What they
CANNOT show: anything about the paper's claims. At these lengths the transfer runs sit near chance (random scores
give classification mAP about 8.5 and detection mAP about 0.3, predicting background gives segmentation mIoU about
4); that each harness can learn is shown by `pytest -m learning`, the full-length 3-seed cpu sweep and its honest
reading are in docs/results-cpu.md, and the paper-scale protocol is `--preset paper` on real PASCAL VOC. Differences
between rows are noise unless the table marks them.
======================================================================================================================
"""


def banner() -> str:
    pretrain = DEMO_STAGE_ARGS["pretrain"].split()[-1]
    return BANNER.format(
        n_train=VOC_SPLITS_2007["train"] + VOC_SPLITS_2007["val"],
        n_test=VOC_SPLITS_2007["test"],
        n_seg=VOC_SPLITS_2012["train"] + VOC_SPLITS_2012["val"],
        n_pretrain=PRETRAIN_IMAGES,
        pretrain=pretrain,
    )


def run(args: argparse.Namespace) -> int:
    from benchmarks.commands.reproduce import add_arguments as reproduce_arguments
    from benchmarks.commands.reproduce import run as reproduce_run

    paths = make_demo_data(Path(args.cache))
    parser = argparse.ArgumentParser(prog="bench reproduce")
    reproduce_arguments(parser)
    argv = [
        "--preset",
        "cpu",
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
        "--inpaint-baselines",
        DEMO_INPAINT_BASELINES,
    ]
    for stage, extra in DEMO_STAGE_ARGS.items():
        argv.append(f"--stage-args={stage}={extra}")
    if args.quiet_cells:
        argv.append("--quiet-cells")
    print(f"bench demo: bench reproduce {shlex.join(argv)}", file=sys.stderr)
    rc = reproduce_run(parser.parse_args(argv))
    tables = Path(args.out) / "tables" / "tables.md"
    if tables.exists():
        print(banner())
        print(tables.read_text())
        print(f"bench demo: tables in {tables.parent}, figures in {Path(args.out) / 'figures'}", file=sys.stderr)
    return rc
