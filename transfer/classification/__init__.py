"""VOC2007 multi-label classification fine-tuning (Krähenbühl et al. protocol, Pathak et al. 2016, Sec. 5.2).

The protocol, line by line (sources: paper Sec. 5.2 and Krähenbühl's ``voc-classification`` code, ``train_cls.py``):

- data: VOC2007 ``trainval`` for training, ``test`` for evaluation; labels from ``Annotations`` (1 present,
  -1 absent, 0 difficult-only = ignored in the loss and in AP);
- network: AlexNet conv1..pool5 (the transferred trunk) + fc6 (9216->4096) + ReLU + dropout 0.5 + fc7 (4096->4096)
  + ReLU + dropout 0.5 + fc8 (4096->C) in Caffe's layer order (``fc_width`` 4096; the smoke preset narrows it);
  ``clip="pool5"`` drops fc6/fc7 (fc8 reads pool5);
  re-initialised layers (everything above the trunk) N(0, 0.01) weights, bias 0.1;
- loss: sigmoid cross-entropy summed over the non-ignored (image, class) entries, divided by the batch size;
- optimiser: SGD, momentum 0.9, lr 0.001 (biases 2x, Caffe ``lr_mult: 2``), weight decay 1e-6 on weights and
  biases, lr x0.5 every 10k iterations, 80k iterations, batch 16, gradient clipping at global L2 norm 10;
- augmentation: each image rescaled by a factor drawn from U(0.5, 2.0) (shorter side at least the crop size), a
  random 227x227 crop and a horizontal flip with probability 0.5;
- ``train_from``: ``all`` trains every layer (the Context Encoder row), ``fc6`` trains fc6..fc8 (trunk frozen),
  ``fc8`` trains fc8 only;
- evaluation of the final iterate (no model selection): "1 crop" = the centre crop of the image at scale 1, no
  flip; "10 crops" = the sum of the logits of 10 random training-style views (scale, crop, flip), drawn from a
  generator seeded by (seed, image index, view) so results do not depend on worker count.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pretrain.data import aspect_problem
from pretrain.distributed import DistributedContext, all_reduce_sum
from pretrain.engine import set_rng_state
from pretrain.sampling import SampleKey
from transfer.classification.config import ClassificationConfig
from transfer.engine import NonFiniteLossError, autocast, caffe_param_groups, set_learning_rate, step_lr
from transfer.input_norm import normalize_image
from transfer.rescale import between_layer_scale_correction, within_layer_init_
from transfer.voc import (
    VOC_CLASSES,
    VOCError,
    classes_in_annotations,
    classification_labels,
    image_path,
    load_annotation,
    load_image,
    read_image_set,
)


# ----------------------------------------------------------------------------------------------------- data
def _resize(image: Image.Image, scale: float, crop: int) -> Image.Image:
    """Resize by ``scale``; enlarge further if needed so that the shorter side is at least ``crop``."""
    w, h = image.size
    scale = max(scale, crop / min(w, h))
    size = (max(crop, round(w * scale)), max(crop, round(h * scale)))
    return image.resize(size, Image.Resampling.BILINEAR) if size != (w, h) else image


def random_view(
    image: Image.Image, crop: int, min_scale: float, max_scale: float, rng: np.random.Generator
) -> Image.Image:
    """The training augmentation: random scale in [min_scale, max_scale], random crop, random horizontal flip."""
    im = _resize(image, float(rng.uniform(min_scale, max_scale)), crop)
    x = int(rng.integers(0, im.width - crop + 1))
    y = int(rng.integers(0, im.height - crop + 1))
    im = im.crop((x, y, x + crop, y + crop))
    return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else im


def centre_view(image: Image.Image, crop: int) -> Image.Image:
    """The 1-crop evaluation view: scale 1 (shorter side at least ``crop``), centre crop, no flip."""
    im = _resize(image, 1.0, crop)
    x, y = (im.width - crop) // 2, (im.height - crop) // 2
    return im.crop((x, y, x + crop, y + crop))


@dataclass(frozen=True)
class VOCItem:
    image_id: str
    path: Path
    labels: np.ndarray  # [C] int8 in {1, 0, -1}


def load_classification_items(
    year_dir: Path, split: str, classes: tuple[str, ...], skip_bad: bool = False
) -> tuple[list[VOCItem], list[str]]:
    """Items of ``split`` with their label vectors; with ``skip_bad`` a missing/unreadable image or annotation or a
    malformed XML is skipped and reported as ``"<id>: <reason>"`` instead of raising ``VOCError``."""
    items: list[VOCItem] = []
    skipped: list[str] = []
    for image_id in read_image_set(year_dir, split):
        try:
            ann = load_annotation(year_dir, image_id)
            path = image_path(year_dir, image_id)
            if not path.is_file():
                raise VOCError(f"image not found: {path}")
            try:
                with Image.open(path) as im:
                    im.verify()
                    problem = aspect_problem(im.width, im.height)
            except Exception as exc:  # PIL raises many types for broken files
                raise VOCError(f"{path}: unreadable image ({exc})") from exc
            if problem is not None:
                raise VOCError(f"{path}: {problem}; --skip-bad skips it")
        except VOCError as exc:
            if not skip_bad:
                raise
            skipped.append(f"{split}/{image_id}: {exc}")
            continue
        items.append(VOCItem(image_id, path, classification_labels(ann, classes)))
    if not items:
        raise VOCError(f"no usable images in {year_dir.name} {split}")
    return items, skipped


def resolve_classes(spec: str, year_dir: Path, split: str) -> tuple[str, ...]:
    """``voc`` -> the 20 VOC classes; ``data`` -> sorted names found in the split's annotations; else a
    comma-separated list."""
    if spec == "voc":
        return VOC_CLASSES
    if spec == "data":
        anns = []
        for image_id in read_image_set(year_dir, split):
            try:
                anns.append(load_annotation(year_dir, image_id))
            except VOCError:
                continue  # reported when the items are loaded
        found = classes_in_annotations(anns)
        if not found:
            raise VOCError(f"no object names found in the {split} annotations of {year_dir}")
        return found
    names = tuple(c.strip() for c in spec.split(",") if c.strip())
    if not names:
        raise ValueError(f"--classes {spec!r} names no class")
    return names


class VOCClassificationTrain(Dataset):
    """Training views: ``(image [3, crop, crop], labels [C] int8)`` of the sampler's keys ``(index, view, seed)``;
    the scale, crop and flip are drawn from the key's seed (the same in any worker process)."""

    def __init__(self, items: list[VOCItem], cfg: ClassificationConfig) -> None:
        self.items, self.cfg = items, cfg

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        index, _, seed = key
        item = self.items[index]
        rng = np.random.default_rng(seed)
        view = random_view(load_image(item.path), self.cfg.crop_size, self.cfg.min_scale, self.cfg.max_scale, rng)
        return normalize_image(view, self.cfg.input_norm), torch.from_numpy(item.labels.astype(np.int64))


