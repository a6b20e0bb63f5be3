"""The method contract: a method owning two networks and two optimizers (GAN-shaped) runs through the same loop,
checkpoints and resume as the context encoder."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

from pretrain.checkpoint import load_checkpoint
from pretrain.config import PretrainConfig
from pretrain.masks import apply_mask, build_mask
from pretrain.methods import METHODS, MethodOption, PretrainMethod, register_method


class TwoNetworkToy(PretrainMethod):
    """A miniature adversarial inpainter: generator + discriminator with BatchNorm, two Adam optimizers."""

    name = "toy-gan"
    summary = "test-only two-network method"
    options: ClassVar[tuple[MethodOption, ...]] = (MethodOption("lr_d", float, 1e-3, "discriminator lr"),)
    preset_overrides: ClassVar[dict[str, dict[str, object]]] = {"smoke": {"crop_size": 32, "resize_short": 40}}

    def __init__(self, config: PretrainConfig, device: torch.device) -> None:
        super().__init__(config, device)
        torch.manual_seed(config.seed)
        self.add_network(
            "generator",
            nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1), nn.Tanh()),
        )
        self.add_network(
            "discriminator",
            nn.Sequential(
                nn.Conv2d(3, 8, 4, 2, 1), nn.BatchNorm2d(8), nn.LeakyReLU(0.2), nn.Flatten(), nn.LazyLinear(1)
            ),
        )
        self.networks["discriminator"](torch.zeros(2, 3, config.crop_size, config.crop_size, device=device))
        self.optimizers["generator"] = self.adam(self.networks["generator"].parameters(), config.lr)
        self.optimizers["discriminator"] = self.adam(self.networks["discriminator"].parameters(), self.option("lr_d"))
        self.mask_generator = build_mask("center")

    def _fill(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.sample_mask(images, generator)
        return apply_mask(images, mask), mask

    def training_step(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        bce = nn.functional.binary_cross_entropy_with_logits
        masked, mask = self._fill(images, generator)
        g, d = self.networks["generator"], self.networks["discriminator"]
        fake = g(masked)
        real_logit, fake_logit = d(images), d(fake.detach())
        loss_d = bce(real_logit, torch.ones_like(real_logit)) + bce(fake_logit, torch.zeros_like(fake_logit))
        self.step(loss_d, "discriminator", "discriminator loss")
        adv = d(fake)
        loss_g = 0.999 * (fake - images)[mask.expand_as(images)].pow(2).mean() + 0.001 * bce(adv, torch.ones_like(adv))
        self.step(loss_g, "generator", "generator loss")
        return {"loss": float(loss_g.detach()), "loss_d": float(loss_d.detach())}

    @torch.no_grad()
    def sample_grid(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        masked, _ = self._fill(images, generator)
        return masked, self.networks["generator"](masked), images


@pytest.fixture()
def toy_registered() -> Iterator[None]:
    register_method(TwoNetworkToy)
    try:
        yield
    finally:
        METHODS.pop(TwoNetworkToy.name)


def test_registry_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_method(METHODS["context-encoder"])


def test_two_network_method_trains_checkpoints_and_resumes(
    toy_registered: None, image_folder: Path, tmp_path: Path
) -> None:
    from benchmarks.cli import main

    def run(out: Path, *extra: str) -> int:
        args = [
            "pretrain",
            "--method",
            "toy-gan",
            "--data",
            str(image_folder),
            "--out",
            str(out),
            "--preset",
            "smoke",
            "--iterations",
            "6",
            "--batch-size",
            "2",
            "--checkpoint-every",
            "3",
            "--device",
            "cpu",
            "--lr-d",
            "5e-4",
        ]
        return main([*args, *extra])

    assert run(tmp_path / "whole") == 0
    assert run(tmp_path / "split", "--stop-after", "3") == 0
    assert run(tmp_path / "split", "--resume") == 0
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["status"] == "completed" and "export" not in summary  # no AlexNet trunk, nothing to export
    assert set(summary["final_stats"]) == {"loss", "loss_d"}
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert config["crop_size"] == 32 and config["method_options"] == {"lr_d": 5e-4}  # method preset + method flag
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "ckpt_00000006.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "ckpt_00000006.pt")
    assert "encoder" not in a and set(a["optimizer"]) == {"generator", "discriminator"}
    assert any(k.startswith("discriminator.1.running_mean") for k in a["model"])
    assert a["optimizer"]["discriminator"]["param_groups"][0]["lr"] == 5e-4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert (tmp_path / "whole" / "samples" / "iter_00000006.png").is_file()
