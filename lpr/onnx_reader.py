"""Reading plates with an ONNX export of a checkpoint, on onnxruntime, without PyTorch.

``python -m lpr.export ckpt_path=CKPT output=model.onnx`` writes the file; its
metadata carry the class names and the plate-reading settings, so the file alone
is enough::

    from lpr.onnx_reader import OnnxPlateReader      # or lpr.PlateReader.from_onnx
    reader = OnnxPlateReader("model.onnx")
    reader("car.jpg")["plates"]

The graph (see :mod:`lpr.export`) takes one RGB image, float ``(3, H, W)`` in
[0, 1], and returns the detections in its pixels with the masks as the model's
``M x M`` box masks; this module pastes them into the image the way the PyTorch
model does (:mod:`lpr.models.paste`) and shares everything after that with
:class:`lpr.reader.PlateReader` (:mod:`lpr.results`). Needs ``onnxruntime``
(``pip install -e ".[onnx]"``); torch is not imported.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lpr.results import ReaderBase
from lpr.zoom import BoardZoom, with_zoom

FORMAT = "lpr-onnx/1"  # metadata "lpr_format" of an export this module reads
INPUTS = ("image",)
OUTPUTS = ("boxes", "labels", "scores", "masks", "scale", "char_probs")
# exports from lpr < 0.4 have no char_probs: their plates are read from the labels alone
OUTPUTS_WITHOUT_PROBS = OUTPUTS[:-1]


class OnnxModelError(ValueError):
    """A file is missing, truncated, not an lpr export, or one onnxruntime cannot run."""


def _interpolation_weights(lo: np.ndarray, length: np.ndarray, size: int, cells: int, scale: float) -> np.ndarray:
    """``(N, size, cells)`` bilinear weights of the mask cells along one image axis (lpr.models.paste)."""
    j = np.arange(size, dtype=np.float32)
    u = (j[None, :] + 0.5 - 0.5 / scale - lo[:, None]) * cells / np.maximum(length, 1e-6)[:, None] - 0.5
    i = np.arange(cells, dtype=np.float32)
    return np.clip(1.0 - np.abs(u[:, :, None] - i[None, None, :]), 0.0, None)


def paste_masks(masks: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int], scale: np.ndarray) -> np.ndarray:
    """Soft ``(N, 1, H, W)`` image masks from ``(N, 1, M, M)`` box masks, as :func:`lpr.models.paste.paste_masks`.

    Args:
        masks: the mask head's probabilities.
        boxes: ``(N, 4)`` xyxy boxes in image pixels.
        image_size: ``(H, W)``.
        scale: ``(sy, sx)``, the model's resize (resized / original).
    """
    h, w = image_size
    out = np.zeros((len(masks), 1, h, w), np.float32)
    if len(masks) == 0:
        return out
    m = masks.shape[-1]
    boxes = boxes.astype(np.float32)
    wy = _interpolation_weights(boxes[:, 1], boxes[:, 3] - boxes[:, 1], h, m, float(scale[0]))
    wx = _interpolation_weights(boxes[:, 0], boxes[:, 2] - boxes[:, 0], w, m, float(scale[1]))
    # each mask only where its weights are not zero (about its box): the same numbers, a fraction of the work
    for n, (rows, cols) in enumerate(zip(wy.any(-1), wx.any(-1), strict=True)):
        (r,), (c,) = np.nonzero(rows), np.nonzero(cols)
        if len(r) and len(c):
            r0, r1, c0, c1 = r[0], r[-1] + 1, c[0], c[-1] + 1
            out[n, 0, r0:r1, c0:c1] = wy[n, r0:r1] @ masks[n, 0].astype(np.float32) @ wx[n, c0:c1].T
    return out


def _session(path: Path, device: str):
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxModelError('reading an ONNX model needs onnxruntime: pip install -e ".[onnx]"') from None
    available = ort.get_available_providers()
    if device == "cpu":
        providers = ["CPUExecutionProvider"]
    elif device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise OnnxModelError(
                f"device={device}: this onnxruntime has no CUDA provider (it has {', '.join(available)}); "
                "install onnxruntime-gpu, or use device=cpu"
            )
        index = int(device.partition(":")[2] or 0)
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    else:
        raise OnnxModelError(f"device must be cpu or cuda[:N] for an ONNX model, got {device!r}")
    if not path.is_file():
        raise OnnxModelError(f"ONNX model {path} does not exist" if not path.exists() else f"{path} is not a file")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the reasons below say what went wrong
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime's own error types, by what they say
        text = str(e)
        if "opset" in text.lower() or "not implemented" in text.lower():
            sentences = re.split(r"(?<=\.)\s+", text.rpartition(" failed:")[2] or text)
            said = [s for s in sentences if "::" not in s and ("opset" in s.lower() or "implemented" in s)]
            said = " ".join(said) or text
            why = f"uses operators this onnxruntime {ort.__version__} cannot run (upgrade onnxruntime): {said.strip()}"
        elif "protobuf" in text.lower() or "parse" in text.lower():
            why = "is not a complete ONNX file (truncated or corrupt)"
        else:
            why = f"cannot be loaded by onnxruntime {ort.__version__}: {text}"
        raise OnnxModelError(f"ONNX model {path} {why}") from None


class OnnxPlateReader(ReaderBase):
    """:class:`lpr.reader.PlateReader`'s API on an ONNX export, run by onnxruntime.

    Args:
        path: the ``.onnx`` file written by ``python -m lpr.export``.
        device: ``"cpu"``, or ``"cuda"`` / ``"cuda:N"`` with onnxruntime-gpu.
        score_thr: detections below it are dropped; ``None``: the threshold stored at export.
        max_side: larger images are downscaled to this longest side first.
        roi: ``(x, y, width, height)``: read only this region of every image.
        zoom: ``None`` reads small boards again as the exported model was configured
            (:mod:`lpr.zoom`), ``True`` also with a model configured without it, ``False`` in one pass.

    Raises:
        OnnxModelError: the file is missing, truncated, not an lpr export, or not runnable here.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: str = "cpu",
        score_thr: float | None = None,
        max_side: int = 2048,
        roi: Sequence[int] | None = None,
        zoom: bool | None = None,
    ) -> None:
        self.path = Path(path)
        self.session = _session(self.path, str(device))
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("lpr_format") != FORMAT:
            found = f"format {meta['lpr_format']!r}" if "lpr_format" in meta else "no lpr metadata"
            raise OnnxModelError(
                f"ONNX model {self.path} is not an lpr export ({found}; this lpr reads {FORMAT!r}): "
                "write one with python -m lpr.export ckpt_path=CKPT output=model.onnx"
            )
        names = [i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()]
        if names[0] != list(INPUTS) or names[1] not in (list(OUTPUTS), list(OUTPUTS_WITHOUT_PROBS)):
            raise OnnxModelError(f"ONNX model {self.path} has inputs {names[0]} and outputs {names[1]}, "
                                 f"not an lpr export's {list(INPUTS)} and {list(OUTPUTS)}")  # fmt: skip
        self.meta, self.outputs = meta, names[1]
        stored = json.loads(meta.get("zoom", "null"))  # exports from lpr < 0.5 read in one pass
        classes = json.loads(meta["classes"])
        self.zoom = with_zoom(None if stored is None else BoardZoom(**stored), classes, zoom)
        reading = json.loads(meta["reading"])
        thr = score_thr if score_thr is not None else reading.get("score_thr", 0.5)
        super().__init__(classes, score_thr=thr, reading=reading, max_side=max_side, roi=roi)

    def detect(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Detections of RGB uint8 images, one run each (and one for each board read again, see
        :mod:`lpr.zoom`); masks pasted for the boxes at ``score_thr`` or above (the others are not read)."""
        outputs = []
        for rgb in images:
            first = self._run(rgb)
            keep, parts = np.ones(len(first["scores"]), bool), []
            height, width = rgb.shape[:2]
            windows = (
                []
                if self.zoom is None
                else self.zoom.windows(
                    first["boxes"], first["labels"], first["scores"], width, height, float(first["scale"].min())
                )
            )
            for board, window in windows:
                look = self._look_again(rgb, first, board, window)
                if look is not None:  # None: the second look did not find the board, the first reading stays
                    keep &= look[0]
                    parts.append(look[1])
            out = self._kept(first, keep, (height, width))
            if parts:
                out = {k: np.concatenate([v, *(p[k] for p in parts)]) for k, v in out.items()}
                order = np.argsort(-out["scores"], kind="stable")
                out = {k: v[order] for k, v in out.items()}
            if "char_probs" in out and out["char_probs"].shape[1] == 0:  # a model without a character reader
                del out["char_probs"]
            outputs.append(out)
        return outputs

    def _look_again(
        self, rgb: np.ndarray, first: dict[str, np.ndarray], board: int, window: tuple[int, int, int, int]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
        """The graph run on ``window`` of ``rgb`` around the first run's ``board``: which of the first
        run's detections to keep, and the second's that take the others' place (in ``rgb``'s pixels,
        masks pasted); ``None`` when the second run does not find the board."""
        x1, y1, x2, y2 = window
        second = self._run(np.ascontiguousarray(rgb[y1:y2, x1:x2]))
        offset = np.asarray([x1, y1, x1, y1], second["boxes"].dtype)
        take = self.zoom.taken(
            first["boxes"][board], int(first["labels"][board]), second["boxes"] + offset, second["labels"]
        )
        if take is None:
            return None
        part = self._kept(second, np.isin(np.arange(len(second["labels"])), take), (y2 - y1, x2 - x1))
        full = np.zeros((*part["masks"].shape[:-2], *rgb.shape[:2]), np.float32)
        full[..., y1:y2, x1:x2] = part["masks"]
        return ~self.zoom.replaced(board, first["boxes"], first["labels"]), {
            **part,
            "boxes": part["boxes"] + offset,
            "masks": full,
        }

    def _run(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's outputs for one RGB uint8 image."""
        x = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)
        return dict(zip(self.outputs, self.session.run(self.outputs, {"image": x}), strict=True))

    def _kept(self, out: dict[str, np.ndarray], rows: np.ndarray, size: tuple[int, int]) -> dict[str, np.ndarray]:
        """The detections ``rows`` of one run at ``score_thr`` or above, masks pasted into an image of ``size``."""
        rows = rows & (out["scores"] >= self.score_thr)
        kept = {k: v[rows] for k, v in out.items() if k != "scale"}
        kept["masks"] = paste_masks(kept["masks"], kept["boxes"], size, out["scale"])
        return kept