class VOCClassificationEval(Dataset):
    """Evaluation views of one image: ``[1 + n_random, 3, crop, crop]`` (centre view first) and labels."""

    def __init__(self, items: list[VOCItem], cfg: ClassificationConfig, seed: int) -> None:
        self.items, self.cfg, self.seed = items, cfg, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        item, cfg = self.items[i], self.cfg
        image = load_image(item.path)
        views = [centre_view(image, cfg.crop_size)]
        for k in range(cfg.eval_crops):
            rng = np.random.default_rng([self.seed, i, k])
            views.append(random_view(image, cfg.crop_size, cfg.min_scale, cfg.max_scale, rng))
        stacked = torch.stack([normalize_image(v, cfg.input_norm) for v in views])
        return stacked, torch.from_numpy(item.labels.astype(np.int64))


# ----------------------------------------------------------------------------------------------------- model
class VOCClassifier(nn.Module):
    """AlexNet trunk + classifier head with Caffe's layer names (fc6, relu6, drop6, fc7, relu7, drop7, fc8).

    ``x: [N, 3, H, W]`` -> logits ``[N, C]``. pool5 is adaptively average-pooled to 6x6 (identity at the paper's
    227 px; lets the smoke preset use smaller crops with the same 9216-wide fc6, as torchvision's AlexNet does).
    """

    def __init__(
        self,
        trunk: nn.Sequential,
        num_classes: int = 20,
        clip: str = "drop7",
        dropout: float = 0.5,
        fc_width: int = 4096,
    ) -> None:
        super().__init__()
        if clip not in ("drop7", "pool5"):
            raise ValueError(f"clip must be drop7 or pool5, got {clip!r}")
        channels = [m for m in trunk if isinstance(m, nn.Conv2d)][-1].out_channels
        self.features = trunk
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        in_dim = channels * 36
        head: OrderedDict[str, nn.Module] = OrderedDict()
        if clip == "drop7":
            head.update(
                fc6=nn.Linear(in_dim, fc_width),
                relu6=nn.ReLU(inplace=True),
                drop6=nn.Dropout(dropout),
                fc7=nn.Linear(fc_width, fc_width),
                relu7=nn.ReLU(inplace=True),
                drop7=nn.Dropout(dropout),
            )
            in_dim = fc_width
        head["fc8"] = nn.Linear(in_dim, num_classes)
        self.classifier = nn.Sequential(head)
        self.clip = clip

    def fc(self, name: str) -> nn.Linear:
        """The fully connected layer ``fc6``, ``fc7`` or ``fc8``."""
        layer = self.classifier._modules.get(name)
        if not isinstance(layer, nn.Linear):
            raise KeyError(f"{name} is not a layer of this classifier (clip={self.clip})")
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last convolutions: the same arithmetic, a fine-tuning step about 7% (fp32) / 10% (bf16) faster
        # on CPU (docs/performance.md); flatten follows the logical [N, C, H, W] order whatever the layout
        x = self.features(x.contiguous(memory_format=torch.channels_last))
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def layer_chain(self) -> tuple[list[nn.Module], list[str]]:
        """The network below fc8 as a flat feed-forward chain (conv1..pool5, fc6, relu6, drop6, fc7) and the names
        of its parameter layers: what Krähenbühl's rescaling sees (their deploy net, before ``fc8_cls`` is added)."""
        chain: list[nn.Module] = [*self.features]
        names = [f"conv{i}" for i in range(1, 6)]
        if self.clip == "drop7":
            c = self.classifier._modules
            chain += [self.avgpool, *(c[n] for n in ("fc6", "relu6", "drop6", "fc7"))]
            names += ["fc6", "fc7"]
        return chain, names

    @torch.no_grad()
    def reinit_head(self, std: float, bias: float, generator: torch.Generator) -> None:
        """N(0, std) weights and constant ``bias`` for every fc layer (the protocol's re-initialisation)."""
        for m in self.classifier:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, std, generator=generator)
                m.bias.fill_(bias)

    def set_trainable(self, train_from: str) -> list[str]:
        """Freeze everything below ``train_from`` (all | fc6 | fc8); return the names of trained layers."""
        if train_from not in ("all", "fc6", "fc8"):
            raise ValueError(f"train_from must be all, fc6 or fc8, got {train_from!r}")
        if train_from == "fc6" and self.clip == "pool5":
            raise ValueError("--train-from fc6 needs fc6/fc7; with --clip pool5 use --train-from fc8 or all")
        for p in self.features.parameters():
            p.requires_grad_(train_from == "all")
        for name, m in self.classifier.named_children():
            on = train_from != "fc8" or name == "fc8"
            for p in m.parameters():
                p.requires_grad_(on)
        return [n for n, p in self.named_parameters() if p.requires_grad]


