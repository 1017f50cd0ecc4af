"""The character reader: its loss, and how ReadingRoIHeads turns box-head scores and readings into detections."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import READER, tiny_model, tiny_net
from hydra.errors import InstantiationException
from torchvision.ops import box_iou

from lpr.callbacks.consistency import ConsistencyError, check_heads
from lpr.models.char_reader import CharReader, square_boxes, suppress_covered
from lpr.models.heads import LevelRPN
from lpr.models.module import MaskRCNNModule
from lpr.models.roi_heads import ReadingRoIHeads

TINY_READER = {"size": 16, "channels": [8, 16]}


def force_reader(reader: CharReader, index: int, runner_up: int | None = None) -> None:
    """Make the reader answer output ``index`` for every crop: with probability ~1, or 0.6 against
    0.4 for ``runner_up``."""
    with torch.no_grad():
        reader.classifier.weight.zero_()
        reader.classifier.bias.fill_(-20.0)
        reader.classifier.bias[index] = 20.0 if runner_up is None else math.log(0.6)
        if runner_up is not None:
            reader.classifier.bias[runner_up] = math.log(0.4)


def reading_model(char_labels: list[int], num_classes: int, background: bool = False, **roi_heads) -> torch.nn.Module:
    """A tiny Mask R-CNN with a reader; ``roi_heads``: the RoI heads' settings."""
    reader = {**READER, "background": background}
    return tiny_model(num_classes, char_labels, char_reader=reader, roi_heads=roi_heads)


def test_square_boxes_keep_the_centre_and_take_the_longer_side_plus_context():
    squares = square_boxes(torch.tensor([[10.0, 20.0, 30.0, 60.0]]), context=0.25)  # 20 wide, 40 high
    assert squares.tolist() == [[-10.0, 10.0, 50.0, 70.0]]  # 40 * (1 + 2 * 0.25) = 60 around (20, 40)


def test_reader_loss_is_on_the_character_targets_in_its_own_label_order():
    reader = CharReader([4, 2, 7], **TINY_READER, jitter=0.0)  # outputs 0, 1, 2 = labels 4, 2, 7
    images = torch.rand(1, 3, 64, 64)
    target = {"boxes": torch.tensor([[10.0, 10.0, 20.0, 30.0], [0.0, 0.0, 60.0, 20.0]]), "labels": torch.tensor([2, 9])}
    force_reader(reader, 1)  # label 2: right; the label-9 box is not a character and is ignored
    assert reader.loss(images, [target]).item() < 1e-6
    force_reader(reader, 0)
    assert reader.loss(images, [target]).item() == pytest.approx(40.0, rel=1e-3)
    no_chars = reader.loss(images, [{"boxes": target["boxes"][1:], "labels": target["labels"][1:]}])
    no_chars.backward()  # zero, yet connected to every weight (DDP expects gradients for all of them)
    assert no_chars.item() == 0 and all(p.grad is not None for p in reader.parameters())


