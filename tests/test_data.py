"""The COCO data layer: dataset contract, polygons and RLE, negatives, validation errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import write_coco
from pycocotools import mask as mask_utils
from torchvision.transforms import v2

from lpr.data import CocoDataModule, CocoInstances, DataValidationError
from lpr.data.synth import PLATE_CLASSES

CATS = [{"id": 7, "name": "b"}, {"id": 3, "name": "a"}]  # ids out of order on purpose


def _square(x, y, s):
    return [x, y, x + s, y, x + s, y + s, x, y + s]


def _tiny_set(tmp_path, **overrides):
    images = [
        {"id": 1, "file_name": "one.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "two.png", "width": 40, "height": 30},  # a negative
    ]
    rle = mask_utils.encode(np.asfortranarray(np.pad(np.ones((5, 6), np.uint8), ((20, 5), (30, 4)))))
    rle["counts"] = rle["counts"].decode()
    annotations = [
        {
            "id": 10,
            "image_id": 1,
            "category_id": 3,
            "segmentation": [_square(2, 3, 10)],
            "bbox": [2, 3, 10, 10],
            "area": 100,
            "iscrowd": 0,
        },
        {
            "id": 11,
            "image_id": 1,
            "category_id": 7,
            "segmentation": rle,
            "bbox": [30, 20, 6, 5],
            "area": 30,
            "iscrowd": 0,
        },
    ]
    data = {"images": images, "annotations": annotations, "categories": CATS}
    for fn in overrides.values():
        fn(data)
    return write_coco(tmp_path, data["images"], data["annotations"], data["categories"])


def test_dataset_contract_polygon_rle_and_negative(tmp_path):
    ds = CocoInstances(_tiny_set(tmp_path), tmp_path)
    assert ds.classes == ["a", "b"]  # sorted by category id
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 30, 40)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert target["boxes"].dtype == torch.float32
    assert target["boxes"].tolist() == [[2, 3, 12, 13], [30, 20, 36, 25]]  # xywh -> xyxy
    assert target["labels"].tolist() == [1, 2]  # category 3 -> "a" -> 1, category 7 -> "b" -> 2
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (2, 30, 40)
    assert int(target["masks"][1].sum()) == 30  # the RLE block, exactly
    assert target["masks"][1, 20:25, 30:36].all()
    assert 90 <= int(target["masks"][0].sum()) <= 121  # polygon rasterised the COCO way
    assert target["image_id"] == 1
    _, negative = ds[1]
    assert negative["boxes"].shape == (0, 4) and negative["labels"].shape == (0,)
    assert negative["masks"].shape == (0, 30, 40)


def test_transforms_move_boxes_and_masks_together(synth_dir):
    shift = v2.RandomAffine(degrees=0, translate=(0.2, 0.2), scale=(0.8, 1.2))
    ds = CocoInstances(synth_dir / "train.json", synth_dir / "images", v2.Compose([shift, v2.SanitizeBoundingBoxes()]))
    torch.manual_seed(0)
    for i in range(4):
        _, target = ds[i]
        for box, mask in zip(target["boxes"], target["masks"], strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            if len(xs) < 10:
                continue
            # the mask of every instance still sits inside (a slightly widened) box after the transform
            assert xs.min() >= box[0] - 2 and xs.max() <= box[2] + 2
            assert ys.min() >= box[1] - 2 and ys.max() <= box[3] + 2


def _fail(tmp_path, match, **overrides):
    with pytest.raises(DataValidationError, match=match):
        CocoInstances(_tiny_set(tmp_path, **overrides), tmp_path)


def test_missing_image(tmp_path):
    path = _tiny_set(tmp_path)
    (tmp_path / "two.png").unlink()
    with pytest.raises(DataValidationError, match=r"two\.png does not exist"):
        CocoInstances(path, tmp_path)


def test_unreadable_image(tmp_path):
    path = _tiny_set(tmp_path)
    (tmp_path / "one.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataValidationError, match=r"one\.png cannot be decoded"):
        CocoInstances(path, tmp_path)


def test_truncated_jpeg(tmp_path, synth_dir):
    path = _tiny_set(tmp_path)
    jpeg = (synth_dir / "images" / "train" / "000000.jpg").read_bytes()
    cv2.imwrite(str(tmp_path / "one.png"), np.zeros((30, 40, 3), np.uint8))
    data = json.loads(path.read_text())
    data["images"][1]["file_name"] = "cut.jpg"
    data["images"][1].update(width=384, height=288)
    path.write_text(json.dumps(data))
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # OpenCV alone would decode this
    with pytest.raises(DataValidationError, match=r"cut\.jpg is a truncated JPEG"):
        CocoInstances(path, tmp_path)


def test_image_size_differs_from_json(tmp_path):
    path = _tiny_set(tmp_path)
    cv2.imwrite(str(tmp_path / "two.png"), np.zeros((30, 41, 3), np.uint8))
    with pytest.raises(DataValidationError, match=r"two\.png is 41x30 but the JSON says 40x30"):
        CocoInstances(path, tmp_path)


def test_polygon_with_two_points(tmp_path):
    _fail(
        tmp_path,
        r"annotation 10: polygon with 2\.0 points",
        poly=lambda d: d["annotations"][0].update(segmentation=[[1, 1, 5, 5]]),
    )


def test_box_outside_image(tmp_path):
    _fail(
        tmp_path,
        r"annotation 10 \(one\.png\): box \[35, 3, 10, 10\] lies outside the 40x30 image",
        box=lambda d: d["annotations"][0].update(bbox=[35, 3, 10, 10]),
    )


def test_unknown_category(tmp_path):
    _fail(
        tmp_path,
        r"annotation 11 \(one\.png\): unknown category id 99",
        cat=lambda d: d["annotations"][1].update(category_id=99),
    )


def test_empty_split(tmp_path):
    _fail(tmp_path, r"the split is empty", empty=lambda d: (d["images"].clear(), d["annotations"].clear()))


def test_duplicate_ids(tmp_path):
    _fail(tmp_path, r"duplicate annotation ids: \[10\]", dup=lambda d: d["annotations"][1].update(id=10))
    _fail(tmp_path, r"duplicate image ids: \[1\]", dupi=lambda d: d["images"][1].update(id=1))


def test_json_syntax_error_names_line_and_column(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(DataValidationError, match=r"bad\.json is not valid JSON: .* line 2, column 12"):
        CocoInstances(bad, tmp_path)


def test_all_problems_listed_in_one_error(tmp_path):
    def two_problems(d):
        d["annotations"][0]["category_id"] = 99
        d["annotations"][1]["bbox"] = [-5, 0, 3, 3]

    with pytest.raises(DataValidationError, match=r"2 problem\(s\)") as err:
        CocoInstances(_tiny_set(tmp_path, two=two_problems), tmp_path)
    assert "unknown category id 99" in str(err.value) and "lies outside" in str(err.value)


def test_datamodule_synthesises_on_first_use_and_owns_classes(tmp_path):
    root = tmp_path / "synth"
    dm = CocoDataModule(str(root), batch_size=2, synthesize={"train": 4, "val": 2, "seed": 1})
    dm.prepare_data()
    assert (root / "train.json").is_file() and (root / "images" / "val" / "000001.jpg").is_file()
    dm.setup("fit")
    assert dm.classes == list(PLATE_CLASSES)
    images, targets = next(iter(dm.train_dataloader()))
    assert len(images) == len(targets) == 2
    assert all(t["labels"].max() <= len(dm.classes) for t in targets if len(t["labels"]))


def test_datamodule_validates_on_the_heldout_split_too_and_refuses_a_set_drawn_otherwise(tmp_path):
    root = tmp_path / "synth"
    asked = {"train": 2, "val": 2, "heldout": 3, "seed": 1}
    dm = CocoDataModule(str(root), batch_size=2, heldout_json="val_heldout.json", synthesize=asked)
    dm.prepare_data()
    dm.setup("fit")
    val, heldout = dm.val_dataloader()
    assert len(val.dataset) == 2 and len(heldout.dataset) == 3
    assert heldout.dataset.ann_file == root / "val_heldout.json"
    # without the file (a COCO set of one's own) there is one validation loader
    plain = CocoDataModule(str(root), batch_size=2, heldout_json="missing.json")
    plain.setup("fit")
    assert len(plain.val_dataloader().dataset) == 2
    # the folder's set was drawn with seed 1: asking for seed 2 there is refused, the set is kept
    before = (root / "train.json").read_bytes()
    other = CocoDataModule(str(root), heldout_json="val_heldout.json", synthesize={**asked, "seed": 2})
    with pytest.raises(DataValidationError, match=r"drawn with other settings \(seed: 1 there, 2 asked\)"):
        other.prepare_data()
    assert (root / "train.json").read_bytes() == before


def test_datamodule_rejects_splits_with_different_classes(tmp_path, synth_dir):
    val = json.loads((synth_dir / "val.json").read_text())
    val["categories"] = val["categories"][:-1]
    val["annotations"] = [a for a in val["annotations"] if a["category_id"] <= len(val["categories"])]
    (tmp_path / "val.json").write_text(json.dumps(val))
    dm = CocoDataModule(str(synth_dir), val_json=str(tmp_path / "val.json"))
    with pytest.raises(DataValidationError, match=r"val\.json: the categories differ from the model's classes .* "
                       r"not among the model's \[\], missing from the data set \['r_m_n'\]"):  # fmt: skip
        dm.setup("fit")
