"""Bodies with a feature pyramid for Mask R-CNN: MobileNetV3-Large (CPU recipe) and ResNet-50 (GPU recipe)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.models import get_weight, mobilenet_v3_large, resnet50
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

IMAGE_KEY = "image"  # the map holding the (normalised, resized) input images, see BackboneWithImage

NormLayer = Callable[[int], nn.Module]


def _load_weights(model: nn.Module, weights: str | None) -> None:
    """Load a torchvision weights name (``"MobileNet_V3_Large_Weights.IMAGENET1K_V1"``) or a local file."""
    if weights is None:
        return
    if Path(weights).suffix in (".pth", ".pt") or Path(weights).exists():
        if not Path(weights).is_file():
            raise FileNotFoundError(f"backbone weights file {weights} does not exist")
        state = torch.load(weights, map_location="cpu", weights_only=True)
    else:  # a torchvision weights name: downloads unless already cached
        state = get_weight(weights).get_state_dict(progress=False)
    missing, _ = model.load_state_dict(state, strict=False)
    if len(missing) == len(model.state_dict()):
        raise ValueError(f"backbone weights {weights} match none of the backbone's parameters")


class Float32Conv2d(nn.Conv2d):
    """A ``Conv2d`` that runs in float32 under autocast (same parameters and state-dict keys).

    oneDNN's bf16 depthwise convolutions are slower than its float32 ones on a CPU: on
    machine C (AMX) 2-4x for MobileNetV3's depthwise layers, forward and backward,
    channels-last (docs/recipe.md), while its dense bf16 convolutions are faster.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def float32_depthwise(module: nn.Module) -> nn.Module:
    """Replace every depthwise ``Conv2d`` in ``module`` (in place) by a :class:`Float32Conv2d` with its weights."""
    for name, child in module.named_children():
        if type(child) is nn.Conv2d and child.groups > 1 and child.groups == child.in_channels == child.out_channels:
            conv = Float32Conv2d(
                child.in_channels,
                child.out_channels,
                child.kernel_size,
                stride=child.stride,
                padding=child.padding,
                dilation=child.dilation,
                groups=child.groups,
                bias=child.bias is not None,
                padding_mode=child.padding_mode,
            )
            conv.load_state_dict(child.state_dict())
            setattr(module, name, conv)
        else:
            float32_depthwise(child)
    return module


def mobilenet_v3_fpn(
    *,
    returned_layers: Sequence[int] = (2, 3, 5),
    out_channels: int = 128,
    norm_layer: NormLayer | None = None,
    weights: str | None = None,
    depthwise_float32: bool = False,
) -> BackboneWithFPN:
    """MobileNetV3-Large body with an FPN (CPU recipe).

    Args:
        returned_layers: stages fed to the FPN, counted like torchvision's
            ``mobilenet_backbone`` (2, 3, 5 = strides 8, 16, 32). Characters are
            13-50 px, so keep the stride-8 stage.
        out_channels: FPN channels.
        norm_layer: normalisation of the body; default ``nn.BatchNorm2d``
            (torchvision's ``FrozenBatchNorm2d`` does nothing when training from scratch).
        weights: ``None`` (from scratch), a torchvision weights name, or a local ``.pth``.
        depthwise_float32: the body's depthwise convolutions run in float32 under bf16
            autocast (:class:`Float32Conv2d`: faster on a CPU); no effect without autocast.
    """
    body = mobilenet_v3_large(norm_layer=norm_layer or nn.BatchNorm2d)
    _load_weights(body, weights)
    if depthwise_float32:
        float32_depthwise(body)
    features = body.features
    stage_indices = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    if not returned_layers or min(returned_layers) < 0 or max(returned_layers) >= len(stage_indices):
        raise ValueError(f"returned_layers must lie in 0..{len(stage_indices) - 1}, got {list(returned_layers)}")
    return_layers = {str(stage_indices[k]): str(i) for i, k in enumerate(returned_layers)}
    in_channels = [features[stage_indices[k]].out_channels for k in returned_layers]
    return BackboneWithFPN(features, return_layers, in_channels, out_channels, extra_blocks=LastLevelMaxPool())


def resnet50_fpn_v2(
    *,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    out_channels: int = 256,
    norm_layer: NormLayer | None = None,
    weights: str | None = None,
) -> BackboneWithFPN:
    """ResNet-50 body with a normalised FPN, as in torchvision's ``maskrcnn_resnet50_fpn_v2`` (GPU recipe)."""
    norm_layer = norm_layer or nn.BatchNorm2d
    body = resnet50(norm_layer=norm_layer)
    _load_weights(body, weights)
    if not returned_layers or min(returned_layers) < 1 or max(returned_layers) > 4:
        raise ValueError(f"returned_layers must lie in 1..4, got {list(returned_layers)}")
    return_layers = {f"layer{k}": str(i) for i, k in enumerate(returned_layers)}
    in_channels = [256 * 2 ** (k - 1) for k in returned_layers]
    return BackboneWithFPN(
        body, return_layers, in_channels, out_channels, extra_blocks=LastLevelMaxPool(), norm_layer=norm_layer
    )


class BackboneWithImage(nn.Module):
    """A body + FPN that also hands its input on, as map ``"image"`` (stride 1), to heads that read pixels.

    Holds the given backbone's ``body`` and ``fpn`` under the same names, so the weights
    keep their keys.
    """

    def __init__(self, backbone: BackboneWithFPN) -> None:
        super().__init__()
        self.body, self.fpn, self.out_channels = backbone.body, backbone.fpn, backbone.out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.fpn(self.body(x))
        features[IMAGE_KEY] = x
        return features
