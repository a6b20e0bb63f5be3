"""The hot paths ``bench speed`` measures, each built from the suite's own code, and their registry ``HOT_PATHS``.

Every builder returns a ``Workload`` whose ``step()`` runs exactly what the training loop runs per iteration (the
real method class, the real ``train_step`` function, the real DataLoader), on synthetic tensors where the content of
the images does not change the arithmetic, and on real JPEG files where it does (the data loader, selective
search). Each builder imports what it measures inside itself, so a measuring subprocess loads only the code of its
own hot path and its memory figures are that path's. ``benchmarks.speed`` times the workloads registered here.

Sizes (stated in each row's note): the context-encoder step at the paper's 227 px with batch 16 (the size of the
speed targets in docs/performance.md; the paper preset trains batch 64), the inpainting step at 128 px with batch
64 (the official command), the classification step at 227 px with batch 16 (Krähenbühl et al.'s fine-tuning), Fast
R-CNN with 2 images of 800x600 (a 500x375 VOC image at Fast R-CNN's short side 600) and 64 RoIs each, FCN-32s with
one 500x375 image (the released FCN-AlexNet solver accumulates 20 single images per update), selective search on
500x375 images.
"""

from __future__ import annotations

import atexit
import itertools
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

#: a typical PASCAL VOC image (width, height)
VOC_IMAGE_SIZE = (500, 375)


@dataclass
class Workload:
    """One timed unit of work: ``step()`` processes ``images_per_step`` images."""

    step: Callable[[], Any]
    images_per_step: int
    note: str = ""
    count_flops: bool = True  # False for work that is not matrix arithmetic (decoding, proposals)
    sync: Callable[[], None] = field(default=lambda: None)
    #: name of the hot path this one feeds (the data loader feeds ``ce_step``): the report adds the ratio
    feeds: str | None = None
    #: untimed steps first (None: the engine's default); a prefetching loader needs enough to drain its queue
    warmup: int | None = None
    #: "median" step time (compute steps) or "mean" (total time / steps: a loader's per-step times are bimodal,
    #: near zero while prefetched batches last, long when the workers are the limit)
    aggregate: str = "median"


#: builds a hot path's workload: builder(device, precision, quick) -> Workload
HotPathBuilder = Callable[[torch.device, str, bool], Workload]
#: name -> (description, builder, precisions)
HOT_PATHS: dict[str, tuple[str, HotPathBuilder, tuple[str, ...]]] = {}


def register(
    name: str, description: str, precisions: tuple[str, ...] = ("fp32", "bf16")
) -> Callable[[HotPathBuilder], HotPathBuilder]:
    """Decorator adding a hot-path builder to ``HOT_PATHS``."""

    def wrap(fn: HotPathBuilder) -> HotPathBuilder:
        HOT_PATHS[name] = (description, fn, precisions)
        return fn

    return wrap


def _images(n: int, size: int | tuple[int, int], device: torch.device, seed: int = 0) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, h, w, generator=gen) * 2 - 1).to(device)


def _pretrain_method(method: str, device: torch.device, precision: str, **overrides: Any) -> tuple[Any, Any]:
    """(method instance, config) with the paper preset of ``bench pretrain`` (and the method's overrides)."""
    from pretrain.config import PRESETS, PretrainConfig
    from pretrain.methods import METHODS

    cls = METHODS[method]
    values = {**PRESETS["paper"], **cls.preset_overrides.get("paper", {}), **overrides, "precision": precision}
    config = PretrainConfig(data="", out="", method=method, device=str(device))
    for key, value in values.items():
        if hasattr(config, key):
            setattr(config, key, value)
    return cls(config, device), config


def _method_step(method: Any, config: Any, images: torch.Tensor) -> Any:
    """``step()`` = one ``engine.train_one_iteration`` (seeding, mask drawing, forward, backward, Adam)."""
    from pretrain.engine import train_one_iteration

    counter = itertools.count()
    method.train(True)

    def step() -> Any:
        return train_one_iteration(method, images, config, next(counter), 0)

    return step


