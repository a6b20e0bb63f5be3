"""Pretraining methods: one small class per method over ``PretrainMethod`` (solo-learn style), registry ``METHODS``.

The training loop (``pretrain/engine.py``) knows nothing about any method; it only uses the contract below, so a
method that owns several networks and optimizers (the adversarial inpainting net: generator + discriminator, two
Adam optimizers with different learning rates) fits the same loop as the single-network context encoder.

Contract of a method (``PretrainMethod`` subclass):

* Class attributes: ``name`` (the ``--method`` value), ``summary`` (one line for ``--help``), ``trains``
  (``False`` for methods that only initialise, like ``random``: the engine then writes the checkpoint and export
  at iteration 0 without a loop), ``options`` (``MethodOption``s: extra CLI flags ``--<name>`` that land in
  ``config.method_options``; read them with ``self.option(name)``), ``preset_overrides`` (``{"paper": {...},
  "smoke": {...}}``: preset values of ``PretrainConfig`` fields that differ for this method, e.g. 128 px crops).
* ``__init__(config, device)``: build every network into ``self.networks`` (name -> module, on ``device``) and
  every optimizer into ``self.optimizers`` (name -> optimizer). Names are stable: they prefix the checkpoint keys.
* ``training_step(images, generator) -> dict[str, float]``: one iteration on ``images [N, 3, H, W]`` in [-1, 1]
  (already on the device). The method samples its own masks with ``self.sample_mask(images, generator)`` (or its
  own logic) using ONLY ``generator`` (a CPU ``torch.Generator`` the engine seeds from (seed, iteration, rank)) so
  that resuming is bit-for-bit; it runs forward passes inside ``with self.autocast():``, and performs its own
  zero_grad / backward / optimizer step(s), preferably through ``self.step(loss, optimizer_name)``, which refuses a
  non-finite loss (``NonFiniteLossError``) before it can touch the weights. It returns plain floats; the key
  ``"loss"`` is the value the progress bar shows.
* ``sample_grid(images, generator) -> (masked_input, prediction, original)``: three ``[n, 3, H, W]`` tensors in
  [-1, 1] of the same size (paste a patch prediction into the image), computed without gradients in eval mode.
* ``encoder_state_dict() -> dict | None``: the AlexNet trunk in torchvision ``alexnet().features`` keys, or
  ``None`` when the method has no AlexNet trunk (then no ``encoder.safetensors`` is exported).
* ``wrap_distributed(wrap)``: called once by the engine under torchrun; the default replaces every network that
  has trainable parameters by ``wrap(network)`` (DistributedDataParallel). Use ``self.unwrapped(name)`` to reach
  the bare module (for saving and for calling non-forward methods).
* ``state_dict()`` / ``load_state_dict(state)`` (defaults provided): ``{"model": {"<net>.<key>": tensor},
  "optimizer": {"<opt>": optimizer.state_dict()}}``, the checkpoint's ``model`` and ``optimizer`` entries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from pretrain.config import PretrainConfig
from pretrain.distributed import all_reduce_sum
from pretrain.losses import masked_l2_loss
from pretrain.masks import PAPER_FILL, apply_mask, build_mask
from pretrain.models.alexnet import alexnet_trunk, gaussian_init_
from pretrain.models.context_encoder import ContextEncoder


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the run stops before the optimizer step so the last checkpoint stays good.
    ``iteration``: the (1-based) iteration that failed, when known."""

    def __init__(self, message: str, iteration: int | None = None) -> None:
        super().__init__(message)
        self.iteration = iteration


@dataclass(frozen=True)
class MethodOption:
    """An option a method adds to ``bench pretrain`` (flag ``--<name with dashes>``, value in
    ``config.method_options[name]``)."""

    name: str
    type: Callable[[str], Any]
    default: Any
    help: str


