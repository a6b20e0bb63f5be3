"""The segmentation protocol run through mmsegmentation (``bench transfer --task seg --engine mmseg``).

``run_mmseg_segmentation(cfg, run, ctx)`` takes the same ``SegmentationConfig`` and ``TransferRun`` as the native
engine (presets included; ``run_segmentation`` hands a config with ``engine="mmseg"`` to it), writes the suite's run
record into ``run.out`` and returns it. What is shared with the native engine and what is mmseg's own:

- shared: the item lists and their up-front checks, the weight sources (``--weights``), the FCN initialisation of
  fc6/fc7/score layer from the seed, and ``--rescale`` (the native FCN is built, initialised and rescaled, then its
  state dict is copied into the mmseg model, so both engines start from the same numbers);
- mmseg's: the image and mask loading (``LoadImageFromFile`` decodes with OpenCV, ``LoadAnnotations`` reads the
  palette PNG), flipping (``RandomFlip``), normalisation and padding (``SegDataPreProcessor``), the model's forward
  (``EncoderDecoder`` with the ``mmseg_models`` backbone and head), the loss (mmseg's ``CrossEntropyLoss``), the
  optimizer (mmengine's ``OptimWrapper`` with gradient accumulation and a param-wise config), inference
  (``EncoderDecoder.test_step``) and ``IoUMetric``;
- scoring: the suite's confusion matrix (``transfer.segmentation_iou``) on mmseg's predictions against the suite's
  own reading of the masks gives the record's metrics; ``IoUMetric`` on the same predictions is stored beside them.

Every forward pass holds one image and ``batch_size`` passes are accumulated into one SGD update, as Caffe's
``iter_size`` does; with mmseg's ``avg_non_ignore`` cross-entropy a pass's loss is then the mean over that image's
labelled pixels (the protocol's ``valid`` normalisation; ``none`` uses ``reduction='sum'``). mmseg, mmcv and mmengine
are imported here and in ``mmseg_models`` only.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch.utils.data import DataLoader, Dataset

from pretrain.checkpoint import atomic_write_bytes
from pretrain.distributed import DistributedContext
from pretrain.runinfo import sha256_file, utc_now_iso
from pretrain.sampling import IterationBatchSampler, SampleKey, seeded_rngs
from transfer.config import TransferRun
from transfer.input_norm import CAFFE_BGR_MEAN, IMAGENET_MEAN, IMAGENET_STD, resolve_input_norm
from transfer.records import validate_record, write_record
from transfer.segmentation.config import PRESETS, SegmentationConfig
from transfer.segmentation.data import SegItem, load_mask
from transfer.segmentation.evaluate import save_prediction_png
from transfer.segmentation.model import FCN, build_fcn, rescale_fcn
from transfer.segmentation.protocol import SegmentationError, build_record, check_settings, load_items
from transfer.segmentation_iou import confusion_matrix
from transfer.voc import IGNORE_LABEL, SEG_CLASSES
from transfer.weights import load_alexnet_trunk

ENGINE = "mmseg"
QUIET_LOGGER = "context-encoders-bench-mmseg"
INSTALL_HINT = (
    "install mmcv as OpenMMLab documents for your torch/CUDA (https://mmcv.readthedocs.io/en/latest/get_started/"
    "installation.html), then `pip install -e '.[mmseg]'` (mmengine and mmsegmentation)"
)
#: native FCN state-dict prefix -> mmseg EncoderDecoder prefix (the score layer is mmseg's ``conv_seg``)
NATIVE_TO_MMSEG: dict[str, str] = {
    "features.": "backbone.features.",
    "fc6.": "decode_head.fc6.",
    "fc7.": "decode_head.fc7.",
    "score_fr.": "decode_head.conv_seg.",
    "upscore.": "decode_head.upscore.",
}


class MmsegUnavailable(SegmentationError):
    """mmsegmentation (or mmcv / mmengine) cannot be imported; the message says how to install them."""


def require_mmseg() -> dict[str, str]:
    """Import mmseg's stack and register the suite's modules; returns the versions. Raises ``MmsegUnavailable``."""
    try:
        import mmcv
        import mmengine
        import mmseg
        import mmseg.models

        import transfer.segmentation.mmseg_models  # noqa: F401 - registers the backbone and head
    except ImportError as exc:
        raise MmsegUnavailable(
            f"--engine mmseg needs mmsegmentation, mmcv and mmengine ({exc}); {INSTALL_HINT}"
        ) from exc
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope

    # mmengine logs through the newest logger: a quiet one keeps its INFO lines (param-wise options, the IoU
    # table) out of the suite's output
    if not MMLogger.check_instance_created(QUIET_LOGGER):
        MMLogger.get_instance(QUIET_LOGGER, log_level="WARNING")
    warnings.filterwarnings("ignore", message=".*build_loss.*would be deprecated", category=UserWarning)
    init_default_scope("mmseg")
    return {"mmseg": mmseg.__version__, "mmcv": mmcv.__version__, "mmengine": mmengine.__version__}


def native_to_mmseg_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A native FCN-32s state dict in the keys of the mmseg ``EncoderDecoder`` of ``model_config``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix = next((p for p in NATIVE_TO_MMSEG if key.startswith(p)), None)
        if prefix is None:
            raise SegmentationError(f"FCN weight {key!r} has no place in the mmseg model (only FCN-32s is supported)")
        out[NATIVE_TO_MMSEG[prefix] + key[len(prefix) :]] = value
    return out


def mmseg_to_native_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of ``native_to_mmseg_state`` (mmseg's loss module has no weights)."""
    back = {v: k for k, v in NATIVE_TO_MMSEG.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix = next(p for p in back if key.startswith(p))
        out[back[prefix] + key[len(prefix) :]] = value
    return out


def preprocessor_config(input_norm: str, crop_size: int | None = None) -> dict[str, Any]:
    """``SegDataPreProcessor`` settings giving the suite's ``input_norm`` on OpenCV's BGR images; padding (only
    with a crop size) is 0 after normalisation, i.e. the mean colour as in the native engine, and 255 in masks."""
    if input_norm == "minus1to1":
        mean, std, to_rgb = [127.5] * 3, [127.5] * 3, True
    elif input_norm == "imagenet":
        mean, std, to_rgb = (255.0 * IMAGENET_MEAN).tolist(), (255.0 * IMAGENET_STD).tolist(), True
    elif input_norm == "caffe":
        mean, std, to_rgb = CAFFE_BGR_MEAN.tolist(), [1.0] * 3, False
    else:
        raise SegmentationError(f"unknown input normalisation {input_norm!r}")
    cfg: dict[str, Any] = {
        "type": "SegDataPreProcessor",
        "mean": mean,
        "std": std,
        "bgr_to_rgb": to_rgb,
        "pad_val": 0,
        "seg_pad_val": IGNORE_LABEL,
    }
    if crop_size is not None:
        cfg["size"] = (crop_size, crop_size)
    else:  # one image per pass: training batches need a size rule, and divisor 1 pads nothing
        cfg["size_divisor"] = 1
    return cfg


def model_config(
    *,
    fc_width: int = 4096,
    input_norm: str = "minus1to1",
    widths: str = "torchvision",
    crop_size: int | None = None,
    learn_upsampling: bool = False,
    loss_norm: str = "valid",
    num_classes: int = len(SEG_CLASSES),
) -> dict[str, Any]:
    """The mmseg ``EncoderDecoder`` config of the protocol's FCN-32s (plain dicts, as an mmseg config holds)."""
    if loss_norm not in ("valid", "none"):
        raise SegmentationError(f"--loss-norm must be 'valid' or 'none', got {loss_norm!r}")
    loss = {
        "type": "CrossEntropyLoss",
        "use_sigmoid": False,
        "loss_weight": 1.0,
        "avg_non_ignore": True,
        "reduction": "mean" if loss_norm == "valid" else "sum",
    }
    return {
        "type": "EncoderDecoder",
        "data_preprocessor": preprocessor_config(input_norm, crop_size),
        "backbone": {"type": "ContextEncoderAlexNet", "widths": widths},
        "decode_head": {
            "type": "FCNAlexNetHead",
            "in_channels": 256,
            "channels": fc_width,
            "num_classes": num_classes,
            "fc_dropout": 0.5,
            "learn_upsampling": learn_upsampling,
            "trunk_widths": widths,
            "align_corners": False,
            "ignore_index": IGNORE_LABEL,
            "loss_decode": loss,
        },
        "train_cfg": {},
        "test_cfg": {"mode": "whole"},
    }


def optim_wrapper_config(lr: float, momentum: float, weight_decay: float, batch_size: int) -> dict[str, Any]:
    """SGD with FCN's multipliers (score-layer bias: 2x lr, no decay), ``batch_size`` passes per update."""
    return {
        "type": "OptimWrapper",
        "optimizer": {"type": "SGD", "lr": lr, "momentum": momentum, "weight_decay": weight_decay},
        "accumulative_counts": batch_size,
        "paramwise_cfg": {"custom_keys": {"decode_head.conv_seg.bias": {"lr_mult": 2.0, "decay_mult": 0.0}}},
    }


def pipeline_config(*, train: bool, flip: bool = True, crop_size: int | None = None) -> list[dict[str, Any]]:
    """mmseg's loading pipeline: OpenCV decode, palette-PNG masks, optional flip and crop, packing."""
    steps: list[dict[str, Any]] = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"}]
    if train and crop_size is not None:
        steps.append({"type": "RandomCrop", "crop_size": (crop_size, crop_size), "cat_max_ratio": 1.0})
    if train and flip:
        steps.append({"type": "RandomFlip", "prob": 0.5})
    steps.append({"type": "PackSegInputs"})
    return steps


def build_model(config: dict[str, Any]) -> Any:
    """An mmseg model from a config dict (after ``require_mmseg``)."""
    from mmengine.config import ConfigDict
    from mmseg.registry import MODELS

    return MODELS.build(ConfigDict(config))  # mmseg reads test_cfg.mode as an attribute


class PipelineItems(Dataset):
    """Items through an mmseg pipeline. Evaluation items are indexed by position; training items by the sampler's
    ``SampleKey``, whose seed seeds the global RNGs mmcv's random transforms draw from (numpy's), so runs repeat with
    any number of workers."""

    def __init__(self, items: list[SegItem], pipeline: list[dict[str, Any]]) -> None:
        from mmcv.transforms import Compose

        self.items = items
        self.pipeline = Compose(pipeline)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any]:
        index, seed = (key[0], key[2]) if isinstance(key, tuple) else (key, None)
        item = self.items[index]
        info: dict[str, Any] = {
            "img_path": str(item.image),
            "seg_map_path": str(item.mask),
            "label_map": None,
            "reduce_zero_label": False,
            "seg_fields": [],
            "image_id": item.image_id,
        }
        if seed is None:
            return self.pipeline(info)
        with seeded_rngs(seed):
            return self.pipeline(info)


