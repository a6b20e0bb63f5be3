"""The exported AlexNet encoder as a timm model: importing this module registers ``alexnet_context_encoder``.

Load a ``bench pretrain`` export offline::

    import timm
    import pretrain.timm_models  # registers the model
    model = timm.create_model("alexnet_context_encoder", pretrained=True,
                              pretrained_cfg_overlay=dict(file="RUN/encoder.safetensors"))

With the default ``num_classes=0`` the model is the trunk plus flattening (``forward`` returns the 9216 pool5
features) and loading is strict; with ``num_classes > 0`` the torchvision-style fc6-fc8 classifier is added and
initialised randomly (only the trunk comes from the file). Torchvision widths only.

``features_only=True`` returns the maps of the five conv stages (after each ReLU: conv1 at stride 4, conv2 at 8,
conv3-conv5 at 16; ``out_indices`` picks some), as timm's ``FeatureListNet``. The pretrained configuration carries
the input convention of ``bench pretrain``: RGB in [-1, 1], stated as ``mean = std = (0.5, 0.5, 0.5)`` on [0, 1]
tensors, so ``timm.data.create_transform(**timm.data.resolve_data_config(model=model))`` feeds the network what
it was trained on (227 px, bilinear, centre crop).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pretrain.models.alexnet import LAYER_OUTPUT_INDEX, WIDTHS, Widths, alexnet_trunk

TIMM_MODEL_NAME = "alexnet_context_encoder"
#: (stage, output stride) of the feature maps ``features_only`` returns
FEATURE_STAGES: tuple[tuple[str, int], ...] = (("conv1", 4), ("conv2", 8), ("conv3", 16), ("conv4", 16), ("conv5", 16))


def feature_info(widths: Widths = "torchvision") -> list[dict[str, Any]]:
    """timm's ``feature_info`` of the trunk: channels, reduction and module of each conv stage's ReLU output."""
    channels = WIDTHS[widths]
    return [
        dict(num_chs=channels[k], reduction=stride, module=f"features.{LAYER_OUTPUT_INDEX[name]}")
        for k, (name, stride) in enumerate(FEATURE_STAGES)
    ]


class AlexNetEncoder(nn.Module):
    """AlexNet trunk (``features``, torchvision layout) with an optional torchvision-style fc6-fc8 classifier,
    following timm's model interface (``forward_features``, ``forward_head``, ``reset_classifier``)."""

    def __init__(
        self, num_classes: int = 0, in_chans: int = 3, drop_rate: float = 0.5, widths: Widths = "torchvision"
    ) -> None:
        super().__init__()
        if in_chans != 3:
            raise ValueError("the AlexNet context encoder takes 3-channel images")
        self.features = alexnet_trunk(widths)
        self.feature_info = feature_info(widths)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.num_features = self.head_hidden_size = 256 * 6 * 6
        self.drop_rate = drop_rate
        self.num_classes = num_classes
        self.classifier = self._make_classifier(num_classes)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        return nn.Sequential(
            nn.Dropout(self.drop_rate),
            nn.Linear(self.num_features, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(self.drop_rate),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.classifier = self._make_classifier(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3, 227, 227] in [-1, 1] -> pool5 [N, 256, 6, 6]."""
        return self.avgpool(self.features(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _filter_encoder_state(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an export's ``features`` keys ("0.weight") onto the timm model ("features.0.weight")."""
    out = {}
    for key, value in state_dict.items():
        out[key if key.startswith(("features.", "classifier.")) else f"features.{key}"] = value
    return out


#: timm reads the pretrained configuration of a registered model from its module's ``default_cfgs``
default_cfgs: dict[str, Any] = {}


def _register_timm() -> None:
    from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
    from timm.models._registry import _model_entrypoints

    if TIMM_MODEL_NAME in _model_entrypoints:
        return
    default_cfgs.update(
        generate_default_cfgs(
            {
                TIMM_MODEL_NAME: dict(
                    url="",
                    num_classes=0,
                    input_size=(3, 227, 227),
                    pool_size=(6, 6),
                    crop_pct=1.0,
                    interpolation="bilinear",
                    mean=(0.5, 0.5, 0.5),  # images in [-1, 1], as in pretraining
                    std=(0.5, 0.5, 0.5),
                    first_conv="features.0",
                    classifier="classifier.6",
                )
            }
        )
    )

    def alexnet_context_encoder(pretrained: bool = False, **kwargs: Any) -> AlexNetEncoder:
        """AlexNet encoder pretrained by ``bench pretrain`` (context encoder or a baseline); pass the export with
        ``pretrained_cfg_overlay=dict(file=".../encoder.safetensors")``."""
        kwargs.setdefault("num_classes", 0)
        model: AlexNetEncoder = build_model_with_cfg(
            AlexNetEncoder,
            TIMM_MODEL_NAME,
            pretrained,
            pretrained_filter_fn=_filter_encoder_state,
            pretrained_strict=kwargs["num_classes"] == 0,
            feature_cfg=dict(flatten_sequential=True),  # the stages live inside the ``features`` Sequential
            **kwargs,
        )
        return model

    alexnet_context_encoder.__module__ = __name__
    register_model(alexnet_context_encoder)


_register_timm()