class PretrainMethod:
    """Base class of every pretraining method; see the module docstring for the full contract."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    trains: ClassVar[bool] = True
    options: ClassVar[tuple[MethodOption, ...]] = ()
    preset_overrides: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, config: PretrainConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.networks: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self._bare: dict[str, nn.Module] = {}
        #: set by methods that draw masks (``self.mask_generator = self.build_mask_generator()``)
        self.mask_generator: Any = None

    # -- helpers for subclasses ---------------------------------------------------------------------------------
    def option(self, name: str) -> Any:
        """Value of one of this method's ``options`` (the flag, else the preset, else the option's default)."""
        for opt in self.options:
            if opt.name == name:
                return self.config.method_options.get(name, opt.default)
        raise KeyError(f"{type(self).__name__} declares no option {name!r}")

    def add_network(self, name: str, module: nn.Module) -> nn.Module:
        """Register ``module`` (moved to the device, in channels-last layout when ``config.channels_last``)."""
        module = module.to(self.device)
        lazy = any(nn.parameter.is_lazy(p) for p in module.parameters())
        if self.config.channels_last and not lazy:  # lazy modules get their layout when first called
            module = module.to(memory_format=torch.channels_last)
        self.networks[name] = module
        self._bare[name] = module
        return module

    def adam(self, params: Iterator[nn.Parameter], lr: float) -> torch.optim.Adam:
        """Adam with the run's betas and weight decay (PAPER.md §2: beta1 0.5 in the official code). The fused
        implementation (one kernel for all parameters, CPU and CUDA) computes the same update as the per-parameter
        loop and is several times faster on CPU."""
        return torch.optim.Adam(
            params,
            lr=lr,
            betas=(self.config.beta1, self.config.beta2),
            weight_decay=self.config.weight_decay,
            fused=True if self.device.type in ("cpu", "cuda") else None,
        )

    def to_layout(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` in the networks' memory layout (channels-last when ``config.channels_last``; a pure layout
        change, the values are the same)."""
        if self.config.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to bfloat16 when ``--precision bf16`` (CPU and CUDA), a no-op for fp32."""
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def build_mask_generator(self) -> Any:
        """The ``--mask`` strategy of the run (``pretrain.masks.build_mask``)."""
        return build_mask(self.config.mask, per_batch=self.config.mask_per_batch, voc_root=self.config.voc_root)

    def sample_mask(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Boolean mask [N, 1, H, W] on the images' device, True = dropped, drawn from ``generator`` only."""
        if self.mask_generator is None:
            raise RuntimeError(f"{type(self).__name__} has no mask generator; set self.mask_generator in __init__")
        n, _, h, w = images.shape
        return self.mask_generator.sample(n, h, w, generator).to(images.device)

    def check_finite(self, loss: torch.Tensor, what: str = "loss") -> None:
        """Raise ``NonFiniteLossError`` when ``loss`` is not finite on this or (under torchrun) any other rank, so
        every rank stops before a backward pass whose gradient all-reduce the others would wait for."""
        bad = (~torch.isfinite(loss.detach().float())).any().to(torch.float32).reshape(1)
        if all_reduce_sum(bad).item() > 0:
            raise NonFiniteLossError(
                f"{self.name}: {what} is {loss.detach().float().item()} on this rank (not finite on some rank); "
                "stopping before the optimizer "
                "step. Lower --lr, use --precision fp32, or check the data; the last checkpoint is unchanged."
            )

    def step(self, loss: torch.Tensor, optimizer: str, what: str = "loss") -> None:
        """Refuse a non-finite ``loss``, then zero_grad, backward and step optimizer ``optimizer``."""
        self.check_finite(loss, what)
        opt = self.optimizers[optimizer]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # -- the contract -------------------------------------------------------------------------------------------
    def training_step(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        raise NotImplementedError

    def sample_grid(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """(masked input, raw prediction, original) and optionally the dropped mask ``[n, 1, H, W]`` (True where
        the network fills in), from which the grid also shows the prediction pasted into the hole."""
        raise NotImplementedError

    def encoder_state_dict(self) -> dict[str, torch.Tensor] | None:
        return None

    def train(self, mode: bool = True) -> None:
        for net in self.networks.values():
            net.train(mode)

    def unwrapped(self, name: str) -> nn.Module:
        return self._bare[name]

    def wrap_distributed(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        for name, net in list(self.networks.items()):
            if any(p.requires_grad for p in net.parameters()):
                self.networks[name] = wrap(net)

    def state_dict(self) -> dict[str, Any]:
        model = {
            f"{name}.{k}": v.detach().clone(memory_format=torch.contiguous_format)
            for name, net in self._bare.items()
            for k, v in net.state_dict().items()
        }
        return {"model": model, "optimizer": {name: opt.state_dict() for name, opt in self.optimizers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        model = state["model"]
        for name, net in self._bare.items():
            prefix = f"{name}."
            net.load_state_dict({k[len(prefix) :]: v for k, v in model.items() if k.startswith(prefix)}, strict=True)
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizer"][name])


METHODS: dict[str, type[PretrainMethod]] = {}


def register_method(cls: type[PretrainMethod]) -> type[PretrainMethod]:
    """Class decorator adding a method to ``METHODS`` under ``cls.name`` (the ``--method`` value)."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    METHODS[cls.name] = cls
    return cls


def _centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    top = (x.shape[-2] - size) // 2
    left = (x.shape[-1] - size) // 2
    return x[..., top : top + size, left : left + size]


def build_context_encoder(config: PretrainConfig) -> ContextEncoder:
    model = ContextEncoder(
        widths=config.widths,  # type: ignore[arg-type]
        dropout=config.dropout,
        decoder_channels=config.decoder_channels,
        output_align=config.output_align,
        input_size=config.crop_size,
    )
    if config.init == "gaussian":
        gaussian_init_(model, std=0.01, bias=0.0, generator=torch.Generator().manual_seed(config.seed))
    elif config.init != "default":
        raise ValueError(f"init must be 'default' or 'gaussian', got {config.init!r}")
    return model


class _ReconstructionMethod(PretrainMethod):
    """Shared body of the context encoder and the autoencoder: one ``ContextEncoder`` named ``model`` trained
    with Adam (``config.lr``, betas ``(beta1, beta2)``) on a masked L2 loss."""

    masked_input: ClassVar[bool] = True

    def __init__(self, config: PretrainConfig, device: torch.device) -> None:
        super().__init__(config, device)
        torch.manual_seed(config.seed)  # the network's initialisation depends on the seed only
        self.add_network("model", build_context_encoder(config))
        self.optimizers["model"] = self.adam(self.networks["model"].parameters(), config.lr)
        if self.masked_input:
            self.mask_generator = self.build_mask_generator()

    def _dropped_mask(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The pixels the network must fill in: a sampled mask, or (autoencoder) every pixel."""
        if self.masked_input:
            return self.sample_mask(images, generator)
        return torch.ones(images.shape[0], 1, *images.shape[2:], dtype=torch.bool, device=images.device)

    def _forward(
        self, images: torch.Tensor, generator: torch.Generator, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(network input, prediction, target, dropped mask) with prediction/target/mask at the same size."""
        if mask is None:
            mask = self._dropped_mask(images, generator)
        # autoencoder: nothing is dropped from the input, every pixel is a target
        inputs = apply_mask(images, mask, fill=PAPER_FILL) if self.masked_input else images
        with self.autocast():
            pred = self.networks["model"](self.to_layout(inputs))
        pred = pred.float()
        target = images
        if pred.shape[-1] != images.shape[-1]:  # output_align="none": compare with the centre crop
            target, mask = _centre_crop(images, pred.shape[-1]), _centre_crop(mask, pred.shape[-1])
        return inputs, pred, target, mask

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        bare = self.unwrapped("model")
        assert isinstance(bare, ContextEncoder)
        return {
            k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in bare.encoder.state_dict().items()
        }

    @torch.no_grad()
    def sample_grid(
        self, images: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(masked input, raw prediction, original, dropped mask), all at the input size."""
        mask = self._dropped_mask(images, generator)
        inputs, pred, _, _ = self._forward(images, generator, mask)
        if pred.shape[-1] != images.shape[-1]:
            pred = torch.nn.functional.interpolate(pred, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return inputs, pred.clamp(-1, 1), images, mask


@register_method
class ContextEncoderMethod(_ReconstructionMethod):
    """``context-encoder``: drop a region (``--mask``), fill it with the paper's mean colour, predict the image and
    take the L2 loss on the dropped pixels only (PAPER.md §4, L_rec normalised by the dropped count). Reads the
    config keys ``mask``, ``mask_per_batch``, ``voc_root``, ``lr``, ``beta1``, ``beta2``, ``weight_decay``,
    ``dropout``, ``decoder_channels``, ``output_align``, ``widths``, ``init``, ``precision``."""

    name = "context-encoder"
    summary = "AlexNet context encoder, masked L2 on the dropped region (the paper's feature learner)"

    def training_step(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        _, pred, target, mask = self._forward(images, generator)
        loss = masked_l2_loss(pred, target, mask)
        self.step(loss, "model")
        return {"loss": float(loss.detach()), "masked_fraction": float(mask.float().mean())}


@register_method
class AutoencoderMethod(_ReconstructionMethod):
    """``autoencoder``: the same network reconstructing its whole, unmasked input (the paper's baseline row);
    L2 over every pixel. Reads the same keys as ``context-encoder`` except the mask options (it draws no mask; the
    sample grid's first column shows the unmasked input)."""

    name = "autoencoder"
    summary = "same network, unmasked input, whole-image L2 (the paper's autoencoder baseline)"
    masked_input = False

    def training_step(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        with self.autocast():
            pred = self.networks["model"](self.to_layout(images))
        pred = pred.float()
        target = images if pred.shape[-1] == images.shape[-1] else _centre_crop(images, pred.shape[-1])
        loss = masked_l2_loss(pred, target, None)
        self.step(loss, "model")
        return {"loss": float(loss.detach())}


@register_method
class RandomInitMethod(PretrainMethod):
    """``random``: no training. Writes the Gaussian-initialised AlexNet trunk (N(0, 0.01) weights, zero bias: the
    paper's "Random Gaussian" row, Caffe's AlexNet filler) drawn from ``config.seed``, identical to
    ``transfer.weights.load_alexnet_trunk("random", seed=seed)``, so the baseline flows through the same export
    and transfer path as trained encoders."""

    name = "random"
    summary = "no training: Gaussian N(0, 0.01) AlexNet encoder (the paper's random-initialisation row)"
    trains = False

    def __init__(self, config: PretrainConfig, device: torch.device) -> None:
        super().__init__(config, device)
        trunk = gaussian_init_(
            alexnet_trunk(config.widths),  # type: ignore[arg-type]
            std=0.01,
            bias=0.0,
            generator=torch.Generator().manual_seed(config.seed),
        )
        self.add_network("encoder", trunk)

    def training_step(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        raise RuntimeError("the random method does not train")

    def sample_grid(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        raise RuntimeError("the random method has no prediction to show")

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return {
            k: v.detach().clone(memory_format=torch.contiguous_format)
            for k, v in self.unwrapped("encoder").state_dict().items()
        }


# methods defined in their own modules register themselves on import
import pretrain.inpainting  # noqa: E402, F401  (the 128-px inpainting network, --method inpainting)
