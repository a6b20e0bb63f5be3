"""``bench reproduce``: the whole sweep of the paper (pretraining, every transfer task for each method and seed, the
tables) as a plan of cells kept on disk in ``<out>/plan.json``.

Cells run one at a time as ``python -m benchmarks.cli ...`` subprocesses, each with its log in ``<out>/logs/``.
Re-running the same command skips finished cells, runs interrupted ones again (a pretraining run resumes from its
checkpoint) and retries failed ones only with ``--retry-failed``. Cells whose command is missing from this build are
reported, not run. ``--dry-run`` prints the plan. Records are gathered in ``<out>/records/``, tables are written to
``<out>/tables/`` and figures to ``<out>/figures/``. See docs/running.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys

HELP = "run the whole sweep (pretrain, transfer x methods x seeds, tables) as a resumable plan of cells"
DESCRIPTION = __doc__


def _stage_arg(text: str) -> tuple[str, list[str]]:
    from benchmarks.reproduce import STAGES

    stage, sep, rest = text.partition("=")
    if not sep or stage not in STAGES:
        raise argparse.ArgumentTypeError(f"expected STAGE='OPTIONS' with STAGE one of {', '.join(STAGES)}: {text!r}")
    return stage, shlex.split(rest)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        default="smoke",
        choices=["smoke", "cpu", "paper"],
        help="passed to every stage: paper = the published settings; cpu = the same code sized for 2 CPU cores on "
        "the demo dataset, where every harness fits its training data (3 seeds, about an hour); smoke = toy scale, "
        "code paths only",
    )
    parser.add_argument(
        "--voc-root",
        default=None,
        help="PASCAL VOC root (VOCdevkit with VOC2007 and VOC2012); required by the transfer tasks",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="unlabelled pretraining images: a folder or voc:ROOT "
        "(passed to `bench pretrain --data`); required when a task needs pretrained weights",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="transfer seeds 0..N-1 per task and method (default: 1 for smoke, 3 for cpu and paper)",
    )
    parser.add_argument(
        "--tasks",
        default="cls,svm,det,seg",
        help="comma-separated tasks out of cls, svm, det, seg, inpaint (or 'none' for the report cells only)",
    )
    parser.add_argument(
        "--methods",
        default="random,autoencoder,context-encoder",
        help="comma-separated pretraining methods to compare (rows of Table 2)",
    )
    parser.add_argument(
        "--inpaint-data",
        default=None,
        help="training images of the 128-px inpainting network (--tasks inpaint; default: --data)",
    )
    parser.add_argument(
        "--inpaint-eval-images",
        default=None,
        help="held-out images for `bench inpaint-eval` (required by --tasks inpaint; never the training images)",
    )
    parser.add_argument(
        "--inpaint-baselines",
        default="mean,telea,ns,shiftmap,fsr-fast",
        help="comma-separated classical baselines evaluated beside the inpainting network (Table 1 rows, --tasks "
        "inpaint) out of mean, telea, ns, biharmonic, shiftmap, fsr-fast, fsr-best; 'none' for the network alone",
    )
    parser.add_argument("--device", default=None, help="passed to the stages as --device (default: their own)")
    parser.add_argument("--out", default="runs/reproduce", help="folder of the plan, runs, records, tables, logs")
    parser.add_argument(
        "--stage-args",
        action="append",
        type=_stage_arg,
        default=[],
        metavar="STAGE='OPTIONS'",
        help="extra options appended to one stage's command lines, e.g. "
        "pretrain='--iterations 50' (stages: pretrain, inpaint-pretrain, inpaint-eval, cls, svm, "
        "det, seg, table, plot); may be repeated",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan (cells, status, commands) and exit")
    parser.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    parser.add_argument(
        "--replan",
        action="store_true",
        help="accept changed options: cells whose command changed start again from pending",
    )
    parser.add_argument(
        "--max-cells", type=int, default=None, help="stop after running this many cells (run the sweep in slices)"
    )
    parser.add_argument(
        "--quiet-cells",
        action="store_true",
        help="keep each cell's output in its log only (default: also shown on the terminal)",
    )


def _comma_list(
    option: str, spec: str, choices: tuple[str, ...], allow_none: bool = True, hints: dict[str, str] | None = None
) -> tuple[str, ...]:
    """Parse a comma-separated option value (duplicates dropped, order kept; ``none`` is the empty list where
    allowed); an unknown name exits with the choices and, where given, a hint about it."""
    spec = spec.strip()
    if allow_none and spec == "none":
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    bad = [n for n in names if n not in choices]
    if bad:
        hint = "".join(f" ({hints[n]})" for n in bad if hints and n in hints)
        raise SystemExit(f"bench reproduce: unknown {option} {', '.join(bad)} (choose from {', '.join(choices)}){hint}")
    return names


def options_from_args(args: argparse.Namespace) -> object:
    from benchmarks.reproduce import ALL_TASKS, DEFAULT_SEEDS, METHODS, SWEEP_BASELINES, SweepOptions

    tasks = _comma_list("--tasks", args.tasks, ALL_TASKS)
    methods = _comma_list("--methods", args.methods, METHODS, allow_none=False)
    baselines = _comma_list(
        "--inpaint-baselines",
        args.inpaint_baselines,
        SWEEP_BASELINES,
        hints={"nn": "nn needs --train-images: run `bench inpaint-eval --baseline nn` by hand"},
    )
    transfer = [t for t in tasks if t != "inpaint"]
    if transfer and not args.voc_root:
        raise SystemExit(f"bench reproduce: --voc-root is required by --tasks {','.join(transfer)}")
    if ((transfer and any(m != "random" for m in methods)) or "inpaint" in tasks) and not (
        args.data or ("inpaint" in tasks and args.inpaint_data and not transfer)
    ):
        raise SystemExit("bench reproduce: --data (pretraining images) is required by these --tasks and --methods")
    if "inpaint" in tasks and not args.inpaint_eval_images:
        raise SystemExit("bench reproduce: --tasks inpaint needs --inpaint-eval-images (held-out images)")
    seeds = args.seeds if args.seeds is not None else DEFAULT_SEEDS[args.preset]
    if seeds < 1:
        raise SystemExit("bench reproduce: --seeds must be at least 1")
    stage_args: dict[str, list[str]] = {}
    for stage, extra in args.stage_args:
        stage_args.setdefault(stage, []).extend(extra)
    return SweepOptions(
        out=args.out,
        preset=args.preset,
        voc_root=args.voc_root,
        data=args.data,
        seeds=seeds,
        tasks=tasks,
        methods=methods,
        inpaint_data=args.inpaint_data,
        inpaint_eval_images=args.inpaint_eval_images,
        device=args.device,
        stage_args=stage_args,
        inpaint_baselines=baselines,
    )


def run(args: argparse.Namespace) -> int:
    from benchmarks.reproduce import PlanError, describe_plan, load_or_create_plan, run_plan

    opts = options_from_args(args)
    try:
        if args.dry_run:
            plan = load_or_create_plan(opts, replan=args.replan)  # type: ignore[arg-type]
            print(describe_plan(plan))
            return 0
        result = run_plan(
            opts,  # type: ignore[arg-type]
            retry_failed=args.retry_failed,
            replan=args.replan,
            max_cells=args.max_cells,
            stream=None if args.quiet_cells else sys.stderr,
        )
    except PlanError as exc:
        print(f"bench reproduce: {exc}", file=sys.stderr)
        return 2
    if result.interrupted is not None:
        from pretrain.preemption import EXIT_PREEMPTED

        print(
            f"bench reproduce: stopped by {result.interrupted} after {len(result.done)} cells; the interrupted cell "
            f"kept its checkpoint; run the same command again to continue ({args.out}/plan.json)",
            file=sys.stderr,
        )
        return EXIT_PREEMPTED
    print(
        f"bench reproduce: ran {len(result.ran)} cells ({len(result.done)} done, {len(result.failed)} failed) in "
        f"{args.out}",
        file=sys.stderr,
    )
    for cell_id, why in result.unavailable:
        print(f"  unavailable: {cell_id} ({why})", file=sys.stderr)
    for cell_id, why in result.blocked:
        print(f"  not run:     {cell_id} ({why})", file=sys.stderr)
    for cell_id in result.failed:
        print(f"  failed:      {cell_id} (see {args.out}/logs/; --retry-failed runs it again)", file=sys.stderr)
    return 0 if not result.failed else 1
