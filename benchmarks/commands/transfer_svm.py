"""``bench transfer --task svm``: frozen-feature VOC2007 linear SVM probes on conv1..conv5 and pool5 (Goyal et al.
2019). The protocol (``voc07-svm``, versioned) is in transfer/svm_probe.py and docs/protocols/svm-probe.md.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from benchmarks.commands.transfer_cls import add_shared_voc_cls_arguments, load_voc07_inputs, print_table

TITLE = "frozen-feature VOC2007 linear SVM probes (Goyal et al. 2019)"


def add_arguments(group: argparse._ArgumentGroup) -> None:
    add_shared_voc_cls_arguments(group)
    group.add_argument(
        "--svm-costs",
        default=None,
        help="comma-separated LinearSVC cost grid, or 'paper' for Goyal et al.'s 1e-7..1e2 (preset: paper; "
        "any other grid is recorded in the protocol)",
    )
    group.add_argument(
        "--svm-layers",
        default=None,
        help="comma-separated trunk layers to probe (preset; paper: conv1,conv2,conv3,conv4,conv5,pool5)",
    )
    group.add_argument(
        "--svm-pooling",
        default="avg",
        choices=["avg", "max"],
        help="adaptive pooling of each layer to a grid of about 9216 values (avg, documented choice)",
    )
    group.add_argument("--svm-image-size", type=int, default=None, help="centre-crop size in px (preset; paper 227)")
    group.add_argument(
        "--svm-primary-layer",
        default="conv5",
        help="layer whose mAP is the record's primary metric (fixed in advance: never chosen on test)",
    )
    group.add_argument("--svm-jobs", type=int, default=1, help="parallel processes for the per-class SVMs")


def _quiet(*_: object, **__: object) -> None:
    """``print`` on ranks other than 0."""


def _costs(spec: str) -> tuple[float, ...]:
    from transfer.svm_probe import PAPER_COSTS

    if spec == "paper":
        return PAPER_COSTS
    try:
        costs = tuple(float(c) for c in spec.split(",") if c.strip())
    except ValueError as exc:
        raise SystemExit(f"error: --svm-costs {spec!r} is not a comma-separated list of numbers") from exc
    if not costs or any(c <= 0 for c in costs):
        raise SystemExit(f"error: --svm-costs {spec!r} needs positive costs")
    return costs


def run(args: argparse.Namespace) -> int:
    """One process, or every rank of a torchrun launch: the ranks extract the features of their share of the
    images and fit the SVMs of their share of the classes; rank 0 prints and writes the record."""
    from pretrain.distributed import cleanup_distributed, init_distributed

    ctx = init_distributed(args.device)
    try:
        return _run(args, ctx)
    finally:
        cleanup_distributed()


def _probe_layer_sharded(
    train_x: Any, train_labels: Any, test_x: Any, test_labels: Any, classes: tuple[str, ...], protocol: Any, args: Any
) -> tuple[dict[str, float], dict[str, float]]:
    """``probe_layer`` with the classes dealt out to the ranks (rank r fits classes r, r + world, ...)."""
    from pretrain.distributed import gather_objects, shard_indices, world
    from transfer.svm_probe import probe_layer

    rank, world_size = world()
    mine = shard_indices(len(classes), rank, world_size)
    aps: dict[str, float] = {}
    costs: dict[str, float] = {}
    if mine:
        part = tuple(classes[k] for k in mine)
        aps, costs = probe_layer(
            train_x, train_labels[:, mine], test_x, test_labels[:, mine], part, protocol, args.seed, args.svm_jobs
        )
    for part_aps, part_costs in gather_objects((aps, costs)):
        aps.update(part_aps)
        costs.update(part_costs)
    return {c: aps[c] for c in classes}, {c: costs[c] for c in classes}


def _run(args: argparse.Namespace, ctx: Any) -> int:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from benchmarks.presets import apply_preset
    from benchmarks.presets.svm import PRESETS
    from pretrain.distributed import gather_rows, shard_indices
    from pretrain.runinfo import utc_now_iso
    from transfer.input_norm import resolve_input_norm
    from transfer.records import make_record, write_record
    from transfer.svm_probe import PROBE_LAYERS, SVMProtocol, VOCCentreCrops, extract_features

    started, t0 = utc_now_iso(), time.perf_counter()
    apply_preset(args, PRESETS, args.preset)
    torch.manual_seed(args.seed)
    device = ctx.device
    log = print if ctx.is_main else _quiet
    layers = tuple(x.strip() for x in args.svm_layers.split(",") if x.strip())
    bad = [x for x in layers if x not in PROBE_LAYERS]
    if bad or not layers:
        raise SystemExit(f"error: --svm-layers {args.svm_layers!r}: unknown {bad}; choose from {PROBE_LAYERS}")
    if args.svm_primary_layer not in layers:
        raise SystemExit(f"error: --svm-primary-layer {args.svm_primary_layer} is not among --svm-layers")
    (train_split, eval_split, classes, train_items, skipped_train, eval_items, skipped_eval, trunk, winfo) = (
        load_voc07_inputs(args)
    )
    norm = resolve_input_norm(args.input_norm, winfo.kind)
    protocol = SVMProtocol(
        costs=_costs(args.svm_costs), layers=layers, image_size=args.svm_image_size, pooling=args.svm_pooling
    )
    log(
        f"svm: {len(train_items)} {train_split} / {len(eval_items)} {eval_split} images, {len(classes)} classes, "
        f"weights {winfo.source} ({winfo.method}), device {device}"
        + (f", {ctx.world_size} processes" if ctx.distributed else "")
    )

    rescale_info: dict[str, Any] | None = None
    if args.rescale:
        from transfer.rescale import between_layer_scale_correction

        probe = DataLoader(VOCCentreCrops(train_items, protocol.image_size, norm), batch_size=args.batch_size)
        images, _ = next(iter(probe))
        names = ["conv1", "conv2", "conv3", "conv4", "conv5"]
        report = between_layer_scale_correction(list(trunk.to(device)), images.to(device), seed=args.seed, names=names)
        rescale_info = report.to_dict()
        log("rescale: " + ", ".join(f"{n} x{s:.3g}" for n, s in zip(names, report.weight_scale)))

    if min(len(train_items), len(eval_items)) < ctx.world_size:
        raise SystemExit(f"error: fewer images than the {ctx.world_size} processes; run fewer processes")
    feats = {}
    for split, items in ((train_split, train_items), (eval_split, eval_items)):
        # rank r extracts images r, r + world, ...; the features are gathered in image order on every rank
        shard = shard_indices(len(items), ctx.rank, ctx.world_size)
        loader = DataLoader(
            Subset(VOCCentreCrops(items, protocol.image_size, norm), shard),
            batch_size=args.batch_size,
            shuffle=False,
            num_workers=args.workers,
        )
        bar = tqdm(total=len(shard), desc=f"features {split}", unit="img", mininterval=2.0, disable=not ctx.is_main)
        mine = extract_features(trunk, loader, protocol, device, args.precision, bar.update)
        feats[split] = {layer: gather_rows(f, shard, len(items)) for layer, f in mine.items()}
        bar.close()
    train_labels = np.stack([it.labels for it in train_items])
    test_labels = np.stack([it.labels for it in eval_items])
    log(protocol.describe())

    metrics: dict[str, float] = {}
    per_class: dict[str, dict[str, float]] = {}
    chosen: dict[str, dict[str, float]] = {}
    no_positives: dict[str, list[str]] = {}
    for layer in tqdm(layers, desc="SVMs", unit="layer", disable=not ctx.is_main):
        aps, costs = _probe_layer_sharded(
            feats[train_split][layer], train_labels, feats[eval_split][layer], test_labels, classes, protocol, args
        )
        defined = [v for v in aps.values() if not math.isnan(v)]
        no_positives[layer] = [c for c, v in aps.items() if math.isnan(v)]
        if defined:
            metrics[f"mAP_{layer}"] = 100.0 * sum(defined) / len(defined)
        per_class[f"AP_{layer}"] = {c: 100.0 * v for c, v in aps.items() if not math.isnan(v)}
        chosen[layer] = {c: v for c, v in costs.items() if not math.isnan(v)}
    primary = f"mAP_{args.svm_primary_layer}"
    if primary not in metrics:
        raise SystemExit(f"error: no class has positives in both {train_split} and {eval_split}; AP is undefined")
    metrics["mAP"] = metrics[primary]
    if not ctx.is_main:
        return 0
    record = make_record(
        task="svm",
        protocol_id=protocol.id,
        protocol_version=protocol.version,
        protocol_description=protocol.describe() + f"; primary metric mAP = {primary}",
        dataset="VOC2007",
        train_split=train_split,
        eval_split=eval_split,
        metrics=metrics,
        primary_metric="mAP",
        weights=winfo.to_dict(),
        seed=args.seed,
        config={
            "protocol": protocol.to_dict(),
            "classes": list(classes),
            "input_norm": norm,
            "primary_layer": args.svm_primary_layer,
            "preset": args.preset,
            "rescale": bool(args.rescale),
            "batch_size": args.batch_size,
            "workers": args.workers,
            "precision": args.precision,
            "device": str(device),
            "world_size": ctx.world_size,
        },
        started_at=started,
        wall_time_s=time.perf_counter() - t0,
        per_class=per_class,
        skipped_items=skipped_train + skipped_eval,
        device=device,
        extra={"chosen_costs": chosen, "classes_without_positives": no_positives, "rescale": rescale_info},
    )
    path = write_record(record, args.out)
    rows = [(layer, f"{metrics[f'mAP_{layer}']:.2f}" if f"mAP_{layer}" in metrics else "n/a") for layer in layers]
    rows += [("primary (mAP)", f"{metrics['mAP']:.2f} = {primary}"), ("record", str(path))]
    print_table(f"VOC2007 SVM probe mAP ({protocol.id} v{protocol.version}), weights {winfo.method}", rows)
    return 0