def _unlist(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def _autocast(precision: str, device: torch.device) -> Any:
    from contextlib import nullcontext

    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def train_mmseg(
    model: torch.nn.Module,
    items: list[SegItem],
    cfg: SegmentationConfig,
    device: torch.device,
    log_path: Path,
    *,
    seed: int,
) -> dict[str, Any]:
    """``cfg.iterations`` updates of ``cfg.batch_size`` accumulated single-image passes (mmengine's loop step);
    ``seed`` draws the image order and mmcv's random transforms."""
    from mmengine.dataset import pseudo_collate
    from mmengine.optim import build_optim_wrapper

    wrapper = build_optim_wrapper(
        model,
        optim_wrapper_config(cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size),
    )
    dataset = PipelineItems(items, pipeline_config(train=True, flip=cfg.flip, crop_size=cfg.crop_size))
    sampler = IterationBatchSampler(len(items), cfg.batch_size, 0, cfg.iterations, seed)
    loader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=_unlist, num_workers=cfg.workers, generator=torch.Generator()
    )
    bar: Any = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.iterations, desc="mmseg fcn train", unit="it", dynamic_ncols=True)
    recent: list[float] = []
    start = time.perf_counter()
    model.train()
    with log_path.open("a") as log:
        for it, samples in enumerate(loader, start=1):
            loss = 0.0
            for sample in samples:
                with _autocast(cfg.precision, device):
                    log_vars = model.train_step(pseudo_collate([sample]), wrapper)  # type: ignore[operator]
                loss += float(torch.as_tensor(log_vars["loss"]).detach()) / len(samples)
            if not math.isfinite(loss):
                raise SegmentationError(f"non-finite training loss {loss} at iteration {it}; lower --lr")
            recent = [*recent, loss][-20:]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
            if it % 20 == 0 or it == cfg.iterations:
                log.write(json.dumps({"iteration": it, "loss": loss, "loss_avg": sum(recent) / len(recent)}) + "\n")
                log.flush()
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - start
    return {
        "iterations": cfg.iterations,
        "images": cfg.iterations * cfg.batch_size,
        "final_loss": recent[-1],
        "loss_avg_last": sum(recent) / len(recent),
        "train_time_s": elapsed,
        "images_per_s": cfg.iterations * cfg.batch_size / elapsed if elapsed > 0 else None,
    }


