"""The Fast R-CNN protocol on detectron2: a second, independent implementation of training and inference.

:func:`run_detectron2` trains detectron2's ``GeneralizedRCNN`` (precomputed proposals, ``StandardROIHeads``, ROIPool
6x6 at stride 16, the AlexNet backbone and fc6/fc7 head of :mod:`transfer.detection.detectron2_model`) with
detectron2's own RoI matching and sampling, box-regression loss, optimizer and learning-rate schedule
(``build_optimizer``, ``build_lr_scheduler``), and detects with its ``fast_rcnn_inference`` (per-class NMS,
top-k). What it shares with the torchvision engine is the protocol's input side, so that the two differ only in the
implementation of the model and solver:

- the same images, ground truth and selective-search proposals with the same cap (:class:`DetectionImage` lists
  from :func:`transfer.detection.data.load_detection_split`; training images without foreground or background RoIs
  left out, difficult objects not trained on);
- the same image scaling (:func:`~transfer.detection.data.image_scale`, bilinear) and horizontal flips, and the
  same order of images and flips (:class:`pretrain.sampling.IterationBatchSampler` with the same seed and
  :func:`~transfer.detection.data.train_views`);
- the same starting weights: the torchvision engine's model is built with the same seed (fc6/fc7/predictor
  fillers and, with ``rescale``, Krähenbühl's rescaling) and copied over;
- the same scoring: the suite's VOC07 AP (:func:`~transfer.detection.evaluate.score_detections`); detectron2's
  ``PascalVOCDetectionEvaluator`` is run on the same detections and stored beside it.

Boxes are passed to detectron2 in the suite's 0-based inclusive pixel convention, so that ROIPool pools exactly the
cells the torchvision engine pools (both round ``x * 1/16`` with the end inclusive, as Caffe's ROIPooling);
detectron2's IoU and box deltas then use ``x2 - x1`` where Fast R-CNN uses ``x2 - x1 + 1``, a difference below a
pixel at image scale. detectron2 is imported only when a function here runs: :func:`require_detectron2` says how
to install it when it is missing.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from pretrain.checkpoint import atomic_torch_save, atomic_write_text
from pretrain.sampling import IterationBatchSampler, SampleKey
from transfer.config import ProtocolError
from transfer.detection.boxes import clip_boxes, flip_boxes
from transfer.detection.data import DetectionImage, RoISampler, image_scale, train_views
from transfer.detection.evaluate import score_detections
from transfer.engine import NonFiniteLossError
from transfer.voc import VOC_CLASSES, VOCError

INSTALL_HINT = (
    "install detectron2 from its repository as its INSTALL.md says "
    "(pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'), "
    "then pip install -e '.[detectron2]'"
)
ENGINE_NAME = "detectron2"
#: the torchvision engine's loss names -> detectron2's
LOSS_NAMES = {"loss_cls": "loss_cls", "loss_box": "loss_box_reg"}


class Detectron2Unavailable(RuntimeError):
    """detectron2 is not installed (or does not import); the message says how to install it."""


def detectron2_available() -> bool:
    """Whether detectron2 can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("detectron2") is not None
    except (ImportError, ValueError):
        return False


def require_detectron2() -> str:
    """Import detectron2 and return its version, or raise :class:`Detectron2Unavailable` with the install line."""
    try:
        import detectron2
        from detectron2 import _C  # noqa: F401  the compiled ops: a source tree without a build fails here
    except ImportError as exc:
        raise Detectron2Unavailable(f"--engine detectron2 needs detectron2 ({exc}); {INSTALL_HINT}") from exc
    return str(getattr(detectron2, "__version__", "unknown"))


@dataclass(frozen=True)
class Detectron2Settings:
    """Everything the engine's run depends on besides the data, the trunk and the seed (defaults: ``paper``). The
    fields that are detection knobs carry the knobs' names (``DetectionConfig``); the rest are Fast R-CNN's fixed
    RoI sampling and augmentation, as the torchvision engine has them."""

    iterations: int = 40_000
    lr: float = 0.001
    lr_step: int = 30_000
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 2
    rois_per_image: int = 64
    scale: int = 600
    max_size: int = 1000
    fc_width: int = 4096
    freeze_through: str = "conv1"
    rescale: bool = False
    precision: str = "fp32"
    input_norm: str = "minus1to1"
    nms: float = 0.3
    score_threshold: float = 0.05
    max_per_image: int = 100
    workers: int = 0
    # Fast R-CNN's fixed RoI sampling, as the torchvision engine's RoISampler has it
    fg_fraction: float = RoISampler.fg_fraction
    fg_threshold: float = RoISampler.fg_threshold
    bg_threshold_lo: float = RoISampler.bg_threshold[0]
    flip: bool = True


