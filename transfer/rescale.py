"""Krähenbühl et al. 2015 ("Data-dependent Initializations of Convolutional Neural Networks", arXiv 1511.06856),
between-layer scale correction: the ``-cs`` option of their ``magic_init`` tool, used to rescale pretrained
networks before fine-tuning.

The goal (paper §3.2): every parameter layer ``k`` should change at the same relative rate under SGD, i.e. the ratio

    r_k = sqrt(mean(dL/dW_k ^ 2) / mean(W_k ^ 2))

should be equal for all layers. For a feed-forward ReLU network (conv, linear, ReLU, max/avg pooling, dropout) the
output is positively homogeneous in each layer's parameters, so multiplying layer ``k``'s weights *and* bias by
``s_k`` (and the biases of every later layer by the growth of their input scale) multiplies the output by
``prod s_k`` without changing anything else. Algorithm, as in ``magic_init.calibrateGradientRatio``:

1. On one batch of real training images, record each parameter layer's input scale ``mean |x_k|`` and the output
   standard deviation ``sigma`` (mean over output units of the per-unit std).
2. Back-propagate a random N(0, 1) gradient from the output, measure ``r_k``.
3. ``target = geomean(r) * sigma ** (1 / L)``; stop when every ``|log r_k - log target| < tolerance``.
4. Forward again layer by layer; before layer ``k``: multiply its bias by ``(new input scale / recorded input
   scale)`` (keeps the bias in step with its rescaled input), then multiply weight and bias by
   ``sqrt(r_k / target)``. Record the new input scales and ``sigma``; repeat from 2 (at most ``max_iterations``).

With ``s_k = sqrt(r_k / target)`` every layer's ratio becomes ``target * prod(s)`` (the gradient of ``W_k`` scales by
``prod(s) / s_k``), so one step equalises the ratios exactly for homogeneous networks; the ``sigma ** (1/L)`` factor
pulls the output std towards 1 over the iterations (each step takes its square root).

Differences to magic_init (documented in docs/protocols/classification.md): the convergence test compares log ratios
directly (magic_init's ``log r / log target`` is ill-conditioned when ``target`` is near 1); dropout is off (eval mode)
and the random output gradient is drawn once (from ``seed``) and reused in every round, so that the measurement
is deterministic and the loop converges instead of chasing sampling noise; weights are rescaled whatever their
``requires_grad``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

_PARAM_LAYERS = (nn.Conv2d, nn.Linear)


@dataclass
class RescaleReport:
    """What ``between_layer_scale_correction`` did: per parameter layer (in forward order) the total factor applied
    to its weight, and the gradient/weight ratios before and after."""

    layer_names: list[str]
    weight_scale: list[float]
    ratio_before: list[float]
    ratio_after: list[float]
    output_std_before: float
    output_std_after: float
    iterations: int
    converged: bool
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "method": "kraehenbuehl2015-between-layer-scale-correction",
            "layers": self.layer_names,
            "weight_scale": self.weight_scale,
            "ratio_before": self.ratio_before,
            "ratio_after": self.ratio_after,
            "output_std_before": self.output_std_before,
            "output_std_after": self.output_std_after,
            "iterations": self.iterations,
            "converged": self.converged,
        }


@torch.no_grad()
def within_layer_init_(
    layers: Sequence[nn.Module],
    images: torch.Tensor,
    targets: Sequence[int],
    *,
    bias: float = 0.1,
    seed: int = 0,
) -> None:
    """Krähenbühl et al.'s within-layer data-dependent initialisation (magic_init ``-t elwise``, paper §3.1) of the
    parameter layers at chain positions ``targets``: weights drawn N(0, 1), then each output unit (channel) is
    scaled and shifted so that its pre-activation on ``images`` has mean ``bias`` and unit variance
    (``W /= std``, ``b = -mean / std + bias``). magic_init applies this to every layer that holds no weights yet;
    here: the re-initialised layers above the transferred trunk. Layers before a target are run as they are."""
    gen = torch.Generator().manual_seed(seed)
    modules = list(layers)
    training = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        x = images
        for i, layer in enumerate(modules):
            if isinstance(layer, nn.Linear) and x.dim() > 2:
                x = torch.flatten(x, 1)
            if i in targets:
                if not isinstance(layer, _PARAM_LAYERS):
                    raise ValueError(f"chain position {i} is a {type(layer).__name__}, not a Conv2d/Linear layer")
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen).to(layer.weight))
                if layer.bias is not None:
                    layer.bias.zero_()
                out = layer(x)
                flat = out.transpose(0, 1).reshape(out.shape[1], -1) if out.dim() > 2 else out.T
                mu, std = flat.mean(dim=1), flat.std(dim=1, unbiased=False).clamp_min(1e-8)
                layer.weight.div_(std.view(-1, *([1] * (layer.weight.dim() - 1))))
                if layer.bias is not None:
                    layer.bias.copy_(-mu / std + bias)
            x = layer(x)
    finally:
        for m, t in zip(modules, training):
            m.train(t)


def _param_layers(layers: Sequence[nn.Module]) -> list[int]:
    idx = [i for i, m in enumerate(layers) if isinstance(m, _PARAM_LAYERS)]
    if not idx:
        raise ValueError("no Conv2d/Linear layer to rescale")
    return idx


def _forward(layers: Sequence[nn.Module], x: torch.Tensor, scales: dict[int, float] | None = None) -> torch.Tensor:
    """Run ``layers`` in order; when ``scales`` is given, store each parameter layer's input scale in it."""
    for i, layer in enumerate(layers):
        if scales is not None and isinstance(layer, _PARAM_LAYERS):
            scales[i] = float(x.detach().abs().mean())
        if isinstance(layer, nn.Linear) and x.dim() > 2:
            x = torch.flatten(x, 1)
        x = layer(x)
    return x


