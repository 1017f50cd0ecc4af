"""Fine-tuning onto a new class list: copy weights, matching class-specific head rows by NAME."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lpr.plates import is_character_class

# Class-specific parameters of torchvision's Mask R-CNN heads and the rows per class (row 0: background).
CLASS_HEADS = {
    "roi_heads.box_predictor.cls_score": 1,
    "roi_heads.box_predictor.bbox_pred": 4,
    "roi_heads.mask_predictor.mask_fcn_logits": 1,
}
# The character reader's outputs: one row per character class, in label order, no background.
CHARACTER_HEADS = {"roi_heads.reader.classifier": 1}


def _head_of(name: str) -> tuple[int, bool] | None:
    """``(rows per class, per character class)`` of a class-specific parameter, else ``None``."""
    for heads, characters in ((CLASS_HEADS, False), (CHARACTER_HEADS, True)):
        for head, rows in heads.items():
            if name.endswith(f"{head}.weight") or name.endswith(f"{head}.bias"):
                return rows, characters
    return None


def transfer_weights(
    source: dict[str, torch.Tensor],
    source_classes: Sequence[str],
    target: nn.Module,
    target_classes: Sequence[str],
) -> dict[str, list[str]]:
    """Load ``source`` weights into ``target`` whose class list may differ.

    Class-agnostic parameters are copied where names and shapes agree. In the
    class-specific heads (``cls_score``, ``bbox_pred``, mask logits), the
    background row and the rows of every class present in both lists are
    copied by class NAME; rows of new classes keep their fresh initialisation.
    The character reader's output rows (one per character class) are matched
    by name the same way.

    Args:
        source: a state dict (the module's, keys may carry a ``model.`` prefix).
        source_classes: class names of ``source`` in label order.
        target: the module to fill.
        target_classes: class names of ``target`` in label order.

    Returns:
        ``{"carried": [...], "new": [...], "dropped": [...], "skipped": [param names]}``.
    """
    src_row = {name: i + 1 for i, name in enumerate(source_classes)}
    pairs = [(0, 0)] + [(src_row[n], j + 1) for j, n in enumerate(target_classes) if n in src_row]
    src_chars = {name: i for i, name in enumerate(filter(is_character_class, source_classes))}
    char_pairs = [(src_chars[n], j) for j, n in enumerate(filter(is_character_class, target_classes)) if n in src_chars]
    state = target.state_dict()
    skipped = []
    with torch.no_grad():
        for name, dst in state.items():
            src = source.get(name)
            if src is None:
                skipped.append(name)
                continue
            head = _head_of(name)
            if head is None:
                if src.shape == dst.shape:
                    dst.copy_(src)
                else:
                    skipped.append(name)
                continue
            rows, characters = head
            for s, d in char_pairs if characters else pairs:
                dst[d * rows : (d + 1) * rows] = src[s * rows : (s + 1) * rows]
    target.load_state_dict(state)
    return {
        "carried": [n for n in target_classes if n in src_row],
        "new": [n for n in target_classes if n not in src_row],
        "dropped": [n for n in source_classes if n not in set(target_classes)],
        "skipped": skipped,
    }
