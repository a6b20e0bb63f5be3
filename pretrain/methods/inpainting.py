"""``inpainting``: the 128-px semantic-inpainting context encoder trained with the joint loss.

Pathak et al., CVPR 2016, Sec. 3.2 (joint loss) and Sec. 5.1 (semantic inpainting); details from the official Lua
code, listed in docs/protocols/inpainting.md.

One iteration, as the official Lua ``train.lua`` (``fDx`` then ``fGx``):

1. drop the hole (centre mask: the central 64x64 square shrunk by ``overlap`` px per side; the paper's 7 px by
   default, the official command's 4 px with ``--overlap 4``) and fill it with the paper's mean colour;
2. generator forward on the 128x128 context -> 64x64 prediction of the centre;
3. discriminator step (Adam, lr ``config.lr`` = 2e-4, beta1 0.5): BCE(D(real centre), 1) + BCE(D(fake), 0);
4. generator step (Adam, lr 10x the discriminator's): ``(1 - adv_weight) * L_rec + adv_weight * BCE(D(fake), 1)``
   (non-saturating GAN loss; ``adv_weight`` 0.001 so ``lambda_rec`` = 0.999). ``L_rec`` is the mean over the
   64x64 prediction of ``w * (pred - real)^2`` with ``w = overlap_weight`` (10) on the visible ring and 1 in the
   hole, normalised by the number of values, as the Lua gradient ``wtl2Matrix * dMSE``.

Differences from the Lua code (docs/protocols/inpainting.md): the generator's adversarial term is computed with
the just-updated discriminator (the Lua code reuses the discriminator output computed before its update), and the
Sigmoid of the discriminator is folded into ``BCEWithLogits``. ``--adv-weight 0`` trains the L2-only variant (no
discriminator step; the generator lr is then not multiplied, as in the Lua rule ``(wtl2 > 0 and wtl2 < 1) and
lr*10 or lr``).

Other masks (``--mask random-block``, ``random-region``, ``voc-shapes``): the generator predicts the whole 128x128
image (``output_size=128``), ``L_rec`` is the masked L2 over the dropped pixels (``pretrain.losses``) and the
discriminator sees the whole predicted image.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from pretrain.config import PretrainConfig
from pretrain.losses import masked_l2_loss, overlap_band_weight
from pretrain.masks import PAPER_FILL, CenterMask, apply_mask
from pretrain.methods.base import MethodOption, PretrainMethod
from pretrain.models.inpainting import BOTTLENECK, InpaintingDiscriminator, InpaintingGenerator

#: size of the images the network takes (Lua ``fineSize``)
FINE_SIZE = 128
#: generator lr / discriminator lr under the joint loss: official train.lua (``lr*10`` when ``0 < wtl2 < 1``)
PAPER_G_LR_FACTOR = 10.0
#: the smoke preset's factor: a 2e-3 generator lr is still far from settled after a few hundred CPU iterations
SMOKE_G_LR_FACTOR = 1.0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"expected an integer >= 0, got {text}")
    return value


def generator_config(config: PretrainConfig | dict[str, Any]) -> dict[str, int]:
    """Constructor arguments of the run's ``InpaintingGenerator`` (also used to rebuild it from a checkpoint)."""
    values = config.to_dict() if isinstance(config, PretrainConfig) else config
    options = values.get("method_options") or {}
    return {
        "bottleneck": int(options.get("bottleneck", BOTTLENECK)),
        "output_size": 64 if values.get("mask", "center") == "center" else FINE_SIZE,
    }