def _output_std(out: torch.Tensor) -> float:
    """Mean over output units of the per-unit std (units = channels x positions, as magic_init's flattenData)."""
    flat = out.detach().transpose(0, 1).reshape(out.shape[1], -1) if out.dim() > 2 else out.detach().T
    return float(flat.std(dim=1, unbiased=False).mean())


def _ratios(
    layers: Sequence[nn.Module], images: torch.Tensor, param_idx: list[int], seed: int
) -> tuple[list[float], float]:
    weights: list[torch.Tensor] = [layers[i].weight for i in param_idx]  # type: ignore[misc]
    out = _forward(layers, images)
    generator = torch.Generator().manual_seed(seed)  # the same random output gradient in every round
    grad_out = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)
    grads = torch.autograd.grad(out, weights, grad_outputs=grad_out)
    ratios = [
        math.sqrt(float(g.pow(2).mean()) / max(float(w.detach().pow(2).mean()), 1e-30)) for g, w in zip(grads, weights)
    ]
    return ratios, _output_std(out)


def between_layer_scale_correction(
    layers: Sequence[nn.Module],
    images: torch.Tensor,
    *,
    max_iterations: int = 10,
    tolerance: float = 0.01,
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> RescaleReport:
    """Rescale (in place) the Conv2d/Linear layers of the feed-forward chain ``layers`` on ``images [N, 3, H, W]``.

    ``layers`` is applied in order (a Linear layer flattens its input); ReLU, pooling and dropout layers are allowed
    between parameter layers. Defaults follow magic_init (10 iterations, one batch).
    """
    modules = list(layers)
    param_idx = _param_layers(modules)
    names = list(names) if names is not None else [f"layer{i}" for i in param_idx]
    training = [m.training for m in modules]
    requires = [[p.requires_grad for p in m.parameters()] for m in modules]
    for m in modules:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(True)
    total_scale = [1.0] * len(param_idx)
    history: list[dict[str, float]] = []
    try:
        with torch.no_grad():
            in_scale: dict[int, float] = {}
            _forward(modules, images, in_scale)
        with torch.enable_grad():
            ratios, sigma = _ratios(modules, images, param_idx, seed)
        ratio_before, sigma_before = list(ratios), sigma
        converged, it = False, 0
        for it in range(1, max_iterations + 1):
            log_r = [math.log(r) for r in ratios]
            log_target = sum(log_r) / len(log_r) + math.log(max(sigma, 1e-30)) / len(log_r)
            history.append(
                {"iteration": it - 1, "output_std": sigma, "max_log_ratio_gap": max(abs(v - log_target) for v in log_r)}
            )
            if all(abs(v - log_target) < tolerance for v in log_r):
                converged, it = True, it - 1
                break
            with torch.no_grad():
                x = images
                for i, layer in enumerate(modules):
                    if isinstance(layer, _PARAM_LAYERS):
                        k = param_idx.index(i)
                        current = float(x.abs().mean())
                        if layer.bias is not None and in_scale[i] > 0:
                            layer.bias.mul_(current / in_scale[i])
                        in_scale[i] = current
                        s = math.sqrt(ratios[k] / math.exp(log_target))
                        layer.weight.mul_(s)
                        if layer.bias is not None:
                            layer.bias.mul_(s)
                        total_scale[k] *= s
                        if x.dim() > 2:
                            x = torch.flatten(x, 1) if isinstance(layer, nn.Linear) else x
                    x = layer(x)
            with torch.enable_grad():
                ratios, sigma = _ratios(modules, images, param_idx, seed)
    finally:
        for m, was_training, req in zip(modules, training, requires):
            m.train(was_training)
            for p, r in zip(m.parameters(), req):
                p.requires_grad_(r)
    return RescaleReport(
        layer_names=names,
        weight_scale=total_scale,
        ratio_before=ratio_before,
        ratio_after=list(ratios),
        output_std_before=sigma_before,
        output_std_after=sigma,
        iterations=it,
        converged=converged,
        history=history,
    )


def rescale_trunk(
    trunk: nn.Sequential,
    image_paths: Sequence[str | Path],
    norm: str,
    *,
    seed: int = 0,
    count: int = 16,
    size: int = 227,
    max_iterations: int = 10,
    head: Sequence[nn.Module] = (),
    head_names: Sequence[str] = (),
    bias: float = 0.1,
) -> dict[str, object]:
    """``--rescale`` for harnesses whose head is not a plain chain (Fast R-CNN's RoI pooling, FCN's up-sampling),
    on ``count`` training images (drawn with ``seed``; shorter side resized to ``size``, centre ``size`` crop, the
    trunk's input convention).

    Without ``head``: the between-layer scale correction on the AlexNet trunk alone (conv1..conv5); the
    re-initialised layers above it keep their protocol initialisation. With ``head`` (the modules that follow the
    trunk in a plain chain, e.g. a pooling layer, fc6, ReLU, fc7; its Conv2d/Linear layers are named by
    ``head_names``): as magic_init does for every layer the pretrained file lacks, those layers first get the
    within-layer data-dependent init (unit-variance pre-activations, mean ``bias``), then the between-layer
    correction runs on the whole chain. Returns the report as a dict."""
    from PIL import Image

    from transfer.input_norm import normalize_image
    from transfer.voc import load_image

    if not image_paths:
        raise ValueError("--rescale needs at least one training image")
    order = torch.randperm(len(image_paths), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    views = []
    for i in sorted(order):
        im = load_image(Path(image_paths[i]))
        scale = size / min(im.size)
        im = im.resize(
            (max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.Resampling.BILINEAR
        )
        left, top = (im.width - size) // 2, (im.height - size) // 2
        views.append(normalize_image(im.crop((left, top, left + size, top + size)), norm))
    device = next(trunk.parameters()).device
    images = torch.stack(views).to(device)
    chain = [*trunk, *head]
    fresh = [i for i, m in enumerate(chain) if i >= len(trunk) and isinstance(m, _PARAM_LAYERS)]
    if len(fresh) != len(head_names):
        raise ValueError(f"head has {len(fresh)} Conv2d/Linear layers but {len(head_names)} names")
    if fresh:
        within_layer_init_(chain, images, fresh, bias=bias, seed=seed + 2)
    names = [f"conv{k}" for k in range(1, 6)] + list(head_names)
    report = between_layer_scale_correction(
        chain, images, max_iterations=max_iterations, seed=seed, names=names
    ).to_dict()
    report["images"] = len(views)
    report["scope"] = "trunk conv1..conv5" + (
        f" + {', '.join(head_names)} (within-layer init, then the correction)" if head_names else ""
    )
    return report
