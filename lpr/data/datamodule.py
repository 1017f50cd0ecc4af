"""The LightningDataModule: COCO splits, transforms, loaders, and the class list."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from lpr.data.coco import CocoInstances, collate
from lpr.data.validate import MAX_IMAGE_PIXELS, DataValidationError, class_names, load_coco_json

log = logging.getLogger(__name__)


class CocoDataModule(L.LightningDataModule):
    """Train/val splits of a COCO data set; owns ``classes`` (the one source of truth).

    Args:
        root: data set folder; the paths below are relative to it unless absolute.
        train_json: training annotations.
        val_json: validation annotations.
        image_root: folder of the training images' ``file_name``.
        val_image_root: folder of the validation images (default: ``image_root``).
        heldout_json: an optional second validation split (the synthetic set's ``val_heldout.json``,
            drawn in styles training never sees); validated after ``val_json`` and logged as
            ``val_heldout/...``. Skipped when ``None`` or when the file does not exist.
        batch_size: images per training batch (validation uses the same).
        num_workers: DataLoader worker processes.
        val_num_workers: workers of the validation loader (default: ``num_workers``).
        train_transforms: ``torchvision.transforms.v2`` transform for training.
        val_transforms: transform for validation (usually ``None``).
        synthesize: keyword arguments of :func:`lpr.data.synth.generate`
            (``train``, ``val``, ``seed``, ...). When given and ``root`` has no
            ``train_json`` yet, the synthetic set is generated there first.
        check_images: how deeply images are checked at setup
            (``"full"``, ``"header"`` or ``"none"``).
        max_image_pixels: the largest image (width x height) a split may hold; ``None``: no limit.
        allow_outside_root: read images whose ``file_name`` is absolute or leads out of their
            image root with ``..`` (refused by default).
        classes: the model's class list (a checkpoint's, when evaluating or resuming); every
            split's categories are matched to it by name, in any order and with any ids.
            ``None``: the training split's names sorted by category id, the other splits
            matched to them by name.
        shared_classes_only: with ``classes``, accept splits whose names differ from them and
            leave out the annotations of the categories the model lacks (evaluation of the
            classes both have; see ``CocoInstances``).

    Raises:
        DataValidationError: at ``setup`` when a split breaks the data contract,
            or when train and val disagree on their categories.
    """

    def __init__(
        self,
        root: str,
        *,
        train_json: str = "train.json",
        val_json: str = "val.json",
        image_root: str = "images",
        val_image_root: str | None = None,
        heldout_json: str | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
        val_num_workers: int | None = None,
        train_transforms: Callable | None = None,
        val_transforms: Callable | None = None,
        synthesize: dict | None = None,
        check_images: str = "full",
        max_image_pixels: int | None = MAX_IMAGE_PIXELS,
        allow_outside_root: bool = False,
        classes: list[str] | None = None,
        shared_classes_only: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.root = Path(root)
        self.train_json = self.root / train_json
        self.val_json = self.root / val_json
        self.image_root = self.root / image_root
        self.val_image_root = self.root / val_image_root if val_image_root else self.image_root
        self.heldout_json = self.root / heldout_json if heldout_json else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_num_workers = num_workers if val_num_workers is None else val_num_workers
        self.train_transforms = train_transforms
        self.val_transforms = val_transforms
        self.synthesize = dict(synthesize) if synthesize else None
        self.check_images = check_images
        self.max_image_pixels, self.allow_outside_root = max_image_pixels, allow_outside_root
        self.train_set: CocoInstances | None = None
        self.val_set: CocoInstances | None = None
        self.heldout_set: CocoInstances | None = None
        self._classes: list[str] | None = list(classes) if classes is not None else None
        self.shared_classes_only = shared_classes_only

    def prepare_data(self) -> None:
        """Generate the synthetic set on first use (Lightning runs this once per node)."""
        if self.synthesize is None:
            return
        if self.train_json.is_file():
            self._check_synthesized()
            return
        from lpr.data.synth import generate

        log.info("Synthetic data set not found at %s: generating it (%s)", self.root, self.synthesize)
        generate(self.root, progress=True, overwrite=False, **self.synthesize)

    def _check_synthesized(self) -> None:
        """An existing synthetic set must have been drawn with the settings asked for now."""
        stored = load_coco_json(self.train_json).get("info", {}).get("synthesize")
        if stored is None:
            return  # not written by lpr's generator: the user's own set, used as it is
        asked = {k: v for k, v in self.synthesize.items() if k in stored}
        differ = {k: (stored[k], v) for k, v in asked.items() if stored[k] != v}
        if differ:
            detail = ", ".join(f"{k}: {old!r} there, {new!r} asked" for k, (old, new) in differ.items())
            raise DataValidationError(
                f"{self.root} holds a synthetic set drawn with other settings ({detail}); set data.root "
                "(or paths.data_dir) to another folder, or remove that one to draw it anew"
            )

    @property
    def classes(self) -> list[str]:
        """The class list; label ``i + 1`` is ``classes[i]``: as given, else the training split's
        category names sorted by id."""
        if self._classes is None:
            self._classes = class_names(load_coco_json(self.train_json))
        return self._classes

    def _split(
        self, ann_file: Path, image_root: Path, transforms: Callable | None, classes: list[str] | None
    ) -> CocoInstances:
        return CocoInstances(
            ann_file,
            image_root,
            transforms,
            check_images=self.check_images,
            max_pixels=self.max_image_pixels,
            allow_outside_root=self.allow_outside_root,
            classes=classes,
            shared_classes_only=self.shared_classes_only and classes is not None,
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None) and self.train_set is None:
            self.train_set = self._split(self.train_json, self.image_root, self.train_transforms, self._classes)
            self._classes = self.train_set.classes  # the other splits are matched to it by name
        if stage in ("fit", "validate", None) and self.val_set is None:
            self.val_set = self._split(self.val_json, self.val_image_root, self.val_transforms, self.classes)
        if stage in ("fit", "validate", None) and self.heldout_set is None and self.has_heldout:
            self.heldout_set = self._split(self.heldout_json, self.val_image_root, self.val_transforms, self.classes)
        for split in (self.train_set, self.val_set, self.heldout_set):
            if split is not None and split.classes != self.classes:
                raise DataValidationError(
                    f"{split.ann_file} has categories {split.classes} but {self.train_json} has "
                    f"{self.classes}: every split must share one class list"
                )

    def _loader(self, dataset: CocoInstances | None, *, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a DataLoader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            num_workers=self.num_workers if train else self.val_num_workers,
            collate_fn=collate,
            # Training workers stay up between epochs; validation workers exit after each round, so
            # two more processes (about 1.5 GB measured) are not held through the training in between.
            persistent_workers=train and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    @property
    def has_heldout(self) -> bool:
        """Whether a held-out-style validation split is configured and present."""
        return self.heldout_json is not None and self.heldout_json.is_file()

    def split_dataloader(self, split: str = "val") -> DataLoader:
        """One validation split's loader: ``"val"`` or ``"val_heldout"`` (after ``setup("validate")``).

        Raises:
            ValueError: on another name, or ``"val_heldout"`` when the data set has no such split.
        """
        if split not in ("val", "val_heldout"):
            raise ValueError(f"split must be 'val' or 'val_heldout', got {split!r}")
        if split == "val_heldout" and self.heldout_set is None:
            raise ValueError(f"the data set at {self.root} has no held-out split (heldout_json={self.heldout_json})")
        return self._loader(self.val_set if split == "val" else self.heldout_set, train=False)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation loader, or ``[val, val_heldout]`` when the held-out split exists."""
        if self.heldout_set is None:
            return self._loader(self.val_set, train=False)
        return [self._loader(self.val_set, train=False), self._loader(self.heldout_set, train=False)]
