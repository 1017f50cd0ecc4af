"""A checkpoint as an ONNX model: ``python -m lpr.export ckpt_path=CKPT output=model.onnx``.

The file holds what ``lpr.predict`` runs, in one graph: the resize and
normalisation, the detector with its masks and the character reader. Its
metadata carry the class names, the plate-reading settings and the versions, so
:class:`lpr.onnx_reader.OnnxPlateReader` (or ``python -m lpr.predict
model=model.onnx``) needs nothing else. After writing, the export is run once in
onnxruntime on synthetic scenes and compared with PyTorch.

Graph (one image, any size):

- input ``image``: float32 ``(3, H, W)``, RGB in [0, 1];
- outputs ``boxes`` ``(N, 4)`` xyxy in the input's pixels, ``labels`` ``(N,)`` int64
  (label ``i + 1`` is class ``i``), ``scores`` ``(N,)``, ``masks`` ``(N, 1, M, M)`` the
  mask head's probabilities over each box, ``scale`` ``(2,)`` the model's resize
  (resized / input height, width), which the reader needs to paste the masks, and
  ``char_probs`` ``(N, classes)`` each character's class probabilities (plate reading
  uses them where the first choices break the plate grammar).

A model that reads small boards again (``model.net.zoom``, :mod:`lpr.zoom`) is
exported as its one pass, with the zoom's settings in the metadata: the reader
runs the graph again on each window, as the PyTorch model runs itself.

It is traced with torch's TorchScript-based ONNX exporter: torchvision's
detection models are written to trace with dynamic sizes, and lpr's own heads
keep shapes dynamic (``tensor.shape`` rather than ``len``) and run their one
data-dependent loop scripted (:func:`lpr.models.char_reader.suppress_covered`).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import MultiScaleRoIAlign

import lpr
from lpr.checkpoint import CheckpointError, load
from lpr.config_check import clear_errors
from lpr.models.roi_align import SparseMultiScaleRoIAlign
from lpr.onnx_reader import FORMAT, INPUTS, OUTPUTS, OnnxModelError, OnnxPlateReader
from lpr.outputs import OutputError, write_bytes
from lpr.reader import PlateReader
from lpr.zoom import settings

log = logging.getLogger("lpr.export")


class ExportError(ValueError):
    """The export cannot be written (a missing package, an existing output, an unsupported model)."""


class InferenceGraph(nn.Module):
    """One image through a torchvision Mask R-CNN, up to the masks' paste: what the ONNX file runs.

    ``forward(image)`` with ``image`` float ``(3, H, W)`` in [0, 1] returns ``(boxes, labels, scores,
    masks, scale, char_probs)`` as listed in this module's docstring. The model's own transform, backbone, RPN
    and RoI heads run as in ``model([image])``; only the paste is left to the reader.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        original = image.shape[-2:]
        images, _ = m.transform([image])
        features = m.backbone(images.tensors)
        proposals, _ = m.rpn(images, features)
        detections, _ = m.roi_heads(features, proposals, images.image_sizes)
        d = detections[0]
        resized = images.image_sizes[0]
        scale = torch.stack(
            [torch.as_tensor(r) / torch.as_tensor(o) for r, o in zip(resized, original, strict=True)]
        ).float()
        boxes = resize_boxes(d["boxes"], resized, original)
        probs = d["char_probs"] if "char_probs" in d else d["scores"].new_zeros((d["scores"].shape[0], 0))
        return boxes, d["labels"], d["scores"], d["masks"], scale, probs


def exportable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode on the CPU with torchvision's RoIAlign pools (ONNX has that
    operator) in place of lpr's sparse ones: the same numbers, to float rounding."""
    model = copy.deepcopy(model).cpu().eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SparseMultiScaleRoIAlign):
                pool = MultiScaleRoIAlign(
                    child.featmap_names,
                    child.output_size,
                    child.sampling_ratio,
                    canonical_scale=child.canonical_scale,
                    canonical_level=child.canonical_level,
                )
                setattr(parent, name, pool)
    return model


def example_images(count: int, seed: int = 0) -> list[np.ndarray]:
    """Synthetic plate scenes (RGB uint8, 384x288): the export's trace input and its check."""
    from lpr.data.synth import render_image

    rng = np.random.default_rng(seed)
    return [np.ascontiguousarray(render_image(rng)[0][..., ::-1]) for _ in range(count)]