def test_letter_weight_adds_the_letters_crops_read_among_the_letters_alone():
    # outputs 0..3 = labels 1, 2 (digits), 5, 6 (letters); one digit crop and one letter crop
    images = torch.rand(1, 3, 64, 64)
    target = {
        "boxes": torch.tensor([[10.0, 10.0, 20.0, 30.0], [30.0, 10.0, 40.0, 30.0]]),
        "labels": torch.tensor([1, 5]),
    }
    plain = CharReader([1, 2, 5, 6], **TINY_READER, jitter=0.0, letter_labels=[5, 6])
    weighted = CharReader([1, 2, 5, 6], **TINY_READER, jitter=0.0, letter_labels=[5, 6], letter_weight=2.0)
    for reader in plain, weighted:
        force_reader(reader, 0)  # both crops read as label 1: the letter crop costs 40, and ln 2 among the letters
    assert plain.loss(images, [target]).item() == pytest.approx(40.0 / 2, rel=1e-3)
    assert weighted.loss(images, [target]).item() == pytest.approx((40.0 + 2.0 * math.log(2)) / 2, rel=1e-3)
    for reader in plain, weighted:
        force_reader(reader, 3)  # both read as the other letter, label 6: 40 each, 40 again among the letters
    assert plain.loss(images, [target]).item() == pytest.approx(40.0, rel=1e-3)
    assert weighted.loss(images, [target]).item() == pytest.approx(40.0 + 2.0 * 40.0 / 2, rel=1e-3)
    digits_only = {"boxes": target["boxes"][:1], "labels": target["labels"][:1]}  # no letter in the batch: no term
    assert weighted.loss(images, [digits_only]).item() == pytest.approx(plain.loss(images, [digits_only]).item())
    with pytest.raises(ValueError, match="no character class is a letter"):
        CharReader([1, 2], letter_weight=1.0)
    with pytest.raises(ValueError, match=r"letter_labels \[7\] must be among char_labels"):
        CharReader([1, 2], letter_labels=[7])
    with pytest.raises(ValueError, match=r"letter_weight=-1.0 must be a number >= 0"):
        CharReader([1, 2], letter_labels=[2], letter_weight=-1.0)


def test_reading_heads_sum_the_character_probabilities_and_let_the_reader_name_the_box():
    # labels 1 and 2 are characters, 3 a board; the box classifier splits every proposal 0.45 / 0.45 / 0.1,
    # so on its own no character would pass a 0.5 score threshold
    model = reading_model([1, 2], 4, detections_per_img=1000).eval()
    heads = model.roi_heads
    assert isinstance(heads, ReadingRoIHeads) and isinstance(model.rpn, LevelRPN)
    with torch.no_grad():
        heads.box_predictor.cls_score.weight.zero_()
        heads.box_predictor.cls_score.bias.copy_(torch.tensor([-20.0, math.log(0.45), math.log(0.45), math.log(0.1)]))
        heads.box_predictor.bbox_pred.weight.zero_()
        heads.box_predictor.bbox_pred.bias.zero_()
    force_reader(heads.reader, 1, runner_up=0)  # reads every character box as label 2, p = 0.6
    with torch.no_grad():
        detections = model([torch.rand(3, 128, 160)])[0]
    chars = detections["labels"] != 3
    assert chars.any() and (detections["labels"][chars] == 2).all()
    # the score is the box classifier's character probability, 0.45 + 0.45, whatever the reader's confidence
    assert torch.allclose(detections["scores"][chars], torch.tensor(0.9), atol=1e-3)
    char_boxes = detections["boxes"][chars]  # one box per character: class-agnostic NMS among them
    overlap = box_iou(char_boxes, char_boxes).fill_diagonal_(0)
    assert overlap.max() <= heads.nms_thresh
    boards = detections["labels"] == 3  # other classes: torchvision's detections as they are
    assert boards.any() and torch.allclose(detections["scores"][boards], torch.tensor(0.1), atol=1e-3)
    assert (detections["scores"][:-1] >= detections["scores"][1:]).all()
    assert len(detections["masks"]) == len(detections["labels"]) <= heads.detections_per_img
    # each character's class probabilities as the reader gives them (columns: labels 1, 2, 3), zeros elsewhere
    probs = detections["char_probs"]
    assert probs.shape == (len(detections["labels"]), 3)
    assert torch.allclose(probs[chars], torch.tensor([0.4, 0.6, 0.0]).expand(int(chars.sum()), 3), atol=1e-4)
    assert (probs[boards] == 0).all()


def test_reader_trains_on_the_true_boxes_apart_from_the_detector():
    model = reading_model([1, 2], 4).train()
    target = {
        "boxes": torch.tensor([[20.0, 30.0, 40.0, 70.0], [60.0, 10.0, 150.0, 40.0]]),
        "labels": torch.tensor([2, 3]),
        "masks": torch.zeros(2, 128, 160, dtype=torch.uint8),
    }
    losses = model([torch.rand(3, 128, 160)], [target])
    assert set(losses) >= {"loss_classifier", "loss_mask", "loss_reader"}
    losses["loss_reader"].backward()
    assert model.roi_heads.reader.features[0].weight.grad.abs().sum() > 0
    # the reader reads pixels: its loss sends nothing into the backbone or the box head
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.roi_heads.box_head.parameters())


