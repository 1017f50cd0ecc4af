"""EIR (exact inference rate): plates whose full text was read exactly (docs/metrics.md, EIR)."""

from __future__ import annotations

from collections.abc import Sequence

from lpr.plates import PlateReading


def match_plates(
    predicted: Sequence[PlateReading],
    ground_truth: Sequence[PlateReading],
    *,
    width_ratio: float = 0.1,
    height_ratio: float = 0.2,
) -> list[tuple[int, int]]:
    """One-to-one matches ``(pred index, gt index)`` between plate readings of one image.

    A predicted reading qualifies for a ground-truth plate when type and text
    are equal and the centres are close: ``|dx| < width_ratio * GT width`` and
    ``|dy| < height_ratio * GT height``. Predicted readings go in descending
    board score (stable for ties), each taking the closest qualifying GT plate
    not matched yet.
    """
    order = sorted(range(len(predicted)), key=lambda i: -predicted[i].score)
    taken: set[int] = set()
    pairs = []
    for i in order:
        p = predicted[i]
        best, best_d2 = None, float("inf")
        for j, g in enumerate(ground_truth):
            if j in taken or g.type != p.type or g.text != p.text:
                continue
            gw, gh = g.box[2] - g.box[0], g.box[3] - g.box[1]
            dx, dy = abs(p.center[0] - g.center[0]), abs(p.center[1] - g.center[1])
            if dx < width_ratio * gw and dy < height_ratio * gh and dx * dx + dy * dy < best_d2:
                best, best_d2 = j, dx * dx + dy * dy
        if best is not None:
            taken.add(best)
            pairs.append((i, best))
    return pairs


def plate_counts(
    predicted: Sequence[PlateReading],
    ground_truth_boards: Sequence[PlateReading],
    *,
    width_ratio: float = 0.1,
    height_ratio: float = 0.2,
) -> dict[str, int]:
    """EIR counts of one image.

    Args:
        predicted: valid predicted readings (:func:`lpr.plates.read_plates`).
        ground_truth_boards: every ground-truth board (:func:`lpr.plates.read_boards`);
            boards that cannot be read are data problems, counted apart, not plates.

    Returns:
        ``{"matched", "gt", "pred", "gt_unreadable"}``.
    """
    gt = [b for b in ground_truth_boards if b.valid]
    pairs = match_plates(predicted, gt, width_ratio=width_ratio, height_ratio=height_ratio)
    return {
        "matched": len(pairs),
        "gt": len(gt),
        "pred": len(predicted),
        "gt_unreadable": len(ground_truth_boards) - len(gt),
    }


def plate_report(
    predicted: Sequence[PlateReading],
    ground_truth_boards: Sequence[PlateReading],
    *,
    width_ratio: float = 0.1,
    height_ratio: float = 0.2,
) -> list[dict]:
    """One row per readable ground-truth plate: its text, what was read there, matched or not.

    ``read`` is the matched reading's text, else the text of the nearest predicted
    reading whose centre is within the distance limits (a misread), else None.
    """
    gt = [b for b in ground_truth_boards if b.valid]
    matched = {j: i for i, j in match_plates(predicted, gt, width_ratio=width_ratio, height_ratio=height_ratio)}
    rows = []
    for j, g in enumerate(gt):
        if j in matched:
            read = predicted[matched[j]].text
        else:
            gw, gh = g.box[2] - g.box[0], g.box[3] - g.box[1]
            near = [
                (abs(p.center[0] - g.center[0]) + abs(p.center[1] - g.center[1]), p.text)
                for p in predicted
                if abs(p.center[0] - g.center[0]) < width_ratio * gw
                and abs(p.center[1] - g.center[1]) < height_ratio * gh
            ]
            read = min(near)[1] if near else None
        rows.append({"type": g.type, "gt": g.text, "read": read, "matched": j in matched, "box": list(g.box)})
    return rows
