"""The VOC2007 classification fine-tuning protocol in one function: data, network, (resumable) training,
evaluation of the final iterate, the run record. Protocol details and every choice the paper leaves open:
docs/protocols/classification.md."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from pretrain.checkpoint import atomic_torch_save, load_checkpoint
from pretrain.distributed import DistributedContext, gather_rows, shard_indices
from pretrain.preemption import Preempted, PreemptionGuard, ignore_stop_signals
from pretrain.runinfo import utc_now_iso
from pretrain.sampling import IterationBatchSampler
from transfer.classification import (
    VOCClassificationEval,
    VOCClassificationTrain,
    VOCItem,
    build_classifier,
    evaluate,
    finetune,
    load_classification_items,
    load_pretrained_fc,
    rescale_for_finetuning,
    resolve_classes,
)
from transfer.classification.config import RESUME_MUTABLE, ClassificationConfig
from transfer.classification_ap import mean_average_precision
from transfer.config import ProtocolError, TransferRun
from transfer.input_norm import resolve_input_norm
from transfer.records import make_record, write_record
from transfer.resumable import TrainingCheckpoint
from transfer.voc import resolve_year_dir
from transfer.weights import WeightsInfo, load_alexnet_trunk

PROTOCOL_ID = "voc07-cls-finetune"
#: v2: krahenbuhl AP = scikit-learn <= 0.18's trapezoids; VOC07 thresholds as MATLAB's 0:0.1:1; v3: batches and
#: augmentation from the one seeded iteration sampler (pretrain/sampling.py)
PROTOCOL_VERSION = 3

#: What each AP definition is, for the record's description.
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


class VOC07Inputs(NamedTuple):
    """What cls and svm both load before any work: classes, the items of both splits and the trunk."""

    classes: tuple[str, ...]
    train_items: list[VOCItem]
    skipped_train: list[str]
    eval_items: list[VOCItem]
    skipped_eval: list[str]
    trunk: torch.nn.Sequential
    weights: WeightsInfo


def load_voc07_inputs(run: TransferRun, classes_spec: str, train_split: str, eval_split: str) -> VOC07Inputs:
    """The class list, the items of both VOC2007 splits (with ``skip_bad`` counting) and the weights; the splits
    must differ."""
    if eval_split == train_split:
        raise ProtocolError(f"--eval-split {eval_split} equals --train-split; evaluation needs held-out images")
    year_dir = resolve_year_dir(run.voc_root, "2007")
    classes = resolve_classes(classes_spec, year_dir, train_split)
    train_items, skipped_train = load_classification_items(year_dir, train_split, classes, run.skip_bad)
    eval_items, skipped_eval = load_classification_items(year_dir, eval_split, classes, run.skip_bad)
    trunk, winfo = load_alexnet_trunk(run.weights, seed=run.seed)
    return VOC07Inputs(tuple(classes), train_items, skipped_train, eval_items, skipped_eval, trunk, winfo)


def _quiet(*_: object, **__: object) -> None:
    """``print`` on ranks other than 0."""


def _save_model(model: torch.nn.Module, out: str, name: str, cfg: ClassificationConfig, weights: dict) -> Path:
    """Write the fine-tuned network before evaluation (atomically, never over an existing file), so that a failure
    during evaluation loses no training."""
    folder = Path(out)
    path, n = folder / name, 2
    while path.exists():
        path, n = folder / f"{Path(name).stem}-{n}.pt", n + 1
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_torch_save({"format": "context-encoders-bench/cls-finetuned", "model": state,
                              "config": cfg.to_dict(), "weights": weights}, path)  # fmt: skip


def stored_ap_methods(primary: str) -> list[tuple[str, str]]:
    """(AP definition, metric key suffix) pairs a record stores: the primary one (no suffix), both Krähenbühl
    variants (so that a record can be compared with numbers made on either scikit-learn) and VOC07."""
    methods = [primary] + [m for m in ("krahenbuhl", "krahenbuhl_stepwise", "voc07") if m != primary]
    return [(m, "" if m == primary else AP_SUFFIXES[m]) for m in methods]


def _train_loader(
    dataset: Any, batch_size: int, seed: int, start: int, end: int, workers: int, ctx: DistributedContext, pin: bool
) -> DataLoader:
    """This rank's share of the seeded batches of iterations ``start .. end-1`` (``pretrain/sampling.py``); under
    torchrun every rank computes the same global batches and takes its share."""
    if batch_size % ctx.world_size:
        raise ProtocolError(f"--batch-size {batch_size} must be a multiple of the {ctx.world_size} processes")
    sampler = IterationBatchSampler(
        len(dataset), batch_size // ctx.world_size, start, end, seed, ctx.rank, ctx.world_size
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        # its own generator: starting the loader must not draw from the global RNG that dropout uses, or a resumed
        # run's dropout would be one draw off
        generator=torch.Generator().manual_seed(seed),
        pin_memory=pin,
        worker_init_fn=ignore_stop_signals,
    )


def run_classification(cfg: ClassificationConfig, run: TransferRun, ctx: DistributedContext) -> dict[str, Any]:
    """Fine-tune and evaluate (every rank of a torchrun launch calls it); rank 0 writes the record into
    ``run.out`` and every rank returns it."""
    started, t0 = utc_now_iso(), time.perf_counter()
    torch.manual_seed(run.seed)
    device = ctx.device
    log = print if ctx.is_main else _quiet
    classes, train_items, skipped_train, eval_items, skipped_eval, trunk, winfo = load_voc07_inputs(
        run, cfg.classes, cfg.train_split, cfg.eval_split
    )
    cfg = dataclasses.replace(cfg, input_norm=resolve_input_norm(cfg.input_norm, winfo.kind))
    # what --resume must not change
    settings = {k: v for k, v in cfg.to_dict().items() if k not in RESUME_MUTABLE}
    settings |= {"seed": run.seed, "classes": list(classes)}
    checkpoints = TrainingCheckpoint(run.out, run.key("cls"), cfg.checkpoint_every, settings, ctx)
    resume = checkpoints.load(cfg.resume)
    model = build_classifier(trunk, len(classes), cfg, run.seed)
    pretrained_fc: list[str] = []
    if cfg.pretrained_fc == "auto" and winfo.kind == "torchvision":
        pretrained_fc = load_pretrained_fc(model, load_checkpoint(winfo.source))
        if pretrained_fc:
            log(f"fc layers from {winfo.source}: {', '.join(pretrained_fc)}")
    trained = model.set_trainable(cfg.train_from)
    if ctx.distributed:  # dropout differs between ranks, reproducibly
        torch.manual_seed(run.seed * 1000 + ctx.rank)
    train_set = VOCClassificationTrain(train_items, cfg)
    start = int(resume["iteration"]) if resume is not None else 0
    pin = device.type == "cuda"
    train_loader = _train_loader(train_set, cfg.batch_size, run.seed, start, cfg.iterations, cfg.workers, ctx, pin)
    log(
        f"cls: {len(train_items)} {cfg.train_split} / {len(eval_items)} {cfg.eval_split} images, {len(classes)} "
        f"classes, weights {winfo.source} ({winfo.method}), device {device}, trained params: {len(trained)} tensors"
        + (f", {ctx.world_size} processes" if ctx.distributed else "")
    )
    log("config: " + ", ".join(f"{k}={v}" for k, v in sorted(cfg.to_dict().items())))

    rescale_report: dict[str, Any] | None = None
    if cfg.rescale:
        # the batches of the first iterations, also when resuming (the report is the same as the first run's)
        first = _train_loader(train_set, cfg.batch_size, run.seed, 0, cfg.rescale_batches, cfg.workers, ctx, pin)
        batches = [images for images, _ in first]
        model.to(device)
        rescale_report = rescale_for_finetuning(
            model,
            torch.cat(batches),
            cfg,
            run.seed,
            max_iterations=cfg.rescale_iterations,
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
            stop = checkpoints.stop_requested(guard.requested)
            if stop or checkpoints.due(done, cfg.iterations):
                path = checkpoints.save(done, model, opt, **state)
                if stop:
                    raise Preempted(guard.signal_name or "a signal to another process", done, str(path))

        bar.update(start)
        train_stats = finetune(model, train_loader, cfg, device, on_step, ctx, resume=resume, after_step=after_step)
    bar.close()
    model_path = None
    if cfg.save_model and ctx.is_main:
        model_path = _save_model(model, run.out, f"cls_{winfo.method}_seed{run.seed}_final.pt", cfg, winfo.to_dict())
        log(f"fine-tuned model saved to {model_path}")

    if min(len(train_items), len(eval_items)) < ctx.world_size:
        raise ProtocolError(f"fewer images than the {ctx.world_size} processes; run fewer processes")
    # evaluation: rank r scores images r, r + world, ...; the scores are gathered in image order on every rank
    shard = shard_indices(len(eval_items), ctx.rank, ctx.world_size)
    eval_loader = DataLoader(
        Subset(VOCClassificationEval(eval_items, cfg, run.seed), shard),
        batch_size=max(1, cfg.batch_size // max(1, 1 + cfg.eval_crops)),
        shuffle=False,
        num_workers=cfg.workers,
    )
    ebar = tqdm(total=len(shard), desc=f"evaluate {cfg.eval_split}", unit="img", mininterval=2.0,
                disable=not ctx.is_main)  # fmt: skip
    s1, s10, labels = evaluate(model, eval_loader, device, cfg.precision, ebar.update)
    ebar.close()
    s1, s10, labels = (gather_rows(a, shard, len(eval_items)) for a in (s1, s10, labels))

    metrics, per_class, no_positives, primary_view = _scores(s1, s10, labels, classes, cfg)
    metrics.update({k: float(v) for k, v in train_stats.items() if math.isfinite(v)})
    view_desc = f"sum of {cfg.eval_crops} random crops" if cfg.eval_crops else "centre crop"
    description = (
        f"VOC2007 {cfg.train_split}->{cfg.eval_split} multi-label fine-tuning (Krähenbühl et al. 2015): sigmoid CE "
        f"with difficult ignored, SGD m0.9 lr {cfg.lr} x{cfg.lr_gamma}/{cfg.lr_step} it, {cfg.iterations} it, batch "
        f"{cfg.batch_size}, wd {cfg.weight_decay}, clip {cfg.grad_clip}, scale {cfg.min_scale}-{cfg.max_scale} + "
        f"mirror, {cfg.crop_size}px crops, train-from {cfg.train_from}, clip {cfg.clip}; final iterate; "
        f"mAP = {primary_view} ({view_desc}); AP: {AP_DESCRIPTIONS[cfg.ap]}, difficult masked; classes without test "
        "positives excluded"
    )
    config = {
        **cfg.to_dict(),
        **run.to_dict(),
        "classes": list(classes),
        "ap_methods_stored": {suffix or "(primary)": method for method, suffix in stored_ap_methods(cfg.ap)},
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
        train_split=cfg.train_split,
        eval_split=cfg.eval_split,
        metrics=metrics,
        primary_metric="mAP",
        weights=winfo.to_dict(),
        seed=run.seed,
        config=config,
        started_at=started,
        wall_time_s=time.perf_counter() - t0,
        per_class=per_class,
        skipped_items=skipped_train + skipped_eval,
        device=device,
        extra=extra,
    )
    if ctx.is_main:
        path = write_record(record, run.out)
        checkpoints.finish()
        log(f"record: {path}")
    return record


def _scores(
    s1: Any, s10: Any, labels: Any, classes: tuple[str, ...], cfg: ClassificationConfig
) -> tuple[dict[str, float], dict[str, dict[str, float]], list[str], str]:
    """mAP and per-class AP of every view and stored AP definition; the primary view's are ``mAP`` and ``AP``."""
    metrics: dict[str, float] = {}
    per_class: dict[str, dict[str, float]] = {}
    no_positives: list[str] = []
    # "1crop" = the centre view; the random views are named by their count ("10crop" in the paper preset)
    random_view = f"{cfg.eval_crops}crop" if cfg.eval_crops != 1 else "1randcrop"
    views = {"1crop": s1} | ({random_view: s10} if cfg.eval_crops > 0 else {})
    for view, scores in views.items():
        for method, suffix in stored_ap_methods(cfg.ap):
            m, pc, undefined = mean_average_precision(scores, labels, classes, method)  # type: ignore[arg-type]
            no_positives = undefined
            if not math.isnan(m):
                metrics[f"mAP_{view}{suffix}"] = 100.0 * m
            per_class[f"AP_{view}{suffix}"] = {c: 100.0 * v for c, v in pc.items() if not math.isnan(v)}
    primary_view = random_view if cfg.eval_crops > 0 else "1crop"
    if f"mAP_{primary_view}" not in metrics:
        raise ProtocolError(f"no class has a positive image in {cfg.eval_split}; AP is undefined")
    metrics["mAP"] = metrics[f"mAP_{primary_view}"]
    per_class["AP"] = per_class[f"AP_{primary_view}"]
    return metrics, per_class, no_positives, primary_view
