"""The contract every pretraining method follows: ``PretrainMethod`` (solo-learn style), its options and errors.

The training loop (``pretrain/engine.py``) knows nothing about any method; it only uses the contract below, so a
method that owns several networks and optimizers (the adversarial inpainting net: generator + discriminator, two
Adam optimizers with different learning rates) fits the same loop as the single-network context encoder.

A method is a ``PretrainMethod`` subclass in its own module of this package, listed in ``METHODS`` by
``pretrain/methods/__init__.py``; code outside the package adds one with ``register_method``. docs/architecture.md
shows where the contract sits in the data flow.

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
from pretrain.masks import build_mask


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
        """Adam with the run's betas and weight decay (beta1 0.5 in the official Lua ``train.lua``;
        docs/protocols/pretraining.md). The fused
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