def settings_from_options(options: Mapping[str, Any]) -> Detectron2Settings:
    """Settings from the detection protocol's config (``DetectionConfig.to_dict()``): every knob the engine uses,
    by its name, unset knobs left at their defaults."""
    names = {f.name for f in fields(Detectron2Settings)}
    return replace(Detectron2Settings(), **{k: v for k, v in options.items() if k in names and v is not None})


def check_engine(engine: str, distributed: bool, resume: bool) -> None:
    """Raise :class:`ProtocolError` (one line), before any long work, when the ``detectron2`` engine cannot run:
    detectron2 is missing (the message says how to install it), a torchrun launch, or ``--resume``."""
    if engine != ENGINE_NAME:
        return
    try:
        require_detectron2()
    except Detectron2Unavailable as exc:
        raise ProtocolError(str(exc)) from None
    if distributed:
        raise ProtocolError("--engine detectron2 runs in one process; launch it without torchrun")
    if resume:
        raise ProtocolError("--engine detectron2 has no --resume; rerun the command without it")


def build_detectron2_model(
    trunk: nn.Sequential, settings: Detectron2Settings, seed: int, device: torch.device, rescale_images: Sequence = ()
) -> tuple[nn.Module, Any, dict[str, Any] | None]:
    """``(model, cfg, rescale info)``: detectron2's Fast R-CNN from :func:`protocol_config`, starting from the
    torchvision engine's initial weights for ``trunk`` and ``seed`` (and its rescaling on ``rescale_images``)."""
    from detectron2.modeling import build_model

    from transfer.detection.detectron2_model import model_state_from_fast_rcnn, protocol_config
    from transfer.detection.model import FastRCNN, rescale_fast_rcnn

    reference = FastRCNN(trunk, hidden=settings.fc_width, seed=seed)
    rescale_info = None
    if settings.rescale:
        rescale_info = rescale_fast_rcnn(reference, list(rescale_images), settings.input_norm, seed=seed)
    cfg = protocol_config(settings, device=str(device))
    model = build_model(cfg)
    model.load_state_dict(model_state_from_fast_rcnn(reference.state_dict()), strict=True)
    dtype = torch.bfloat16 if settings.precision == "bf16" else None
    model.backbone.compute_dtype = dtype
    model.roi_heads.box_head.compute_dtype = dtype
    return model, cfg, rescale_info