def iou_metric() -> Any:
    """mmseg's ``IoUMetric`` for the 21 VOC classes."""
    from mmseg.evaluation import IoUMetric

    metric = IoUMetric(iou_metrics=["mIoU"], ignore_index=IGNORE_LABEL, prefix="mmseg")
    metric.dataset_meta = {"classes": list(SEG_CLASSES)}
    return metric


@torch.no_grad()
def evaluate_mmseg(
    model: torch.nn.Module, items: list[SegItem], cfg: SegmentationConfig, device: torch.device, out: Path
) -> tuple[torch.Tensor, dict[str, float]]:
    """(the suite's confusion matrix, ``IoUMetric``'s result) of the model's predictions on whole images."""
    from mmengine.dataset import pseudo_collate

    dataset = PipelineItems(items, pipeline_config(train=False))  # no random transforms at evaluation
    loader = DataLoader(dataset, batch_size=1, collate_fn=_unlist, num_workers=cfg.workers)
    metric = iou_metric()
    hist = torch.zeros(len(SEG_CLASSES), len(SEG_CLASSES), dtype=torch.int64)
    iterator: Any = loader
    if cfg.progress:
        from tqdm import tqdm

        iterator = tqdm(loader, desc="mmseg fcn eval", unit="img", dynamic_ncols=True)
    model.eval()
    for (sample,), item in zip(iterator, items):
        with _autocast(cfg.precision, device):
            (result,) = model.test_step(pseudo_collate([sample]))  # type: ignore[operator]
        pred = result.pred_sem_seg.data[0].cpu()
        truth = torch.from_numpy(load_mask(item, (pred.shape[1], pred.shape[0])).astype(np.int64))
        hist += confusion_matrix(pred, truth, len(SEG_CLASSES))
        metric.process({}, [result.to_dict()])
        if cfg.save_predictions:
            save_prediction_png(pred.numpy(), out / "predictions" / f"{item.image_id}.png")
    summary = metric.compute_metrics(metric.results)
    # IoUMetric rounds to 2 decimals in float32; stored as the decimals it printed
    return hist, {k: round(float(v), 2) for k, v in summary.items()}