def to_onnx(model: nn.Module, classes: list[str], reading: dict, *, opset: int = 17, source: str = "") -> bytes:
    """The ONNX file of ``model`` (a torchvision Mask R-CNN) with lpr's metadata, as bytes.

    Raises:
        ExportError: ``onnx`` is not installed.
    """
    try:
        import onnx
    except ImportError:
        raise ExportError('exporting to ONNX needs onnx and onnxruntime: pip install -e ".[onnx]"') from None
    graph = InferenceGraph(exportable(model))
    image = torch.from_numpy(example_images(1)[0]).permute(2, 0, 1).float() / 255.0
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the tracer's notes on shapes it records as they are: expected here
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (image,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_axes={
                "image": {1: "height", 2: "width"},
                **{name: {0: "detections"} for name in ("boxes", "labels", "scores", "masks", "char_probs")},
            },
        )
    proto = onnx.load_from_string(buffer.getvalue())
    meta = {
        "lpr_format": FORMAT,
        "classes": json.dumps(classes),
        "reading": json.dumps(reading),
        "zoom": json.dumps(settings(getattr(model, "zoom", None))),
        "lpr_version": lpr.__version__,
        "torch_version": torch.__version__,
        "source": source,
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.doc_string = "lpr", "lpr plate reader: lpr.onnx_reader.OnnxPlateReader reads it"
    return proto.SerializeToString()


def compare(torch_reader: PlateReader, onnx_reader: OnnxPlateReader, images: list[np.ndarray]) -> dict:
    """How two readers (PyTorch and ONNX) agree on ``images`` (RGB uint8): plates read alike, and the
    detections matched one to one by label, box (within 1 px) and the nearest score, with the largest
    box and score differences of the matched ones (results are rounded to 0.1 px and 1e-4)."""
    same_plates = plates = detections = unmatched = 0
    box_diff = score_diff = 0.0
    for a, b in zip(torch_reader.read(images, color="rgb"), onnx_reader.read(images, color="rgb"), strict=True):
        texts_a, texts_b = sorted(p["text"] for p in a["plates"]), sorted(p["text"] for p in b["plates"])
        plates += max(len(texts_a), len(texts_b))
        same_plates += sum(min(texts_a.count(t), texts_b.count(t)) for t in set(texts_a))
        detections += max(len(a["detections"]), len(b["detections"]))
        left = list(b["detections"])
        for da in a["detections"]:
            near = [db for db in left if db["label"] == da["label"] and _box_diff(da, db) <= 1.0]
            if near:
                db = min(near, key=lambda d: abs(d["score"] - da["score"]))
                left.remove(db)
                box_diff, score_diff = max(box_diff, _box_diff(da, db)), max(score_diff, abs(da["score"] - db["score"]))
        unmatched += max(len(a["detections"]), len(b["detections"])) - (len(b["detections"]) - len(left))
    return {
        "images": len(images),
        "plates": plates,
        "same_plates": same_plates,
        "detections": detections,
        "unmatched_detections": unmatched,
        "max_box_diff": box_diff,
        "max_score_diff": score_diff,
    }


def _box_diff(a: dict, b: dict) -> float:
    return max(abs(x - y) for x, y in zip(a["box"], b["box"], strict=True))


def export(
    ckpt_path: str | Path, output: str | Path, *, opset: int = 17, overwrite: bool = False, check: int = 8
) -> dict:
    """Write ``output`` (ONNX) from the checkpoint ``ckpt_path``; with ``check`` > 0, compare it with
    PyTorch on that many synthetic scenes and return the figures of :func:`compare`.

    Raises:
        CheckpointError: the checkpoint cannot be read.
        ExportError: ``output`` exists (and not ``overwrite``), or ``onnx`` is missing.
    """
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise ExportError(f"output must be a .onnx file, got {output}")
    if output.exists() and not overwrite:
        raise ExportError(f"{output} exists: choose another output, or overwrite=true to replace it")
    loaded = load(ckpt_path)
    reading = dict(loaded.module.hparams.get("metrics", {}).get("plates", {}))
    start = time.perf_counter()
    data = to_onnx(loaded.model, loaded.classes, reading, opset=opset, source=Path(ckpt_path).name)
    write_bytes(output, data)
    result = {"output": str(output), "bytes": len(data), "seconds": time.perf_counter() - start}
    if check > 0:
        thr = reading.get("score_thr", 0.5)
        torch_reader = PlateReader(loaded.model, loaded.classes, score_thr=thr, reading=reading)
        result |= compare(torch_reader, OnnxPlateReader(output), example_images(check, seed=1))
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
@clear_errors(CheckpointError, ExportError, OnnxModelError, OutputError)
def main(cfg: DictConfig) -> None:
    r = export(cfg.ckpt_path, cfg.output, opset=cfg.opset, overwrite=cfg.overwrite, check=cfg.check)
    print(f"wrote {r['output']} ({r['bytes'] / 2**20:.1f} MiB, {r['seconds']:.1f} s)")
    if "images" in r:
        print(
            f"checked on {r['images']} synthetic scenes against PyTorch: {r['same_plates']}/{r['plates']} plates "
            f"read alike, {r['unmatched_detections']} of {r['detections']} detections unmatched, boxes within "
            f"{r['max_box_diff']:.3f} px, scores within {r['max_score_diff']:.1e}"
        )
        if r["same_plates"] != r["plates"] or r["unmatched_detections"]:
            print("warning: the export does not read as the checkpoint does", file=sys.stderr)


if __name__ == "__main__":
    main()
