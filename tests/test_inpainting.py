"""The 128-px inpainting context encoder: networks, the joint-loss training step, loading and export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import CHECKPOINT_FORMAT, CheckpointError
from pretrain.config import PretrainConfig
from pretrain.methods import METHODS
from pretrain.methods.inpainting import InpaintingMethod
from pretrain.models.inpainting import (
    LUA_DISCRIMINATOR_PARAMETERS,
    LUA_GENERATOR_PARAMETERS,
    InpaintingDiscriminator,
    InpaintingGenerator,
    count_parameters,
    from_conv_layout,
    to_conv_layout,
)


def _config(**kw: object) -> PretrainConfig:
    values: dict = {"data": "", "out": "", "method": "inpainting", "mask": "center", "crop_size": 128}
    values.update(kw)
    return PretrainConfig(**values)


def test_parameter_counts_match_the_lua_networks() -> None:
    g, d = InpaintingGenerator(), InpaintingDiscriminator()
    n_g, n_d = count_parameters(g), count_parameters(d)
    print(f"generator {n_g:,} parameters, discriminator {n_d:,} parameters (no biases; BN scale+shift included)")
    assert n_g == LUA_GENERATOR_PARAMETERS == 71_124_544
    assert n_d == LUA_DISCRIMINATOR_PARAMETERS == 2_765_568
    assert not any(name.endswith("bias") and "norm" not in name and p.dim() != 1 for name, p in g.named_parameters())
    assert g(torch.zeros(2, 3, 128, 128)).shape == (2, 3, 64, 64)
    assert d(torch.zeros(2, 3, 64, 64)).shape == (2,)


def test_lua_initialisation() -> None:
    torch.manual_seed(0)
    d = InpaintingDiscriminator()
    conv_layer, bn = d.net[2], d.net[3]  # 64 -> 128 and its BatchNorm
    assert isinstance(conv_layer, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d)
    conv = conv_layer.weight.detach()
    assert abs(float(conv.std()) - 0.02) < 0.002 and abs(float(conv.mean())) < 0.001
    w = bn.weight.detach()
    assert abs(float(w.mean()) - 1.0) < 0.01 and 0.005 < float(w.std()) < 0.04
    assert torch.count_nonzero(bn.bias.detach()) == 0


@pytest.mark.parametrize("train_mode", [True, False])
def test_linear_bottleneck_equals_the_convolution(train_mode: bool) -> None:
    torch.manual_seed(0)
    lin = InpaintingGenerator(bottleneck=64)
    conv = InpaintingGenerator(bottleneck=64, conv_bottleneck=True)
    for m in lin.modules():  # non-trivial BN statistics for the eval-mode comparison
        if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    conv.load_state_dict(to_conv_layout(lin.state_dict()))
    assert conv.bottleneck.weight.shape == (64, 512, 4, 4) and conv.expand.weight.shape == (64, 512, 4, 4)
    back = from_conv_layout(conv.state_dict())
    for key, value in lin.state_dict().items():
        assert torch.equal(back[key], value), key
    lin.train(train_mode)
    conv.train(train_mode)
    x = torch.rand(3, 3, 128, 128) * 2 - 1
    a, b = lin(x), conv(x)
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())


def test_discriminator_for_whole_images() -> None:
    assert InpaintingDiscriminator(input_size=128)(torch.zeros(2, 3, 128, 128)).shape == (2,)
    assert InpaintingGenerator(bottleneck=8, output_size=128)(torch.zeros(2, 3, 128, 128)).shape == (2, 3, 128, 128)
    with pytest.raises(ValueError, match="64x64"):
        InpaintingDiscriminator()(torch.zeros(1, 3, 128, 128))


def test_joint_loss_step_updates_both_networks() -> None:
    """The paper's network and optimisers: one real step with the joint loss."""
    method = METHODS["inpainting"](_config(batch_size=4), torch.device("cpu"))
    assert method.optimizers["discriminator"].param_groups[0]["lr"] == pytest.approx(2e-4)
    assert method.optimizers["generator"].param_groups[0]["lr"] == pytest.approx(2e-3)  # 10x (Lua train.lua)
    assert method.optimizers["generator"].param_groups[0]["betas"][0] == 0.5
    assert method.encoder_state_dict() is None
    before = {n: [p.detach().clone() for p in net.parameters()] for n, net in method.networks.items()}
    images = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(1)) * 2 - 1
    stats = method.training_step(images, torch.Generator().manual_seed(0))
    assert {"loss", "loss_rec", "loss_adv", "loss_d"} <= set(stats)
    assert stats["loss"] == pytest.approx(0.999 * stats["loss_rec"] + 0.001 * stats["loss_adv"], rel=1e-5)
    for name, net in method.networks.items():
        changed = [not torch.equal(a, b) for a, b in zip(before[name], net.parameters())]
        assert all(changed), f"{name}: {changed.count(False)} parameter tensors did not move"
    method.train(False)
    masked, pred, original, hole = method.sample_grid(images[:2], torch.Generator().manual_seed(0))
    assert masked.shape == pred.shape == original.shape == (2, 3, 128, 128) and hole.shape == (2, 1, 128, 128)
    # the raw prediction is the predicted region (the hole and its 7-px overlap margin) over the masked input
    assert torch.equal(pred[..., :32, :], masked[..., :32, :])
    assert not torch.equal(pred[..., 32:39, 32:96], masked[..., 32:39, 32:96])  # the overlap margin is predicted
    pasted = torch.where(hole, pred, original)  # what the grid shows beside it: only the hole is replaced
    assert torch.equal(pasted[..., :39, :], original[..., :39, :])
    assert not torch.equal(pasted[..., 39:89, 39:89], original[..., 39:89, 39:89])


