"""RoI heads rebuilt around torchvision's: the same parts, settings and losses."""

from __future__ import annotations

import torch
from torchvision.models.detection.roi_heads import RoIHeads

from lpr.models.char_reader import ReadingRoIHeads
from lpr.models.maskrcnn import build_maskrcnn, mobilenet_v3_fpn
from lpr.models.roi_heads import roi_heads_arguments


def test_heads_rebuilt_from_their_arguments_are_the_same_heads():
    torch.manual_seed(0)
    model = build_maskrcnn(
        num_classes=4, backbone=mobilenet_v3_fpn(out_channels=32), min_size=128, max_size=160,
        representation_size=64, mask_head_layers=[16], box_fg_iou_thresh=0.4, box_bg_iou_thresh=0.3,
        box_batch_size_per_image=64, box_positive_fraction=0.5, box_score_thresh=0.1, box_detections_per_img=7,
    )  # fmt: skip
    heads = model.roi_heads
    rebuilt = RoIHeads(**roi_heads_arguments(heads))
    for name in ("box_roi_pool", "box_head", "box_predictor", "mask_roi_pool", "mask_head", "mask_predictor"):
        assert getattr(rebuilt, name) is getattr(heads, name)
    assert (rebuilt.proposal_matcher.high_threshold, rebuilt.proposal_matcher.low_threshold) == (0.4, 0.3)
    assert (rebuilt.fg_bg_sampler.batch_size_per_image, rebuilt.fg_bg_sampler.positive_fraction) == (64, 0.5)
    assert (rebuilt.score_thresh, rebuilt.detections_per_img, rebuilt.nms_thresh) == (0.1, 7, heads.nms_thresh)
    assert rebuilt.box_coder.weights == heads.box_coder.weights

    masks = torch.zeros(2, 128, 160, dtype=torch.uint8)
    masks[0, 30:60, 20:34] = masks[1, 20:90, 10:120] = 1
    target = {
        "boxes": torch.tensor([[20.0, 30.0, 34.0, 60.0], [10.0, 20.0, 120.0, 90.0]]),
        "labels": torch.tensor([1, 3]),
        "masks": masks,
    }
    image = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(1))
    losses = []
    for roi_heads in (heads, rebuilt):
        model.roi_heads = roi_heads
        torch.manual_seed(2)  # the same proposals sampled
        losses.append(model.train()([image], [target]))
    for key, value in losses[0].items():
        torch.testing.assert_close(losses[1][key], value)


def test_reading_heads_take_the_parts_of_torchvisions():
    torch.manual_seed(0)
    model = build_maskrcnn(
        num_classes=4, backbone=mobilenet_v3_fpn(out_channels=32), representation_size=64, mask_head_layers=[16],
        char_reader={"size": 16, "channels": [8, 16], "char_nms_thresh": 0.3}, char_labels=[1, 2],
    )  # fmt: skip
    heads = model.roi_heads
    assert isinstance(heads, ReadingRoIHeads) and heads.char_nms_thresh == 0.3
    assert heads.reader.char_labels.tolist() == [1, 2]
    assert isinstance(heads.box_head, torch.nn.Module) and heads.detections_per_img == 100