def rescale_for_finetuning(
    model: VOCClassifier,
    images: torch.Tensor,
    cfg: ClassificationConfig,
    seed: int,
    max_iterations: int = 10,
    pretrained_fc: tuple[str, ...] | list[str] = (),
) -> dict[str, Any]:
    """``--rescale``: Krähenbühl et al.'s ``magic_init -l <pretrained> -cs`` on the network below fc8.

    1. fc6 and fc7, unless listed in ``pretrained_fc`` (magic_init only initialises layers the pretrained file
       lacks), get the within-layer data-dependent init (bias 0.1);
    2. the between-layer scale correction rescales conv1..fc7 (conv1..conv5 with ``clip=pool5``) on the first
       ``cfg.batch_size`` images;
    fc8 keeps the protocol's N(0, 0.01) / 0.1 init, as ``train_cls.py`` adds ``fc8_cls`` after magic_init ran.
    ``images`` are training views (magic_init uses 10 batches for step 1 and one batch for step 2).
    """
    device = next(model.parameters()).device
    images = images.to(device)
    chain, names = model.layer_chain()
    fresh = [n for n in ("fc6", "fc7") if n not in pretrained_fc] if model.clip == "drop7" else []
    if fresh:
        targets = [i for i, m in enumerate(chain) if any(m is model.fc(n) for n in fresh)]
        within_layer_init_(chain, images, targets, bias=cfg.init_bias, seed=seed + 2)
    report = between_layer_scale_correction(
        chain, images[: cfg.batch_size], max_iterations=max_iterations, seed=seed + 3, names=names
    )
    out = report.to_dict()
    out["within_layer_init"] = fresh
    out["images_within"] = int(images.shape[0])
    out["images_between"] = int(min(cfg.batch_size, images.shape[0]))
    return out