def test_generator_step_skips_discriminator_weight_gradients_with_the_same_updates() -> None:
    """The generator's adversarial pass runs the discriminator frozen: the same weights after two iterations as
    the plain pass through the trained discriminator, and no discriminator gradient left from the generator step."""

    class PlainPass(InpaintingMethod):
        def _d_logits_for_generator(self, patch: torch.Tensor) -> torch.Tensor:
            return self._d_logits(patch)  # D's weight gradients computed too (and discarded by the next D step)

    images = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(2)) * 2 - 1
    runs = []
    for cls in (InpaintingMethod, PlainPass):
        torch.manual_seed(0)
        method = cls(_config(batch_size=4), torch.device("cpu"))
        d_grads = []
        for it in range(2):
            torch.manual_seed(10 + it)  # dropout-free nets, but keep any sampling identical
            method.training_step(images, torch.Generator().manual_seed(it))
            grads = [p.grad for p in method.networks["discriminator"].parameters()]
            assert all(g is not None for g in grads)
            d_grads.append([g.clone() for g in grads if g is not None])
        runs.append((method, d_grads))
    (fast, fast_grads), (plain, plain_grads) = runs
    for name in ("generator", "discriminator"):
        for a, b in zip(fast.networks[name].parameters(), plain.networks[name].parameters(), strict=True):
            assert torch.equal(a, b), name
    assert all(p.requires_grad for p in fast.networks["discriminator"].parameters())  # restored after the pass
    # after a step the discriminator's gradients are its own step's: the plain pass adds the generator step's
    differs = [not torch.equal(a, b) for a, b in zip(fast_grads[-1], plain_grads[-1], strict=True)]
    assert any(differs)