def _initial_fcn(
    cfg: SegmentationConfig, run: TransferRun, train_items: list[SegItem]
) -> tuple[FCN, dict[str, Any], str]:
    """The native FCN-32s as the protocol initialises it (weights, seed, rescale, ``--fcn-weights``)."""
    trunk, winfo = load_alexnet_trunk(run.weights, seed=run.seed)
    norm = resolve_input_norm(cfg.input_norm, winfo.kind)
    fcn = build_fcn(
        trunk,
        variant="32s",
        num_classes=len(SEG_CLASSES),
        fc_channels=cfg.fc_width,
        learn_upsampling=cfg.learn_upsampling,
        seed=run.seed,
    )
    weights = winfo.to_dict()
    if cfg.rescale:
        if not train_items:
            raise SegmentationError("--rescale needs training images (it is computed on the training split)")
        weights["rescale"] = rescale_fcn(fcn, [i.image for i in train_items], norm, seed=run.seed)
    if cfg.fcn_weights:
        load_fcn_file(fcn, Path(cfg.fcn_weights))
        weights["fcn_weights"] = str(cfg.fcn_weights)
        weights["fcn_weights_sha256"] = sha256_file(cfg.fcn_weights)
    return fcn, weights, norm


def load_fcn_file(fcn: torch.nn.Module, path: Path) -> None:
    """Load an ``fcn.safetensors`` (native keys, either engine's ``--save-model``) strictly into a native FCN."""
    if not path.is_file():
        raise SegmentationError(f"--fcn-weights file not found: {path}")
    try:
        fcn.load_state_dict(load_file(str(path)), strict=True)
    except Exception as exc:
        raise SegmentationError(f"{path} does not fit this FCN-32s (--fc-width?): {exc}") from exc


