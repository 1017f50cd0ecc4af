"""Small boards read again, enlarged (lpr.zoom): the windows chosen, and the second pass of the PyTorch
model and of the ONNX reader, which must read a plate that one pass cannot."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import tiny_net
from hydra.utils import instantiate
from torch import nn

import lpr.onnx_reader
from lpr.data.synth import PLATE_CLASSES
from lpr.export import InferenceGraph
from lpr.models.backbones import IMAGE_KEY
from lpr.models.module import MaskRCNNModule
from lpr.reader import PlateReader
from lpr.zoom import BoardZoom

BOARDS = (PLATE_CLASSES.index("l_board") + 1, PLATE_CLASSES.index("r_board") + 1)
TEXT = "12a3456"


def test_windows_enlarge_small_boards_to_the_target_width():
    zoom = BoardZoom(BOARDS)  # the recipe's: 180 px of the model's input, made 240, image pixels 4.5x at most
    boxes = np.array(
        [
            [100, 100, 160, 115],  # 60 px: enlarged 160/60 = 2.67x
            [10, 250, 30, 258],  # 20 px, at the image's corner: 3x at most, the window kept inside the image
            [200, 20, 380, 60],  # 180 px: read well enough
            [120, 104, 150, 112],  # another board type centred inside the first: not read twice
            [300, 200, 340, 210],  # scored under min_score
            [50, 50, 90, 60],  # no board
        ],
        dtype=np.float32,
    )
    labels = np.array([BOARDS[0], BOARDS[1], BOARDS[0], BOARDS[1], BOARDS[0], 1])
    scores = np.array([0.9, 0.8, 0.99, 0.7, 0.4, 0.99])
    windows = zoom.windows(boxes, labels, scores, 384, 288, 1.5)  # the recipe enlarges 384x288 images 1.5x
    assert [board for board, _ in windows] == [0, 1]
    (x1, y1, x2, y2), (u1, v1, u2, v2) = windows[0][1], windows[1][1]
    assert (x2 - x1, y2 - y1) == (144, 108) and (x1 + x2) / 2 == pytest.approx(130, abs=1) and (y1 + y2) / 2 == 108
    assert (u2 - u1, v2 - v1) == (128, 96) and (u1, v2) == (0, 288)
    assert zoom.windows(boxes, labels, scores, 384, 288, 1.5) == windows  # deterministic
    # a 1920x1080 frame, shrunk to 0.3x: a board 300 px wide there is seen 90 px wide, enlarged 2.67x
    [(_, (x1, y1, x2, y2))] = zoom.windows(np.array([[800, 500, 1100, 560]]), BOARDS[:1], [0.9], 1920, 1080, 0.3)
    assert (x2 - x1, y2 - y1) == (720, 405)
    with pytest.raises(ValueError, match="max_width, target_width and max_scale must be > 0"):
        BoardZoom(BOARDS, max_scale=0)


def test_the_second_look_replaces_what_lies_on_its_board():
    zoom = BoardZoom(BOARDS)
    board = [100.0, 100.0, 160.0, 115.0]
    first = np.array([board, [102, 102, 108, 112], [150, 101, 159, 114], [10, 10, 20, 20]], np.float32)
    first_labels = np.array([BOARDS[0], 2, 3, 2])
    assert zoom.replaced(0, first, first_labels).tolist() == [False, True, True, False]  # the board itself stays
    second = np.array([[101, 100, 161, 116], [103, 102, 109, 112], [170, 100, 180, 110], [100, 100, 160, 115]], float)
    assert zoom.taken(board, BOARDS[0], second, np.array([BOARDS[0], 2, 2, 4])).tolist() == [1, 3]
    assert zoom.taken(board, BOARDS[1], second, np.array([BOARDS[0], 2, 2, 4])) is None  # board not found again
    assert zoom.taken(board, BOARDS[0], second + np.array([50, 0, 50, 0]), np.array([BOARDS[0], 2, 2, 4])) is None


def draw_plate(width: int = 384, height: int = 288) -> np.ndarray:
    """A gray scene with one white one-line board 64 px wide; its characters are 8 px tall squares whose
    gray level codes their class (see :class:`ShapeHeads`), sub and main number a gap apart."""
    rgb = np.full((height, width, 3), 128, np.uint8)
    x, y = 150, 120
    rgb[y : y + 14, x : x + 64] = 255
    left = x + 3
    for i, char in enumerate(TEXT):
        left += 3 if i == 3 else 0
        rgb[y + 3 : y + 11, left : left + 6] = level(PLATE_CLASSES.index(char))
        left += 8
    return rgb


def level(class_index: int) -> int:
    return 5 + 5 * class_index


class ShapeHeads(nn.Module):
    """A stand-in for the learnt RoI heads (they are tested elsewhere) that, like them, misses small
    characters: from the model's resized input it detects the white board, its sub and main regions
    (the dark runs left and right of the widest gap), and each character as tall as ``min_height``
    input pixels or more, named by its gray level."""

    def __init__(self, mean: list[float], std: list[float], min_height: int = 14) -> None:
        super().__init__()
        self.mean, self.std, self.min_height = mean[0], std[0], min_height

    def forward(self, features, proposals, image_sizes, targets=None):
        images = features[IMAGE_KEY][:, 0] * self.std + self.mean
        return [self.detect(image[:h, :w] * 255) for image, (h, w) in zip(images, image_sizes, strict=True)], {}

    def detect(self, gray: torch.Tensor) -> dict[str, torch.Tensor]:
        found: list[tuple[list[float], str, int | None]] = []
        ys, xs = torch.nonzero(gray > 230, as_tuple=True)
        if len(xs):
            x1, y1, x2, y2 = xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1
            found.append(([x1, y1, x2, y2], "l_board", None))
            dark = gray[y1:y2, x1:x2] < 100
            cols = [*dark.any(0).tolist(), False]
            runs, start = [], None
            for i, d in enumerate(cols):
                if d and start is None:
                    start = i
                elif not d and start is not None:
                    runs.append((start, i))
                    start = None
            if len(runs) >= 2:
                gaps = [runs[i + 1][0] - runs[i][1] for i in range(len(runs) - 1)]
                split = int(np.argmax(gaps)) + 1
                rows = torch.nonzero(dark.any(1)).flatten()
                top, bottom = y1 + rows.min().item(), y1 + rows.max().item() + 1
                for name, group in (("l_s_n", runs[:split]), ("l_m_n", runs[split:])):
                    found.append(([x1 + group[0][0] - 1, top - 1, x1 + group[-1][1] + 1, bottom + 1], name, None))
                for a, b in runs:
                    if bottom - top >= self.min_height:
                        value = gray[top:bottom, x1 + a : x1 + b].min().item()
                        index = int(np.clip(round((value - 5) / 5), 0, 14))
                        found.append(([x1 + a, top, x1 + b, bottom], PLATE_CLASSES[index], index))
        probs = torch.zeros(len(found), len(PLATE_CLASSES))
        for row, (_, _, index) in enumerate(found):
            if index is not None:
                probs[row, index] = 1.0
        return {
            "boxes": torch.tensor([box for box, _, _ in found], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([PLATE_CLASSES.index(name) + 1 for _, name, _ in found], dtype=torch.int64),
            "scores": torch.full((len(found),), 0.9),
            "masks": torch.ones(len(found), 1, 14, 14),
            "char_probs": probs,
        }


@pytest.fixture
def model() -> nn.Module:
    """A Mask R-CNN reading at the image's size (288 x 384), with the stand-in heads and the recipe's zoom
    as it reads a 384x288 image (the recipe enlarges those 1.5x, this model not)."""
    zoom = {"_target_": "lpr.zoom.BoardZoom", "_partial_": True, "max_width": 120, "target_width": 160, "max_scale": 3}
    net = tiny_net(transform={"min_size": 288, "max_size": 384}, zoom=zoom)
    model = instantiate(net, num_classes=len(PLATE_CLASSES) + 1, board_labels=list(BOARDS), _convert_="all")
    model.roi_heads = ShapeHeads(model.transform.image_mean, model.transform.image_std)
    return model.eval()


def test_the_model_reads_a_small_plate_on_its_second_look(model):
    rgb = draw_plate()
    reader = PlateReader(model, list(PLATE_CLASSES))
    zoom, model.zoom = model.zoom, None
    once = reader(rgb, color="rgb")
    model.zoom = zoom
    twice = reader(rgb, color="rgb")
    assert once["plates"] == [] and [d["label"] for d in once["detections"]] == ["l_board", "l_s_n", "l_m_n"]
    assert [p["text"] for p in twice["plates"]] == [TEXT]
    chars = sorted((d for d in twice["detections"] if len(d["label"]) == 1), key=lambda d: d["box"][0])
    assert "".join(d["label"] for d in chars) == TEXT
    # in the image's pixels: the drawn squares (8 px tall at y = 123), read from a 2.5x window
    assert all(abs(d["box"][1] - 123) <= 1 and abs(d["box"][3] - 131) <= 1 for d in chars)
    assert [c["box"][0] for c in chars] == pytest.approx([153, 161, 169, 180, 188, 196, 204], abs=1)
    image = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        out = model([image])[0]
    board = [d["box"] for d in once["detections"] if d["label"] == "l_board"]
    [(_, (x1, y1, x2, y2))] = model.zoom.windows(np.array(board), BOARDS[:1], [0.9], 384, 288, 1.0)
    assert (x2 - x1, y2 - y1) == (154, 116)  # 384 x 288 / 2.5: the board enlarged to 160 px
    ys, xs = torch.nonzero(out["masks"][out["labels"] <= 15].sum(0)[0] > 0, as_tuple=True)  # the characters'
    assert len(xs) and x1 <= xs.min() and xs.max() < x2 and y1 <= ys.min() and ys.max() < y2  # in the window


class GraphSession:
    """onnxruntime's session API over :class:`lpr.export.InferenceGraph` of a model, with the metadata
    an export writes: the ONNX reader's own second pass, without an export of the stand-in heads."""

    def __init__(self, model: nn.Module, zoom: BoardZoom) -> None:
        self.graph = InferenceGraph(model).eval()
        self.meta = {
            "lpr_format": lpr.onnx_reader.FORMAT,
            "classes": json.dumps(list(PLATE_CLASSES)),
            "reading": json.dumps({"score_thr": 0.5}),
            "zoom": json.dumps(dataclasses.asdict(zoom)),
        }

    def get_modelmeta(self):
        return type("Meta", (), {"custom_metadata_map": self.meta})()

    def get_inputs(self):
        return [type("Arg", (), {"name": name})() for name in lpr.onnx_reader.INPUTS]

    def get_outputs(self):
        return [type("Arg", (), {"name": name})() for name in lpr.onnx_reader.OUTPUTS]

    def run(self, names, feeds):
        with torch.no_grad():
            return [t.numpy() for t in self.graph(torch.from_numpy(feeds["image"]))]


