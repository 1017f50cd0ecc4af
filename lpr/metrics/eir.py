"""EIR (exact inference rate): plates whose full text was read exactly (docs/metrics.md, EIR)."""

from __future__ import annotations

from collections.abc import Sequence

from lpr.plates import PlateReading

# Why a ground-truth plate was not read, by how far the best attempt at it got.
MISSES = {
    "board": "no board found there",
    "board_type": "found as the other board type",
    "region": "its sub or main number region, or all of a region's characters, not found",
    "too_few": "read with fewer characters than it has: a character missed",
    "too_many": "read with more characters than it has: a character found twice, or a stray one",
    "grammar": "read with as many characters as it has, that the grammar refuses (one in the other region)",
    "misread": "read in the grammar, with a character wrong",
}


def _near(p: PlateReading, g: PlateReading, width_ratio: float, height_ratio: float) -> bool:
    """``p``'s centre lies within the match distance of ground-truth plate ``g``'s."""
    gw, gh = g.box[2] - g.box[0], g.box[3] - g.box[1]
    return abs(p.center[0] - g.center[0]) < width_ratio * gw and abs(p.center[1] - g.center[1]) < height_ratio * gh


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
            dx, dy = abs(p.center[0] - g.center[0]), abs(p.center[1] - g.center[1])
            if _near(p, g, width_ratio, height_ratio) and dx * dx + dy * dy < best_d2:
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
    boards: Sequence[PlateReading] | None = None,
    width_ratio: float = 0.1,
    height_ratio: float = 0.2,
) -> list[dict]:
    """One row per readable ground-truth plate: its text, what was read there, matched or not.

    ``read`` is the matched reading's text, else the text of the nearest predicted
    reading whose centre is within the distance limits (a misread), else None.
    Given every predicted board (``boards``, valid or not: :func:`lpr.plates.read_boards`),
    a plate not matched also gets ``miss``, one of :data:`MISSES`, and when a board of its type
    was read against the grammar, that text (``read_invalid``).
    """
    gt = [b for b in ground_truth_boards if b.valid]
    matched = {j: i for i, j in match_plates(predicted, gt, width_ratio=width_ratio, height_ratio=height_ratio)}
    rows = []
    for j, g in enumerate(gt):
        row = {"type": g.type, "gt": g.text, "read": None, "matched": j in matched, "box": list(g.box)}
        if j in matched:
            row["read"] = predicted[matched[j]].text
        else:
            near = [
                (abs(p.center[0] - g.center[0]) + abs(p.center[1] - g.center[1]), p.text)
                for p in predicted
                if _near(p, g, width_ratio, height_ratio)
            ]
            row["read"] = min(near)[1] if near else None
            if boards is not None:
                row.update(_miss(g, [b for b in boards if _near(b, g, width_ratio, height_ratio)]))
        rows.append(row)
    return rows


def _miss(g: PlateReading, near: list[PlateReading]) -> dict:
    """How far the best attempt at ground-truth plate ``g`` got, among the boards ``near`` it."""
    if not near:
        return {"miss": "board"}
    same = sorted((b for b in near if b.type == g.type), key=lambda b: -b.score)
    if not same:
        return {"miss": "board_type"}
    if any(b.valid for b in same):
        return {"miss": "misread"}
    both = [b for b in same if b.sub and b.main]
    if not both:
        return {"miss": "region"}
    text = both[0].text
    cause = "too_few" if len(text) < len(g.text) else "too_many" if len(text) > len(g.text) else "grammar"
    return {"miss": cause, "read_invalid": text}


def miss_counts(rows: Sequence[dict]) -> dict[str, int]:
    """``{cause: plates}`` over :func:`plate_report` rows, every cause of :data:`MISSES` listed."""
    counts = dict.fromkeys(MISSES, 0)
    for row in rows:
        if "miss" in row:
            counts[row["miss"]] += 1
    return counts


def format_misses(counts: dict[str, int]) -> str:
    """``"not read: 20 board, 1 board_type, 5 region, 9 too_few, 2 too_many, 0 grammar, 10 misread"``."""
    return "not read: " + ", ".join(f"{counts.get(cause, 0)} {cause}" for cause in MISSES)
