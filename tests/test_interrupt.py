"""A real training process killed with SIGTERM mid-epoch leaves last.ckpt, and resuming ends where an
uninterrupted run ends; Ctrl-C, in training or in a validation round, exits 130 with an interrupted
summary; a checkpoint write never leaves a truncated file in place."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import sigint_default

from lpr.checkpoint import AtomicCheckpointIO, load

STEPS = 24  # 12 images / batch 2 = 6 steps an epoch: the kill lands mid-epoch


def _cmd(out, data, *extra, steps=STEPS):
    return [
        sys.executable,
        "-m",
        "lpr.train",
        "+experiment=plate",
        "debug=fast",
        f"trainer.max_steps={steps}",
        "trainer.max_epochs=100",
        "checkpoint.monitor=[]",
        "callbacks.progress.every_n_steps=1",
        f"paths.output_dir={out}",
        f"paths.data_dir={data}",
        "trainer.limit_val_batches=0",  # no validation, and so no final one either: resuming is what is tested
        *extra,
    ]


def test_sigterm_saves_last_and_resume_reaches_the_same_step(tmp_path):
    out, data = tmp_path / "run", tmp_path / "data"
    log = tmp_path / "train.out"
    with log.open("w") as fh:
        proc = subprocess.Popen(_cmd(out, data), cwd=tmp_path, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and "step 9/" not in log.read_text():
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    assert proc.returncode == 143, log.read_text()[-3000:]  # as a shell reports a SIGTERM'd process
    assert "Traceback" not in log.read_text()
    summary = json.loads((out / "job_summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"]
    assert "step 9/" in (out / "train.log").read_text(), "the log is in the run's folder"
    assert not (tmp_path / "outputs").exists(), "and no other run folder was made"
    last = out / "checkpoints" / "last.ckpt"
    assert last.is_file(), log.read_text()[-3000:]
    interrupted_at = torch.load(last, weights_only=True)["global_step"]
    assert 9 <= interrupted_at < STEPS
    assert load(last).classes  # a usable lpr checkpoint

    resumed = subprocess.run(_cmd(out, data, "ckpt_path=last"), cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "job_summary.json").read_text())["status"] == "completed"
    train_log = (out / "train.log").read_text()
    assert f"step {STEPS}/" in train_log, "the resumed run's log goes on in the same file"
    assert "validation" not in train_log.lower(), "limit_val_batches=0 validates nothing, not even at the end"
    final = torch.load(last, weights_only=True)
    assert final["global_step"] == STEPS  # what an uninterrupted run of the same length ends with
    assert final["optimizer_states"][0]["state"], "optimizer state carried over"
    assert final["lr_schedulers"][0]["last_epoch"] == STEPS


def test_ctrl_c_exits_130_with_an_interrupted_summary(tmp_path):
    out, log = tmp_path / "run", tmp_path / "train.out"
    with log.open("w") as fh:
        # a run far longer than the wait: on a loaded machine the signal must still find it training
        cmd = _cmd(out, tmp_path / "data", steps=100_000)
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=fh, stderr=subprocess.STDOUT, preexec_fn=sigint_default)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and "step 3/" not in log.read_text():
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    assert proc.returncode == 130, log.read_text()[-3000:]
    summary = json.loads((out / "job_summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGINT" in summary["error"]
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_ctrl_c_in_a_validation_round_exits_130(tmp_path):
    """Mid-round the metrics hold their records; stopping must still tear the model down cleanly."""
    out = tmp_path / "run"
    cmd = _cmd(
        out,
        tmp_path / "data",
        "trainer.limit_val_batches=null",
        "+callbacks.ctrl_c._target_=interrupting.CtrlCInValidation",
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, preexec_fn=sigint_default)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    summary = json.loads((out / "job_summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGINT" in summary["error"]
    assert load(out / "checkpoints" / "last.ckpt").classes


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    good = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind
    assert os.path.getsize(path) == len(good)
