"""Bad or odd input through the real command lines: one message naming the problem, exit code 2
(1 when some inputs of a batch failed, 130/143 for a stopped run), no traceback, and nothing a user
made lost or overwritten."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities import rank_zero_only

from lpr.config_check import RUN_CLAIM, RunFolderInUse, check_output_dir, claim_run_folder
from lpr.data.validate import DataValidationError, load_coco_json, validate_coco


class Pickled:
    """An object ``torch.load(weights_only=True)`` refuses to rebuild."""


def _cli(tmp_path: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip


def _coco_copy(tmp_path: Path, synth_dir: Path, edit=None, name: str = "set") -> Path:
    """The synthetic set's JSON files in a new folder (images linked), ``edit(train_json)`` applied."""
    root = tmp_path / name
    root.mkdir()
    train = json.loads((synth_dir / "train.json").read_text())
    if edit:
        edit(train)
    (root / "train.json").write_text(json.dumps(train))
    shutil.copy(synth_dir / "val.json", root / "val.json")
    (root / "images").symlink_to(synth_dir / "images")
    return root


def _train(tmp_path: Path, root: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _cli(
        tmp_path, "lpr.train", "+experiment=plate", "debug=fast", "data=coco", f"data.root={root}",
        "data.train_json=train.json", "data.val_json=val.json", f"paths.output_dir={out}", *extra,
    )  # fmt: skip


def _clean_failure(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    assert proc.returncode == code, proc.stdout[-1500:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stderr


# --- numbers that are not finite -----------------------------------------------------------------


def test_nan_in_a_box_is_refused_naming_the_annotation(tmp_path, synth_dir):
    def nan_box(data):
        data["annotations"][5]["bbox"][2] = math.nan
        data["annotations"][7]["segmentation"][0][3] = math.inf

    root = _coco_copy(tmp_path, synth_dir, nan_box)
    ids = [json.loads((root / "train.json").read_text())["annotations"][i]["id"] for i in (5, 7)]
    err = _clean_failure(_train(tmp_path, root, tmp_path / "out"))
    assert f"annotation {ids[0]}" in err and "bbox must be 4 finite numbers" in err
    assert f"annotation {ids[1]}" in err and "polygon coordinates must be finite numbers" in err
    assert not {"config.yaml", "checkpoints"} & {p.name for p in (tmp_path / "out").iterdir()}, "nothing of a run"
    # the same ground truth in evaluate's predictions mode
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.9}]))
    err = _clean_failure(_cli(tmp_path, "lpr.evaluate", f"gt={root / 'train.json'}", f"predictions={results}"))
    assert f"annotation {ids[0]}" in err and "finite" in err


def test_nan_score_in_results_is_refused(tmp_path, synth_dir):
    results = tmp_path / "results.json"
    results.write_text('[{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": NaN}]')
    err = _clean_failure(_cli(tmp_path, "lpr.evaluate", f"gt={synth_dir / 'val.json'}", f"predictions={results}"))
    assert "result 0 has score nan: must be a finite number" in err


# --- a failed run never touches a finished one ---------------------------------------------------


def test_a_run_folder_in_use_is_left_as_it_was(tmp_path, synth_dir):
    out = tmp_path / "finished"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.yaml").write_text("the finished run's settings\n")
    (out / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    bad = _coco_copy(tmp_path, synth_dir, lambda d: d["annotations"][0].update(category_id=99), "bad")
    good = _coco_copy(tmp_path, synth_dir, name="good")
    for root in (bad, good):
        err = _clean_failure(_train(tmp_path, root, out))
        assert f"paths.output_dir={out} already holds a run" in err and "ckpt_path=last" in err
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_run_starting_in_a_folder_another_run_has_claimed_is_refused(tmp_path, synth_dir):
    # two runs launched in the same second get the same default folder: the first claims it at once
    out = tmp_path / "starting"
    out.mkdir()
    with subprocess.Popen(["sleep", "300"]) as first:
        try:
            (out / RUN_CLAIM).write_text(f"{first.pid} {socket.gethostname()}")
            err = _clean_failure(_train(tmp_path, synth_dir, out))  # refused before Hydra opens its log there
            assert f"paths.output_dir={out} is in use by another run (process {first.pid})" in err
            # its log elsewhere: refused by training itself, after the checks, before writing config.yaml
            err = _clean_failure(_train(tmp_path, synth_dir, out, f"hydra.run.dir={tmp_path / 'log'}"))
            assert f"is in use by another run (process {first.pid})" in err
            assert sorted(p.name for p in out.iterdir()) == [RUN_CLAIM], "no log, no config, the claim left alone"
        finally:
            first.kill()
    # a claim whose process is gone (killed) is taken over, and released when the run ends
    proc = _train(tmp_path, synth_dir, out, "model.optimizer.lr=-1")  # refused later, by the config check
    assert "model.optimizer.lr=-1" in _clean_failure(proc) and "in use" not in proc.stderr
    assert not (out / RUN_CLAIM).exists()


def test_a_claim_is_renewed_by_its_own_process_and_never_taken_from_another_host(tmp_path, monkeypatch):
    claim_run_folder(tmp_path)
    assert (tmp_path / RUN_CLAIM).read_text() == f"{os.getpid()} {socket.gethostname()}"
    claim_run_folder(tmp_path)  # its own claim: the CLI's folder check, then training
    (tmp_path / RUN_CLAIM).write_text("12 another-host")
    with pytest.raises(RunFolderInUse, match="process 12 on another-host"):
        claim_run_folder(tmp_path)  # its process cannot be looked up from here: never taken over
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    claim_run_folder(tmp_path)  # the other ranks of a DDP run join their rank 0's folder


def test_the_other_ranks_of_a_ddp_run_join_the_folder_their_rank_0_started(tmp_path, monkeypatch):
    (tmp_path / "config.yaml").write_text("written by rank 0 a moment ago\n")
    with pytest.raises(RunFolderInUse):
        check_output_dir(tmp_path, resuming=False)
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # as in a process the DDP launcher started (LOCAL_RANK=1)
    check_output_dir(tmp_path, resuming=False)  # the end-to-end case: tests/test_ddp.py (slow)


# --- image size and place ------------------------------------------------------------------------


def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path, synth_dir):
    root = _coco_copy(tmp_path, synth_dir, lambda d: d["images"][2].update(width=20000, height=20000))
    err = _clean_failure(_train(tmp_path, root, tmp_path / "out"))
    assert "20000x20000 is 400 MP, more than the 40 MP allowed (data.max_image_pixels)" in err
    err = _clean_failure(_train(tmp_path, synth_dir, tmp_path / "out", "data.max_image_pixels=100000"))
    assert "384x288 is 0.111 MP, more than the 0.1 MP allowed" in err


