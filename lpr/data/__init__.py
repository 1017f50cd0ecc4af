"""Data: COCO data set and validation, the data module, the synthetic generator, labelme conversion."""

from lpr.data.coco import CocoInstances, collate
from lpr.data.datamodule import CocoDataModule
from lpr.data.validate import DataValidationError

__all__ = ["CocoDataModule", "CocoInstances", "DataValidationError", "collate"]
