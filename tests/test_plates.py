"""The plate-reading rule (docs/metrics.md, EIR) and plate matching, on hand-made detections."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lpr.data.synth import PLATE_CLASSES
from lpr.metrics.eir import MISSES, match_plates, miss_counts, plate_counts, plate_report
from lpr.plates import DEFAULT_SUB_PATTERN, PlateReading, fit_pattern, read_boards, read_plates
from lpr.results import detections_to_result

L = {name: i + 1 for i, name in enumerate(PLATE_CLASSES)}


def _chars(text: str, x0: float, y0: float, w: float = 10, h: float = 20, gap: float = 2):
    return [(c, [x0 + i * (w + gap), y0, x0 + i * (w + gap) + w, y0 + h]) for i, c in enumerate(text)]


def one_line(x0=0.0, y0=0.0, sub="12a", main="3456", board="l_board"):
    """l_board '12a 3456': sub region, gap, main region, all on one line."""
    dets = [(board, [x0, y0, x0 + 110, y0 + 30])]
    dets.append(("l_s_n", [x0 + 4, y0 + 4, x0 + 40, y0 + 26]))
    dets += _chars(sub, x0 + 5, y0 + 5)
    dets.append(("l_m_n", [x0 + 50, y0 + 4, x0 + 104, y0 + 26]))
    dets += _chars(main, x0 + 52, y0 + 5)
    return dets


def two_line(x0=0.0, y0=0.0, sub="98e", main="7654"):
    """r_board: small '98e' over big '7654'."""
    dets = [("r_board", [x0, y0, x0 + 70, y0 + 60])]
    dets.append(("r_s_n", [x0 + 15, y0 + 2, x0 + 52, y0 + 22]))
    dets += _chars(sub, x0 + 17, y0 + 3, w=10, h=18)
    dets.append(("r_m_n", [x0 + 3, y0 + 25, x0 + 67, y0 + 58]))
    dets += _chars(main, x0 + 5, y0 + 27, w=14, h=30, gap=2)
    return dets


def _read(dets, scores=None, **kw):
    boxes = [b for _, b in dets]
    labels = [L[n] for n, _ in dets]
    return read_plates(boxes, labels, scores, PLATE_CLASSES, **kw)


def test_two_line_and_one_line_plates():
    assert [(r.type, r.text, r.sub, r.main) for r in _read(two_line())] == [("r_board", "98e7654", "98e", "7654")]
    [r] = _read(one_line())
    assert (r.type, r.text) == ("l_board", "12a3456")
    assert r.box == (0.0, 0.0, 110.0, 30.0) and r.center == (55.0, 15.0) and r.score == 1.0


def test_characters_are_sorted_by_centre_x_not_detection_order():
    dets = one_line()
    dets = dets[:2] + dets[2:5][::-1] + dets[5:]
    assert _read(dets)[0].text == "12a3456"


def test_duplicate_characters_removed_by_class_agnostic_nms():
    dets = one_line()
    x1, y1, x2, y2 = dets[6][1]  # the '3'
    dets.append(("8", [x1 + 0.5, y1, x2 + 0.5, y2]))  # an overlapping '8' with a lower score
    scores = [0.9] * (len(dets) - 1) + [0.6]
    assert _read(dets, scores)[0].text == "12a3456"
    scores[-1] = 0.95  # now the '8' wins
    assert _read(dets, scores)[0].text == "12a8456"


def test_wrong_pattern_is_rejected_but_still_listed_as_a_board():
    dets = one_line(sub="1a2")
    assert _read(dets) == []
    [board] = read_boards([b for _, b in dets], [L[n] for n, _ in dets], None, PLATE_CLASSES)
    assert not board.valid and board.text == "1a23456"
    assert _read(one_line(main="345")) == []  # three digits


def _probs(dets, **override):
    """One-hot class probabilities of the character detections; ``override[i]`` = {name: p} for detection i."""
    probs = np.zeros((len(dets), len(PLATE_CLASSES)))
    for i, (name, _) in enumerate(dets):
        if len(name) == 1:
            probs[i, L[name] - 1] = 1.0
    for key, row in override.items():
        i = int(key[1:])
        probs[i] = 0.0
        for name, p in row.items():
            probs[i, L[name] - 1] = p
    return probs


def test_char_probs_read_a_type_letter_misread_as_a_digit_as_its_likeliest_letter():
    dets = one_line(sub="120")  # the type letter's first choice is '0' (detection 4)
    assert _read(dets) == []
    probs = _probs(dets, d4={"0": 0.6, "c": 0.3, "a": 0.1})
    [r] = _read(dets, char_probs=probs)
    assert (r.sub, r.main, r.text) == ("12c", "3456", "12c3456")
    # a digit's second choice, not the letter's: the letter slot holds 'a', a main digit reads 'b' first
    dets = one_line(main="34b6")
    [r] = _read(dets, char_probs=_probs(dets, d8={"b": 0.5, "8": 0.3, "6": 0.2}))
    assert r.text == "12a3486"


def test_char_probs_leave_readings_that_fit_and_regions_that_cannot_fit_as_they_are():
    dets = one_line()
    [r] = _read(dets, char_probs=_probs(dets, d4={"a": 0.4, "b": 0.35, "0": 0.25}))
    assert r.text == "12a3456"  # the first choices fit: unchanged
    dets = [*one_line(), ("7", [99, 5, 103, 25])]  # five characters in the main region: no text of 4 digits
    [board] = read_boards([b for _, b in dets], [L[n] for n, _ in dets], None, PLATE_CLASSES, char_probs=_probs(dets))
    assert not board.valid and board.main == "34567"  # read as its labels
    with pytest.raises(ValueError, match="char_probs must be"):
        _read(dets, char_probs=np.zeros((len(dets), 3)))


def test_fit_pattern_finds_the_most_probable_text_that_matches():
    alphabet = list("0123456789abcde")
    pattern = re.compile(DEFAULT_SUB_PATTERN)

    def row(**p):
        r = np.full(len(alphabet), 1e-6)
        for ch, v in p.items():
            r[alphabet.index(ch.lstrip("_"))] = v
        return r

    probs = np.stack([row(_1=0.5, a=0.45), row(_2=0.9), row(_0=0.5, b=0.3, a=0.2)])
    assert fit_pattern(probs, alphabet, pattern) == "12b"
    # the likeliest fitting text changes two positions where one change would cost more
    probs = np.stack([row(a=0.6, _7=0.4), row(_2=0.9), row(_3=0.99, d=0.01)])
    assert fit_pattern(probs, alphabet, pattern) == "72d"
    assert fit_pattern(probs[:1], alphabet, pattern) is None  # one character: no 2-3 digits and a letter
    assert fit_pattern(np.zeros((0, len(alphabet))), alphabet, pattern) is None
    assert fit_pattern(np.zeros((0, len(alphabet))), alphabet, re.compile(r"^[0-9]*$")) == ""


def test_region_of_the_other_plate_type_is_ignored():
    dets = [("r_board" if n == "l_board" else n, b) for n, b in one_line()]  # l_* regions in an r_board
    assert _read(dets) == []


def test_two_plates_in_one_image_and_a_plate_outside_any_board():
    dets = one_line() + two_line(x0=200, y0=100)
    stray = [d for d in one_line(x0=0, y0=200) if d[0] != "l_board"]  # regions and characters, no board
    texts = sorted(r.text for r in _read(dets + stray))
    assert texts == ["12a3456", "98e7654"]


def test_best_region_and_score_threshold():
    dets = one_line()
    dets.append(("l_s_n", [60, 4, 100, 26]))  # a second, wrong sub region over the main number
    scores = [0.9] * len(dets)
    scores[-1] = 0.7
    assert _read(dets, scores)[0].text == "12a3456"
    scores[-1] = 0.95
    assert _read(dets, scores) == []  # the highest-scoring sub region decides
    scores = [0.9] * len(dets)
    scores[0] = 0.4  # the board below score_thr
    assert _read(dets[:-1], scores[:-1]) == []


def _plate(text, box, score=1.0, kind="l_board"):
    return PlateReading(kind, text, text[:3], text[3:], tuple(box), score, True)


def test_matching_is_one_to_one_closest_first_by_score():
    gt = [_plate("12a3456", (0, 0, 100, 30)), _plate("12a3456", (5, 0, 105, 30))]
    pred = [_plate("12a3456", (4, 0, 104, 30), 0.6), _plate("12a3456", (1, 0, 101, 30), 0.9)]
    # the 0.9 reading goes first and takes the closest GT (index 0); the other takes index 1
    assert sorted(match_plates(pred, gt)) == [(0, 1), (1, 0)]
    assert match_plates([_plate("12a3456", (11, 0, 111, 30))], gt[:1]) == []  # |dx| 11 >= 0.1 * 100
    assert match_plates([_plate("12a3456", (0, 6, 100, 36))], gt[:1]) == []  # |dy| 6 >= 0.2 * 30
    assert match_plates([_plate("12a3456", (0, 0, 100, 30), kind="r_board")], gt[:1]) == []
    assert match_plates([_plate("12a3457", (0, 0, 100, 30))], gt[:1]) == []


def test_plate_counts_keep_unreadable_gt_boards_apart():
    gt = [
        _plate("12a3456", (0, 0, 100, 30)),
        PlateReading("l_board", "1a", "1a", "", (0, 50, 100, 80), 1.0, False),
    ]
    counts = plate_counts([_plate("12a3456", (0, 0, 100, 30))], gt)
    assert counts == {"matched": 1, "gt": 1, "pred": 1, "gt_unreadable": 1}


def _boards(dets):
    return read_boards([b for _, b in dets], [L[n] for n, _ in dets], None, PLATE_CLASSES)


def test_a_plate_not_read_is_told_why_by_how_far_its_best_attempt_got():
    # eight plates in a row, 200 px apart; what the model found of each, and why it was not read
    gt = _boards([d for k in range(8) for d in one_line(x0=200.0 * k)])
    found = [
        one_line(x0=0.0),  # read right
        [],  # nothing there
        one_line(x0=400.0, board="r_board"),  # the other type: its l_ regions are not its own
        [d for d in one_line(x0=600.0) if d[0] != "l_m_n"],  # no main region
        one_line(x0=800.0, main="345"),  # a digit missed
        [*one_line(x0=1000.0), ("7", [1099.0, 5.0, 1103.0, 25.0])],  # a stray digit at the region's right end
        one_line(x0=1200.0, main="34a6"),  # a letter for a digit (no char_probs to fit the grammar)
        one_line(x0=1400.0, main="3457"),  # a digit wrong
    ]
    boards = _boards([d for dets in found for d in dets])
    rows = plate_report([b for b in boards if b.valid], gt, boards=boards)
    assert [r["matched"] for r in rows] == [True] + [False] * 7
    assert [r.get("miss") for r in rows] == [None, *MISSES]
    assert [r.get("read_invalid") for r in rows[4:7]] == ["12a345", "12a34567", "12a34a6"]
    assert all(r["read"] is None for r in rows[4:7])
    assert rows[7]["read"] == "12a3457" and "read_invalid" not in rows[7]
    assert miss_counts(rows) == dict.fromkeys(MISSES, 1)
    assert list(miss_counts(rows[:1])) == list(MISSES) and sum(miss_counts(rows[:1]).values()) == 0
    # without the predicted boards only ``read`` says anything
    assert all("miss" not in r for r in plate_report([b for b in boards if b.valid], gt))


def test_a_plate_read_as_both_board_types_is_listed_once_by_predict_and_twice_for_eir():
    dets = one_line() + two_line(x0=200, y0=100)
    # the same plate also found as a two-line board, its regions where the one-line board's are
    dets += [("r_board", [-2.0, -2.0, 112.0, 32.0]), ("r_s_n", [4.0, 4.0, 40.0, 26.0]), ("r_m_n", [50, 4, 104, 26])]
    for r_board_score, kept in ((0.8, "l_board"), (0.95, "r_board")):
        scores = [r_board_score if n == "r_board" and b[0] < 0 else 0.9 for n, b in dets]
        assert sorted(r.type for r in _read(dets, scores)) == ["l_board", "r_board", "r_board"]  # EIR scores all
        output = {
            "boxes": np.asarray([b for _, b in dets], np.float32),
            "labels": np.asarray([L[n] for n, _ in dets]),
            "scores": np.asarray(scores, np.float32),
        }
        result = detections_to_result(output, PLATE_CLASSES, image="car.jpg", width=400, height=300)
        plates = sorted((p["text"], p["type"]) for p in result["plates"])
        assert plates == [("12a3456", kept), ("98e7654", "r_board")]
