"""``bench transfer --task cls``: VOC2007 multi-label classification fine-tuning (Krähenbühl et al. protocol).

Protocol details and every choice the paper leaves open: docs/protocols/classification.md.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any, NamedTuple

TITLE = "VOC2007 classification fine-tuning (Krähenbühl et al. 2015 protocol)"
PROTOCOL_ID = "voc07-cls-finetune"
PROTOCOL_VERSION = 2  # v2: krahenbuhl AP = scikit-learn <= 0.18's trapezoids; VOC07 thresholds as MATLAB's 0:0.1:1

#: What each --cls-ap definition is, for the record's description.
AP_DESCRIPTIONS = {
    "krahenbuhl": "Krähenbühl's evaluation on scikit-learn <= 0.18 (trapezoidal PR area, ties pessimistic)",
    "krahenbuhl_stepwise": "Krähenbühl's evaluation on scikit-learn >= 0.19 (step-wise PR sum, ties pessimistic)",
    "sklearn": "scikit-learn >= 0.19 average_precision_score",
}
#: Record key suffix of each AP definition stored besides the primary one.
AP_SUFFIXES = {
    "krahenbuhl": "_krahenbuhl",
    "krahenbuhl_stepwise": "_stepwise",
    "sklearn": "_sklearn",
    "voc07": "_voc07",
}


def add_once(group: argparse._ArgumentGroup, *flags: str, **kwargs: Any) -> None:
    """Add an option unless another task module already defined it (options shared by cls and svm)."""
    container = getattr(group, "_container", group)
    if any(f in container._option_string_actions for f in flags):
        return
    group.add_argument(*flags, **kwargs)


class VOC07Inputs(NamedTuple):
    """What cls and svm both load before any work: splits, classes, items and the trunk (unpacks in this order)."""

    train_split: str
    eval_split: str
    classes: tuple[str, ...]
    train_items: list[Any]
    skipped_train: list[str]
    eval_items: list[Any]
    skipped_eval: list[str]
    trunk: Any
    weights: Any  # transfer.weights.WeightsInfo


def load_voc07_inputs(args: argparse.Namespace) -> VOC07Inputs:
    """Resolve the VOC2007 splits (trainval -> test by default, never equal), the class list, the items of both
    splits (with ``--skip-bad`` counting) and the weights; any problem exits with a message naming the file."""
    from transfer.classification import load_classification_items, resolve_classes
    from transfer.voc import VOCError, resolve_year_dir
    from transfer.weights import WeightsError, load_alexnet_trunk

    train_split = args.train_split or "trainval"
    eval_split = args.eval_split or "test"
    if eval_split == train_split:
        raise SystemExit(f"--eval-split {eval_split} equals --train-split; evaluation needs held-out images")
    try:
        year_dir = resolve_year_dir(args.voc_root, "2007")
        classes = resolve_classes(args.classes, year_dir, train_split)
        train_items, skipped_train = load_classification_items(year_dir, train_split, classes, args.skip_bad)
        eval_items, skipped_eval = load_classification_items(year_dir, eval_split, classes, args.skip_bad)
        trunk, winfo = load_alexnet_trunk(args.weights, seed=args.seed)
    except (VOCError, WeightsError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    return VOC07Inputs(
        train_split, eval_split, tuple(classes), train_items, skipped_train, eval_items, skipped_eval, trunk, winfo
    )


def add_shared_voc_cls_arguments(group: argparse._ArgumentGroup) -> None:
    """Options that cls and svm share (defined by whichever module is loaded first)."""
    add_once(
        group,
        "--classes",
        default="voc",
        help="class list: 'voc' (the 20 PASCAL classes, default), 'data' (the names found in the training "
        "annotations, sorted) or a comma-separated list",
    )


def add_arguments(group: argparse._ArgumentGroup) -> None:
    add_shared_voc_cls_arguments(group)
    group.add_argument(
        "--train-from",
        default="all",
        choices=["all", "fc6", "fc8"],
        help="lowest trained layer: all = fine-tune every layer (the paper's Context Encoder row), fc6 = fc6..fc8 "
        "on a frozen trunk, fc8 = the last layer only (Krähenbühl's --train-from)",
    )
    group.add_argument(
        "--clip",
        default="drop7",
        choices=["drop7", "pool5"],
        help="drop7: trunk + fc6 + fc7 + fc8 (default, Krähenbühl's --clip drop7); pool5: the network is cut at "
        "pool5 and fc8 reads the 9216 pool5 values directly (no fc6/fc7)",
    )
    group.add_argument("--cls-crop-size", type=int, default=None, help="crop size in px (preset; paper 227)")
    group.add_argument(
        "--cls-min-scale", type=float, default=None, help="smallest scale augmentation factor (preset; paper 0.5)"
    )
    group.add_argument(
        "--cls-max-scale", type=float, default=None, help="largest scale augmentation factor (preset; paper 2.0)"
    )
    group.add_argument(
        "--cls-dropout", type=float, default=None, help="dropout after fc6 and fc7 (preset; paper 0.5)"
    )
    group.add_argument(
        "--cls-lr-step", type=int, default=None, help="iterations between lr halvings (preset; paper 10000)"
    )
    group.add_argument(
        "--cls-eval-crops",
        type=int,
        default=None,
        help="random crops per test image whose logits are summed (preset; paper 10)",
    )
    group.add_argument(
        "--cls-ap",
        default="krahenbuhl",
        choices=["krahenbuhl", "krahenbuhl_stepwise", "sklearn"],
        help="AP definition of the primary metrics: krahenbuhl = what Krähenbühl et al.'s evaluation computed with "
        "the scikit-learn of its day (<= 0.18: trapezoidal area under the precision-recall curve, ties broken "
        "pessimistically); krahenbuhl_stepwise = the same call on scikit-learn >= 0.19 (step-wise sum); sklearn = "
        "today's plain average_precision_score. The other krahenbuhl variant and the VOC07 11-point mAP (as the "
        "devkit) are always stored too",
    )
    group.add_argument(
        "--cls-pretrained-fc",
        default="auto",
        choices=["auto", "never"],
        help="auto: when --weights is a torchvision AlexNet state dict that holds fc6/fc7 (classifier.1/.4) of the "
        "right shape, start fc6/fc7 from them (Krähenbühl's copy_from; the ImageNet row); never: always "
        "re-initialise fc6/fc7",
    )
    group.add_argument(
        "--cls-fc-width",
        type=int,
        default=None,
        help="width of fc6/fc7 (preset; paper 4096 = AlexNet; the smoke preset narrows it for CPU speed)",
    )
    group.add_argument(
        "--cls-save-model",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="save the fine-tuned network (<out>/cls_<method>_seed<N>_final.pt) before evaluating it (preset: "
        "paper on, smoke off)",
    )
    group.add_argument(
        "--rescale-iterations",
        type=int,
        default=10,
        help="--rescale: at most this many between-layer correction rounds (10, magic_init's loop)",
    )
    group.add_argument(
        "--rescale-batches",
        type=int,
        default=None,
        help="--rescale: training batches whose statistics initialise fc6/fc7 (preset; paper 10 = magic_init -nit)",
    )


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}")
    print("-" * (width + 14))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("-" * (width + 14))


def _save_model(model: Any, out: str, name: str, cfg: Any, weights: dict[str, Any]) -> Any:
    """Write the fine-tuned network before evaluation (atomically, never over an existing file), so that a failure
    during evaluation loses no training."""
    from pathlib import Path

    from pretrain.checkpoint import atomic_torch_save

    folder = Path(out)
    path, n = folder / name, 2
    while path.exists():
        path, n = folder / f"{Path(name).stem}-{n}.pt", n + 1
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_torch_save({"format": "context-encoders-bench/cls-finetuned", "model": state,
                              "config": cfg.to_dict(), "weights": weights}, path)  # fmt: skip


def _stored_ap_methods(primary: str) -> list[tuple[str, str]]:
    """(AP definition, metric key suffix) pairs a record stores: the primary one (no suffix), both Krähenbühl
    variants (so that a record can be compared with numbers made on either scikit-learn) and VOC07."""
    methods = [primary] + [m for m in ("krahenbuhl", "krahenbuhl_stepwise", "voc07") if m != primary]
    return [(m, "" if m == primary else AP_SUFFIXES[m]) for m in methods]


def _quiet(*_: object, **__: object) -> None:
    """``print`` on ranks other than 0."""


def _pct(x: float) -> float:
    return 100.0 * x


def run(args: argparse.Namespace) -> int:
    """One process, or every rank of a torchrun launch (rank 0 prints and writes the record)."""
    from pretrain.distributed import cleanup_distributed, init_distributed

    ctx = init_distributed(args.device)
    try:
        return _run(args, ctx)
    finally:
        cleanup_distributed()


def _train_loader(dataset: Any, batch_size: int, seed: int, workers: int, ctx: Any, pin: bool) -> Any:
    """Seeded shuffled batches; under torchrun every rank draws the same global batches and takes its share."""
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler

    from pretrain.distributed import RankBatches
    from pretrain.preemption import ignore_stop_signals

    gen = torch.Generator().manual_seed(seed)
    batches: Any = BatchSampler(RandomSampler(dataset, generator=gen), batch_size, len(dataset) >= batch_size)
    loader_gen = gen
    if ctx.distributed:
        if batch_size % ctx.world_size or len(dataset) < batch_size:
            raise SystemExit(
                f"error: --batch-size {batch_size} must be a multiple of the {ctx.world_size} processes and at most "
                f"the {len(dataset)} training images"
            )
        batches = RankBatches(batches, ctx.rank, ctx.world_size)
        loader_gen = torch.Generator().manual_seed(seed * 1000 + ctx.rank)  # worker seeds differ between ranks
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        generator=loader_gen,
        persistent_workers=False,  # workers seeded afresh each epoch: what makes --resume bit for bit
        pin_memory=pin,
        worker_init_fn=ignore_stop_signals,
    )


def _run(args: argparse.Namespace, ctx: Any) -> int:
    import torch
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from benchmarks.commands.transfer import run_key
    from benchmarks.presets import apply_preset
    from benchmarks.presets.cls import PRESETS
    from pretrain.distributed import gather_rows, shard_indices
    from pretrain.preemption import Preempted, PreemptionGuard
    from pretrain.runinfo import utc_now_iso
    from transfer.classification import (
        FinetuneConfig,
        VOCClassificationEval,
        VOCClassificationTrain,
        build_classifier,
        evaluate,
        finetune,
        load_pretrained_fc,
        rescale_for_finetuning,
    )
    from transfer.classification_ap import mean_average_precision
    from transfer.input_norm import resolve_input_norm
    from transfer.records import make_record, write_record
    from transfer.resumable import TrainingCheckpoint

    started, t0 = utc_now_iso(), time.perf_counter()
    apply_preset(args, PRESETS, args.preset)
    torch.manual_seed(args.seed)
    device = ctx.device
    log = print if ctx.is_main else _quiet
    (train_split, eval_split, classes, train_items, skipped_train, eval_items, skipped_eval, trunk, winfo) = (
        load_voc07_inputs(args)
    )
    cfg = FinetuneConfig(
        iterations=args.iterations,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_step=args.cls_lr_step,
        crop_size=args.cls_crop_size,
        min_scale=args.cls_min_scale,
        max_scale=args.cls_max_scale,
        dropout=args.cls_dropout,
        train_from=args.train_from,
        clip=args.clip,
        eval_crops=args.cls_eval_crops,
        input_norm=resolve_input_norm(args.input_norm, winfo.kind),
        precision=args.precision,
        fc_width=args.cls_fc_width,
    )
    # what --resume must not change (--iterations may: it only moves the end)
    settings = {**cfg.to_dict(), "seed": args.seed, "classes": list(classes), "rescale": bool(args.rescale)}
    settings.pop("iterations")
    checkpoints = TrainingCheckpoint(args.out, run_key(args), args.checkpoint_every, settings)
    resume = checkpoints.load(args.resume)
    model = build_classifier(trunk, len(classes), cfg, args.seed)
    pretrained_fc: list[str] = []
    if args.cls_pretrained_fc == "auto" and winfo.kind == "torchvision":
        from pretrain.checkpoint import load_checkpoint

        pretrained_fc = load_pretrained_fc(model, load_checkpoint(winfo.source))
        if pretrained_fc:
            log(f"fc layers from {winfo.source}: {', '.join(pretrained_fc)}")
    try:
        trained = model.set_trainable(cfg.train_from)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    if ctx.distributed:  # augmentation and dropout differ between ranks, reproducibly
        torch.manual_seed(args.seed * 1000 + ctx.rank)
        if resume is not None:
            raise SystemExit("error: --resume of a classification run is supported in one process only (for now)")
    train_loader = _train_loader(
        VOCClassificationTrain(train_items, cfg), cfg.batch_size, args.seed, args.workers, ctx, device.type == "cuda"
    )
    log(
        f"cls: {len(train_items)} {train_split} / {len(eval_items)} {eval_split} images, {len(classes)} classes, "
        f"weights {winfo.source} ({winfo.method}), device {device}, trained params: {len(trained)} tensors"
        + (f", {ctx.world_size} processes" if ctx.distributed else "")
    )
    log("config: " + ", ".join(f"{k}={v}" for k, v in sorted(cfg.to_dict().items())))

    rescale_report: dict[str, Any] | None = None
    if args.rescale:
        batches = []
        for images, _ in train_loader:
            batches.append(images)
            if len(batches) >= args.rescale_batches:
                break
        model.to(device)
        rescale_report = rescale_for_finetuning(
            model,
            torch.cat(batches),
            cfg,
            args.seed,
            max_iterations=args.rescale_iterations,
            pretrained_fc=pretrained_fc,
        )
        scales = zip(rescale_report["layers"], rescale_report["weight_scale"])
        log("rescale: " + ", ".join(f"{n} x{s:.3g}" for n, s in scales))

    bar = tqdm(total=cfg.iterations, desc="fine-tune", unit="it", mininterval=2.0, disable=not ctx.is_main)

    def on_step(it: int, stats: dict[str, float]) -> None:
        bar.update(1)
        if it % 20 == 0 or it == cfg.iterations - 1:
            bar.set_postfix(loss=f"{stats['loss_avg']:.4f}", lr=f"{stats['lr']:.2g}")

    with PreemptionGuard() as guard:

        def after_step(done: int, opt: Any, state: dict[str, Any]) -> None:
            if guard.requested or checkpoints.due(done, cfg.iterations):
                path = checkpoints.save(done, model, opt, **state)
                if guard.requested:
                    raise Preempted(str(guard.signal_name), done, str(path))

        bar.update(resume["iteration"] if resume is not None else 0)
        train_stats = finetune(model, train_loader, cfg, device, on_step, ctx, resume=resume, after_step=after_step)
    bar.close()
    model_path = None
    if args.cls_save_model and ctx.is_main:
        model_path = _save_model(model, args.out, f"cls_{winfo.method}_seed{args.seed}_final.pt", cfg, winfo.to_dict())
        log(f"fine-tuned model saved to {model_path}")

    if min(len(train_items), len(eval_items)) < ctx.world_size:
        raise SystemExit(f"error: fewer images than the {ctx.world_size} processes; run fewer processes")
    # evaluation: rank r scores images r, r + world, ...; the scores are gathered in image order on every rank
    shard = shard_indices(len(eval_items), ctx.rank, ctx.world_size)
    eval_loader = DataLoader(
        Subset(VOCClassificationEval(eval_items, cfg, args.seed), shard),
        batch_size=max(1, cfg.batch_size // max(1, 1 + cfg.eval_crops)),
        shuffle=False,
        num_workers=args.workers,
    )
    ebar = tqdm(total=len(shard), desc=f"evaluate {eval_split}", unit="img", mininterval=2.0, disable=not ctx.is_main)
    s1, s10, labels = evaluate(model, eval_loader, device, cfg.precision, ebar.update)
    ebar.close()
    s1, s10, labels = (gather_rows(a, shard, len(eval_items)) for a in (s1, s10, labels))
    if not ctx.is_main:
        return 0

    metrics: dict[str, float] = {}
    per_class: dict[str, dict[str, float]] = {}
    no_positives: list[str] = []
    # "1crop" = the centre view; the random views are named by their count ("10crop" in the paper preset)
    random_view = f"{cfg.eval_crops}crop" if cfg.eval_crops != 1 else "1randcrop"
    views = {"1crop": s1} | ({random_view: s10} if cfg.eval_crops > 0 else {})
    for view, scores in views.items():
        for method, suffix in _stored_ap_methods(args.cls_ap):
            m, pc, undefined = mean_average_precision(scores, labels, classes, method)  # type: ignore[arg-type]
            no_positives = undefined
            if not math.isnan(m):
                metrics[f"mAP_{view}{suffix}"] = _pct(m)
            per_class[f"AP_{view}{suffix}"] = {c: _pct(v) for c, v in pc.items() if not math.isnan(v)}
    primary_view = random_view if cfg.eval_crops > 0 else "1crop"
    if f"mAP_{primary_view}" not in metrics:
        raise SystemExit(f"error: no class has a positive image in {eval_split}; AP is undefined")
    metrics["mAP"] = metrics[f"mAP_{primary_view}"]
    per_class["AP"] = per_class[f"AP_{primary_view}"]
    metrics.update({k: float(v) for k, v in train_stats.items() if math.isfinite(v)})
    ap_desc = AP_DESCRIPTIONS[args.cls_ap]
    view_desc = f"sum of {cfg.eval_crops} random crops" if cfg.eval_crops else "centre crop"
    description = (
        f"VOC2007 {train_split}->{eval_split} multi-label fine-tuning (Krähenbühl et al. 2015): sigmoid CE with "
        f"difficult ignored, SGD m0.9 lr {cfg.lr} x{cfg.lr_gamma}/{cfg.lr_step} it, {cfg.iterations} it, batch "
        f"{cfg.batch_size}, wd {cfg.weight_decay}, clip {cfg.grad_clip}, scale {cfg.min_scale}-{cfg.max_scale} + "
        f"mirror, {cfg.crop_size}px crops, train-from {cfg.train_from}, clip {cfg.clip}; final iterate; "
        f"mAP = {primary_view} ({view_desc}); AP: {ap_desc}, difficult masked; classes without test positives excluded"
    )
    config = {
        **cfg.to_dict(),
        "classes": list(classes),
        "workers": args.workers,
        "preset": args.preset,
        "rescale": bool(args.rescale),
        "ap_method": args.cls_ap,
        "ap_methods_stored": {suffix or "(primary)": method for method, suffix in _stored_ap_methods(args.cls_ap)},
        "pretrained_fc": args.cls_pretrained_fc,
        "device": str(device),
        "world_size": ctx.world_size,
    }
    extra: dict[str, Any] = {
        "classes_without_positives": no_positives,
        "trained_parameters": trained,
        "pretrained_fc": pretrained_fc,
        "model_path": str(model_path) if model_path is not None else None,
    }
    if rescale_report is not None:
        extra["rescale"] = rescale_report
    record = make_record(
        task="cls",
        protocol_id=PROTOCOL_ID,
        protocol_version=PROTOCOL_VERSION,
        protocol_description=description,
        dataset="VOC2007",
        train_split=train_split,
        eval_split=eval_split,
        metrics=metrics,
        primary_metric="mAP",
        weights=winfo.to_dict(),
        seed=args.seed,
        config=config,
        started_at=started,
        wall_time_s=time.perf_counter() - t0,
        per_class=per_class,
        skipped_items=skipped_train + skipped_eval,
        device=device,
        extra=extra,
    )
    path = write_record(record, args.out)
    checkpoints.finish()
    rows = [(k, f"{metrics[k]:.2f}") for k in sorted(metrics) if k.startswith("mAP")]
    rows += [(f"AP {c}", f"{v:.2f}") for c, v in per_class["AP"].items()]
    rows += [("skipped items", str(len(skipped_train) + len(skipped_eval))), ("record", str(path))]
    print_table(f"VOC2007 classification ({PROTOCOL_ID} v{PROTOCOL_VERSION}), weights {winfo.method}", rows)
    return 0