#: torchvision AlexNet classifier indices of fc6 and fc7 (``Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear``)
TORCHVISION_FC = {"fc6": "classifier.1", "fc7": "classifier.4"}


@torch.no_grad()
def load_pretrained_fc(model: VOCClassifier, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy fc6/fc7 from a torchvision AlexNet state dict when it holds them with matching shapes (Krähenbühl's
    ``copy_from``: every layer the pretrained file provides is used; only fc8 is new). Returns the layers copied."""
    if model.clip != "drop7":
        return []
    copied = []
    for name, prefix in TORCHVISION_FC.items():
        w, b = state.get(f"{prefix}.weight"), state.get(f"{prefix}.bias")
        layer = model.fc(name)
        if w is None or b is None or w.shape != layer.weight.shape or b.shape != layer.bias.shape:
            continue
        layer.weight.copy_(w.float())
        layer.bias.copy_(b.float())
        copied.append(name)
    return copied


def build_classifier(trunk: nn.Sequential, num_classes: int, cfg: ClassificationConfig, seed: int) -> VOCClassifier:
    model = VOCClassifier(trunk, num_classes, clip=cfg.clip, dropout=cfg.dropout, fc_width=cfg.fc_width)
    model.reinit_head(cfg.init_std, cfg.init_bias, torch.Generator().manual_seed(seed + 1))
    return model


# ----------------------------------------------------------------------------------------------------- training
def masked_sigmoid_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Krähenbühl's loss: ``logits [N, C]``, ``labels [N, C]`` in {1, 0 ignore, -1}; the sum of the per-entry BCE
    over non-ignored entries divided by N."""
    mask = (labels != 0).to(logits.dtype)
    target = (labels > 0).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return (loss * mask).sum() / logits.shape[0]


def make_optimizer(model: nn.Module, cfg: ClassificationConfig) -> torch.optim.SGD:
    """SGD with momentum; biases at ``bias_lr_mult`` times the rate, weight decay on weights and biases alike."""
    groups = caffe_param_groups(model, cfg.lr, cfg.weight_decay, bias_lr_mult=cfg.bias_lr_mult, bias_decay_mult=1.0)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_at(iteration: int, cfg: ClassificationConfig) -> float:
    """Caffe ``step`` policy: ``lr * gamma ** (iteration // step)``."""
    return step_lr(cfg.lr, cfg.lr_gamma, cfg.lr_step, iteration)


def train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: ClassificationConfig,
    device: torch.device,
    iteration: int = 0,
) -> tuple[float, float]:
    """One SGD step on ``images [N, 3, H, W]`` / ``labels [N, C]`` (gradient norm clipped at ``cfg.grad_clip``
    over ``params``); returns ``(loss, grad_norm)``. Raises ``NonFiniteLossError`` on a non-finite loss before
    any weight changes. ``finetune`` calls it once per iteration; ``bench speed`` times it."""
    images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    with autocast(device, cfg.precision):
        logits = model(images)
    loss = masked_sigmoid_cross_entropy(logits, labels)
    if not torch.isfinite(loss):
        raise NonFiniteLossError(float(loss), iteration)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
    opt.step()
    return float(loss.detach()), grad_norm