class InpaintingMethod(PretrainMethod):
    """Reads the config keys ``mask``, ``mask_per_batch``, ``voc_root``, ``crop_size`` (must be 128), ``lr`` (the
    discriminator's), ``beta1``, ``beta2``, ``weight_decay``, ``precision``, ``seed`` and the options below."""

    name = "inpainting"
    summary = "128-px inpainting context encoder + 64x64 discriminator, joint L2 + adversarial loss (Table 1)"
    options: ClassVar[tuple[MethodOption, ...]] = (
        MethodOption(
            "adv_weight",
            float,
            0.001,
            "weight of the adversarial loss lambda_adv (the L2 weight is 1 - adv_weight); 0.001 as the "
            "paper and the official command (wtl2=0.999); 0 trains the L2-only variant",
        ),
        MethodOption(
            "overlap",
            _positive_int,
            7,
            "centre mask: px of the true centre left visible on each side of the hole (paper: 7; official command: "
            "overlapPred=4)",
        ),
        MethodOption(
            "overlap_weight",
            float,
            10.0,
            "L2 weight on the visible overlap ring (official train.lua: overlapL2Weight = 10)",
        ),
        MethodOption(
            "g_lr_factor",
            float,
            None,
            "generator lr = factor x --lr (the discriminator's) under the joint loss; unset: 10 with --preset paper "
            "(official train.lua), 1 with --preset smoke or cpu (at 10x the generator does not settle within a few "
            "hundred CPU iterations; see docs/protocols/inpainting.md)",
        ),
        MethodOption("bottleneck", _positive_int, BOTTLENECK, "size of the code (official command: nBottleneck=4000)"),
    )
    preset_overrides: ClassVar[dict[str, dict[str, Any]]] = {
        # official command: fineSize=128 loadSize=350 batchSize=64 lr=0.0002 beta1=0.5, niter=500 epochs of the
        # 14,900 Paris StreetView training images = 500 x ceil(14900/64) = 116,500 iterations
        "paper": {
            "mask": "center",
            "crop_size": 128,
            "resize_short": 350,
            "batch_size": 64,
            "lr": 2e-4,
            "iterations": 116_500,
        },
        # cpu: the demo dataset's 256x192 scenes, shorter side 144 before the 128 crop (the paper's 350 is for
        # Paris StreetView's 936x537 photographs), batch 32 and 600 iterations fit about 8 minutes on 2 cores
        "cpu": {
            "mask": "center",
            "crop_size": 128,
            "resize_short": 144,
            "batch_size": 32,
            "lr": 2e-4,
            "iterations": 600,
            "sample_every": 200,
            "checkpoint_every": 200,
        },
        "smoke": {"mask": "center", "crop_size": 128, "resize_short": 350, "batch_size": 16, "lr": 2e-4},
    }

    def __init__(self, config: PretrainConfig, device: torch.device) -> None:
        super().__init__(config, device)
        if config.crop_size != FINE_SIZE:
            raise ValueError(
                f"the inpainting network takes {FINE_SIZE}x{FINE_SIZE} crops; got --crop-size {config.crop_size}"
            )
        self.adv_weight = float(self.option("adv_weight"))
        if not 0.0 <= self.adv_weight < 1.0:
            raise ValueError(f"--adv-weight must be in [0, 1), got {self.adv_weight}")
        self.overlap = int(self.option("overlap"))
        self.overlap_weight = float(self.option("overlap_weight"))
        self.centre = config.mask == "center"
        gen_cfg = generator_config(config)
        torch.manual_seed(config.seed)  # the networks' initialisation depends on the seed only
        generator = self.add_network(
            "generator", InpaintingGenerator(bottleneck=gen_cfg["bottleneck"], output_size=gen_cfg["output_size"])
        )
        discriminator = self.add_network("discriminator", InpaintingDiscriminator(input_size=gen_cfg["output_size"]))
        factor = self.option("g_lr_factor")
        if factor is None:
            factor = SMOKE_G_LR_FACTOR if config.preset in ("smoke", "cpu") else PAPER_G_LR_FACTOR
        self.g_lr_factor = float(factor)
        g_lr = config.lr * self.g_lr_factor if 0.0 < self.adv_weight < 1.0 else config.lr
        self.optimizers["generator"] = self._adam(generator, g_lr)
        self.optimizers["discriminator"] = self._adam(discriminator, config.lr)
        if self.centre:
            self.mask_generator = CenterMask(overlap=self.overlap, per_batch=config.mask_per_batch)
            self.region_mask = CenterMask(overlap=0)
        else:
            self.mask_generator = self.build_mask_generator()

    def _adam(self, network: torch.nn.Module, lr: float) -> torch.optim.Adam:
        """Adam (betas and weight decay of the run; beta1 0.5 from the Lua code). The fused implementation gives
        the same update and is several times faster on CPU for the 71M generator parameters."""
        fused = self.device.type in ("cpu", "cuda")
        return torch.optim.Adam(
            network.parameters(),
            lr=lr,
            betas=(self.config.beta1, self.config.beta2),
            weight_decay=self.config.weight_decay,
            fused=fused or None,
        )

    # -- pieces of one iteration --------------------------------------------------------------------------------
    def _region_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        return self.region_mask.region_box(h, w) if self.centre else (0, 0, h, w)

    def _forward(
        self, images: torch.Tensor, hole: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(masked input [N,3,128,128], prediction [N,3,S,S], target [N,3,S,S], hole [N,1,S,S]) for the dropped
        pixels ``hole [N,1,128,128]``; S = 64 for the centre mask (the prediction covers the central 64x64
        square), else 128."""
        if images.shape[-2:] != (FINE_SIZE, FINE_SIZE):
            raise ValueError(f"inpainting takes {FINE_SIZE}x{FINE_SIZE} crops, got {tuple(images.shape[-2:])}")
        inputs = apply_mask(images, hole, fill=PAPER_FILL)
        with self.autocast():
            pred = self.networks["generator"](inputs)
        pred = pred.float()
        top, left, bottom, right = self._region_box(*images.shape[-2:])
        target = images[..., top:bottom, left:right]
        return inputs, pred, target, hole[..., top:bottom, left:right]

    def reconstruction_loss(self, pred: torch.Tensor, target: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """Centre: mean of ``w * (pred - target)^2`` over the 64x64 region (w = ``overlap_weight`` on the ring);
        other masks: masked L2 over the dropped pixels."""
        if self.centre:
            region = torch.ones_like(hole)
            return masked_l2_loss(pred, target, region, overlap_band_weight(hole, region, self.overlap_weight))
        return masked_l2_loss(pred, target, hole)

    def _d_logits(self, patch: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.networks["discriminator"](patch).float()

    def _d_logits_for_generator(self, patch: torch.Tensor) -> torch.Tensor:
        """The discriminator's logits for the generator's adversarial loss. The bare discriminator runs (no DDP
        all-reduce of its gradients) with its parameters frozen for this pass, so backward computes only the
        gradient that reaches the generator. The discriminator's weight gradients of this pass were never used:
        the next discriminator step zeroes them before its own backward. Saves about a third of the
        discriminator's backward work in every generator step."""
        bare = self.unwrapped("discriminator")
        trained = [p for p in bare.parameters() if p.requires_grad]
        for p in trained:
            p.requires_grad_(False)
        try:
            with self.autocast():
                return bare(patch).float()
        finally:
            for p in trained:
                p.requires_grad_(True)

    def training_step(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        _, pred, target, hole = self._forward(images, self.sample_mask(images, generator))
        stats: dict[str, float] = {}
        if self.adv_weight > 0:
            real_logits = self._d_logits(target)
            fake_logits = self._d_logits(pred.detach())
            loss_d = F.binary_cross_entropy_with_logits(
                real_logits, torch.ones_like(real_logits)
            ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
            self.step(loss_d, "discriminator", "discriminator loss")
            stats["loss_d"] = float(loss_d.detach())
            stats["d_real"] = float(torch.sigmoid(real_logits.detach()).mean())
            stats["d_fake"] = float(torch.sigmoid(fake_logits.detach()).mean())
        loss_rec = self.reconstruction_loss(pred, target, hole)
        loss_g = (1.0 - self.adv_weight) * loss_rec
        if self.adv_weight > 0:
            gen_logits = self._d_logits_for_generator(pred)
            loss_adv = F.binary_cross_entropy_with_logits(gen_logits, torch.ones_like(gen_logits))
            loss_g = loss_g + self.adv_weight * loss_adv
            stats["loss_adv"] = float(loss_adv.detach())
        self.step(loss_g, "generator", "generator loss")
        stats["loss_rec"] = float(loss_rec.detach())
        stats["loss"] = float(loss_g.detach())
        return stats

    @torch.no_grad()
    def sample_grid(
        self, images: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(masked input, raw prediction, original, hole), ``[n, 3, 128, 128]`` (hole ``[n, 1, 128, 128]``): the
        raw prediction is the predicted region (the hole and its overlap margin) drawn over the masked input; the
        grid pastes only its hole pixels into the original beside it."""
        hole = self.sample_mask(images, generator)
        inputs, pred, _, _ = self._forward(images, hole)
        top, left, bottom, right = self._region_box(*images.shape[-2:])
        full = inputs.clone()
        full[..., top:bottom, left:right] = pred.clamp(-1, 1).to(full.dtype)
        return inputs, full, images, hole

    def encoder_state_dict(self) -> None:
        """No AlexNet trunk: nothing is exported for transfer."""
        return None
