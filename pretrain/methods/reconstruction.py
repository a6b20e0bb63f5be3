"""The context encoder and its autoencoder baseline: one AlexNet ``ContextEncoder`` trained on a masked L2 loss.

The architecture is Pathak et al., CVPR 2016, Sec. 3.1 (AlexNet encoder, channel-wise fully-connected bottleneck,
up-convolutional decoder); the loss is their Eq. (1) normalised by the number of dropped values (Sec. 3.2). The
choices the paper leaves open are listed in docs/protocols/pretraining.md.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from pretrain.config import PretrainConfig
from pretrain.losses import masked_l2_loss
from pretrain.masks import PAPER_FILL, apply_mask
from pretrain.methods.base import PretrainMethod
from pretrain.models.alexnet import gaussian_init_
from pretrain.models.context_encoder import ContextEncoder


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


class ContextEncoderMethod(_ReconstructionMethod):
    """``context-encoder``: drop a region (``--mask``), fill it with the paper's mean colour, predict the image and
    take the L2 loss on the dropped pixels only (Pathak et al. 2016, Eq. (1), normalised by the dropped count).
    Reads the config keys ``mask``, ``mask_per_batch``, ``voc_root``, ``lr``, ``beta1``, ``beta2``, ``weight_decay``,
    ``dropout``, ``decoder_channels``, ``output_align``, ``widths``, ``init``, ``precision``."""

    name = "context-encoder"
    summary = "AlexNet context encoder, masked L2 on the dropped region (the paper's feature learner)"

    def training_step(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        _, pred, target, mask = self._forward(images, generator)
        loss = masked_l2_loss(pred, target, mask)
        self.step(loss, "model")
        return {"loss": float(loss.detach()), "masked_fraction": float(mask.float().mean())}


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
