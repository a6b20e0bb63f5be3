"""The random-initialisation baseline: no training, a Gaussian AlexNet trunk exported like a trained one."""

from __future__ import annotations

import torch

from pretrain.config import PretrainConfig
from pretrain.methods.base import PretrainMethod
from pretrain.models.alexnet import alexnet_trunk, gaussian_init_


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
