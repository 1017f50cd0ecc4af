"""A COCO instances data set in the torchvision detection contract."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from lpr.data.validate import (
    MAX_IMAGE_PIXELS,
    bbox_xywh_to_xyxy,
    class_names,
    load_coco_json,
    match_classes,
    read_image_bgr,
    validate_coco,
)

log = logging.getLogger(__name__)


def decode_segmentation(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons or RLE the COCO way: a ``(height, width)`` uint8 mask."""
    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as an RGB uint8 ``(H, W, 3)`` array.

    Raises:
        OSError: the file is missing, empty, a truncated JPEG, or cannot be decoded.
    """
    return cv2.cvtColor(read_image_bgr(path), cv2.COLOR_BGR2RGB)


class CocoInstances(Dataset):
    """Images and instance annotations from a COCO JSON file.

    Each item is ``(image, target)``: ``image`` a float ``(3, H, W)`` tensor in
    [0, 1]; ``target`` a dict with ``boxes`` (``(N, 4)`` float xyxy pixels),
    ``labels`` (``(N,)`` int64 in ``1..len(classes)``), ``masks`` (``(N, H, W)``
    uint8), ``iscrowd`` (``(N,)`` bool) and ``image_id`` (int). Crowd regions
    are kept for evaluation (they are "ignore" areas) and dropped from the
    losses by the model; images with no annotations are kept as negatives.

    Args:
        ann_file: COCO instances JSON (polygons or RLE).
        image_root: folder the ``file_name`` of each image is relative to.
        transforms: a ``torchvision.transforms.v2`` transform applied to
            ``(tv_tensors.Image, target)``; ``None`` for none.
        check_images, max_pixels, allow_outside_root: passed to
            :func:`lpr.data.validate.validate_coco`.
        classes: the model's class list; the categories are matched to it by name, in any order
            and with any ids (label ``i + 1`` is ``classes[i]``). ``None``: the category names
            sorted by id.
        shared_classes_only: with ``classes``, accept a data set whose names differ from them:
            the annotations of categories the model lacks are left out (``unscored_categories``),
            and the model's classes the data set lacks simply have no ground truth.

    Raises:
        DataValidationError: the JSON or the images break the contract (see
            :func:`lpr.data.validate.validate_coco`).
        ClassMismatchError: the names differ from ``classes`` (with ``shared_classes_only``: share none).
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_root: str | Path,
        transforms: Callable | None = None,
        *,
        check_images: str = "full",
        max_pixels: int | None = MAX_IMAGE_PIXELS,
        allow_outside_root: bool = False,
        classes: list[str] | None = None,
        shared_classes_only: bool = False,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_root = Path(image_root)
        self.transforms = transforms
        self.coco = load_coco_json(self.ann_file)
        validate_coco(
            self.coco,
            self.image_root,
            source=str(self.ann_file),
            check_images=check_images,
            max_pixels=max_pixels,
            allow_outside_root=allow_outside_root,
        )
        names = class_names(self.coco)
        self.unscored_categories: list[str] = []  # with shared_classes_only: names the model lacks
        if classes is not None:
            self.unscored_categories = match_classes(
                names, list(classes), str(self.ann_file), shared_only=shared_classes_only
            )
        self.classes = list(classes) if classes is not None else names
        label = {name: i + 1 for i, name in enumerate(self.classes)}
        self._label_of = {c["id"]: label[c["name"]] for c in self.coco["categories"] if c["name"] in label}
        self.images = self.coco["images"]
        self._anns: dict[int, list[dict]] = defaultdict(list)
        for ann in self.coco["annotations"]:
            if ann["category_id"] in self._label_of:
                self._anns[ann["image_id"]].append(ann)

    def __len__(self) -> int:
        return len(self.images)

    def annotations(self, index: int) -> list[dict]:
        """The raw COCO annotations of image ``index`` (crowd ones included)."""
        return self._anns.get(self.images[index]["id"], [])

    def load_target(self, index: int) -> dict[str, Any]:
        """The target of image ``index`` as tv_tensors, before transforms."""
        info = self.images[index]
        h, w = info["height"], info["width"]
        anns = self.annotations(index)
        masks = np.zeros((len(anns), h, w), dtype=np.uint8)
        for i, ann in enumerate(anns):
            masks[i] = decode_segmentation(ann["segmentation"], h, w)
        boxes = bbox_xywh_to_xyxy([a["bbox"] for a in anns])
        return {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=(h, w)),
            "labels": torch.tensor([self._label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "iscrowd": torch.tensor([bool(a.get("iscrowd", 0)) for a in anns], dtype=torch.bool),
            "image_id": int(info["id"]),
        }

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]] | None:
        """``(image, target)``; None (and a warning) for an image that became unreadable after
        the setup check (changed or damaged on disk): :func:`collate` leaves it out."""
        info = self.images[index]
        try:
            array = read_image_rgb(self.image_root / info["file_name"])
        except OSError as e:
            log.warning("skipping image %s: %s", info["file_name"], e)
            return None
        image = tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1))
        target = self.load_target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        if not image.is_floating_point():
            image = F.to_dtype(image, torch.float32, scale=True)
        # Plain tensors from here on: the model and collate need no tv_tensors behaviour.
        target = {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in target.items()}
        return image.as_subclass(torch.Tensor), target


class ImageList(list):
    """The images of a batch; ``skipped`` counts the unreadable ones left out of it."""

    skipped: int = 0


def collate(batch: list[tuple[torch.Tensor, dict] | None]) -> tuple[list[torch.Tensor], list[dict]] | None:
    """Detection batches are lists: images may differ in size, targets in instance count.

    Unreadable items (None) are left out and counted in ``images.skipped``; a batch with
    nothing left is None, which Lightning skips.
    """
    kept = [item for item in batch if item is not None]
    if not kept:
        return None
    images = ImageList(image for image, _ in kept)
    images.skipped = len(batch) - len(kept)
    return images, [target for _, target in kept]
