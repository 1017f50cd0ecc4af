"""torchvision's RoI heads, optionally with a :class:`~lpr.models.char_reader.CharReader` naming the characters.

torchvision's ``RoIHeads`` decide *where* the characters are; a reader says *which*
they are, from the box's pixels:

- training: torchvision's losses as they are, plus ``loss_reader`` (the reader learns
  from the ground-truth character boxes, see :meth:`CharReader.loss`);
- inference (:meth:`ReadingRoIHeads.detect`): every proposal gets a class-agnostic
  character score (the sum of the box classifier's character probabilities) and the box
  of its most likely character; class-agnostic NMS keeps one box per character; the
  reader labels it, and its score stays the character score (multiplying in the reader's
  probability put 6 % of the characters under plate reading's 0.5 threshold: EIR 0.71
  instead of 0.77, docs/recipe.md). The other classes are detected as torchvision does.
  The mask branch then runs for the reader's labels. Each detection also carries
  ``char_probs`` ``(classes)``: for a character, the reader's probability of each
  character class (plate reading falls back on them where the first choices break the
  plate grammar, :func:`lpr.plates.fit_pattern`); zeros for the other classes.

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

import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, nms, remove_small_boxes

from lpr.models.backbones import IMAGE_KEY
from lpr.models.char_reader import CharReader, suppress_covered
from lpr.models.heads import Branch

Detections = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]  # boxes, scores, labels per image


class ReadingRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` built from :class:`~lpr.models.heads.Branch` parts, with an optional reader.

    Args:
        box: the box branch (pool, head, predictor).
        mask: the mask branch.
        reader: names the character boxes from their pixels; needs the input images among
            the features (``"image"``, as :class:`lpr.models.backbones.BackboneWithImage` hands
            them on). ``None``: torchvision's RoI heads, unchanged.
        batch_size_per_image: RoIs sampled per image for the heads' losses.
        positive_fraction: the share of them matched to an object (where there are enough).
        fg_iou_thresh: a RoI overlapping an object by at least this IoU learns it (torchvision: 0.5).
        bg_iou_thresh: a RoI overlapping every object by less learns background; between the two
            it is left out (torchvision: 0.5).
        score_thresh: detections below this score are dropped at inference.
        nms_thresh: torchvision's per-class NMS IoU.
        detections_per_img: detections kept per image.
        char_nms_thresh: the characters' class-agnostic NMS IoU (default ``nms_thresh``).
        char_cover_thresh: drop a character box covered by a better one beyond this share of its area.
        score_weight: the reader's share of a character's score; > 0 needs a reader with a
            "not a character" output (``CharReader(background=True)``, which the builder gives it).
    """

    def __init__(
        self,
        box: Branch,
        mask: Branch,
        reader: CharReader | None = None,
        *,
        batch_size_per_image: int = 128,
        positive_fraction: float = 0.25,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        char_nms_thresh: float | None = None,
        char_cover_thresh: float | None = None,
        score_weight: float = 0.0,
    ) -> None:
        super().__init__(
            *box,
            fg_iou_thresh=fg_iou_thresh,
            bg_iou_thresh=bg_iou_thresh,
            batch_size_per_image=batch_size_per_image,
            positive_fraction=positive_fraction,
            bbox_reg_weights=None,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            mask_roi_pool=mask.pool,
            mask_head=mask.head,
            mask_predictor=mask.predictor,
        )
        if char_cover_thresh is not None and not 0 < char_cover_thresh <= 1:
            raise ValueError(f"char_cover_thresh must lie in (0, 1], got {char_cover_thresh}")
        if score_weight and (reader is None or not reader.background):
            raise ValueError(f"score_weight={score_weight} needs a reader with a 'not a character' output (background)")
        self.reader, self.score_weight = reader, score_weight
        self.char_nms_thresh = self.nms_thresh if char_nms_thresh is None else char_nms_thresh
        self.char_cover_thresh = char_cover_thresh

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if self.reader is None:
            return super().forward(features, proposals, image_shapes, targets)
        images = features[IMAGE_KEY]
        if self.training:
            result, losses = super().forward(features, proposals, image_shapes, targets)
            negatives = None
            if self.reader.background:
                negatives = [self._negatives(p, t) for p, t in zip(proposals, targets, strict=True)]
            losses["loss_reader"] = self.reader.loss(images, targets, negatives)
            return result, losses
        # inference: torchvision's steps (RoIHeads.forward without targets), with detect() for postprocessing
        class_logits, box_regression = self.box_predictor(
            self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        )
        result = [
            {"boxes": b, "labels": label, "scores": s, "char_probs": p}
            for b, s, label, p in zip(
                *self.detect(images, class_logits, box_regression, proposals, image_shapes), strict=True
            )
        ]
        if self.has_mask():
            boxes = [r["boxes"] for r in result]
            logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))
            for r, probs in zip(result, maskrcnn_inference(logits, [r["labels"] for r in result]), strict=True):
                r["masks"] = probs
        return result, {}

    def detect(
        self,
        images: torch.Tensor,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[torch.Tensor], ...]:
        """The detections of each image, ``(boxes, scores, labels, char_probs)``: the other classes
        as torchvision's ``postprocess_detections`` finds them, the characters as the module
        docstring says, best score first, at most ``detections_per_img`` above ``score_thresh``."""
        others = self._other_detections(class_logits, box_regression, proposals, image_shapes)
        chars = self._character_boxes(class_logits, box_regression, proposals, image_shapes)
        sizes = [b.shape[0] for b, _ in chars]  # shapes, not len(): an ONNX export keeps them dynamic
        labels, reader_charness, reader_probs = self.reader.read(images, [b for b, _ in chars])
        columns = self.reader.char_labels - 1
        out: tuple[list[torch.Tensor], ...] = ([], [], [], [])
        for (boxes, scores, classes), (char_boxes, charness), char_classes, by_reader, read_probs in zip(
            zip(*others, strict=True), chars, labels.split(sizes), reader_charness.split(sizes),
            reader_probs.split(sizes), strict=True,
        ):  # fmt: skip
            charness = (1 - self.score_weight) * charness + self.score_weight * by_reader.to(charness.dtype)
            if self.char_cover_thresh is not None:
                kept = suppress_covered(char_boxes, charness, self.char_cover_thresh)
                char_boxes, charness, char_classes, read_probs = (
                    char_boxes[kept], charness[kept], char_classes[kept], read_probs[kept]
                )  # fmt: skip
            char_probs = charness.new_zeros((boxes.shape[0] + char_boxes.shape[0], class_logits.shape[-1] - 1))
            char_probs[boxes.shape[0] :, columns] = read_probs.to(charness.dtype)  # the others' rows stay 0
            boxes = torch.cat([boxes, char_boxes])
            scores = torch.cat([scores, charness])
            classes = torch.cat([classes, char_classes])
            keep = scores.argsort(descending=True)[: self.detections_per_img]
            keep = keep[scores[keep] > self.score_thresh]
            for lst, value in zip(out, (boxes[keep], scores[keep], classes[keep], char_probs[keep]), strict=True):
                lst.append(value)
        return out

    def _other_detections(
        self,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> Detections:
        """torchvision's ``postprocess_detections`` for the classes that are not characters (per-class
        boxes over ``score_thresh``, per-class NMS, best first), uncapped: the cap is applied to them
        and the characters together."""
        labels = torch.arange(1, class_logits.shape[-1], device=class_logits.device)
        labels = labels[~self.reader.reads(labels).any(1)]
        boxes = self.box_coder.decode(box_regression, proposals)[:, labels]
        scores = F.softmax(class_logits, -1)[:, labels]
        sizes = [p.shape[0] for p in proposals]
        out: Detections = ([], [], [])
        for b, s, shape in zip(boxes.split(sizes), scores.split(sizes), image_shapes, strict=True):
            b = clip_boxes_to_image(b, shape).reshape(-1, 4)
            lab = (torch.zeros_like(s, dtype=labels.dtype) + labels).reshape(-1)  # broadcast: no shape traced
            s = s.reshape(-1)
            keep = torch.where(s > self.score_thresh)[0]
            keep = keep[remove_small_boxes(b[keep], min_size=1e-2)]
            keep = keep[batched_nms(b[keep], s[keep], lab[keep], self.nms_thresh)]
            for lst, value in zip(out, (b[keep], s[keep], lab[keep]), strict=True):
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
