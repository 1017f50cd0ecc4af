"""lpr: licence-plate reading with Mask R-CNN, on PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