def test_the_onnx_reader_looks_again_as_the_model_does(model, monkeypatch, tmp_path):
    monkeypatch.setattr(lpr.onnx_reader, "_session", lambda path, device: GraphSession(model, model.zoom))
    onnx_reader = lpr.onnx_reader.OnnxPlateReader(tmp_path / "model.onnx")
    torch_reader = PlateReader(model, list(PLATE_CLASSES))
    rgb = draw_plate()
    a, b = torch_reader(rgb, color="rgb"), onnx_reader(rgb, color="rgb")
    assert [p["text"] for p in b["plates"]] == [TEXT] and a["plates"] == b["plates"]
    assert [(d["label"], d["box"]) for d in a["detections"]] == [(d["label"], d["box"]) for d in b["detections"]]


def test_the_module_tells_the_zoom_which_classes_are_boards():
    net = tiny_net(zoom={"_target_": "lpr.zoom.BoardZoom", "_partial_": True, "max_width": 90})
    optimizer = {"_target_": "torch.optim.AdamW"}
    module = MaskRCNNModule(classes=["0", "r_board", "l_s_n", "l_board"], net=net, optimizer=optimizer)
    assert module.model.zoom == BoardZoom((4, 2), max_width=90)
    assert "board_labels" not in module.hparams.net  # from the class list, never from config
    with pytest.raises(ValueError, match="no board class"):
        MaskRCNNModule(classes=["0", "7"], net=net, optimizer=optimizer)
    assert MaskRCNNModule(classes=["0", "7"], net=tiny_net(), optimizer=optimizer).model.zoom is None


