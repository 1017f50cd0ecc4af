"""Smoke tests of the user-facing scripts: each runs as a user runs it and prints its figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from lpr.data.synth import generate

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_bench_synth_prints_images_per_second():
    out = _run(str(SCRIPTS / "bench_synth.py"), "--images", "5")
    rates = re.findall(r"(training|held-out) styles: ([0-9.]+) images/s on one core at 384x288", out)
    assert [kind for kind, _ in rates] == ["training", "held-out"] and all(float(v) > 0 for _, v in rates)


def test_learning_curve_reads_both_validation_splits(fast_run):
    out_dir, *_ = fast_run
    out = _run(str(SCRIPTS / "learning_curve.py"), str(out_dir), "--target", "0.5")
    header, *rows = out.splitlines()
    assert "EIR" in header.split() and "heldout_EIR" in header.split()
    assert len([r for r in rows if re.match(r"\s+\d+\s+[0-9.]+\s", r)]) == 2  # the two validations


def tiny_plate_data(tmp_path: Path) -> list[str]:
    """Overrides that give the scripts composing the plate recipe a tiny synthetic set of their own."""
    return [
        f"paths.data_dir={tmp_path}",
        "data.synthesize.train=16",
        "data.synthesize.val=2",
        "data.synthesize.heldout=2",
    ]


def test_char_accuracy_prints_its_table(fast_run):
    out = _run(str(SCRIPTS / "char_accuracy.py"), str(fast_run[0] / "checkpoints" / "last.ckpt"))
    assert re.search(r"^\s*all\s+\d+", out, re.MULTILINE), out


def test_char_scoring_prints_a_row_per_setting_on_a_validation_only_set(fast_run, tmp_path):
    ckpt = str(fast_run[0] / "checkpoints" / "last.ckpt")
    generate(tmp_path / "seed1", train=0, val=2, heldout=0, seed=1)  # as the choosing sets: no train.json
    args = "--nms", "0.3", "0.5", "--weight", "0.25", "--zoom", "on", "off", "--data-root", str(tmp_path / "seed1")
    out = _run(str(SCRIPTS / "char_scoring.py"), ckpt, *args)
    rows = re.findall(r"^\s*0\.[35]0?\s.*$", out, re.MULTILINE)
    zoom_grammar = [tuple(r.split()[3:6:2]) for r in rows]  # nms cover weight zoom chars grammar ...
    assert len(rows) == 8 and sorted(set(zoom_grammar)) == [(z, g) for z in ("off", "on") for g in ("off", "on")], out
    assert "2 images" in out, out
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "char_scoring.py"), ckpt, "--data-root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "no val.json there" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_predict_prints_the_ratio(fast_run):
    ckpt = str(fast_run[0] / "checkpoints" / "last.ckpt")
    out = _run(str(SCRIPTS / "bench_predict.py"), "--ckpt", ckpt, "--images", "2", "--repeats", "1")
    assert float(re.search(r"ratio predict / bare: ([0-9.]+)", out).group(1)) > 0


def test_bench_metrics_prints_both_sides():
    out = _run(str(SCRIPTS / "bench_metrics.py"), "--images", "6", "--dets", "5", "--repeats", "1")
    assert re.search(r"ratio DV\+EIR / pycocotools segm:\s+[0-9.]+", out), out


def test_bench_data_prints_milliseconds_per_batch(tmp_path):
    out = _run(str(SCRIPTS / "bench_data.py"), "--batches", "2", *tiny_plate_data(tmp_path))
    assert re.search(r"[0-9.]+ ms", out), out


def test_bench_train_prints_both_sides_and_their_ratio(tmp_path):
    args = "--steps", "3", "--warmup", "1", "--repeats", "1", *tiny_plate_data(tmp_path), "data.num_workers=0"
    out = _run(str(SCRIPTS / "bench_train.py"), *args)
    assert re.search(r"ratio lpr / bare:\s+[0-9.]+", out) and re.search(r"[0-9.]+ img/s", out), out


def test_profile_step_prints_the_parts(tmp_path):
    out = _run(str(SCRIPTS / "profile_step.py"), "--steps", "2", *tiny_plate_data(tmp_path), "data.num_workers=0")
    assert "backbone.body" in out and "rpn" in out, out


def test_gpu_check_is_valid_bash_and_runs_what_exists():
    """A parse and a check of what it calls; it runs on a GPU machine only (its CUDA steps cannot run here)."""
    script = SCRIPTS / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    root = SCRIPTS.parent
    for path in re.findall(r"(?:tests|scripts)/[a-z_]+\.py", text):
        assert (root / path).is_file(), path
    for recipe in re.findall(r"\+experiment=([a-z_]+)", text):
        assert (root / "conf" / "experiment" / f"{recipe}.yaml").is_file(), recipe
