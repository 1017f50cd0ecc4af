"""The RoI heads: torchvision's, built from parts; with a reader, the other classes detected as torchvision does."""

from __future__ import annotations

import torch
from conftest import READER, tiny_model
from torchvision.models.detection.roi_heads import RoIHeads

from lpr.models.roi_heads import ReadingRoIHeads

SETTINGS = {
    "fg_iou_thresh": 0.4,
    "bg_iou_thresh": 0.3,
    "batch_size_per_image": 64,
    "positive_fraction": 0.5,
    "score_thresh": 0.1,
    "detections_per_img": 7,
}


def torchvision_heads(heads: ReadingRoIHeads) -> RoIHeads:
    """torchvision's own RoIHeads with the same parts and settings."""
    return RoIHeads(
        heads.box_roi_pool, heads.box_head, heads.box_predictor,
        SETTINGS["fg_iou_thresh"], SETTINGS["bg_iou_thresh"], SETTINGS["batch_size_per_image"],
        SETTINGS["positive_fraction"], None, SETTINGS["score_thresh"], 0.5, SETTINGS["detections_per_img"],
        mask_roi_pool=heads.mask_roi_pool, mask_head=heads.mask_head, mask_predictor=heads.mask_predictor,
    )  # fmt: skip


def test_heads_without_a_reader_are_torchvisions_in_training_and_inference():
    torch.manual_seed(0)
    model = tiny_model(4, roi_heads=SETTINGS)
    heads = model.roi_heads
    assert isinstance(heads, ReadingRoIHeads) and heads.reader is None
    assert (heads.proposal_matcher.high_threshold, heads.proposal_matcher.low_threshold) == (0.4, 0.3)
    assert (heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction) == (64, 0.5)
    assert (heads.score_thresh, heads.detections_per_img, heads.nms_thresh) == (0.1, 7, 0.5)
    masks = torch.zeros(2, 128, 160, dtype=torch.uint8)
    masks[0, 30:60, 20:34] = masks[1, 20:90, 10:120] = 1
    target = {
        "boxes": torch.tensor([[20.0, 30.0, 34.0, 60.0], [10.0, 20.0, 120.0, 90.0]]),
        "labels": torch.tensor([1, 3]),
        "masks": masks,
    }
    image = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(1))
    losses, detections = [], []
    for roi_heads in (heads, torchvision_heads(heads)):  # inference first: training moves BatchNorm's statistics
        model.roi_heads = roi_heads
        with torch.no_grad():
            detections.append(model.eval()([image])[0])
    for roi_heads in (heads, torchvision_heads(heads)):
        model.roi_heads = roi_heads
        torch.manual_seed(2)  # the same proposals sampled
        losses.append(model.train()([image], [target]))
    assert set(losses[0]) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    for key, value in losses[0].items():
        torch.testing.assert_close(losses[1][key], value)
    assert 0 < len(detections[0]["boxes"]) <= 7
    for key, value in detections[0].items():
        torch.testing.assert_close(detections[1][key], value)


def test_with_a_reader_the_other_classes_are_torchvisions_detections():
    torch.manual_seed(0)
    model = tiny_model(5, [1, 2], char_reader=READER, roi_heads={"score_thresh": 0.0}).eval()
    heads = model.roi_heads
    with torch.no_grad():  # a board-like class 3 and 4 that score: spread the classifier's biases
        heads.box_predictor.cls_score.bias.copy_(torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0]))
    proposals = [torch.rand(40, 2) * 100 + torch.tensor([[0.0, 0.0]]) for _ in range(2)]
    proposals = [torch.cat([p, p + torch.rand(40, 2) * 50 + 5], 1) for p in proposals]
    features = torch.rand(80, heads.box_predictor.cls_score.in_features)
    logits, regression = heads.box_predictor(features)
    shapes = [(128, 160), (128, 160)]
    reference = torchvision_heads(heads)
    reference.score_thresh, reference.detections_per_img = 0.0, 10_000
    expected = reference.postprocess_detections(logits, regression, proposals, shapes)
    found = heads._other_detections(logits, regression, proposals, shapes)
    for image in range(2):
        other = expected[2][image] >= 3
        assert other.sum() > 10 and (expected[2][image] < 3).sum() > 10  # both kinds were there
        for i in range(3):
            torch.testing.assert_close(found[i][image], expected[i][image][other])