def test_module_tells_the_reader_which_classes_are_characters():
    net = tiny_net(char_reader=READER)
    classes = ["l_board", "0", "7", "l_s_n", "a"]
    module = MaskRCNNModule(classes=classes, net=net, optimizer={"_target_": "torch.optim.AdamW"})
    reader = module.model.roi_heads.reader
    assert reader.char_labels.tolist() == [2, 3, 5] and reader.letters.tolist() == [2]  # "a": the third output
    assert "char_labels" not in module.hparams.net  # the labels come from the class list, never from config
    with pytest.raises(ValueError, match="no character class"):
        MaskRCNNModule(classes=["l_board", "r_board"], net=net, optimizer={"_target_": "torch.optim.AdamW"})
    net["char_reader"] = {**READER, "letter_weight": 1.0}
    with pytest.raises(InstantiationException, match="no character class is a letter"):
        MaskRCNNModule(classes=["l_board", "0", "1"], net=net, optimizer={"_target_": "torch.optim.AdamW"})


def test_consistency_check_names_a_reader_built_for_other_character_labels():
    model = reading_model([1, 2], 4)
    check_heads(model, ["0", "1", "l_board"])  # characters are labels 1, 2: consistent
    with pytest.raises(ConsistencyError, match=r"reader reads labels \[1, 2\].*labels \[1, 3\]"):
        check_heads(model, ["0", "l_board", "1"])


def fixed_character_heads(heads: ReadingRoIHeads, char_prob: float) -> None:
    """Every proposal: label 1 (a character) with ``char_prob``, the rest background; no box regression."""
    with torch.no_grad():
        heads.box_predictor.cls_score.weight.zero_()
        bias = torch.tensor([math.log(1 - char_prob), math.log(char_prob), -20.0, -20.0])
        heads.box_predictor.cls_score.bias.copy_(bias)
        heads.box_predictor.bbox_pred.weight.zero_()
        heads.box_predictor.bbox_pred.bias.zero_()


def character_boxes(heads: ReadingRoIHeads, proposals: torch.Tensor) -> torch.Tensor:
    features = torch.zeros(len(proposals), heads.box_predictor.cls_score.in_features)
    logits, regression = heads.box_predictor(features)
    return heads._character_boxes(logits, regression, [proposals], [(128, 160)])[0][0]


def test_characters_have_their_own_nms_threshold():
    # two boxes on one character, IoU 0.43: torchvision's 0.5 keeps both (read as two characters), 0.3 one;
    # a neighbouring character (IoU 0) stays either way
    proposals = torch.tensor([[10.0, 10.0, 30.0, 50.0], [10.0, 10.0, 30.0, 27.0], [32.0, 10.0, 52.0, 50.0]])
    assert box_iou(proposals[:1], proposals[1:2]).item() == pytest.approx(17 / 40)  # its upper 17 of 40 px
    kept = {}
    for thresh in (None, 0.3):
        heads = reading_model([1, 2], 4, char_nms_thresh=thresh).eval().roi_heads
        fixed_character_heads(heads, 0.9)
        kept[thresh] = len(character_boxes(heads, proposals))
    assert heads.nms_thresh == 0.5 and kept == {None: 3, 0.3: 2}


def test_suppress_covered_drops_boxes_inside_a_kept_better_one_greedily():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # 0: kept, the best
            [3.0, 0.0, 13.0, 10.0],  # 1: 0.7 of it inside box 0: dropped
            [10.5, 0.0, 13.0, 10.0],  # 2: inside box 1 only, which is dropped: kept
            [1.0, 1.0, 4.0, 4.0],  # 3: wholly inside box 0: dropped
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.5, 0.6])
    assert suppress_covered(boxes, scores, 0.6).tolist() == [0, 2]
    assert suppress_covered(boxes, scores, 1.0).tolist() == [0, 1, 3, 2]  # nothing covers more than all
    assert suppress_covered(boxes[:0], scores[:0], 0.6).tolist() == []