def _pixels(path: Path, scale: int, max_size: int, fmt: str, flip: bool) -> tuple[torch.Tensor, float, int, int]:
    """``(image [3, h, w] float 0..255 in ``fmt`` channel order, factor, W, H)``: the file resized as the
    torchvision engine's ``load_scaled_image`` does, before normalisation (detectron2 normalises inside the model)."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except OSError as exc:  # as the torchvision engine's loader: the file is named, no traceback
        raise VOCError(f"{path}: unreadable image ({exc})") from exc
    if flip:
        rgb = rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    factor = image_scale(rgb.width, rgb.height, scale, max_size)
    size = (max(1, round(rgb.width * factor)), max(1, round(rgb.height * factor)))
    arr = np.asarray(rgb.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    if fmt == "BGR":
        arr = arr[..., ::-1]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), factor, rgb.width, rgb.height


def _instances(image_size: tuple[int, int], **fields: Any) -> Any:
    from detectron2.structures import Boxes, Instances

    inst = Instances(image_size)
    for name, value in fields.items():
        inst.set(name, Boxes(value) if name.endswith("boxes") else value)
    return inst


class Detectron2TrainSet(torch.utils.data.Dataset):
    """detectron2 input dicts keyed as the sampler yields them, ``(image index, view, seed)`` (view 1 = mirrored):
    the scaled image, its non-difficult ground truth (class ids 0..19) and its proposals in the scaled image."""

    def __init__(self, images: Sequence[DetectionImage], settings: Detectron2Settings, fmt: str) -> None:
        self.images, self.settings, self.fmt = list(images), settings, fmt

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        index, view, _ = key
        flip = view == 1
        item = self.images[index]
        image, factor, w, _ = _pixels(item.path, self.settings.scale, self.settings.max_size, self.fmt, flip)
        train = ~item.difficult
        gt = torch.from_numpy(item.boxes[train])
        proposals = torch.from_numpy(item.proposals)
        if flip:
            gt, proposals = flip_boxes(gt, w), flip_boxes(proposals, w)
        size = (int(image.shape[1]), int(image.shape[2]))
        return {
            "image": image,
            "instances": _instances(size, gt_boxes=gt * factor, gt_classes=torch.from_numpy(item.labels[train] - 1)),
            "proposals": _instances(
                size, proposal_boxes=proposals * factor, objectness_logits=torch.zeros(len(proposals))
            ),
        }


def _collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


def train_detectron2(
    model: nn.Module, cfg: Any, images: Sequence[DetectionImage], settings: Detectron2Settings, seed: int
) -> dict[str, float]:
    """Train with detectron2's optimizer and schedule over the protocol's mini-batches; returns the mean losses of
    the last 20 iterations and the iterations done (as the torchvision engine's summary)."""
    from detectron2.solver import build_lr_scheduler, build_optimizer
    from detectron2.utils.events import EventStorage

    torch.manual_seed(seed)  # detectron2 samples RoIs with the global generator
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    views = train_views(settings.flip)
    batches = IterationBatchSampler(len(images), settings.batch_size, 0, settings.iterations, seed, views=views)
    loader = torch.utils.data.DataLoader(
        Detectron2TrainSet(images, settings, cfg.INPUT.FORMAT),
        batch_sampler=batches,
        collate_fn=_collate,
        num_workers=settings.workers,
        generator=torch.Generator().manual_seed(seed),
    )
    recent: list[dict[str, float]] = []
    done = 0
    model.train()
    with EventStorage(0) as storage:
        for it, batch in enumerate(loader):
            storage.iter = it
            losses = model(batch)
            loss = sum(losses.values())
            if not torch.isfinite(loss):  # before the step: the weights have not changed
                parts = ", ".join(f"{k} {float(v):g}" for k, v in losses.items())
                raise NonFiniteLossError(f"{float(loss):g} ({parts})", it)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            stats = {k: float(losses[name].detach()) for k, name in LOSS_NAMES.items()}
            stats["loss"] = float(loss.detach())
            recent = [*recent[-19:], stats]
            done = it + 1
    summary = {k: sum(r[k] for r in recent) / len(recent) for k in ("loss", "loss_cls", "loss_box")} if recent else {}
    summary["iterations"] = float(done)
    summary["final_lr"] = float(optimizer.param_groups[0]["lr"])
    return summary


@torch.no_grad()
def detect_detectron2(
    model: nn.Module, cfg: Any, image: DetectionImage, settings: Detectron2Settings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections of one image as the torchvision engine's ``detect_image`` returns them: ``(boxes [D, 4] 0-based
    inclusive, clipped to the image, scores [D], labels [D] in 1..20)`` in original pixels, best first."""
    if len(image.proposals) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    model.eval()
    pixels, factor, w, h = _pixels(image.path, settings.scale, settings.max_size, cfg.INPUT.FORMAT, flip=False)
    size = (int(pixels.shape[1]), int(pixels.shape[2]))
    proposals = torch.from_numpy(image.proposals) * factor
    given = _instances(size, proposal_boxes=proposals, objectness_logits=proposals.new_zeros(len(proposals)))
    (out,) = model.inference([{"image": pixels, "proposals": given}], do_postprocess=False)  # type: ignore[operator]
    boxes = clip_boxes(out.pred_boxes.tensor.float().cpu() / factor, w, h)
    return boxes.numpy(), out.scores.float().cpu().numpy(), out.pred_classes.cpu().numpy().astype(np.int64) + 1


def voc_evaluator_result(
    images: Sequence[DetectionImage],
    found: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    year_dir: Path,
    split: str,
) -> dict[str, float | None]:
    """detectron2's ``PascalVOCDetectionEvaluator`` on the given detections of ``year_dir``'s ``split`` (its own
    reading of the XML files and ``ImageSets/Main/<split>.txt``): ``{"AP50", "AP75", "AP"}`` in percent (``None``
    where not finite), ``AP50`` being VOC2007's 11-point AP at IoU > 0.5. Boxes are converted to detectron2's
    convention (``x2 + 1``), which its evaluator undoes when it writes the 1-based inclusive results files."""
    require_detectron2()
    from detectron2.data import MetadataCatalog
    from detectron2.evaluation import PascalVOCDetectionEvaluator
    from detectron2.structures import Boxes, Instances

    name = f"context_encoders_bench_voc2007_{split}_{abs(hash(str(Path(year_dir).resolve()))):x}"
    if name not in MetadataCatalog.list():
        MetadataCatalog.get(name).set(dirname=str(year_dir), year=2007, split=split, thing_classes=list(VOC_CLASSES))
    evaluator = PascalVOCDetectionEvaluator(name)
    evaluator.reset()
    for im, (boxes, scores, labels) in zip(images, found, strict=True):
        inst = Instances((im.height, im.width))
        shifted = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)).clone()
        shifted[:, 2:] += 1.0
        inst.pred_boxes = Boxes(shifted)
        inst.scores = torch.as_tensor(np.asarray(scores, np.float32))
        inst.pred_classes = torch.as_tensor(np.asarray(labels, np.int64) - 1)
        evaluator.process([{"image_id": im.image_id}], [{"instances": inst}])
    with np.errstate(divide="ignore", invalid="ignore"):  # its voc_eval divides by zero for classes without gt
        result = evaluator.evaluate()
    return {k: finite_or_none(float(v)) for k, v in result["bbox"].items()}


def run_detectron2(
    train_images: Sequence[DetectionImage],
    eval_images: Sequence[DetectionImage],
    trunk: nn.Sequential,
    settings: Detectron2Settings,
    seed: int,
    device: torch.device,
    out: Path | None = None,
    voc_eval: tuple[Path, str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train on ``train_images`` (every one with training RoIs) and detect on ``eval_images``.

    Returns ``{"result": score_detections(...) result, "detections": per-class detections, "train": loss summary,
    "frozen_layers", "rescale", "evaluator": detectron2's VOC evaluator result (with ``voc_eval = (year_dir,
    split)``, else ``None``), "engine": {"name", "version"}, "config": the detectron2 config as YAML}``. With ``out``,
    the trained model is written as ``out/detectron2/model_final.pth`` with ``out/detectron2/config.yaml`` beside
    it (``DetectionCheckpointer`` loads the one into a model built from the other, strict)."""
    version = require_detectron2()
    from tqdm import tqdm

    if not train_images:
        raise ValueError("no training images with foreground or background RoIs")
    torch.manual_seed(seed)
    model, cfg, rescale_info = build_detectron2_model(trunk, settings, seed, device, [im.path for im in train_images])
    train_summary = train_detectron2(model, cfg, train_images, settings, seed)
    found = [detect_detectron2(model, cfg, im, settings) for im in tqdm(eval_images, desc="detectron2 test",
                                                                         unit="img", disable=not progress)]  # fmt: skip
    result, detections = score_detections(eval_images, found, list(VOC_CLASSES))
    evaluator = voc_evaluator_result(eval_images, found, *voc_eval) if voc_eval is not None else None
    frozen = [n for n in ("conv1", "conv2", "conv3", "conv4", "conv5")
              if not any(p.requires_grad for p in getattr(model.backbone, n).parameters())]  # fmt: skip
    if out is not None:
        save_detectron2_model(model, cfg, Path(out) / "detectron2")
    return {
        "result": result,
        "detections": detections,
        "train": train_summary,
        "frozen_layers": frozen,
        "rescale": rescale_info,
        "evaluator": evaluator,
        "engine": {"name": ENGINE_NAME, "version": version, "settings": asdict(settings)},
        "config": cfg.dump(),
    }


def save_detectron2_model(model: nn.Module, cfg: Any, folder: Path) -> tuple[Path, Path]:
    """``folder/model_final.pth`` (``{"model": state dict}``, detectron2's checkpoint layout) and
    ``folder/config.yaml`` whose ``MODEL.WEIGHTS`` names it; written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "model_final.pth"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_torch_save({"model": state, "__author__": "context-encoders-bench"}, weights)
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = str(weights.resolve())
    cfg.MODEL.DEVICE = "cpu"
    config = folder / "config.yaml"
    atomic_write_text(config, cfg.dump())
    return weights, config


def finite_or_none(value: float) -> float | None:
    """JSON-safe float (records hold no NaN)."""
    return value if math.isfinite(value) else None
