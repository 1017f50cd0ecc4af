"""Load an lpr checkpoint: model, classes and config from the file alone."""

from __future__ import annotations

import copy
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

import lpr
from lpr.models.module import MaskRCNNModule


class CheckpointError(ValueError):
    """A file is missing, truncated, or not an lpr checkpoint."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file, then renames it into place.

    A crash or kill mid-write leaves the previous good file (e.g. ``last.ckpt``),
    never a truncated one. Remote (``scheme://``) paths use Lightning's default writer.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


@dataclass
class LoadedCheckpoint:
    """What :func:`load` returns.

    Attributes:
        model: the torchvision Mask R-CNN, in eval mode.
        module: the LightningModule around it.
        classes: class names in label order (label ``i + 1`` is ``classes[i]``).
        config: the resolved run configuration stored at training time.
        meta: the whole ``checkpoint["lpr"]`` dict (versions, monitor, created...).
        path: the file it came from.
    """

    model: nn.Module
    module: MaskRCNNModule
    classes: list[str]
    config: dict
    meta: dict
    path: Path


def _unreadable(path: Path, e: Exception) -> CheckpointError:
    reason = str(e).splitlines()[0] if str(e) else ""
    return CheckpointError(
        f"checkpoint {path} ({path.stat().st_size} bytes) cannot be read: truncated or corrupt "
        f"({type(e).__name__}: {reason}). Use another checkpoint, e.g. last.ckpt or a best file."
    )


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """``torch.load(weights_only=True)`` with errors that name the file and the problem.

    Raises:
        CheckpointError: missing, truncated/corrupt, or not an lpr checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder: give a .ckpt file in it (e.g. {path / 'last.ckpt'})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e.strerror or e}") from None
    except pickle.UnpicklingError as e:
        if "unsupported global" not in str(e).lower():  # a pickled class, not a damaged file
            raise _unreadable(path, e) from None
        raise CheckpointError(
            f"checkpoint {path} holds Python objects lpr will not unpickle (checkpoints are loaded with "
            "torch.load(weights_only=True), which runs no code from the file): it was not written by lpr.train. "
            "Use a checkpoint written by lpr.train."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise _unreadable(path, e) from None
    if not isinstance(ckpt, dict) or "lpr" not in ckpt or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not an lpr checkpoint: it lacks the 'lpr', 'state_dict' and 'hyper_parameters' keys "
            f"(found {keys}). A bare state_dict lacks the class list and model config lpr needs: "
            "use a checkpoint written by lpr.train."
        )
    return ckpt


# Options of lpr 0.1 that no recipe used, removed in 0.2 (their runs are in docs/recipe.md): where in the
# module's hyperparameters, and the value that meant "off". A 0.1 checkpoint loads when they are off.
RETIRED_OPTIONS: dict[tuple[str, ...], Any] = {
    ("net", "backbone", "stage_end"): False,
    ("net", "rpn_featmap_names"): None,
    ("net", "pixel_head"): None,
    ("net", "char_reader", "agnostic"): False,
    ("net", "char_reader", "repeats"): 1,
    ("net", "mask_pixel_context"): False,
    ("net", "mask_boundary_weight"): 1.0,
    ("net", "mask_fg_iou_thresh"): None,
    ("net", "exact_paste"): True,
    ("loss_weights",): None,
    ("lr_multipliers",): None,
}
LAST_WITH_RETIRED = "lpr 0.1.0 (git checkout fb133f6)"


def without_retired_options(hparams: dict, path: str | os.PathLike) -> dict:
    """``hparams`` of a checkpoint without the options lpr 0.2 removed, where they were off.

    Raises:
        CheckpointError: the checkpoint was trained with one of them on.
    """
    hparams = copy.deepcopy(hparams)
    for keys, off in RETIRED_OPTIONS.items():
        *parents, name = keys
        holder = hparams
        for key in parents:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if not isinstance(holder, dict) or name not in holder:
            continue
        value = holder.pop(name)
        if value != off and not (off is None and value == {}):
            option = ".".join(["model", *keys])
            raise CheckpointError(
                f"checkpoint {path} was trained with {option}={value!r}, an option lpr {lpr.__version__} no "
                f"longer has (docs/recipe.md records its runs): load it with {LAST_WITH_RETIRED}"
            )
    return hparams


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model of an lpr checkpoint, with no conf/ dir and no data set.

    Args:
        path: a ``.ckpt`` written by ``lpr.train``.
        map_location: device for the weights.

    Returns:
        A :class:`LoadedCheckpoint` whose ``model`` is in eval mode.

    Raises:
        CheckpointError: the file is missing, truncated, not an lpr checkpoint, or its
            weights do not fit the model its own config describes.
    """
    ckpt = read_checkpoint(path, map_location)
    module = MaskRCNNModule(**without_retired_options(ckpt["hyper_parameters"], path))
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: weights do not fit the model its config describes: {e}") from None
    module.eval().to(map_location)
    meta = ckpt["lpr"]
    return LoadedCheckpoint(
        model=module.model,
        module=module,
        classes=list(meta.get("classes", module.classes)),
        config=meta.get("config", {}),
        meta=meta,
        path=Path(path),
    )
