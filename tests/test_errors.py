"""Bad input from the command line: one clear message and exit code 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import CONF
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException

from lpr.config_check import ConfigError, instantiate_checked, validate_train_config


def _cli(tmp_path, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip


def _train_on_coco(tmp_path, root, *overrides: str) -> subprocess.CompletedProcess:
    """``lpr.train`` on the COCO data set in ``root`` (train.json, val.json, images/)."""
    return _cli(
        tmp_path,
        "lpr.train",
        "+experiment=plate",
        "data=coco",
        f"data.root={root}",
        "data.train_json=train.json",
        "data.val_json=val.json",
        f"paths.output_dir={tmp_path / 'out'}",
        *overrides,
    )


def _cfg(*overrides: str):
    with initialize_config_dir(CONF, version_base="1.3"):
        return compose("train", overrides=["+experiment=plate", "paths.output_dir=x", *overrides])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.optimizer.lr=-1", r"model\.optimizer\.lr=-1: must be a number > 0"),
        ("data.batch_size=0", r"data\.batch_size=0: must be an integer >= 1"),
        ("data.batch_size=two", r"data\.batch_size='two': must be an integer >= 1"),
        ("callbacks.memory.skip_percent=99", r"skip_percent=99, stop_percent=97: need 0 < warn_percent"),
        ("checkpoint.monitor=val/EIRR", r"checkpoint\.monitor='val/EIRR': nothing logs this key"),
        ("model.metrics.dv.k=0", r"model\.metrics\.dv\.k=0: must be an integer >= 1"),
        ("model.metrics.plates.sub_pattern='[0-9'", r"sub_pattern='\[0-9': must be a valid regular expression"),
        ("model.net.roi_heads.char_cover_thresh=abc", r"char_cover_thresh='abc': must be a number in \[0, 1\]"),
        ("model.net.transform.min_size=0", r"model\.net\.transform\.min_size=0: must be an integer >= 1"),
        ("model.net.zoom.max_scale=0", r"model\.net\.zoom\.max_scale=0: must be a number > 0"),
        ("model.net.train_zoom=1.5", r"model\.net\.train_zoom=1\.5: must be a number in \[0, 1\]"),
        ("model.net.char_reader.letter_weight=-1", r"letter_weight=-1: must be a number >= 0"),
        ("model.net.zoom=null model.net.train_zoom=0.5", r"model\.net\.train_zoom trains on .* needs model\.net\.zoom"),
    ],
)
def test_bad_values_are_named_with_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        validate_train_config(_cfg(*override.split()))


def test_all_bad_values_in_one_message():
    with pytest.raises(ConfigError) as err:
        validate_train_config(_cfg("model.optimizer.lr=0", "data.num_workers=-1"))
    assert "model.optimizer.lr" in str(err.value) and "data.num_workers" in str(err.value)


def test_cli_bad_value_exits_2_without_traceback(tmp_path):
    proc = _cli(tmp_path, "lpr.train", "+experiment=plate", "model.optimizer.lr=-1")
    assert proc.returncode == 2
    assert "error: invalid configuration" in proc.stderr and "model.optimizer.lr=-1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_unknown_key_exits_2(tmp_path):
    proc = _cli(tmp_path, "lpr.train", "+experiment=plate", "model.optimizr.lr=1")
    assert proc.returncode == 2
    assert "model.optimizr.lr" in proc.stderr and "Traceback" not in proc.stderr


def test_a_constructor_refusing_its_values_is_a_config_error_naming_the_key():
    cfg = _cfg("callbacks.time_budget.minutes=-1")
    with pytest.raises(ConfigError, match=r"^callbacks\.time_budget: TimeBudget needs minutes > 0"):
        instantiate_checked(cfg.callbacks.time_budget)
    with pytest.raises(InstantiationException):  # anything but a refused value propagates as Hydra raised it
        instantiate_checked({"_target_": "builtins.open", "file": "/nonexistent/x.txt"})


def test_cli_key_the_model_does_not_take_exits_2_without_traceback(tmp_path, synth_dir):
    proc = _train_on_coco(tmp_path, synth_dir, "+model.net.char_reader.leter_weight=1")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: model: CharReader.__init__() got an unexpected keyword argument 'leter_weight'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()  # nothing written


def test_cli_data_fault_exits_2_naming_file_and_annotation(tmp_path, synth_dir):
    data = json.loads((synth_dir / "train.json").read_text())
    data["annotations"][3]["category_id"] = 99
    root = tmp_path / "bad"
    root.mkdir()
    (root / "train.json").write_text(json.dumps(data))
    (root / "val.json").write_text((synth_dir / "val.json").read_text())
    (root / "images").symlink_to(synth_dir / "images")
    proc = _train_on_coco(tmp_path, root)
    assert proc.returncode == 2, proc.stderr[-2000:]
    ann_id = data["annotations"][3]["id"]
    assert f"annotation {ann_id}" in proc.stderr and "unknown category id 99" in proc.stderr
    assert "train.json" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_json_syntax_error_exits_2_with_line_and_column(tmp_path, synth_dir):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "train.json").write_text('{"images": [}')
    proc = _train_on_coco(tmp_path, root)
    assert proc.returncode == 2
    assert "is not valid JSON" in proc.stderr and "line 1, column 13" in proc.stderr


def test_cli_not_a_checkpoint_exits_2(tmp_path):
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"not a checkpoint")
    proc = _cli(tmp_path, "lpr.predict", f"ckpt_path={bad}", f"input={tmp_path}")
    assert proc.returncode == 2
    assert "x.ckpt" in proc.stderr and "cannot be read" in proc.stderr and "Traceback" not in proc.stderr