def test_a_reader_looks_again_as_its_model_was_trained_unless_told(fast_run, tmp_path):
    """The recipe's checkpoint looks again; ``zoom=False`` reads in one pass; a checkpoint trained without
    the zoom (as before lpr 0.5) reads in one pass unless ``zoom=True``."""
    path = fast_run[0] / "checkpoints" / "last.ckpt"
    recipe = BoardZoom(BOARDS, max_width=180, target_width=240, max_scale=4.5)
    assert PlateReader.from_checkpoint(path).model.zoom == recipe
    assert PlateReader.from_checkpoint(path, zoom=False).model.zoom is None
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    for net in (ckpt["hyper_parameters"]["net"], ckpt["lpr"]["config"]["model"]["net"]):
        del net["zoom"], net["train_zoom"]  # lpr < 0.5 had neither
    torch.save(ckpt, tmp_path / "old.ckpt")
    assert PlateReader.from_checkpoint(tmp_path / "old.ckpt").model.zoom is None
    assert PlateReader.from_checkpoint(tmp_path / "old.ckpt", zoom=True).model.zoom == BoardZoom(BOARDS)


def test_training_sees_small_boards_as_the_second_look_does():
    """``train_zoom``: an image holding a small board is replaced by the window the second look reads it on,
    with the objects mostly inside it; an image without one is trained on as it is."""
    zoom = {"_target_": "lpr.zoom.BoardZoom", "_partial_": True, "max_width": 120, "target_width": 160, "max_scale": 3}
    net = tiny_net(transform={"min_size": 288, "max_size": 384}, zoom=zoom, train_zoom=1.0)
    model = instantiate(net, num_classes=len(PLATE_CLASSES) + 1, board_labels=list(BOARDS), _convert_="all").train()
    image = torch.rand(3, 288, 384)
    boxes = torch.tensor(
        [
            [150, 120, 214, 134],  # a board 64 px wide: its window is 384 x 288 / 2.5, centred on it
            [153, 123, 159, 131],  # its first character
            [10, 10, 30, 30],  # far outside the window: dropped
            [100, 140, 108, 150],  # 3/8 of it inside (the window starts at x = 105): dropped
            [104, 150, 124, 160],  # 19/20 inside: kept, clipped
        ],
        dtype=torch.float32,
    )
    masks = torch.zeros(5, 288, 384, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist(), strict=True):
        mask[y1:y2, x1:x2] = 1
    labels = torch.tensor([BOARDS[0], PLATE_CLASSES.index("1") + 1, 1, 2, 3])
    target = {"boxes": boxes, "labels": labels, "masks": masks, "image_id": 7}
    [seen], [taught] = model.zoomed([image], [target])
    [(_, (x1, y1, x2, y2))] = model.zoom.windows(boxes.numpy(), labels.numpy(), np.ones(5), 384, 288, 1.0)
    assert (x1, y1, x2 - x1, y2 - y1) == (105, 69, 154, 116)
    assert torch.equal(seen, image[:, y1:y2, x1:x2])
    assert taught["labels"].tolist() == labels[[0, 1, 4]].tolist() and taught["image_id"] == 7
    shifted = boxes[[0, 1, 4]] - torch.tensor([x1, y1, x1, y1])
    assert torch.equal(taught["boxes"], shifted.clamp(min=0))
    assert torch.equal(taught["masks"], masks[[0, 1, 4]][:, y1:y2, x1:x2])
    large = {**target, "boxes": torch.tensor([[50, 120, 250, 160]], dtype=torch.float32), "labels": labels[:1]}
    large["masks"] = masks[:1]
    [same], [kept] = model.zoomed([image], [large])  # 200 px: read well enough, trained as it is
    assert same is image and kept is large
    losses = model([image], [target])
    assert set(losses) >= {"loss_classifier", "loss_mask"} and all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(Exception, match="which need a zoom"):  # hydra wraps the model's ValueError
        instantiate(tiny_net(train_zoom=0.5), num_classes=3, _convert_="all")
