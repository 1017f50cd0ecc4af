"""Data: COCO instance sets, the Lightning data module, checks, and the synthetic plate generator."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["CocoDataModule", "CocoInstances", "DataValidationError", "collate"]

if TYPE_CHECKING:
    from lpr.data.coco import CocoInstances, collate
    from lpr.data.datamodule import CocoDataModule
    from lpr.data.validate import DataValidationError

_WHERE = {
    "CocoInstances": "lpr.data.coco",
    "collate": "lpr.data.coco",
    "CocoDataModule": "lpr.data.datamodule",
    "DataValidationError": "lpr.data.validate",
}


def __getattr__(name: str) -> Any:
    # Lazy: the image checks and the generator (lpr.data.validate, lpr.data.synth) do not pull in torch.
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'lpr.data' has no attribute {name!r}")
