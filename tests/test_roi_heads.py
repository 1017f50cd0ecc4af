"""The boundary-weighted mask loss: which cells it weighs, and that its own mask branch is torchvision's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

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


def mask_head_rois(thresh: float | None) -> tuple[dict, int, int]:
    """One training step's losses with ``mask_fg_iou_thresh=thresh`` (box positives from IoU 0.3), the RoIs
    the mask head saw, and the sampled positives at IoU ``thresh`` or more with their object."""
    model, images, targets = model_and_batch(
        1.0, mask_fg_iou_thresh=thresh, box_fg_iou_thresh=0.3, box_bg_iou_thresh=0.3
    )
    heads, sampled, rois = model.roi_heads, [], []
    select = heads.select_training_samples

    def recording_select(proposals, targets):
        sampled.append(select(proposals, targets))
        return sampled[-1]

    heads.select_training_samples = recording_select
    heads.mask_predictor.register_forward_hook(lambda module, args, out: rois.append(len(out)))
    torch.manual_seed(2)  # the same proposals sampled
    losses = model(images, targets)
    (proposals,), (matched,), (labels,), _ = sampled[0]
    positive = labels > 0
    ious = box_iou(proposals[positive], targets[0]["boxes"][matched[positive]]).diagonal()
    (seen,) = rois
    return losses, seen, int((ious >= (thresh or 0.0)).sum())


def test_mask_fg_iou_thresh_trains_the_mask_head_on_the_positives_that_close_to_their_object():
    # the 8 positives: 5 proposals at IoU 0.31-0.45 and the 3 true boxes torchvision adds to the proposals
    runs = {thresh: mask_head_rois(thresh) for thresh in (None, 0.0, 0.4, 1.0)}
    assert all(seen == expected for _, seen, expected in runs.values())
    assert [runs[t][1] for t in (0.0, 0.4, 1.0)] == [8, 4, 3]
    for key, loss in runs[None][0].items():  # a threshold of 0 keeps every positive: torchvision's losses
        torch.testing.assert_close(runs[0.0][0][key], loss)
    with pytest.raises(ValueError, match="mask_fg_iou_thresh must lie in"):
        model_and_batch(1.0, mask_fg_iou_thresh=1.5)
