"""The boundary-weighted mask loss: which cells it weighs, and that its own mask branch is torchvision's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lpr.models.char_reader import ReadingRoIHeads
from lpr.models.maskrcnn import build_maskrcnn, mobilenet_v3_fpn
from lpr.models.roi_heads import BoundaryMaskRoIHeads, boundary_cells, boundary_weighted_mask_loss


def test_boundary_cells_are_the_ring_either_side_of_the_targets_half_contour():
    targets = torch.zeros(1, 8, 8)
    targets[0, 2:6, 2:6] = 1.0
    targets[0, 2, 2:6] = 0.6  # soft edges count by the 0.5 contour
    ring = boundary_cells(targets)[0]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[1:7, 1:7] = True
    expected[3:5, 3:5] = False  # two cells inside the edge
    assert torch.equal(ring, expected)
    assert not boundary_cells(torch.zeros(2, 8, 8)).any() and not boundary_cells(torch.ones(1, 8, 8)).any()


def test_the_weighted_loss_is_binary_cross_entropy_with_the_ring_counted_w_times():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(3, 8, 8, generator=g), (torch.rand(3, 8, 8, generator=g) > 0.5).float()
    plain = F.binary_cross_entropy_with_logits(logits, targets)
    torch.testing.assert_close(boundary_weighted_mask_loss(logits, targets, 1.0), plain)
    per_cell = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    ring = boundary_cells(targets)
    expected = (per_cell.sum() + 3 * per_cell[ring].sum()) / (per_cell.numel() + 3 * ring.sum())
    torch.testing.assert_close(boundary_weighted_mask_loss(logits, targets, 4.0), expected)


def model_and_batch(weight: float, **kwargs) -> tuple[torch.nn.Module, list, list]:
    torch.manual_seed(0)
    model = build_maskrcnn(
        num_classes=4, backbone=mobilenet_v3_fpn(out_channels=32), min_size=128, max_size=160,
        representation_size=64, mask_head_layers=[16], mask_boundary_weight=weight, **kwargs,
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(3, 128, 160, dtype=torch.uint8)
    masks[0, 30:60, 20:34] = masks[1, 32:62, 40:52] = masks[2, 20:90, 10:120] = 1
    boxes = torch.tensor([[20.0, 30.0, 34.0, 60.0], [40.0, 32.0, 52.0, 62.0], [10.0, 20.0, 120.0, 90.0]])
    target = {"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "masks": masks}
    return model.train(), [torch.rand(3, 128, 160, generator=g)], [target]


@pytest.mark.parametrize("reader", [False, True])
def test_its_mask_branch_trains_on_torchvisions_positives_and_only_the_mask_loss_changes(reader):
    options = {"char_reader": {"size": 16, "channels": [8, 16]}, "char_labels": [1, 2]} if reader else {}
    losses = {}
    for weight in (1.0, 1.0 + 1e-9, 5.0):  # torchvision's branch; lpr's with (almost) its loss; boundary x5
        model, images, targets = model_and_batch(weight, **options)
        heads = model.roi_heads
        assert isinstance(heads, ReadingRoIHeads if reader else BoundaryMaskRoIHeads) or weight == 1.0
        torch.manual_seed(2)  # the same proposals sampled
        losses[weight] = model(images, targets)
    torchvision_branch, own_branch, weighted = losses.values()
    for key in torchvision_branch:
        torch.testing.assert_close(own_branch[key], torchvision_branch[key])  # same positives, same targets
        if key != "loss_mask":
            torch.testing.assert_close(weighted[key], torchvision_branch[key])
    assert abs(weighted["loss_mask"].item() - torchvision_branch["loss_mask"].item()) > 1e-4
    weighted["loss_mask"].backward()
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0
    with torch.no_grad():  # inference is torchvision's
        out = model.eval()(images)[0]
    assert out["masks"].shape[-2:] == (128, 160)


def test_a_weight_under_one_is_refused():
    with pytest.raises(ValueError, match="mask_boundary_weight must be >= 1"):
        model_and_batch(0.5)
