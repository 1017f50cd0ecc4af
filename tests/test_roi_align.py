"""The sparse RoIAlign gives torchvision's RoIAlign outputs and gradients, level by level and at the borders."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from conftest import tiny_model
from torchvision.ops import MultiScaleRoIAlign, roi_align

from lpr.models.roi_align import SparseMultiScaleRoIAlign, roi_align_matrix, sparse_roi_align


def random_rois(n: int, width: float, height: float, generator: torch.Generator, images: int = 2) -> torch.Tensor:
    """``(n, 5)`` RoIs of 1-300 px (mostly small), some reaching past the image's edges."""
    xy = torch.rand(n, 2, generator=generator) * torch.tensor([width + 40, height + 40]) - 20
    wh = torch.rand(n, 2, generator=generator) ** 3 * 300 + 1
    batch = torch.randint(images, (n, 1), generator=generator).float()
    return torch.cat([batch, xy, xy + wh], 1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize(("output_size", "sampling_ratio"), [(7, 2), (14, 2), (5, 3)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_one_level_equals_torchvision_values_and_gradients(aligned, output_size, sampling_ratio, channels_last):
    g = torch.Generator().manual_seed(output_size + sampling_ratio)
    feature = torch.randn(2, 16, 36, 48, generator=g)
    if channels_last:
        feature = feature.to(memory_format=torch.channels_last)
    feature.requires_grad_()
    rois = random_rois(200, 384, 288, g)
    rois[0] = torch.tensor([1, -30.0, -30.0, 420.0, 330.0])  # beyond every edge
    rois[1] = torch.tensor([0, 383.0, 287.0, 384.0, 288.0])  # a 1 px box on the last pixel (the border rule)
    rois[2] = torch.tensor([0, 10.0, 10.0, 10.0, 10.0])  # empty
    expected = roi_align(feature, rois, output_size, 1 / 8, sampling_ratio, aligned)
    levels = torch.zeros(len(rois), dtype=torch.long)
    pooled = sparse_roi_align([feature], rois, levels, [1 / 8], (output_size, output_size), sampling_ratio, aligned)
    torch.testing.assert_close(pooled, expected, atol=5e-5, rtol=1e-4)
    grad = torch.randn(expected.shape, generator=g)
    (want,) = torch.autograd.grad(expected, feature, grad)
    (got,) = torch.autograd.grad(pooled, feature, grad)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


def test_matrix_rows_hold_the_bilinear_weights_of_each_bin():
    # one RoI covering pixels 0..2 of a 4x4 map in one bin, one sample per bin: the sample sits at (1.5, 1.5),
    # between pixels 1 and 2 on both axes, a quarter to each
    rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]])
    columns, weights = roi_align_matrix(rois, (4, 4), (1, 1), 1.0, 1)
    got = dict(zip(columns[0].tolist(), weights[0].tolist(), strict=True))
    assert got == {1 * 4 + 1: 0.25, 1 * 4 + 2: 0.25, 2 * 4 + 1: 0.25, 2 * 4 + 2: 0.25}


@pytest.mark.parametrize("output_size", [7, 14])
def test_multiscale_equals_torchvision_across_levels_and_under_bf16_autocast(output_size):
    g = torch.Generator().manual_seed(output_size)
    names = ["0", "1", "2"]
    features = OrderedDict(
        (name, torch.randn(2, 8, 576 // s, 768 // s, generator=g).to(memory_format=torch.channels_last))
        for name, s in zip([*names, "pool"], (8, 16, 32, 64), strict=True)
    )
    for f in features.values():
        f.requires_grad_()
    # the level mapper sends boxes under 112 px (square root of the area) to the first level, over 448 to the last
    boxes = [random_rois(150, 768, 576, g, images=1)[:, 1:].clamp(min=0).minimum(torch.tensor([768, 576] * 2))]
    boxes[0][:3] = torch.tensor([[0.0, 0, 768, 576], [100, 50, 500, 400], [10, 10, 300, 200]])
    boxes.append(boxes[0][:40] * 0.5)
    shapes = [(576, 768)] * 2
    expected_pool, pool = MultiScaleRoIAlign(names, output_size, 2), SparseMultiScaleRoIAlign(names, output_size, 2)
    expected, pooled = expected_pool(features, boxes, shapes), pool(features, boxes, shapes)
    assert len(torch.unique(pool.map_levels(boxes))) == 3
    torch.testing.assert_close(pooled, expected, atol=5e-5, rtol=1e-4)
    grad = torch.randn(expected.shape, generator=g)
    maps = [features[n] for n in names]
    for want, got in zip(
        torch.autograd.grad(expected, maps, grad), torch.autograd.grad(pooled, maps, grad), strict=True
    ):
        torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = OrderedDict((k, v.detach().bfloat16()) for k, v in features.items())
        expected_bf16, pooled_bf16 = expected_pool(low, boxes, shapes), pool(low, boxes, shapes)
    assert pooled_bf16.dtype == expected_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(pooled_bf16.float(), expected_bf16.float(), atol=0.02, rtol=0.01)


def test_no_boxes_and_an_adaptive_sampling_ratio():
    features = OrderedDict([("0", torch.randn(1, 4, 8, 8)), ("1", torch.randn(1, 4, 4, 4))])
    pool = SparseMultiScaleRoIAlign(["0", "1"], 7, 2)
    assert pool(features, [torch.zeros(0, 4)], [(64, 64)]).shape == (0, 4, 7, 7)
    with pytest.raises(ValueError, match="sampling_ratio > 0, got 0"):
        SparseMultiScaleRoIAlign(["0"], 7, 0)


def test_the_models_train_step_matches_torchvision_pooling():
    """The same weights and batch give the same losses and gradients with either pooling."""
    torch.manual_seed(0)
    models = {}
    for sparse in (True, False):
        torch.manual_seed(0)
        target = "lpr.models.roi_align.SparseMultiScaleRoIAlign" if sparse else "torchvision.ops.MultiScaleRoIAlign"
        pool = {"_target_": target, "_partial_": True}  # the mask branch pools as the box branch does
        models[sparse] = tiny_model(4, box_head={"roi_pool": pool}, mask_head={"layers": [8]}).train()
    assert isinstance(models[True].roi_heads.box_roi_pool, SparseMultiScaleRoIAlign)
    assert not isinstance(models[False].roi_heads.mask_roi_pool, SparseMultiScaleRoIAlign)
    masks = torch.zeros(2, 128, 160, dtype=torch.uint8)
    masks[0, 20:60, 30:50], masks[1, 70:120, 60:150] = 1, 1
    target = {"boxes": torch.tensor([[30.0, 20, 50, 60], [60, 70, 150, 120]]), "labels": torch.tensor([1, 3])}
    images, targets = [torch.rand(3, 128, 160)], [{**target, "masks": masks}]
    grads = {}
    for sparse, model in models.items():
        torch.manual_seed(1)  # the same RoI sampling
        losses = model(images, targets)
        sum(losses.values()).backward()
        grads[sparse] = (losses, model.backbone.fpn.layer_blocks[0][0].weight.grad)
    for key, value in grads[False][0].items():
        torch.testing.assert_close(grads[True][0][key], value, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grads[True][1], grads[False][1], atol=1e-4, rtol=1e-3)
