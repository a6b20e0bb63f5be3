"""The frozen-feature VOC2007 SVM probe in one function: features of both splits, one SVM per class and layer, the
run record. Under torchrun the ranks extract the features of their share of the images and fit the SVMs of their
share of the classes. The protocol is in transfer/svm_probe/__init__.py and docs/protocols/svm-probe.md."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from pretrain.distributed import DistributedContext, gather_objects, gather_rows, shard_indices
from pretrain.runinfo import utc_now_iso
from transfer.classification.protocol import load_voc07_inputs
from transfer.config import ProtocolError, TransferRun
from transfer.input_norm import resolve_input_norm
from transfer.records import make_record, write_record
from transfer.rescale import between_layer_scale_correction
from transfer.svm_probe import PAPER_COSTS, PROBE_LAYERS, SVMProtocol, VOCCentreCrops, extract_features, probe_layer
from transfer.svm_probe.config import SVMProbeConfig


def parse_costs(spec: str) -> tuple[float, ...]:
    """The cost grid of ``--costs``: 'paper' or comma-separated positive numbers."""
    if spec == "paper":
        return PAPER_COSTS
    try:
        costs = tuple(float(c) for c in spec.split(",") if c.strip())
    except ValueError as exc:
        raise ProtocolError(f"--costs {spec!r} is not a comma-separated list of numbers") from exc
    if not costs or any(c <= 0 for c in costs):
        raise ProtocolError(f"--costs {spec!r} needs positive costs")
    return costs


def parse_layers(cfg: SVMProbeConfig) -> tuple[str, ...]:
    """The probed layers of ``--layers``; they must include ``--primary-layer``."""
    layers = tuple(x.strip() for x in cfg.layers.split(",") if x.strip())
    bad = [x for x in layers if x not in PROBE_LAYERS]
    if bad or not layers:
        raise ProtocolError(f"--layers {cfg.layers!r}: unknown {bad}; choose from {PROBE_LAYERS}")
    if cfg.primary_layer not in layers:
        raise ProtocolError(f"--primary-layer {cfg.primary_layer} is not among --layers")
    return layers


def _quiet(*_: object, **__: object) -> None:
    """``print`` on ranks other than 0."""


def _probe_layer_sharded(
    train_x: Any, train_labels: Any, test_x: Any, test_labels: Any, classes: tuple[str, ...],
    protocol: SVMProtocol, seed: int, jobs: int, ctx: DistributedContext,
) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
    """``probe_layer`` with the classes dealt out to the ranks (rank r fits classes r, r + world, ...)."""
    mine = shard_indices(len(classes), ctx.rank, ctx.world_size)
    aps: dict[str, float] = {}
    costs: dict[str, float] = {}
    if mine:
        part = tuple(classes[k] for k in mine)
        aps, costs = probe_layer(
            train_x, train_labels[:, mine], test_x, test_labels[:, mine], part, protocol, seed, jobs
        )
    for part_aps, part_costs in gather_objects((aps, costs)):
        aps.update(part_aps)
        costs.update(part_costs)
    return {c: aps[c] for c in classes}, {c: costs[c] for c in classes}


def run_svm_probe(cfg: SVMProbeConfig, run: TransferRun, ctx: DistributedContext) -> dict[str, Any]:
    """Probe every layer (every rank of a torchrun launch calls it); rank 0 writes the record into ``run.out``
    and every rank returns it."""
    started, t0 = utc_now_iso(), time.perf_counter()
    torch.manual_seed(run.seed)
    device = ctx.device
    log = print if ctx.is_main else _quiet
    layers = parse_layers(cfg)
    costs = parse_costs(cfg.costs)
    classes, train_items, skipped_train, eval_items, skipped_eval, trunk, winfo = load_voc07_inputs(
        run, cfg.classes, cfg.train_split, cfg.eval_split
    )
    cfg = dataclasses.replace(cfg, input_norm=resolve_input_norm(cfg.input_norm, winfo.kind))
    protocol = SVMProtocol(costs=costs, layers=layers, image_size=cfg.crop_size, pooling=cfg.pooling)
    log(
        f"svm: {len(train_items)} {cfg.train_split} / {len(eval_items)} {cfg.eval_split} images, {len(classes)} "
        f"classes, weights {winfo.source} ({winfo.method}), device {device}"
        + (f", {ctx.world_size} processes" if ctx.distributed else "")
    )

    rescale_info: dict[str, Any] | None = None
    if cfg.rescale:
        probe = DataLoader(VOCCentreCrops(train_items, protocol.image_size, cfg.input_norm), batch_size=cfg.batch_size)
        images, _ = next(iter(probe))
        names = ["conv1", "conv2", "conv3", "conv4", "conv5"]
        report = between_layer_scale_correction(list(trunk.to(device)), images.to(device), seed=run.seed, names=names)
        rescale_info = report.to_dict()
        log("rescale: " + ", ".join(f"{n} x{s:.3g}" for n, s in zip(names, report.weight_scale)))

    if min(len(train_items), len(eval_items)) < ctx.world_size:
        raise ProtocolError(f"fewer images than the {ctx.world_size} processes; run fewer processes")
    feats = {}
    for split, items in ((cfg.train_split, train_items), (cfg.eval_split, eval_items)):
        # rank r extracts images r, r + world, ...; the features are gathered in image order on every rank
        shard = shard_indices(len(items), ctx.rank, ctx.world_size)
        loader = DataLoader(
            Subset(VOCCentreCrops(items, protocol.image_size, cfg.input_norm), shard),
            batch_size=cfg.batch_size,
            shuffle=False,
            num_workers=cfg.workers,
        )
        bar = tqdm(total=len(shard), desc=f"features {split}", unit="img", mininterval=2.0, disable=not ctx.is_main)
        mine = extract_features(trunk, loader, protocol, device, cfg.precision, bar.update)
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
        aps, layer_costs = _probe_layer_sharded(
            feats[cfg.train_split][layer], train_labels, feats[cfg.eval_split][layer], test_labels, classes,
            protocol, run.seed, cfg.jobs, ctx,
        )  # fmt: skip
        defined = [v for v in aps.values() if not math.isnan(v)]
        no_positives[layer] = [c for c, v in aps.items() if math.isnan(v)]
        if defined:
            metrics[f"mAP_{layer}"] = 100.0 * sum(defined) / len(defined)
        per_class[f"AP_{layer}"] = {c: 100.0 * v for c, v in aps.items() if not math.isnan(v)}
        chosen[layer] = {c: v for c, v in layer_costs.items() if not math.isnan(v)}
    primary = f"mAP_{cfg.primary_layer}"
    if primary not in metrics:
        raise ProtocolError(f"no class has positives in both {cfg.train_split} and {cfg.eval_split}; AP is undefined")
    metrics["mAP"] = metrics[primary]
    record = make_record(
        task="svm",
        protocol_id=protocol.id,
        protocol_version=protocol.version,
        protocol_description=protocol.describe() + f"; primary metric mAP = {primary}",
        dataset="VOC2007",
        train_split=cfg.train_split,
        eval_split=cfg.eval_split,
        metrics=metrics,
        primary_metric="mAP",
        weights=winfo.to_dict(),
        seed=run.seed,
        config={
            **cfg.to_dict(),
            **run.to_dict(),
            "protocol": protocol.to_dict(),
            "classes": list(classes),
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
    if ctx.is_main:
        log(f"record: {write_record(record, run.out)}")
    return record