def test_characters_covered_by_a_better_character_box_are_dropped():
    # the upper quarter of a character: IoU 0.25 with it survives the characters' NMS at 0.3, but lies
    # wholly inside it; the neighbour, 0.3 of whose area the character covers, stays
    proposals = torch.tensor([[10.0, 10.0, 30.0, 50.0], [10.0, 10.0, 30.0, 20.0], [24.0, 10.0, 44.0, 50.0]])
    char_probs = torch.tensor([0.9, 0.8, 0.7])
    logits = torch.stack([(1 - char_probs).log(), char_probs.log(), *[torch.full((3,), -20.0)] * 2], 1)
    regression = torch.zeros(3, 4 * 4)
    kept = {}
    for cover in (None, 0.6):
        heads = reading_model([1, 2], 4, char_nms_thresh=0.3, char_cover_thresh=cover).eval().roi_heads
        boxes, scores, _, _ = heads.detect(torch.rand(1, 3, 128, 160), logits, regression, [proposals], [(128, 160)])
        kept[cover] = [proposals.tolist().index(box) for box in boxes[0].tolist()]
        assert torch.allclose(scores[0], char_probs[kept[cover]], atol=1e-4)
    assert kept == {None: [0, 1, 2], 0.6: [0, 2]}
    with pytest.raises(InstantiationException, match="char_cover_thresh"):
        reading_model([1, 2], 4, char_cover_thresh=1.5)


def test_reader_crops_each_character_jittered_and_matches_them_with_as_many_negatives():
    reader = CharReader([4, 2], **TINY_READER, jitter=0.1, background=True)
    seen: list[torch.Tensor] = []
    reader.register_forward_hook(lambda module, args, out: seen.append(torch.cat(args[1])))
    images = torch.rand(1, 3, 64, 64)
    chars = torch.tensor([[10.0, 10.0, 20.0, 30.0], [30.0, 10.0, 40.0, 30.0]])
    target = {"boxes": chars, "labels": torch.tensor([2, 4])}
    force_reader(reader, 1)  # "2" for every crop: right on the first character only
    loss = reader.loss(images, [target])
    boxes = seen[0]
    assert len(boxes) == 2 and not torch.equal(boxes, chars)  # jittered
    assert torch.allclose((boxes[:, :2] + boxes[:, 2:]) / 2, (chars[:, :2] + chars[:, 2:]) / 2, atol=2.0)
    assert loss.item() == pytest.approx(40.0 / 2, rel=1e-3)  # half the crops wrong by 40 nats
    model = reading_model([1, 2], 4, background=True, score_weight=0.5)
    far = torch.tensor([[100.0, 70.0, 120.0, 110.0]] * 10)
    assert len(model.roi_heads._negatives(far, {"boxes": target["boxes"], "labels": torch.tensor([1, 2])})) == 2


def test_reader_learns_not_a_character_from_proposals_that_match_none():
    reader = CharReader([4, 2], **TINY_READER, jitter=0.0, background=True)  # outputs: 4, 2, not a character
    images = torch.rand(1, 3, 64, 64)
    target = {"boxes": torch.tensor([[10.0, 10.0, 20.0, 30.0]]), "labels": torch.tensor([2])}
    negatives = [torch.tensor([[40.0, 40.0, 60.0, 60.0], [15.0, 10.0, 25.0, 30.0]])]
    force_reader(reader, 2)  # "not a character" for everything: the negatives right, the character wrong
    assert reader.loss(images, [target], negatives).item() == pytest.approx(40.0 / 3, rel=1e-3)
    force_reader(reader, 1)
    assert reader.loss(images, [target], negatives).item() == pytest.approx(80.0 / 3, rel=1e-3)
    labels, charness, probs = reader.read(images, [target["boxes"]])
    assert labels.tolist() == [2] and charness.item() == pytest.approx(1.0)
    assert probs.tolist() == [[pytest.approx(0.0, abs=1e-6), pytest.approx(1.0)]]  # in char_labels order: 4, 2
    force_reader(reader, 2)
    labels, charness, probs = reader.read(images, [target["boxes"]])  # the label: the likeliest character still
    assert labels.tolist() in ([4], [2]) and charness.item() < 1e-6
    assert probs.sum().item() == pytest.approx(1.0)  # which character, were it one