def finetune(
    model: VOCClassifier,
    loader: DataLoader,
    cfg: ClassificationConfig,
    device: torch.device,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    ctx: DistributedContext | None = None,
    resume: dict[str, Any] | None = None,
    after_step: Callable[[int, torch.optim.Optimizer, dict[str, Any]], None] | None = None,
) -> dict[str, float]:
    """Run ``cfg.iterations`` SGD steps; abort on a non-finite loss. Returns summary statistics.

    Under torchrun (``ctx.distributed``) the model is wrapped in DistributedDataParallel, which first copies rank
    0's weights to every rank and then averages gradients. ``loader`` yields this rank's share of the batches of the
    iterations still to run, from the resumed one on (an :class:`pretrain.sampling.IterationBatchSampler` started
    there), so that the averaged gradient is the global batch's. ``resume``: this rank's view of a training
    checkpoint (``transfer/resumable.py``) to continue from, bit for bit; ``after_step(done, optimizer, state)`` runs
    after each iteration with what a checkpoint needs besides model and optimizer."""
    model.to(device).train()
    if cfg.train_from != "all":
        model.features.eval()  # frozen trunk (no dropout/BN inside; kept explicit)
    net: nn.Module = model
    if ctx is not None and ctx.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = make_optimizer(model, cfg)
    params = [p for g in opt.param_groups for p in g["params"]]
    ema, first, last, begin = math.nan, math.nan, math.nan, 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        begin = int(resume["iteration"])
        ema, first, last = (resume.get("stats") or {}).get("ema_first_last", (math.nan,) * 3)
    if resume is not None:
        set_rng_state(resume["rng"])
    start = time.perf_counter()
    for it, (images, labels) in zip(range(begin, cfg.iterations), loader):
        lr = set_learning_rate(opt, lr_at(it, cfg))
        value, grad_norm = train_step(net, opt, params, images, labels, cfg, device, it)
        if net is not model:  # report the global batch's loss (the mean of the ranks' equal shares)
            value = float(all_reduce_sum(torch.tensor([value], dtype=torch.float64))[0]) / ctx.world_size  # type: ignore[union-attr]
        first = value if it == 0 else first
        last = value
        ema = value if math.isnan(ema) else 0.95 * ema + 0.05 * value
        if progress is not None:
            progress(it, {"loss": value, "loss_avg": ema, "lr": lr, "grad_norm": grad_norm})
        if after_step is not None:
            after_step(it + 1, opt, {"stats": {"ema_first_last": (ema, first, last)}})
    return {
        "loss_first": first,
        "loss_last": last,
        "loss_avg_last": ema,
        "train_time_s": time.perf_counter() - start,
    }


@torch.no_grad()
def evaluate(
    model: VOCClassifier,
    loader: DataLoader,
    device: torch.device,
    precision: str = "fp32",
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (1-crop logits [N, C], summed random-crop logits [N, C], labels [N, C]) in dataset order."""
    model.to(device).eval()
    one, many, labels = [], [], []
    for views, lab in loader:
        n, v = views.shape[:2]
        with autocast(device, precision):
            logits = model(views.flatten(0, 1).to(device)).float().view(n, v, -1).cpu()
        one.append(logits[:, 0])
        many.append(logits[:, 1:].sum(dim=1))
        labels.append(lab)
        if progress is not None:
            progress(n)
    return torch.cat(one).numpy(), torch.cat(many).numpy(), torch.cat(labels).numpy()