def test_reconstruction_loss_weights_the_overlap_ring() -> None:
    method = InpaintingMethod(_config(method_options={"bottleneck": 8, "overlap": 4}), torch.device("cpu"))
    target = torch.zeros(1, 3, 64, 64)
    pred = torch.zeros(1, 3, 64, 64)
    pred[..., 0, 0] = 1.0  # one ring pixel wrong by 1
    pred[..., 32, 32] = 2.0  # one hole pixel wrong by 2
    hole = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    hole[..., 4:60, 4:60] = True
    loss = method.reconstruction_loss(pred, target, hole)
    expected = (3 * 10 * 1.0 + 3 * 4.0) / (3 * 64 * 64)  # Lua: mean over the 64x64 centre, ring x10
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_l2_only_and_random_masks() -> None:
    cfg = _config(mask="random-block", method_options={"adv_weight": 0.0, "bottleneck": 16})
    method = METHODS["inpainting"](cfg, torch.device("cpu"))
    assert method.optimizers["generator"].param_groups[0]["lr"] == pytest.approx(2e-4)  # no 10x without GAN
    d_before = [p.detach().clone() for p in method.networks["discriminator"].parameters()]
    stats = method.training_step(torch.rand(2, 3, 128, 128) * 2 - 1, torch.Generator().manual_seed(0))
    assert "loss_adv" not in stats and stats["loss"] == stats["loss_rec"]
    assert all(torch.equal(a, b) for a, b in zip(d_before, method.networks["discriminator"].parameters()))
    assert method.unwrapped("generator").output_size == 128
    smoke = InpaintingMethod(_config(preset="smoke", method_options={"bottleneck": 8}), torch.device("cpu"))
    assert smoke.optimizers["generator"].param_groups[0]["lr"] == pytest.approx(2e-4)  # smoke: factor 1
    flag = InpaintingMethod(_config(method_options={"bottleneck": 8, "g_lr_factor": 3.0}), torch.device("cpu"))
    assert flag.optimizers["generator"].param_groups[0]["lr"] == pytest.approx(6e-4)
    with pytest.raises(ValueError, match="128"):
        METHODS["inpainting"](_config(crop_size=227), torch.device("cpu"))


def _small_checkpoint(tmp_path: Path, method_name: str = "inpainting") -> tuple[Path, torch.nn.Module]:
    cfg = _config(method_options={"bottleneck": 16, "overlap": 4, "adv_weight": 0.001})
    method = METHODS["inpainting"](cfg, torch.device("cpu"))
    state = method.state_dict()
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "format_version": 1,
        "method": method_name,
        "iteration": 3,
        "model": state["model"],
        "config": cfg.to_dict(),
    }
    path = tmp_path / "checkpoints" / "ckpt_00000003.pt"
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    return path, method.unwrapped("generator")


def test_load_generator_from_run_folder_and_exports(tmp_path: Path) -> None:
    from pretrain.inpainting import export_generator, load_generator

    path, generator = _small_checkpoint(tmp_path)
    loaded = load_generator(tmp_path)  # the run folder: newest checkpoint
    assert loaded.path == path and loaded.iteration == 3 and loaded.overlap == 4
    x = torch.rand(2, 3, 128, 128)
    generator.eval()
    assert torch.allclose(loaded.generator(x), generator(x))
    conv_file = export_generator(path, tmp_path / "g_conv.safetensors", layout="conv")
    from safetensors.torch import load_file

    assert load_file(str(conv_file))["bottleneck.weight"].shape == (16, 512, 4, 4)
    again = load_generator(conv_file)  # a bare state dict in the convolutional layout
    assert torch.allclose(again.generator(x), generator(x), atol=1e-6)


def test_load_generator_rejects_other_networks(tmp_path: Path) -> None:
    from pretrain.inpainting import load_generator
    from pretrain.models.alexnet import alexnet_trunk

    path, _ = _small_checkpoint(tmp_path, method_name="context-encoder")
    with pytest.raises(CheckpointError, match=r"ckpt_00000003\.pt.*'context-encoder' checkpoint"):
        load_generator(path)
    alex = tmp_path / "alexnet.pt"
    torch.save(alexnet_trunk().state_dict(), alex)
    with pytest.raises(CheckpointError, match=r"alexnet\.pt.*expected shape \(64, 3, 4, 4\)"):
        load_generator(alex)
    bad = InpaintingGenerator(bottleneck=16).state_dict()
    bad["encoder.2.weight"] = torch.zeros(64, 64, 3, 3)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt.*'encoder\.2\.weight' has shape \(64, 64, 3, 3\), expected"):
        load_generator(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="no checkpoints"):
        load_generator(tmp_path / "checkpoints")