@register("ce_step", "AlexNet context encoder: one training iteration (random-region mask, masked L2, Adam)")
def ce_step(device: torch.device, precision: str, quick: bool) -> Workload:
    batch = 16
    method, config = _pretrain_method("context-encoder", device, precision, batch_size=batch, mask="random-region")
    images = _images(batch, config.crop_size, device)
    return Workload(_method_step(method, config, images), batch, f"{config.crop_size} px, batch {batch}, random-region")


@register(
    "ce_step_before",
    "the same iteration as before the speed work: NCHW layout, per-parameter (unfused) Adam",
)
def ce_step_before(device: torch.device, precision: str, quick: bool) -> Workload:
    batch = 16
    method, config = _pretrain_method(
        "context-encoder", device, precision, batch_size=batch, mask="random-region", channels_last=False
    )
    _unfused_adam(method)
    images = _images(batch, config.crop_size, device)
    return Workload(_method_step(method, config, images), batch, "NCHW, unfused Adam")


@register(
    "ce_convs",
    "the ce_step's convolutions alone (conv1-5, 1x1 mixing, five up-convolutions; forward + backward): "
    "the MFU ceiling of ce_step",
)
def ce_convs(device: torch.device, precision: str, quick: bool) -> Workload:
    """Every convolution of the context encoder, run forward and backward one after the other on inputs of the
    shapes, layout and precision they have in ``ce_step`` (recorded by hooks in one forward pass). Only the
    encoder's first convolution skips its input gradient, as in training. Nothing else of the step runs (no mask,
    pooling, ReLU, channel-wise FC, resize, loss or Adam), so this row's MFU is the most ``ce_step`` could reach
    with these convolution kernels."""
    batch = 16
    method, config = _pretrain_method("context-encoder", device, precision, batch_size=batch, mask="random-region")
    net = method.networks["model"]
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    shapes: dict[int, tuple[torch.Size, torch.Size]] = {}

    def record(mod: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        shapes[id(mod)] = (args[0].shape, out.shape)

    hooks = [m.register_forward_hook(record) for m in convs]
    with torch.no_grad(), method.autocast():
        net(method.to_layout(_images(batch, config.crop_size, device)))
    for hook in hooks:
        hook.remove()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    cases = []
    for i, conv in enumerate(convs):
        in_shape, out_shape = shapes[id(conv)]
        x = method.to_layout(torch.randn(in_shape, device=device, dtype=dtype)).requires_grad_(i > 0)
        grad = method.to_layout(torch.randn(out_shape, device=device, dtype=dtype))
        cases.append((conv, x, grad))

    def step() -> Any:
        for conv, x, grad in cases:
            with method.autocast():
                out = conv(x)
            out.backward(grad)

    return Workload(step, batch, f"{len(cases)} convolutions of ce_step, {config.crop_size} px, batch {batch}")


def _unfused_adam(method: Any) -> None:
    """Replace every optimizer of ``method`` by the per-parameter ``torch.optim.Adam`` loop (the pre-speed-work
    default; same hyperparameters)."""
    for name, opt in method.optimizers.items():
        group = opt.param_groups[0]
        method.optimizers[name] = torch.optim.Adam(
            opt.param_groups[0]["params"],
            lr=group["lr"],
            betas=group["betas"],
            weight_decay=group["weight_decay"],
            foreach=False,
            fused=False,
        )


@register("inpaint_step", "128-px inpainting net: discriminator step + generator step (joint L2 + adversarial)")
def inpaint_step(device: torch.device, precision: str, quick: bool) -> Workload:
    batch = 64
    method, config = _pretrain_method("inpainting", device, precision, batch_size=batch)
    images = _images(batch, config.crop_size, device)
    return Workload(_method_step(method, config, images), batch, f"{config.crop_size} px, batch {batch}, {config.mask}")


@register(
    "inpaint_step_before",
    "the same iteration before the speed work: 4x4 convolutional bottleneck, NCHW layout, unfused Adam",
)
def inpaint_step_before(device: torch.device, precision: str, quick: bool) -> Workload:
    from pretrain.models import inpainting as models

    batch = 64
    method, config = _pretrain_method("inpainting", device, precision, batch_size=batch, channels_last=False)
    linear = method.unwrapped("generator")
    conv = models.InpaintingGenerator(
        bottleneck=linear.bottleneck_dim, output_size=linear.output_size, conv_bottleneck=True
    ).to(device)
    conv.load_state_dict(models.to_conv_layout(linear.state_dict()))  # the same network in the Lua layout
    method.networks["generator"] = method._bare["generator"] = conv
    group = method.optimizers["generator"].param_groups[0]
    method.optimizers["generator"] = torch.optim.Adam(
        conv.parameters(), lr=group["lr"], betas=group["betas"], weight_decay=group["weight_decay"]
    )
    _unfused_adam(method)
    images = _images(batch, config.crop_size, device)
    return Workload(_method_step(method, config, images), batch, "conv bottleneck, NCHW, unfused Adam")


@register("masks", "random-region masks for a batch of 16 at 227 px (batched tensor ops)", precisions=("n/a",))
def masks(device: torch.device, precision: str, quick: bool) -> Workload:
    from pretrain.masks import build_mask

    generator = build_mask("random-region")
    counter = itertools.count()

    def step() -> Any:
        return generator.sample(16, 227, 227, torch.Generator().manual_seed(next(counter)))

    step()  # builds the cached noise field outside the timing
    return Workload(step, 16, "16 x 227x227, field 2000", count_flops=False)


def _jpeg_folder(count: int) -> Path:
    from benchmarks.demo_data import make_image_folder

    folder = Path(tempfile.mkdtemp(prefix="bench-speed-images-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    make_image_folder(folder, count=count, size=VOC_IMAGE_SIZE, seed=0, formats=("jpg",))
    return folder


@register(
    "data_loader",
    "pretraining DataLoader alone (decode, resize, crop, flip) on real JPEGs; 'cache' = pre-resized uint8 cache",
    precisions=("jpeg", "cache"),
)
def data_loader(device: torch.device, precision: str, quick: bool) -> Workload:
    from torch.utils.data import DataLoader

    from pretrain import sampling
    from pretrain.config import PRESETS
    from pretrain.data import UnlabeledImageDataset, find_images

    paper = PRESETS["paper"]
    batch, workers = 16, int(paper["workers"])
    folder = _jpeg_folder(48 if quick else 128)
    cache_dir = folder / "_cache" if precision == "cache" else None
    dataset = UnlabeledImageDataset(
        find_images(folder), crop_size=paper["crop_size"], resize_short=paper["resize_short"], cache_dir=cache_dir
    )
    if cache_dir is not None:
        dataset.build_cache()
    sampler = sampling.IterationBatchSampler(len(dataset), batch, 0, 10**9, seed=0)
    loader = DataLoader(
        sampling.SeededDataset(dataset),
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    batches = iter(loader)

    def step() -> Any:
        return next(batches)

    note = f"{VOC_IMAGE_SIZE[0]}x{VOC_IMAGE_SIZE[1]} JPEG -> short {paper['resize_short']} -> {paper['crop_size']}, "
    note += f"{workers} workers, batch {batch}"
    # warm-up drains the prefetch queue filled while the workers started (2 batches per worker) several times
    # over, and the rate is total images / total time, so it is the workers' steady-state rate
    warmup = 4 * max(1, workers) * 2
    return Workload(step, batch, note, count_flops=False, feeds="ce_step", warmup=warmup, aggregate="mean")


@register("cls_step", "classification fine-tuning: one SGD step (AlexNet + fc6-8, masked sigmoid cross-entropy)")
def cls_step(device: torch.device, precision: str, quick: bool) -> Workload:
    from pretrain.models.alexnet import alexnet_trunk
    from transfer.classification import ClassificationConfig, build_classifier, make_optimizer, train_step

    cfg = ClassificationConfig(precision=precision)
    model = build_classifier(alexnet_trunk("torchvision"), 20, cfg, seed=0).to(device).train()
    opt = make_optimizer(model, cfg)
    params = [p for g in opt.param_groups for p in g["params"]]
    images = _images(cfg.batch_size, cfg.crop_size, device)
    labels = torch.randint(-1, 2, (cfg.batch_size, 20), generator=torch.Generator().manual_seed(0)).float()

    def step() -> Any:
        return train_step(model, opt, params, images, labels, cfg, device)

    return Workload(step, cfg.batch_size, f"{cfg.crop_size} px, batch {cfg.batch_size}, fc 4096")


@register("det_step", "Fast R-CNN: one SGD step (conv2-5 + RoI pooling + fc6/fc7 + cls/bbox heads)")
def det_step(device: torch.device, precision: str, quick: bool) -> Workload:
    from pretrain.models.alexnet import alexnet_trunk
    from transfer.detection import model as model_mod
    from transfer.detection import train as train_mod

    images_n, rois_per_image, (h, w) = 2, 64, (600, 800)
    model = model_mod.FastRCNN(alexnet_trunk("torchvision"), hidden=4096).to(device)
    model_mod.freeze_trunk(model, "conv1")
    from transfer.engine import caffe_param_groups

    opt = torch.optim.SGD(caffe_param_groups(model, 0.001, 5e-4), lr=0.001, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(images_n * rois_per_image, 2, generator=gen) * torch.tensor([w - 64.0, h - 64.0])
    wh = 16 + torch.rand(images_n * rois_per_image, 2, generator=gen) * 300
    x2y2 = torch.minimum(xy + wh, torch.tensor([w - 1.0, h - 1.0]))
    index = torch.arange(images_n).repeat_interleave(rois_per_image).float()[:, None]
    labels = torch.randint(0, 21, (images_n * rois_per_image,), generator=gen)
    labels[: images_n * rois_per_image * 3 // 4] = 0  # Fast R-CNN samples 25% foreground RoIs
    batch = {
        "images": _images(images_n, (h, w), device),
        "rois": torch.cat([index, xy, x2y2], 1),
        "labels": labels,
        "targets": torch.randn(images_n * rois_per_image, 4, generator=gen) * 0.1,
    }

    def step() -> Any:
        return train_mod.train_step(model, batch, opt, device, precision)

    note = f"{images_n} x {w}x{h}, {rois_per_image} RoIs each, fc 4096, conv1 frozen"
    return Workload(step, images_n, note)


@register("fcn_step", "FCN-32s: one SGD step (AlexNet conv1-5 with pad 100, fc6/fc7 as convolutions, upsampling)")
def fcn_step(device: torch.device, precision: str, quick: bool) -> Workload:
    from pretrain.models.alexnet import alexnet_trunk
    from transfer.segmentation.model import build_fcn
    from transfer.segmentation.train import build_optimizer, train_step

    w, h = VOC_IMAGE_SIZE
    model = build_fcn(alexnet_trunk("torchvision"), variant="32s", fc_channels=4096, seed=0).to(device)
    opt = build_optimizer(model, lr=1e-4, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(3, h, w, generator=gen) * 2 - 1
    mask = torch.randint(0, 21, (h, w), generator=gen)
    samples = [(image, mask, "synthetic")]

    def step() -> Any:
        return train_step(model, opt, samples, device=device, precision=precision)

    return Workload(step, 1, f"1 x {w}x{h} image (paper: 20 single images per update), fc 4096")


@register("proposals", "selective search (OpenCV, fast mode) per image, incl. JPEG decode", precisions=("n/a",))
def proposals(device: torch.device, precision: str, quick: bool) -> Workload:
    from transfer.detection import proposals as mod

    paths = sorted(_jpeg_folder(4).rglob("*.jpg"))
    cycle = itertools.cycle(paths)

    def step() -> Any:
        return mod.proposals_for_image(next(cycle), "fast")

    return Workload(step, 1, f"{VOC_IMAGE_SIZE[0]}x{VOC_IMAGE_SIZE[1]} JPEG, fast mode", count_flops=False)
