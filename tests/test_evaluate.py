"""``python -m lpr.evaluate`` on a checkpoint, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import CONF
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lpr.data.synth import PLATE_CLASSES
from lpr.data.validate import ClassMismatchError
from lpr.evaluate import evaluate_checkpoint, run
from lpr.scoring import evaluate_results

TOP_KEYS = {"mAP", "mAP_50", "segm_mAP", "segm_mAP_50", "dv_mAP", "dv_mAP_50", "dv_mAP_75", "EIR", "plate_precision"}


def test_evaluate_checkpoint_cli_writes_report_pr_curves_and_tensorboard(fast_run, tmp_path):
    out, metrics, *_ = fast_run
    report_path, tb = tmp_path / "report.json", tmp_path / "tb"
    proc = subprocess.run(
        [
            sys.executable, "-m", "lpr.evaluate",
            f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
            f"report={report_path}",
            f"log_dir={tb}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "metric            value" in proc.stdout and "l_board" in proc.stdout
    report = json.loads(report_path.read_text())
    assert set(report) >= TOP_KEYS and {"per_class", "plates"} <= set(report)
    assert list(report["per_class"]) == list(PLATE_CLASSES)
    # the checkpoint's own data config was used: the same validation set as in training
    assert report["plate_counts"]["gt"] == len(report["plates"]) > 0
    assert all({"gt", "read", "matched"} <= set(row) for row in report["plates"])
    counts = report["plate_counts"]  # why each plate was not read, in the report and the printed table
    assert sum(counts["missed"].values()) == counts["gt"] - counts["matched"]
    missed = [row for row in report["plates"] if not row["matched"]]
    assert missed and all(row["miss"] in counts["missed"] for row in missed)
    table_line = f"plates: {counts['matched']} of {counts['gt']} read; not read: {counts['missed']['board']} board"
    assert table_line in proc.stdout
    # the last checkpoint is the state that was validated last in training
    assert report["mAP"] == pytest.approx(metrics["val/mAP"], abs=1e-6)
    assert report["EIR"] == pytest.approx(metrics["val/EIR"], abs=1e-6)
    assert report["zoom"]["max_width"] == 180  # read as in training: with the recipe's second look at small boards
    pngs = list((tmp_path / "pr_curves").glob("pr_*.png"))
    assert pngs, "one PR-curve PNG per class with ground truth"
    events = list(tb.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert any(tag.startswith("pr_bbox_AP/") for tag in acc.Tags()["tensors"])


def test_evaluate_reads_in_one_pass_when_told(fast_run, tmp_path):
    report, _ = evaluate_checkpoint(str(fast_run[0] / "checkpoints" / "last.ckpt"), None, zoom=False)
    assert report["zoom"] is None and report["plate_counts"]["gt"] > 0
    proc = subprocess.run(
        [sys.executable, "-m", "lpr.evaluate", f"ckpt_path={fast_run[0] / 'checkpoints' / 'last.ckpt'}", "zoom=maybe"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "zoom='maybe': must be true or false, or null" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_evaluate_results_on_plate_data_reads_plates(synth_dir, tmp_path):
    """A results file made from the ground truth itself: every plate read, every AP 1."""
    gt = json.loads((synth_dir / "val.json").read_text())
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.99, "bbox": a["bbox"]}
        for a in gt["annotations"]
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    report = evaluate_results(str(synth_dir / "val.json"), str(path))
    assert report["mAP"] == pytest.approx(1.0)
    assert report["segm_mAP"] is None and report["dv_mAP"] is None  # boxes only
    assert report["EIR"] == 1.0 and report["plate_precision"] == 1.0


def _renumbered(src, dst, *, rename=None):
    """``src``'s val.json with its categories listed in reverse and given other ids (and ``rename``d)."""
    data = json.loads((src / "val.json").read_text())
    new_id = {c["id"]: 100 + 7 * i for i, c in enumerate(reversed(data["categories"]))}
    data["categories"] = [{**c, "id": new_id[c["id"]]} for c in reversed(data["categories"])]
    for c in data["categories"]:
        c["name"] = (rename or {}).get(c["name"], c["name"])
    for a in data["annotations"]:
        a["category_id"] = new_id[a["category_id"]]
    dst.mkdir()
    (dst / "val.json").write_text(json.dumps(data))
    (dst / "images").symlink_to(src / "images")
    return dst


def _evaluate_on(tmp_path, ckpt, root, report, *overrides, cli=False):
    """``python -m lpr.evaluate`` on a COCO set: in a subprocess (``cli``), or its task in this process."""
    args = [f"ckpt_path={ckpt}", "data=coco", f"data.root={root}", "data.val_json=val.json", f"report={report}",
            "pr_curves=false", *overrides]  # fmt: skip
    if cli:
        return subprocess.run(
            [sys.executable, "-m", "lpr.evaluate", *args], cwd=tmp_path, capture_output=True, text=True, check=False
        )
    with initialize_config_dir(CONF, version_base="1.3"):
        return run(compose("eval", overrides=args))


def test_categories_are_matched_by_name_whatever_their_order_and_ids(fast_run, synth_dir, tmp_path, capsys):
    ckpt = fast_run[0] / "checkpoints" / "last.ckpt"
    a = _evaluate_on(tmp_path, ckpt, synth_dir, tmp_path / "same.json")
    b = _evaluate_on(tmp_path, ckpt, _renumbered(synth_dir, tmp_path / "reordered"), tmp_path / "moved.json")
    assert json.loads((tmp_path / "same.json").read_text())["EIR"] == a["EIR"]  # the report written is the one returned
    assert a["plate_counts"]["gt"] > 0 and a["plate_counts"] == b["plate_counts"]
    for key in ("mAP", "segm_mAP", "dv_mAP", "EIR"):
        assert a[key] == pytest.approx(b[key], abs=1e-9), key
    assert a["per_class"] == b["per_class"]  # per class by name, the same numbers

    other = _renumbered(synth_dir, tmp_path / "other", rename={"l_board": "board"})
    proc = _evaluate_on(tmp_path, ckpt, other, tmp_path / "other.json", cli=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not among the model's ['board'], missing from the data set ['l_board']" in proc.stderr
    assert "to score only the classes both have: classes=shared" in proc.stderr
    assert not (tmp_path / "other.json").exists()

    # classes=shared: the classes both have are scored as before, the renamed one is left out
    capsys.readouterr()
    shared = _evaluate_on(tmp_path, ckpt, other, tmp_path / "shared.json", "classes=shared")
    assert shared["classes"]["not_in_model"] == ["board"] and shared["classes"]["not_in_data"] == ["l_board"]
    assert sorted(shared["classes"]["scored"]) == sorted(set(a["per_class"]) - {"l_board"})
    assert shared["per_class"]["l_board"] == {"bbox_AP": None, "segm_AP": None, "dv_AP": None}
    scored = shared["classes"]["scored"]
    assert any(shared["per_class"][c]["bbox_AP"] is not None for c in scored)  # scored where there is ground truth
    assert {c: shared["per_class"][c] for c in scored} == {c: a["per_class"][c] for c in scored}
    assert "annotations left out (not among the model's classes): ['board']" in capsys.readouterr().out

    nothing = _renumbered(synth_dir, tmp_path / "nothing", rename={c: f"x{c}" for c in a["per_class"]})
    with pytest.raises(ClassMismatchError, match="no category is among"):
        _evaluate_on(tmp_path, ckpt, nothing, tmp_path / "nothing.json", "classes=shared")
