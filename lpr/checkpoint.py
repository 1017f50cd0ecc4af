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
from hydra.errors import InstantiationException
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

import lpr
from lpr.instantiation import target_error
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


# The model config of lpr 0.1-0.2: build_maskrcnn took each setting as a flag. From 0.3 each part has
# its own _target_; a checkpoint of 0.1-0.2 is rebuilt from its flags mapped onto the parts (the
# weights keep their names).
FLAT_NET_KEYS = {
    "transform": {
        "min_size": "min_size",
        "max_size": "max_size",
        "train_crop": "crop",
        "soft_mask_targets": "soft_masks",
    },
    "rpn": {
        "anchor_sizes": "anchor_sizes",
        "aspect_ratios": "aspect_ratios",
        "anchor_scale": "anchor_scale",
        "rpn_pre_nms_top_n_train": "pre_nms_top_n_train",
        "rpn_post_nms_top_n_train": "post_nms_top_n_train",
        "rpn_pre_nms_top_n_test": "pre_nms_top_n_test",
        "rpn_post_nms_top_n_test": "post_nms_top_n_test",
        "rpn_batch_size_per_image": "batch_size_per_image",
    },
    "box_head": {"representation_size": "representation_size"},
    "mask_head": {
        "mask_head_layers": "layers",
        "mask_pixel_channels": "pixel_channels",
        "mask_fusion_channels": "fusion_channels",
    },
    "roi_heads": {
        "box_batch_size_per_image": "batch_size_per_image",
        "box_positive_fraction": "positive_fraction",
        "box_fg_iou_thresh": "fg_iou_thresh",
        "box_bg_iou_thresh": "bg_iou_thresh",
        "box_detections_per_img": "detections_per_img",
        "box_score_thresh": "score_thresh",
    },
}
READER_OPTIONS = ("char_nms_thresh", "char_cover_thresh", "score_weight")  # of the RoI heads, kept in char_reader


def net_as_parts(net: dict) -> dict:
    """A model config (``model.net``) of lpr 0.1-0.2, one builder taking flags, as the parts lpr builds now;
    a config in parts is returned as it is."""
    if net.get("_target_") != "lpr.models.maskrcnn.build_maskrcnn" or "rpn" in net:
        return net
    flat = copy.deepcopy(net)
    parts: dict[str, Any] = {"_target_": flat.pop("_target_")}
    backbone = flat.pop("backbone")
    backbone["_target_"] = backbone["_target_"].replace("lpr.models.maskrcnn.", "lpr.models.backbones.")
    parts["backbone"] = backbone
    targets = {
        "transform": "lpr.models.transform.DetectionTransform",
        "rpn": "lpr.models.heads.rpn",
        "box_head": "lpr.models.heads.box_branch",
        "mask_head": "lpr.models.heads.pixel_mask_branch"
        if flat.get("mask_pixel_channels")
        else "lpr.models.heads.mask_branch",
        "roi_heads": "lpr.models.roi_heads.ReadingRoIHeads",
    }
    for part, keys in FLAT_NET_KEYS.items():
        parts[part] = {"_target_": targets[part]} | ({} if part == "transform" else {"_partial_": True})
        parts[part] |= {new: flat.pop(old) for old, new in keys.items() if old in flat}
    if parts["mask_head"]["_target_"].endswith(".mask_branch"):
        parts["mask_head"] = {k: v for k, v in parts["mask_head"].items() if not k.endswith("_channels")}
    elif parts["mask_head"].get("fusion_channels") is None:
        parts["mask_head"]["fusion_channels"] = []
    pool = (
        "lpr.models.roi_align.SparseMultiScaleRoIAlign"
        if flat.pop("sparse_roi_align", True)
        else "torchvision.ops.MultiScaleRoIAlign"
    )
    for part in ("box_head", "mask_head"):
        parts[part]["roi_pool"] = {"_target_": pool, "_partial_": True}
    reader = flat.pop("char_reader", None)
    parts["char_reader"] = None
    if reader is not None:
        parts["roi_heads"] |= {k: reader.pop(k) for k in READER_OPTIONS if k in reader}
        background = bool(parts["roi_heads"].get("score_weight"))
        parts["char_reader"] = {
            "_target_": "lpr.models.char_reader.CharReader",
            "_partial_": True,
            **reader,
            "background": background,
        }
    if flat:
        raise CheckpointError(
            f"model.net options {sorted(flat)} of an lpr 0.2 checkpoint have no place in this lpr's model"
        )
    return parts


def current_hparams(hparams: dict, path: str | os.PathLike) -> dict:
    """``hparams`` of a checkpoint as this lpr builds them: without the options lpr 0.2 removed (where
    they were off), and a model config of lpr 0.1-0.2 (one builder taking flags) turned into parts.

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
    if isinstance(hparams.get("net"), dict):
        hparams["net"] = net_as_parts(hparams["net"])
    return hparams


def module_of(ckpt: dict, path: str | os.PathLike) -> MaskRCNNModule:
    """The LightningModule that checkpoint ``ckpt`` (read from ``path``) describes, its weights not loaded.

    Raises:
        CheckpointError: its model config does not build in this lpr (a key or a class of a
            newer one, or an option this one retired).
    """
    try:
        return MaskRCNNModule(**current_hparams(ckpt["hyper_parameters"], path))
    except InstantiationException as e:
        cause = target_error(e)
        if not isinstance(cause, ValueError | TypeError | ImportError):
            raise
        why = str(e).split(", set env var")[0] if isinstance(cause, ImportError) else str(cause)
        written = (ckpt["lpr"].get("versions") or {}).get("lpr", "an unknown version")
        raise CheckpointError(
            f"checkpoint {path}: its model config does not build in lpr {lpr.__version__} (it was written by "
            f"lpr {written}): {why}"
        ) from None


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model of an lpr checkpoint, with no conf/ dir and no data set.

    Args:
        path: a ``.ckpt`` written by ``lpr.train``.
        map_location: device for the weights.

    Returns:
        A :class:`LoadedCheckpoint` whose ``model`` is in eval mode.

    Raises:
        CheckpointError: the file is missing, truncated, not an lpr checkpoint, its model
            config does not build in this lpr (a key or class of a newer one), or its weights
            do not fit the model its own config describes.
    """
    ckpt = read_checkpoint(path, map_location)
    module = module_of(ckpt, path)
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
