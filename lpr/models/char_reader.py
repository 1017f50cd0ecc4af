"""Reading characters from their pixels: a small CNN that re-classifies the detector's character boxes.

The box head classifies a 7x7 RoIAlign of the stride-8 FPN map, where a 12 px
character spans two or three cells; a small CNN handed a 32x32 crop of the same
box reads every validation character of the synthetic set (docs/recipe.md).
:class:`ReadingRoIHeads` keeps torchvision's RoI heads for *where* the characters
are and lets :class:`CharReader` say *which* they are:

- training: the reader learns from the ground-truth character boxes, jittered
  like a detector's boxes, so it is trained on clean crops from the first step
  and does not wait for the proposals to improve (``loss_reader``);
- inference: every proposal gets a class-agnostic character score (the sum of
  the box classifier's character probabilities) and the box of its most likely
  character; class-agnostic NMS keeps one box per character; the reader labels
  it, and its score stays the character score (multiplying in the reader's
  probability put 6 % of the characters under plate reading's 0.5 threshold:
  EIR 0.71 instead of 0.77, docs/recipe.md). The mask branch then runs for the
  reader's label. Other classes are torchvision's as they are.

Characters get their own NMS threshold (``char_nms_thresh``): two boxes on one
character often overlap less than the 0.5 of torchvision's per-class NMS (a box
on half of it, or one reaching into its neighbour), and each is read as a
character of its own; neighbouring characters of a plate overlap far less.
A box that lies mostly inside a better-scored character box (its upper half, say)
overlaps it by little IoU; ``char_cover_thresh`` drops a character box when more
than that share of its own area is covered by one scored higher (true neighbours of
the synthetic set cover at most 0.45 of each other).

With ``score_weight > 0`` the reader also says *whether* a box is a character: it
learns a "not a character" output from proposals that match no character (as many
as its characters per image, half of them overlapping one), and a character's score
becomes ``(1 - w) * box classifier + w * reader``, where the reader's part is one
minus its "not a character" probability.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import box_iou, clip_boxes_to_image, nms, remove_small_boxes, roi_align

from lpr.models.roi_heads import roi_heads_arguments

IMAGE_KEY = "image"  # the map holding the (normalised, resized) input images, see BackboneWithImage


def pixel_cnn(channels: Sequence[int], norm_layer: Callable[[int], nn.Module]) -> nn.Sequential:
    """A small CNN from RGB crops to ``channels[-1]`` features: two 3x3 convs per width (one at the
    last), each with ``norm_layer`` and ReLU, 2x2 max-pooling between widths, global average pooling."""
    layers: list[nn.Module] = []
    c_in = 3
    for i, c in enumerate(channels):
        if i:
            layers.append(nn.MaxPool2d(2))
        for _ in range(2 if i < len(channels) - 1 else 1):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), norm_layer(c), nn.ReLU(inplace=True)]
            c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def covered_share(boxes: torch.Tensor) -> torch.Tensor:
    """``(N, N)``: the share of box ``i``'s area (xyxy ``boxes``) that lies inside box ``j`` (0 for empty boxes)."""
    top_left = torch.max(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.min(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(-1)
    return inter / area.clamp(min=torch.finfo(inter.dtype).tiny)[:, None]


def suppress_covered(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> torch.Tensor:
    """Indices (best score first) of the ``boxes`` (xyxy) kept by a greedy pass that drops each box
    more than ``thresh`` of whose own area lies inside one kept box of a higher score."""
    order = scores.argsort(descending=True)
    covered = covered_share(boxes[order]) > thresh
    # traced for an ONNX export, the loop runs scripted, so that the graph keeps it as a loop
    # instead of unrolling it for the box count of the example image
    greedy = _scripted_greedy_keep() if torch.jit.is_tracing() else greedy_keep
    return order[greedy(covered)]


def greedy_keep(covered: torch.Tensor) -> torch.Tensor:
    """Which boxes (best first) a greedy pass keeps, where ``covered[i, j]`` drops box ``i`` if box ``j`` is kept."""
    keep = torch.ones(covered.shape[0], dtype=torch.bool, device=covered.device)
    for i in range(1, covered.shape[0]):
        keep[i] = ~(covered[i, :i] & keep[:i]).any()
    return keep


@functools.cache
def _scripted_greedy_keep() -> Callable[[torch.Tensor], torch.Tensor]:
    with warnings.catch_warnings():  # TorchScript is deprecated, and still what torch's ONNX exporter reads loops from
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(greedy_keep)


def square_boxes(boxes: torch.Tensor, context: float) -> torch.Tensor:
    """Squares around the boxes' centres, the longer side plus ``context`` of it on each side."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).amax(1, keepdim=True) * (0.5 + context)
    return torch.cat([centre - half, centre + half], 1)


class CharReader(nn.Module):
    """A small CNN classifying square crops of character boxes into the character classes.

    Args:
        char_labels: the model's labels (1-based) of the character classes, in the
            order of the reader's outputs.
        size: crop side in pixels (of the model's resized image).
        context: margin around the box, as a share of its longer side.
        channels: conv widths per resolution (two convs each, one at the last; 2x2
            max-pool between), then global average pooling and a linear layer.
        jitter: training boxes are moved and rescaled by up to this share of their size.
        background: a last "not a character" output, learnt from the negative boxes
            handed to :meth:`loss`.
    """

    def __init__(
        self,
        char_labels: Sequence[int],
        *,
        size: int = 32,
        context: float = 0.2,
        channels: Sequence[int] = (32, 64, 128),
        jitter: float = 0.1,
        background: bool = False,
    ) -> None:
        super().__init__()
        if not char_labels:
            raise ValueError("char_reader needs at least one character class (single-character class names)")
        self.register_buffer("char_labels", torch.as_tensor(list(char_labels), dtype=torch.int64), persistent=False)
        self.size, self.context, self.jitter, self.background = size, context, jitter, background
        # BatchNorm: with GroupNorm (or none) the loss stayed near ln 15 for 300 steps, with BatchNorm
        # it fell to 0.8 (docs/recipe.md)
        self.features = pixel_cnn(channels, nn.BatchNorm2d)
        self.classifier = nn.Linear(channels[-1], len(self.char_labels) + int(background))

    def reads(self, labels: torch.Tensor) -> torch.Tensor:
        """``(len(labels), characters)``: which of the reader's characters each label is."""
        return labels[:, None] == self.char_labels[None, :]

    def forward(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """Logits ``(all boxes, characters)`` for ``boxes[i]`` (xyxy) in ``images[i]`` (``(B, 3, H, W)``)."""
        squares = [square_boxes(b, self.context).to(images.dtype) for b in boxes]
        crops = roi_align(images, squares, self.size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
        return self.classifier(self.features(crops))

    def loss(
        self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]], negatives: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Cross-entropy on the ground-truth characters of ``targets``, their boxes jittered, and with
        ``background`` on ``negatives[i]`` (boxes of image ``i`` that are no character) as "not a character"."""
        boxes, classes = [], []
        for i, t in enumerate(targets):
            is_char = self.reads(t["labels"])
            keep = is_char.any(1)
            b = t["boxes"][keep]
            wh = b[:, 2:] - b[:, :2]
            shift = (torch.rand_like(wh) * 2 - 1) * self.jitter * wh
            scale = 1 + (torch.rand_like(wh) * 2 - 1) * self.jitter
            centre = (b[:, :2] + b[:, 2:]) / 2 + shift
            classes.append(is_char[keep].int().argmax(1))
            boxes.append(torch.cat([centre - wh * scale / 2, centre + wh * scale / 2], 1))
            if self.background and negatives is not None:
                boxes[-1] = torch.cat([boxes[-1], negatives[i]])
                not_a_char = classes[-1].new_full((len(negatives[i]),), len(self.char_labels))
                classes[-1] = torch.cat([classes[-1], not_a_char])
        if sum(len(b) for b in boxes) == 0:  # no characters in this batch: a zero that still reaches every weight
            return sum(p.sum() for p in self.parameters()) * 0.0
        return F.cross_entropy(self(images, boxes).float(), torch.cat(classes))

    @torch.no_grad()
    def read(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """All images' boxes concatenated: the label of each box's most likely character, and the
        probability that it is a character at all (1 without ``background``)."""
        probs = F.softmax(self(images, boxes).float(), -1)
        n = len(self.char_labels)
        return self.char_labels[probs[:, :n].argmax(1)], probs[:, :n].sum(1)


class ReadingRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` with a :class:`CharReader` naming the characters it finds.

    Needs the input images among the features (``"image"``, as
    :class:`lpr.models.maskrcnn.BackboneWithImage` hands them on). Training adds
    ``loss_reader`` to the losses; the box and mask heads train as torchvision's.
    """

    def __init__(
        self,
        *args,
        reader: CharReader,
        char_nms_thresh: float | None = None,
        char_cover_thresh: float | None = None,
        score_weight: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if char_cover_thresh is not None and not 0 < char_cover_thresh <= 1:
            raise ValueError(f"char_cover_thresh must lie in (0, 1], got {char_cover_thresh}")
        if score_weight and not reader.background:
            raise ValueError(f"score_weight={score_weight} needs a reader with a 'not a character' output (background)")
        self.reader, self.score_weight = reader, score_weight
        self.char_nms_thresh = self.nms_thresh if char_nms_thresh is None else char_nms_thresh
        self.char_cover_thresh = char_cover_thresh
        self._images: torch.Tensor | None = None  # during forward only: the batch being read

    @classmethod
    def around(cls, heads: RoIHeads, reader: CharReader, **options) -> ReadingRoIHeads:
        """The same parts and settings as ``heads`` (a built torchvision ``RoIHeads``), plus ``reader``
        and ``options`` (``char_nms_thresh``, ``char_cover_thresh``, ``score_weight``)."""
        return cls(**roi_heads_arguments(heads), reader=reader, **options)

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        images = features[IMAGE_KEY]
        self._images = images  # postprocess_detections, called inside, has no other way to the pixels
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
        finally:
            self._images = None
        if self.training:
            negatives = None
            if self.reader.background:
                negatives = [self._negatives(p, t) for p, t in zip(proposals, targets, strict=True)]
            losses["loss_reader"] = self.reader.loss(images, targets, negatives)
        return result, losses

    def _negatives(self, proposals: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
        """As many proposals as ``target`` has characters that overlap none of them by IoU 0.4 or more:
        half of them (where there are enough) overlapping one by at least 0.1 (part of a character, or
        parts of two), the rest anywhere."""
        chars = target["boxes"][self.reader.reads(target["labels"]).any(1)]
        if not len(chars) or not len(proposals):
            return proposals[:0]
        iou = box_iou(proposals, chars).amax(1)
        near = torch.where((iou >= 0.1) & (iou < 0.4))[0]
        far = torch.where(iou < 0.1)[0]
        count = len(chars)
        near = near[torch.randperm(len(near), device=near.device)[: (count + 1) // 2]]
        far = far[torch.randperm(len(far), device=far.device)[: count - len(near)]]
        return proposals[torch.cat([near, far])]

    def postprocess_detections(
        self,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        cap, self.detections_per_img = self.detections_per_img, class_logits.shape[0] * class_logits.shape[1]
        try:  # uncapped: the per-class character detections must not crowd out the other classes' ones
            others = super().postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        finally:
            self.detections_per_img = cap
        chars = self._character_boxes(class_logits, box_regression, proposals, image_shapes)
        sizes = [b.shape[0] for b, _ in chars]  # shapes, not len(): an ONNX export keeps them dynamic
        labels, reader_charness = self.reader.read(self._images, [b for b, _ in chars])
        out: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = ([], [], [])
        for (boxes, scores, classes), (char_boxes, charness), char_classes, by_reader in zip(
            zip(*others, strict=True), chars, labels.split(sizes), reader_charness.split(sizes), strict=True
        ):
            other = ~self.reader.reads(classes).any(1)
            charness = (1 - self.score_weight) * charness + self.score_weight * by_reader.to(charness.dtype)
            if self.char_cover_thresh is not None:
                kept = suppress_covered(char_boxes, charness, self.char_cover_thresh)
                char_boxes, charness, char_classes = char_boxes[kept], charness[kept], char_classes[kept]
            boxes = torch.cat([boxes[other], char_boxes])
            scores = torch.cat([scores[other], charness])
            classes = torch.cat([classes[other], char_classes])
            keep = scores.argsort(descending=True)[: self.detections_per_img]
            keep = keep[scores[keep] > self.score_thresh]
            for lst, value in zip(out, (boxes[keep], scores[keep], classes[keep]), strict=True):
                lst.append(value)
        return out

    def _character_boxes(
        self,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image: ``(boxes, character scores)``, one box per character after class-agnostic NMS."""
        char_labels = self.reader.char_labels
        probs = F.softmax(class_logits, -1)[:, char_labels]
        charness = probs.sum(1)
        box_class = char_labels[probs.argmax(1)]
        boxes = self.box_coder.decode(box_regression, proposals)  # (N, classes, 4)
        boxes = boxes[torch.arange(boxes.shape[0], device=boxes.device), box_class]
        out = []
        sizes = [p.shape[0] for p in proposals]
        for b, s, shape in zip(boxes.split(sizes), charness.split(sizes), image_shapes, strict=True):
            b = clip_boxes_to_image(b, shape)
            keep = torch.where(s > self.score_thresh)[0]
            keep = keep[remove_small_boxes(b[keep], min_size=1e-2)]
            keep = keep[nms(b[keep], s[keep], self.char_nms_thresh)]
            out.append((b[keep], s[keep]))
        return out
