"""The synthetic generator: determinism, readability of every board, styles, Hangul, held-out split, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from lpr.data.synth import HELDOUT_FACES, HELDOUT_SCHEMES, PLATE_CLASSES, SynthError, generate, main
from lpr.data.synth.fonts import builtin_faces, folder_faces, glyph, glyph_contours
from lpr.plates import read_boards, read_plates

BOARDS = (PLATE_CLASSES.index("l_board") + 1, PLATE_CLASSES.index("r_board") + 1)


def _boards(coco: dict) -> list[dict]:
    return [a for a in coco["annotations"] if a["category_id"] in BOARDS]


@pytest.fixture(scope="module")
def styled_set(tmp_path_factory) -> Path:
    """Enough plates to see every kind of style: 40 train, 4 val and 30 held-out images."""
    out = tmp_path_factory.mktemp("styled") / "plates"
    generate(out, train=40, val=4, heldout=30, seed=5)
    return out


def test_same_seed_gives_identical_json_and_images(tmp_path):
    a = generate(tmp_path / "a", train=8, val=3, seed=7)
    b = generate(tmp_path / "b", train=8, val=3, seed=7, workers=2)  # process pool: same output
    for split in ("train", "val", "val_heldout"):
        assert a[split].read_bytes() == b[split].read_bytes()
    for name in ("train/000003.jpg", "val_heldout/000002.jpg"):
        assert (a["images"] / name).read_bytes() == (b["images"] / name).read_bytes()
    c = generate(tmp_path / "c", train=8, val=3, seed=8)
    assert c["train"].read_bytes() != a["train"].read_bytes()


def test_cli_writes_the_documented_layout(tmp_path):
    main(["--out", str(tmp_path / "d"), "--train", "3", "--val", "2", "--heldout", "1", "--seed", "7"])
    train = json.loads((tmp_path / "d" / "train.json").read_text())
    assert [im["file_name"] for im in train["images"]] == ["train/000000.jpg", "train/000001.jpg", "train/000002.jpg"]
    assert [c["name"] for c in sorted(train["categories"], key=lambda c: c["id"])] == list(PLATE_CLASSES)
    heldout = json.loads((tmp_path / "d" / "val_heldout.json").read_text())
    assert [im["file_name"] for im in heldout["images"]] == ["val_heldout/000000.jpg"]


def test_every_board_reads_back_its_stored_text(styled_set):
    for split in ("train", "val", "val_heldout"):
        coco = json.loads((styled_set / f"{split}.json").read_text())
        n_boards = 0
        for image in coco["images"]:
            anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
            readings = read_boards(boxes, [a["category_id"] for a in anns], None, PLATE_CLASSES)
            stored = sorted(a["text"] for a in anns if a["category_id"] in BOARDS)
            assert sorted(r.text for r in readings) == stored
            assert all(r.valid for r in readings)
            n_boards += len(stored)
        assert n_boards > 0


def test_both_prefix_lengths_both_formats_and_the_grammar_reads_them(styled_set):
    boards = _boards(json.loads((styled_set / "train.json").read_text()))
    prefix_digits = Counter(len(b["text"]) - 5 for b in boards)  # text = prefix digits + letter + 4 digits
    assert set(prefix_digits) == {2, 3} and min(prefix_digits.values()) >= 5
    assert {b["category_id"] for b in boards} == set(BOARDS)
    # the default grammar reads "123a4567" and still refuses a 4-digit or a letterless prefix
    one_line = [
        ("l_board", [0, 0, 130, 30]),
        ("l_s_n", [2, 2, 50, 28]),
        ("l_m_n", [60, 2, 128, 28]),
    ]
    for text, ok in (("123a", True), ("12a", True), ("1234a", False), ("123", False)):
        chars = [(c, [4 + 11 * i, 5, 13 + 11 * i, 25]) for i, c in enumerate(text)]
        chars += [(c, [62 + 14 * i, 5, 74 + 14 * i, 25]) for i, c in enumerate("4567")]
        dets = one_line + chars
        labels = [PLATE_CLASSES.index(n) + 1 for n, _ in dets]
        readings = read_plates([b for _, b in dets], labels, None, PLATE_CLASSES)
        assert [r.text for r in readings] == ([text + "4567"] if ok else [])


def test_type_slot_is_drawn_as_hangul_and_latin(styled_set):
    boards = _boards(json.loads((styled_set / "train.json").read_text()))
    scripts = Counter(b["style"]["script"] for b in boards)
    assert set(scripts) == {"hangul", "upper", "lower"} and scripts.most_common(1)[0][0] == "hangul"
    faces = {f.name: f for f in builtin_faces()}
    for board in boards:
        if board["style"]["script"] == "hangul":
            assert "hangul" in faces[board["style"]["letter_face"]].scripts
    # the Hangul faces really draw the syllables: not blank, not the missing-glyph box, and each its own shape
    nanum = faces["NanumGothic"]
    missing = glyph(nanum, "\uf8ff")  # a private-use code point no font here maps: the .notdef box
    shapes = [cv2.resize(glyph(nanum, s), (32, 32)) for s in "가나다라마"]
    for shape in shapes:
        assert np.abs(shape - cv2.resize(missing, (32, 32))).mean() > 0.05
    assert min(np.abs(a - b).mean() for i, a in enumerate(shapes) for b in shapes[i + 1 :]) > 0.03


def test_heldout_split_uses_only_styles_training_never_sees(styled_set):
    train = json.loads((styled_set / "train.json").read_text())
    heldout = json.loads((styled_set / "val_heldout.json").read_text())
    assert not set(train["info"]["faces"]) & set(heldout["info"]["faces"])
    assert set(heldout["info"]["faces"]) == set(HELDOUT_FACES)
    assert set(heldout["info"]["schemes"]) == set(HELDOUT_SCHEMES)
    train_styles, heldout_styles = (
        [(b["style"]["face"], b["style"]["letter_face"], b["style"]["scheme"]) for b in _boards(coco)]
        for coco in (train, heldout)
    )
    assert heldout_styles and train_styles
    seen = {x for style in train_styles for x in style}
    for style in heldout_styles:
        assert not set(style) & seen, style
        assert style[0] in HELDOUT_FACES and style[2] in HELDOUT_SCHEMES


def test_images_match_json_and_polygons_follow_the_pixels(styled_set):
    coco = json.loads((styled_set / "train.json").read_text())
    pixels = {}
    for image in coco["images"]:
        pixels[image["id"]] = cv2.imread(str(styled_set / "images" / image["file_name"]), cv2.IMREAD_GRAYSCALE)
        assert pixels[image["id"]].shape == (image["height"], image["width"])
    boards: dict[int, list] = {}
    for ann in coco["annotations"]:
        if ann["category_id"] in BOARDS:
            boards.setdefault(ann["image_id"], []).append(ann["bbox"])
    contrasts = []
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 384 and y + h <= 288
        pts = np.concatenate([np.asarray(p).reshape(-1, 2) for p in ann["segmentation"]])
        assert len(pts) >= 3
        if ann["category_id"] > 15:
            continue
        # a character: a real outline, not a box, centred inside one of its image's boards ...
        assert len(pts) > 4
        cx, cy = x + w / 2, y + h / 2
        assert any(bx <= cx <= bx + bw and by <= cy <= by + bh for bx, by, bw, bh in boards[ann["image_id"]])
        # ... and where the ink is: inside the outline the pixels differ from the rest of its box
        mask = np.zeros((288, 384), np.uint8)
        for p in ann["segmentation"]:
            cv2.fillPoly(mask, [np.round(np.asarray(p).reshape(-1, 2)).astype(np.int32)], 1)
        box = np.zeros_like(mask)
        box[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = 1
        image = pixels[ann["image_id"]].astype(np.float64)
        if mask.sum() and (box & (1 - mask)).sum():
            contrasts.append(abs(image[mask > 0].mean() - image[(box > 0) & (mask == 0)].mean()))
    assert len(contrasts) > 50 and np.median(contrasts) > 20


def test_user_font_folder_adds_faces_and_bad_folders_are_named(tmp_path):
    faces = {f.name: f for f in builtin_faces()}
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    with pytest.raises(SynthError, match=r"fonts holds no font file"):
        folder_faces(fonts)
    (fonts / "Mine.ttf").write_bytes(Path(faces["DejaVuSans-Bold"].path).read_bytes())
    out = generate(tmp_path / "with_font", train=4, val=0, heldout=0, seed=1, fonts=str(fonts))
    assert "Mine" in json.loads(out["train"].read_text())["info"]["faces"]

    (fonts / "broken.ttf").write_bytes(b"not a font at all")
    with pytest.raises(SynthError, match=r"broken\.ttf: not a readable TrueType/OpenType font"):
        folder_faces(fonts)
    (fonts / "broken.ttf").unlink()
    symbols = Path(faces["DejaVuSans"].path).with_name("STIXSizOneSymReg.ttf")  # brackets and signs, no digits
    (fonts / "symbols.ttf").write_bytes(symbols.read_bytes())
    with pytest.raises(SynthError, match=r"symbols\.ttf: the font has no glyph for the digits"):
        folder_faces(fonts)


def test_hairline_glyphs_shrunk_to_a_line_still_get_a_mask():
    # a thin face's "0" in a 35x70 cell (Lato Thin Italic in a --fonts folder did this), then shrunk to fit
    # its board as render_plate shrinks it: what keeps half ink is specks, and the generator used to crash
    ring = np.zeros((70, 35), np.float32)
    cv2.ellipse(ring, (17, 35), (15, 33), 0, 0, 360, 1.0, 1, cv2.LINE_AA)
    ring = cv2.resize(ring, (28, 56))
    half_ink, _ = cv2.findContours((ring >= 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    assert all(cv2.contourArea(c) < 2.0 for c in half_ink)  # broken into specks that enclose nothing
    outlines = glyph_contours(ring)
    mask = np.zeros_like(ring, np.uint8)
    cv2.fillPoly(mask, [np.round(o).astype(np.int32) for o in outlines], 1)
    ink = ring >= 0.5 * ring.max()
    assert outlines and mask[ink].mean() > 0.9 and mask.sum() < 0.3 * mask.size  # the stroke, not the cell
    assert len(glyph_contours(np.zeros((6, 4), np.float32))) == 1  # no ink at all: its box


def test_cli_bad_input_one_message_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "street.jpg").write_bytes(b"no JPEG here")
    cases = [
        (["--backgrounds", str(tmp_path / "broken")], "street.jpg cannot be read as an image"),
        (["--fonts", str(tmp_path / "empty")], "holds no font file"),
        (["--backgrounds", str(tmp_path / "empty")], "holds no image"),
        (["--fonts", str(tmp_path / "nowhere")], "does not exist"),
    ]
    for extra, message in cases:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "lpr.data.synth",
                "--out",
                str(tmp_path / "o"),
                "--train",
                "2",
                "--val",
                "1",
                *extra,
            ],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*")), "nothing half-written left"


def test_backgrounds_folder_is_cropped_into_scenes(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    checker = (np.indices((120, 160)).sum(0) // 8 % 2 * 255).astype(np.uint8)
    cv2.imwrite(str(photos / "checker.png"), cv2.merge([checker] * 3))
    out = generate(tmp_path / "bg", train=3, val=0, heldout=0, seed=2, backgrounds=str(photos))
    image = cv2.imread(str(out["images"] / "train" / "000000.jpg"))
    # a checkerboard crop leaves strong edges all over the image, which the procedural scenes do not
    edges = cv2.Canny(image, 50, 150)
    assert (edges > 0).mean() > 0.05


def test_preview_writes_a_contact_sheet(tmp_path):
    main(["--preview", "6", "--out", str(tmp_path / "sheet.png"), "--seed", "3"])
    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet.shape == (2 * (288 + 4), 4 * (384 + 4), 3)  # 4 columns, 2 rows, a 2-px frame per image
    # polygons are drawn: the sheet holds the board outline colour
    assert ((sheet[..., 0] < 60) & (sheet[..., 1] > 200) & (sheet[..., 2] < 60)).sum() > 100