def test_negatives_overlap_no_character_and_half_of_them_touch_one():
    model = reading_model([1, 2], 4, background=True, score_weight=0.5)
    heads = model.roi_heads
    chars = torch.tensor([[10.0, 10.0, 30.0, 50.0], [40.0, 10.0, 60.0, 50.0], [70.0, 10.0, 90.0, 50.0]])
    board = torch.tensor([[0.0, 0.0, 100.0, 60.0]])
    target = {"boxes": torch.cat([chars, board]), "labels": torch.tensor([1, 2, 1, 3])}
    near = torch.tensor([[20.0, 10.0, 50.0, 50.0]] * 5)  # straddles two characters: IoU 1/3 with each
    far = torch.tensor([[100.0, 70.0, 120.0, 110.0]] * 5)
    proposals = torch.cat([chars + 1, near, far])  # the first three are characters (IoU ~0.9)
    for _ in range(5):
        negatives = heads._negatives(proposals, target)
        assert len(negatives) == 3  # as many as the characters (the board is none)
        assert box_iou(negatives, chars).amax(1).lt(0.4).all()
        assert (negatives == near[0]).all(1).sum() == 2 and (negatives == far[0]).all(1).sum() == 1
    assert len(heads._negatives(proposals, {"boxes": target["boxes"][3:], "labels": target["labels"][3:]})) == 0
    masks = torch.zeros(4, 128, 160, dtype=torch.uint8)
    losses = model.train()([torch.rand(3, 128, 160)], [{**target, "masks": masks}])
    assert losses["loss_reader"].isfinite()


def test_score_weight_mixes_the_readers_character_probability_into_the_score():
    model = reading_model([1, 2], 4, background=True, score_weight=0.25).eval()
    heads = model.roi_heads
    fixed_character_heads(heads, 0.4)  # under 0.5 on its own
    force_reader(heads.reader, 1, runner_up=2)  # label 2 with 0.6, "not a character" 0.4
    with torch.no_grad():
        detections = model([torch.rand(3, 128, 160)])[0]
    assert len(detections["scores"]) and (detections["labels"] == 2).all()
    assert torch.allclose(detections["scores"], torch.tensor(0.75 * 0.4 + 0.25 * 0.6), atol=1e-3)
    with pytest.raises(InstantiationException, match="not a character"):
        reading_model([1, 2], 4, background=False, score_weight=0.5)


def test_box_head_iou_thresholds_decide_which_proposals_learn_an_object():
    gt = torch.tensor([[10.0, 10.0, 20.0, 24.0]])  # a 10 x 14 px character
    proposals = torch.tensor([[12.0, 12.0, 22.0, 26.0], [13.0, 13.0, 23.0, 27.0], [40.0, 40.0, 50.0, 54.0]])
    assert box_iou(proposals, gt)[:, 0].tolist() == pytest.approx([96 / 184, 77 / 203, 0.0])  # 0.52, 0.38, 0
    labels = {}
    for fg, bg in ((0.5, 0.5), (0.35, 0.35), (0.5, 0.3)):
        heads = reading_model([1, 2], 4, fg_iou_thresh=fg, bg_iou_thresh=bg).roi_heads
        _, assigned = heads.assign_targets_to_proposals([proposals], [gt], [torch.tensor([2])])
        labels[fg, bg] = assigned[0].tolist()
    # positive (the label), background (0) or left out (-1)
    assert labels == {(0.5, 0.5): [2, 0, 0], (0.35, 0.35): [2, 2, 0], (0.5, 0.3): [2, -1, 0]}
