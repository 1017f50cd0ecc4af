"""Reading characters from their pixels: a small CNN that names the detector's character boxes.

The box head classifies a 7x7 RoIAlign of the stride-8 FPN map, where a 12 px
character spans two or three cells; a small CNN handed a 32x32 crop of the same
box reads every validation character of the synthetic set (docs/recipe.md).
:class:`lpr.models.roi_heads.ReadingRoIHeads` keeps torchvision's RoI heads for
*where* the characters are and lets :class:`CharReader` say *which* they are. The
box helpers here (:func:`square_boxes`, :func:`suppress_covered`) are its
character post-processing.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align


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
        letter_labels: the labels among ``char_labels`` that are letters (the plate's type
            letter), which :class:`lpr.models.module.MaskRCNNModule` passes from the class names.
        letter_weight: on the letters' crops, a second cross-entropy over the letter outputs
            alone, the choice the plate grammar leaves at reading time (a digit never stands
            in the letter's place), added to the loss with this weight per letter crop, each
            crop counting once in the batch's mean (``0``: none).
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
        letter_labels: Sequence[int] = (),
        letter_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if not char_labels:
            raise ValueError("char_reader needs at least one character class (single-character class names)")
        if not set(letter_labels) <= set(char_labels):
            raise ValueError(f"letter_labels {list(letter_labels)} must be among char_labels {list(char_labels)}")
        if not letter_weight >= 0:
            raise ValueError(f"char_reader.letter_weight={letter_weight} must be a number >= 0")
        if letter_weight and not letter_labels:
            raise ValueError(
                f"char_reader.letter_weight={letter_weight} trains the letters among themselves, but no character "
                "class is a letter; set it to 0"
            )
        self.register_buffer("char_labels", torch.as_tensor(list(char_labels), dtype=torch.int64), persistent=False)
        # the reader's outputs that are letters, and for each output its place among them (-1: not a letter)
        letters = [i for i, label in enumerate(char_labels) if label in letter_labels]
        self.register_buffer("letters", torch.as_tensor(letters, dtype=torch.int64), persistent=False)
        place = torch.full((len(self.char_labels) + int(background),), -1, dtype=torch.int64)
        place[self.letters] = torch.arange(len(letters))
        self.register_buffer("letter_place", place, persistent=False)
        self.size, self.context, self.jitter, self.background = size, context, jitter, background
        self.letter_weight = letter_weight
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
        ``background`` on ``negatives[i]`` (boxes of image ``i`` that are no character) as "not a character";
        with ``letter_weight``, plus the letters' crops among the letters."""
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
        logits, classes = self(images, boxes).float(), torch.cat(classes)
        loss = F.cross_entropy(logits, classes)
        if self.letter_weight:
            place = self.letter_place[classes]
            on_letters = place >= 0
            among_letters = F.cross_entropy(logits[on_letters][:, self.letters], place[on_letters], reduction="sum")
            loss = loss + self.letter_weight * among_letters / len(classes)
        return loss

    @torch.no_grad()
    def read(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All images' boxes concatenated: the label of each box's most likely character, the
        probability that it is a character at all (1 without ``background``), and ``(boxes,
        characters)`` the probability of each character (in ``char_labels`` order) if it is one."""
        probs = F.softmax(self(images, boxes).float(), -1)
        n = len(self.char_labels)
        charness = probs[:, :n].sum(1)
        chars = probs[:, :n] / charness.clamp(min=torch.finfo(probs.dtype).tiny)[:, None]
        return self.char_labels[probs[:, :n].argmax(1)], charness, chars
