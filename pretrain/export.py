"""Export of a pretrained AlexNet encoder: ``encoder.safetensors`` and a timm model that loads it.

``encoder.safetensors`` holds the trunk in torchvision ``alexnet().features`` keys (``"0.weight"``, ... ``"10.bias"``)
so ``torchvision.models.alexnet().features.load_state_dict(load_file(path), strict=True)`` works, plus string
metadata: format, method, mask, iterations, widths, crop size, the SHA-256 of the source checkpoint and the code
commit. No pickle is needed to read it.

timm: importing this module registers ``alexnet_context_encoder`` (torchvision AlexNet widths). Load an export
offline with::

    import timm, pretrain.export
    model = timm.create_model("alexnet_context_encoder", pretrained=True,
                              pretrained_cfg_overlay=dict(file="RUN/encoder.safetensors"))

With the default ``num_classes=0`` the model is the trunk plus flattening (``forward`` returns the 9216 pool5
features) and loading is strict; with ``num_classes > 0`` the torchvision-style fc6-fc8 classifier is added and
initialised randomly (only the trunk comes from the file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from pretrain.checkpoint import CheckpointError, load_checkpoint
from pretrain.models.alexnet import Widths, alexnet_trunk
from pretrain.runinfo import sha256_file

EXPORT_NAME = "encoder.safetensors"
EXPORT_FORMAT = "context-encoders-bench/encoder"
TIMM_MODEL_NAME = "alexnet_context_encoder"


def export_metadata(checkpoint: dict[str, Any], checkpoint_path: Path | None) -> dict[str, str]:
    """Safetensors metadata (str -> str) describing where an exported encoder comes from."""
    cfg = checkpoint.get("config") or {}
    commit = (checkpoint.get("code_version") or {}).get("commit")
    return {
        "format": EXPORT_FORMAT,
        "layout": "torchvision.models.alexnet().features",
        "method": str(checkpoint.get("method", "unknown")),
        "mask": str(cfg.get("mask", "")) if checkpoint.get("method") == "context-encoder" else "none",
        "mask_per_batch": str(bool(cfg.get("mask_per_batch", False))).lower(),
        "iterations": str(int(checkpoint.get("iteration", 0))),
        "widths": str(cfg.get("widths", "torchvision")),
        "crop_size": str(cfg.get("crop_size", "")),
        "seed": str(cfg.get("seed", "")),
        "source_checkpoint": checkpoint_path.name if checkpoint_path is not None else "",
        "source_checkpoint_sha256": sha256_file(checkpoint_path) if checkpoint_path is not None else "",
        "code_commit": str(commit or ""),
    }


def export_checkpoint(checkpoint_path: str | Path, out: str | Path) -> Path:
    """Write the ``encoder`` of a ``bench pretrain`` checkpoint to ``out`` (safetensors, atomically)."""
    checkpoint_path = Path(checkpoint_path)
    ckpt = load_checkpoint(checkpoint_path)
    encoder = ckpt.get("encoder")
    if not isinstance(encoder, dict):
        raise CheckpointError(
            f"{checkpoint_path} has no AlexNet encoder to export (method {ckpt.get('method')!r} has no AlexNet trunk)"
        )
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in encoder.items()}
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(tensors, str(tmp), metadata=export_metadata(ckpt, checkpoint_path))
    tmp.replace(out)
    return out


def export_run(run_dir: str | Path, checkpoint: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Export the newest checkpoint of ``run_dir`` (or ``checkpoint``) to ``run_dir/encoder.safetensors``."""
    run_dir = Path(run_dir)
    if checkpoint is None:
        folder = run_dir / "checkpoints"
        ckpts = sorted(folder.glob("ckpt_*.pt")) if folder.is_dir() else []
        if not ckpts:
            raise CheckpointError(f"{run_dir} holds no checkpoints/ckpt_*.pt; is it a `bench pretrain` run folder?")
        checkpoint = ckpts[-1]
    return export_checkpoint(checkpoint, out if out is not None else run_dir / EXPORT_NAME)


# -- timm --------------------------------------------------------------------------------------------------------
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
            **kwargs,
        )
        return model

    alexnet_context_encoder.__module__ = __name__
    register_model(alexnet_context_encoder)


_register_timm()
