"""One ``bench inpaint-eval`` run from its settings: the Table 1 protocol (``pretrain.inpainting_eval``) applied to a
trained inpainting network or a classical baseline, written as a run record and a per-image CSV (it lives in
``transfer`` because run records are a transfer-side format: pretraining sits below transfer)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pretrain.data import find_images
from pretrain.distributed import resolve_device
from pretrain.inpainting import load_generator
from pretrain.inpainting_eval import (
    PROTOCOL_ID,
    PROTOCOL_VERSION,
    XPHOTO_ALGORITHMS,
    EvalProtocol,
    InpaintEvalError,
    as_table_units,
    build_baseline,
    centre_hole,
    centre_region,
    evaluate,
    load_eval_image,
    load_mask_file,
    network_inpainter,
    write_per_image_csv,
)
from pretrain.runinfo import sha256_file, utc_now_iso
from transfer.records import make_record, write_record


@dataclass(frozen=True)
class InpaintEvalConfig:
    """What one evaluation depends on (the ``bench inpaint-eval`` options)."""

    images: str
    out: str
    weights: str | None = None
    baseline: str | None = None
    train_images: str | None = None
    overlap: int | None = None  # None: the network's training overlap, 7 (the paper's) for baselines
    resize_short: int = 350  # the official training scale (loadSize)
    mask: str | None = None
    limit: int | None = None
    radius: float = 3.0
    dataset: str | None = None
    seed: int | None = None
    device: str = "auto"


@dataclass(frozen=True)
class InpaintEvalResult:
    record: dict[str, Any]
    record_path: Path
    csv_path: Path
    method: str
    metrics: dict[str, float]
    images: int


def _load_crops(paths: list[Path], protocol: EvalProtocol, root: Path) -> list[tuple[str, Any]]:
    return [
        (p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p), load_eval_image(p, protocol))
        for p in tqdm(paths, desc="loading", unit="img", leave=False)
    ]


def run_inpaint_eval(cfg: InpaintEvalConfig) -> InpaintEvalResult:
    """Evaluate, write the record and the per-image CSV into ``cfg.out``."""
    started_at, t0 = utc_now_iso(), time.time()
    device = resolve_device(cfg.device)
    images_root = Path(cfg.images)
    paths = find_images(images_root)
    if cfg.limit is not None:
        paths = paths[: cfg.limit]
    weights: dict[str, Any]
    if cfg.weights:
        loaded = load_generator(cfg.weights, device)
        overlap = cfg.overlap if cfg.overlap is not None else (loaded.overlap if loaded.overlap is not None else 7)
        method = "inpainting" if (loaded.adv_weight is None or loaded.adv_weight > 0) else "inpainting-l2"
        weights = {
            "source": str(loaded.path),
            "method": method,
            "sha256": sha256_file(loaded.path),
            "iteration": loaded.iteration,
            "train_overlap": loaded.overlap,
            "adv_weight": loaded.adv_weight,
        }
    else:
        overlap = cfg.overlap if cfg.overlap is not None else 7
        method = f"baseline-{cfg.baseline}"
        weights = {"source": f"baseline:{cfg.baseline}", "method": method, "sha256": None}
    protocol = EvalProtocol(resize_short=cfg.resize_short, overlap=overlap)
    hole = load_mask_file(cfg.mask, protocol.crop_size) if cfg.mask else centre_hole(protocol.crop_size, overlap)
    region = centre_region(protocol.crop_size)
    if cfg.weights:
        inpainter = network_inpainter(loaded.generator, device)
    else:
        train_crops = None
        if cfg.baseline == "nn":
            if not cfg.train_images:
                raise InpaintEvalError("--baseline nn needs --train-images (the folder to search for neighbours)")
            train_root = Path(cfg.train_images)
            train_crops = [im for _, im in _load_crops(find_images(train_root), protocol, train_root)]
            weights["train_images"] = str(train_root)
            weights["train_count"] = len(train_crops)
        inpainter = build_baseline(str(cfg.baseline), train_crops, radius=cfg.radius)
    crops = _load_crops(paths, protocol, images_root)
    rows, metrics = evaluate(inpainter, crops, hole, region, progress=True)

    table = as_table_units(metrics)
    record = make_record(
        task="inpaint",
        protocol_id=PROTOCOL_ID,
        protocol_version=PROTOCOL_VERSION,
        protocol_description=protocol.describe() + ("" if not cfg.mask else f"; hole from mask file {cfg.mask}"),
        dataset=cfg.dataset or images_root.resolve().name,
        train_split=None,  # nothing is trained; the nn search folder is in weights["train_images"]
        eval_split=str(images_root),
        metrics={k: v for k, v in table.items() if not k.startswith("PSNR_pooled")},
        primary_metric="PSNR_hole",
        weights=weights,
        seed=cfg.seed,
        config={
            **protocol.to_dict(),
            "mask": cfg.mask,
            "radius": cfg.radius if cfg.baseline in ("telea", "ns") else None,
            "xphoto_algorithm": XPHOTO_ALGORITHMS.get(cfg.baseline or ""),
            "limit": cfg.limit,
            "images": len(rows),
        },
        started_at=started_at,
        wall_time_s=time.time() - t0,
        device=device,
        extra={
            "pooled_psnr": {k: v for k, v in table.items() if k.startswith("PSNR_pooled")},
            "units": "L1_* and L2_* in percent of the [0, 1] range, PSNR_* in dB",
            "per_image_csv": "<this record file name without .json>_per_image.csv, next to it",
        },
    )
    record_path = write_record(record, Path(cfg.out))
    csv_path = write_per_image_csv(rows, record_path.with_name(record_path.stem + "_per_image.csv"))
    return InpaintEvalResult(record, record_path, csv_path, method, metrics, len(rows))
