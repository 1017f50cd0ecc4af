"""labelme -> COCO conversion on a fixture made here."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np

from lpr.data import CocoInstances
from lpr.data.labelme2coco import convert, main


def _labelme(folder, name, shapes, w=50, h=40):
    cv2.imwrite(str(folder / f"{name}.png"), np.zeros((h, w, 3), np.uint8))
    (folder / f"{name}.json").write_text(
        json.dumps({"shapes": shapes, "imagePath": f"{name}.png", "imageWidth": w, "imageHeight": h})
    )


def _fixture(tmp_path):
    src = tmp_path / "labelme"
    src.mkdir()
    poly = {"label": "7", "points": [[1, 1], [10, 1], [10, 20], [1, 20]], "shape_type": "polygon"}
    rect = {"label": "l_board", "points": [[30, 30], [5, 2]], "shape_type": "rectangle"}
    circle = {"label": "7", "points": [[20, 20], [25, 20]], "shape_type": "circle"}
    for i in range(4):
        _labelme(src, f"img{i}", [poly, rect] + ([circle] if i == 0 else []))
    return src


def test_convert_polygons_rectangles_and_skips_unknown_shapes(tmp_path, caplog):
    src = _fixture(tmp_path)
    with caplog.at_level(logging.WARNING):
        out = convert(src)
    assert sum("type 'circle'" in r.message for r in caplog.records) == 1
    coco = out["train"]
    assert [c["name"] for c in coco["categories"]] == ["7", "l_board"]
    assert len(coco["images"]) == 4 and len(coco["annotations"]) == 8
    board = coco["annotations"][1]
    assert board["bbox"] == [5, 2, 25, 28] and board["segmentation"] == [[5, 2, 30, 2, 30, 30, 5, 30]]


def test_split_and_given_class_list_load_as_a_dataset(tmp_path):
    src = _fixture(tmp_path)
    main([str(src), "--out", str(tmp_path / "coco"), "--val-fraction", "0.25", "--classes", "l_board,x,7"])
    train = CocoInstances(tmp_path / "coco" / "train.json", src)
    val = CocoInstances(tmp_path / "coco" / "val.json", src)
    assert len(train) == 3 and len(val) == 1
    assert train.classes == ["l_board", "x", "7"]
    _, target = train[0]
    assert target["labels"].tolist() == [3, 1]