def _check_supported(cfg: SegmentationConfig, ctx: DistributedContext) -> None:
    if ctx.world_size > 1:
        raise SegmentationError("--engine mmseg runs in one process; start it without torchrun")
    if cfg.variant != "32s":
        raise SegmentationError(
            f"--engine mmseg builds FCN-32s only, got --variant {cfg.variant} (the cpu preset's FCN is "
            f"{PRESETS['cpu']['variant']}: add --variant 32s)"
        )
    if cfg.sbd_root:
        raise SegmentationError("--engine mmseg reads VOC2012 masks only; --sbd-root needs --engine native")
    if cfg.resume:
        raise SegmentationError("--engine mmseg has no --resume; rerun the command without it")


def _save_model(model: torch.nn.Module, path: Path) -> Path:
    """The trained mmseg model as a native-keyed ``fcn.safetensors`` (what ``--fcn-weights`` and the export read)."""
    state = {k: v.detach().cpu().contiguous() for k, v in mmseg_to_native_state(model.state_dict()).items()}
    metadata = {"format": "fcn-alexnet", "classes": ",".join(SEG_CLASSES), "engine": ENGINE}
    return atomic_write_bytes(path, save(state, metadata=metadata))


def run_mmseg_segmentation(cfg: SegmentationConfig, run: TransferRun, ctx: DistributedContext) -> dict[str, Any]:
    """Train and evaluate FCN-32s through mmseg; writes the run record into ``run.out`` and returns it (protocol id
    ``fcn32s-voc2012-mmseg``, ``config.engine`` mmseg, ``extra.engine`` naming mmseg and its versions)."""
    versions = require_mmseg()
    _check_supported(cfg, ctx)
    check_settings(cfg)
    cfg = replace(cfg, engine=ENGINE)
    started_at, t0 = utc_now_iso(), time.perf_counter()
    torch.manual_seed(run.seed * 1000)
    _, train_items, eval_items, skipped = load_items(cfg, run)  # --sbd-root was refused above
    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)

    fcn, weights, norm = _initial_fcn(cfg, run, train_items)
    cfg = replace(cfg, input_norm=norm)
    widths = str(weights.get("widths", "torchvision"))
    model = build_model(
        model_config(
            fc_width=cfg.fc_width,
            input_norm=norm,
            widths=widths,
            crop_size=cfg.crop_size,
            learn_upsampling=cfg.learn_upsampling,
            loss_norm=cfg.loss_norm,
        )
    )
    model.load_state_dict(native_to_mmseg_state(fcn.state_dict()), strict=True)
    model.to(ctx.device)

    train_summary: dict[str, Any] = {"iterations": 0}
    if cfg.iterations > 0:
        train_summary = train_mmseg(model, train_items, cfg, ctx.device, out / "train_log.jsonl", seed=run.seed)
    if cfg.save_model:
        weights["saved_fcn"] = str(_save_model(model, out / "fcn.safetensors"))
    hist, iou_metric_result = evaluate_mmseg(model, eval_items, cfg, ctx.device, out)
    record = build_record(
        cfg, run, hist, weights, 0, 0, train_summary, skipped, model.decode_head.crop_offset, ctx,
        started_at, time.perf_counter() - t0, n_train=len(train_items), n_eval=len(eval_items),
    )  # fmt: skip
    record["protocol"]["id"] = f"{cfg.protocol_id()}-{ENGINE}"
    record["protocol"]["description"] += (
        "; run through mmsegmentation (EncoderDecoder with the suite's AlexNet backbone and FCN-32s head, mmseg's "
        "data pipeline, loss and inference, mmengine's SGD with gradient accumulation)"
    )
    record["extra"]["engine"] = {"name": ENGINE, "versions": versions}
    record["extra"]["mmseg_iou_metric"] = iou_metric_result
    problems = validate_record(record)
    if problems:
        raise SegmentationError(f"the mmseg run record is invalid: {problems}")
    record_path = write_record(record, run.out)
    if cfg.progress:
        print(f"record: {record_path}")
    return record
