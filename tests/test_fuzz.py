"""Property tests: garbled COCO JSON, labelme JSON and detections either work or raise the documented error."""

from __future__ import annotations

import contextlib
import json
import re

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lpr.data.labelme2coco import convert
from lpr.data.synth import PLATE_CLASSES
from lpr.data.validate import DataValidationError, load_coco_json, validate_coco
from lpr.plates import read_boards

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 500) | st.floats(-10, 500, allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
coco_like = st.fixed_dictionaries(
    {
        "images": st.lists(
            st.fixed_dictionaries(
                {"id": st.integers(0, 3), "file_name": st.text(max_size=4), "width": json_values, "height": json_values}
            ),
            max_size=3,
        ),
        "annotations": st.lists(
            st.dictionaries(
                st.sampled_from(["id", "image_id", "category_id", "bbox", "segmentation", "iscrowd"]), json_values
            ),
            max_size=4,
        ),
        "categories": st.lists(st.dictionaries(st.sampled_from(["id", "name"]), json_values), max_size=3),
    }
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=coco_like | st.dictionaries(st.text(max_size=8), json_values, max_size=4))
def test_garbled_coco_json_raises_data_validation_error_or_passes(tmp_path, data):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    with contextlib.suppress(DataValidationError):
        validate_coco(load_coco_json(path), tmp_path, check_images="none")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40))
def test_garbled_json_text_is_a_data_validation_error(tmp_path, text):
    path = tmp_path / "ann.json"
    path.write_text(text)
    with contextlib.suppress(DataValidationError):
        load_coco_json(path)


shape = st.fixed_dictionaries(
    {
        "label": st.sampled_from(["7", "l_board", "x"]),
        "points": st.lists(st.lists(st.floats(0, 60, allow_nan=False), min_size=2, max_size=2), max_size=6),
        "shape_type": st.sampled_from(["polygon", "rectangle", "circle", "line", "point", None]),
    }
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shapes=st.lists(shape, max_size=5), width=st.integers(1, 80), height=st.integers(1, 80))
def test_labelme_converter_on_random_shapes(tmp_path, shapes, width, height):
    folder = tmp_path / "lm"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    (folder / "a.json").write_text(
        json.dumps({"shapes": shapes, "imagePath": "a.png", "imageWidth": width, "imageHeight": height})
    )
    try:
        coco = convert(folder)["train"]
    except ValueError:
        return
    for ann in coco["annotations"]:
        assert len(ann["segmentation"][0]) >= 6 and len(ann["bbox"]) == 4


boxes = st.lists(st.tuples(*[st.floats(0, 400, allow_nan=False)] * 4), max_size=30)


@settings(max_examples=200, deadline=None)
@given(boxes=boxes, data=st.data())
def test_read_plates_never_crashes_on_random_detections(boxes, data):
    n = len(boxes)
    labels = data.draw(st.lists(st.integers(1, len(PLATE_CLASSES)), min_size=n, max_size=n))
    scores = data.draw(st.lists(st.floats(0, 1, allow_nan=False), min_size=n, max_size=n))
    xyxy = [[min(a, c), min(b, d), max(a, c), max(b, d)] for a, b, c, d in boxes]
    readings = read_boards(np.asarray(xyxy).reshape(-1, 4), labels, scores, PLATE_CLASSES)
    assert len(readings) <= sum(PLATE_CLASSES[lab - 1].endswith("board") for lab in labels)
    for r in readings:
        assert r.text == r.sub + r.main
        if r.valid:
            assert re.fullmatch(r"[0-9]{2,3}[a-e]", r.sub) and re.fullmatch(r"[0-9]{4}", r.main)
