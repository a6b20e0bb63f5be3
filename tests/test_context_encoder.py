"""The AlexNet context encoder: shapes, the channel-wise FC's parameter count and independence between maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from pretrain.models.context_encoder import ChannelWiseFC, ContextEncoder


@pytest.fixture(scope="module")
def model() -> ContextEncoder:
    torch.manual_seed(0)
    return ContextEncoder().eval()


def test_shapes_at_227(model: ContextEncoder) -> None:
    x = torch.rand(2, 3, 227, 227) * 2 - 1
    feats = model.forward_encoder(x)
    assert feats.shape == (2, 256, 6, 6)
    code = model.forward_bottleneck(feats)
    assert code.shape == (2, 256, 6, 6)
    assert model.forward_decoder(code).shape == (2, 3, 192, 192)  # five 4x4 stride-2 up-convolutions: 6 * 2**5
    out = model(x)
    assert out.shape == (2, 3, 227, 227)  # aligned to the input by a bilinear resize
    assert out.min() >= -1 and out.max() <= 1  # tanh output for images in [-1, 1]


def test_output_align_none_keeps_192() -> None:
    model = ContextEncoder(output_align="none")
    assert model(torch.zeros(1, 3, 227, 227)).shape == (1, 3, 192, 192)


def test_decoder_is_five_upconvolutions(model: ContextEncoder) -> None:
    ups = [m for m in model.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(ups) == 5
    assert all(m.kernel_size == (4, 4) and m.stride == (2, 2) for m in ups)
    assert ups[-1].out_channels == 3


def test_encoder_loads_strict_into_torchvision(model: ContextEncoder) -> None:
    features = torchvision.models.alexnet(weights=None).features
    features.load_state_dict(model.encoder.state_dict(), strict=True)


def test_channel_wise_fc_has_331776_weights(model: ContextEncoder) -> None:
    fc = model.channel_fc
    assert fc.weight.numel() == 331_776 == 256 * 6**4
    assert fc.bias.numel() == 256 * 36
    assert sum(p.numel() for p in fc.parameters()) == 331_776 + 9216


def test_channel_wise_fc_has_no_dependency_between_maps() -> None:
    torch.manual_seed(0)
    fc = ChannelWiseFC(256, 6)
    x = torch.randn(2, 256, 6, 6, requires_grad=True)
    out = fc(x)
    for c in (0, 17, 255):
        (grad,) = torch.autograd.grad(out[:, c].sum(), x, retain_graph=True)
        per_channel = grad.abs().sum(dim=(0, 2, 3))
        assert per_channel[c] > 0
        others = torch.cat([per_channel[:c], per_channel[c + 1 :]])
        assert torch.count_nonzero(others) == 0
    # and within a map it is fully connected: every input position of map 3 reaches output position (0, 0)
    (grad,) = torch.autograd.grad(out[0, 3, 0, 0], x)
    assert torch.count_nonzero(grad[0, 3]) == 36


def test_channel_wise_fc_equals_the_grouped_convolution_trick() -> None:
    """The author's Caffe implementation: a 6x6 convolution with 256 groups and 9216 outputs."""
    torch.manual_seed(1)
    fc = ChannelWiseFC(256, 6)
    x = torch.randn(3, 256, 6, 6)
    conv_weight = fc.weight.detach().reshape(256 * 36, 1, 6, 6)  # [c*36 + i, 1, y, x] = W[c, i, y*6 + x]
    ref = F.conv2d(x, conv_weight, fc.bias.detach().reshape(-1), groups=256).reshape(3, 256, 6, 6)
    torch.testing.assert_close(fc(x), ref, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_forward_and_backward_on_cpu() -> None:
    model = ContextEncoder(input_size=99)
    x = torch.rand(2, 3, 99, 99) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, 3, 99, 99)
    out.float().pow(2).mean().backward()
    conv1 = model.encoder[0]
    assert isinstance(conv1, torch.nn.Conv2d)
    assert conv1.weight.grad is not None and torch.isfinite(conv1.weight.grad).all()


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="decoder_channels"):
        ContextEncoder(decoder_channels=(64, 32))
    with pytest.raises(ValueError, match="output_align"):
        ContextEncoder(output_align="crop-ish")
