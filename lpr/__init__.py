"""lpr: licence-plate reading with Mask R-CNN, on PyTorch Lightning and Hydra."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.6.6"
__all__ = ["PlateReader", "__version__"]

if TYPE_CHECKING:
    from lpr.reader import PlateReader


def __getattr__(name: str) -> Any:
    # Lazy: `import lpr` (e.g. for the data generator) does not pull in torch.
    if name == "PlateReader":
        from lpr.reader import PlateReader

        return PlateReader
    raise AttributeError(f"module 'lpr' has no attribute {name!r}")