def test_file_names_leaving_the_image_root_are_refused(tmp_path, synth_dir):
    def escape(data):
        data["images"][0]["file_name"] = "../../elsewhere.jpg"
        data["images"][1]["file_name"] = str(synth_dir / "images" / data["images"][1]["file_name"])

    root = _coco_copy(tmp_path, synth_dir, escape)
    err = _clean_failure(_train(tmp_path, root, tmp_path / "out"))
    assert "file_name '../../elsewhere.jpg' lies outside the image root" in err
    assert f"file_name '{synth_dir}" in err and "data.allow_outside_root=true" in err
    # allowed, the absolute path is read (and the missing one still reported)
    data = load_coco_json(root / "train.json")
    with pytest.raises(DataValidationError) as caught:
        validate_coco(data, root / "images", check_images="header", allow_outside_root=True)
    assert "elsewhere.jpg does not exist" in str(caught.value) and "outside" not in str(caught.value)
    assert str(caught.value).count("\n  - ") == 1


def test_a_folder_of_links_is_a_valid_image_root(tmp_path, synth_dir):
    linked = tmp_path / "linked"
    (linked / "train").mkdir(parents=True)
    data = load_coco_json(synth_dir / "train.json")
    for im in data["images"]:
        (linked / im["file_name"]).symlink_to(synth_dir / "images" / im["file_name"])
    validate_coco(data, linked, check_images="header")  # links leading elsewhere are fine


# --- outputs that cannot be written --------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(fast_run):
    return fast_run[0] / "checkpoints" / "last.ckpt"


def test_outputs_that_cannot_be_written_give_one_line(tmp_path, synth_dir, checkpoint):
    a_file = tmp_path / "taken"
    a_file.write_text("mine")
    image = synth_dir / "images" / "val" / "000000.jpg"
    err = _clean_failure(_cli(tmp_path, "lpr.predict", f"ckpt_path={checkpoint}", f"input={image}", f"output={a_file}"))
    assert f"output folder {a_file} exists and is not a folder" in err
    err = _clean_failure(
        _cli(tmp_path, "lpr.evaluate", f"ckpt_path={checkpoint}", f"report={a_file / 'report.json'}", "pr_curves=false")
    )
    assert f"{a_file} exists and is not a folder" in err
    synth = subprocess.run(
        [sys.executable, "-m", "lpr.data.synth", "--out", str(a_file / "set"), "--train", "2", "--val", "1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert "exists and is not a folder" in _clean_failure(synth)
    err = _clean_failure(_train(tmp_path, synth_dir, a_file))
    assert f"error: the run folder {a_file} (paths.output_dir) exists and is not a folder" in err
    assert a_file.read_text() == "mine"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to fill a disk")
def test_a_full_disk_keeps_the_old_file(tmp_path):
    from lpr.outputs import OutputError, write_text

    target = tmp_path / "report.json"
    target.write_text("old")
    os.symlink("/dev/full", tmp_path / f".report.json.tmp{os.getpid()}")  # the temporary file's writes fail
    with pytest.raises(OutputError, match=r"cannot write .*report\.json: No space left on device"):
        write_text(target, "new")
    assert target.read_text() == "old"


# --- inputs skipped, checkpoints refused ---------------------------------------------------------


def test_broken_links_and_other_files_are_counted_and_named(tmp_path, synth_dir, checkpoint):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(synth_dir / "images" / "val" / "000000.jpg", src / "car.jpg")
    (src / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (src / "notes.txt").write_text("a note")
    proc = _cli(tmp_path, "lpr.predict", f"ckpt_path={checkpoint}", f"input={src}", f"output={tmp_path / 'out'}")
    _clean_failure(proc, code=1)  # one input failed
    assert "gone.jpg: FAILED (broken symbolic link" in proc.stdout
    assert "1 images," in proc.stdout and "1 failed" in proc.stdout
    assert "ignored 1 files without an image suffix" in proc.stdout and "notes.txt" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"], "no Hydra run folder left behind"


def test_checkpoint_paths_that_are_no_checkpoints(tmp_path, synth_dir):
    image = synth_dir / "images" / "val" / "000000.jpg"
    err = _clean_failure(_cli(tmp_path, "lpr.predict", f"ckpt_path={tmp_path}", f"input={image}"))
    assert f"checkpoint {tmp_path} is a folder" in err

    objects = tmp_path / "objects.ckpt"
    torch.save({"model": Pickled()}, objects)
    err = _clean_failure(_cli(tmp_path, "lpr.predict", f"ckpt_path={objects}", f"input={image}"))
    assert "holds Python objects lpr will not unpickle" in err
