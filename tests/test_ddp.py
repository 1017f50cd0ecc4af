"""DDP on 2 CPU processes (gloo): metrics equal a single-process run on the same checkpoint (slow)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lpr.evaluate import evaluate_checkpoint
from lpr.models.module import VAL_KEYS


def _train(tmp_path, out, *overrides):
    proc = subprocess.run(
        [sys.executable, "-m", "lpr.train", "+experiment=plate", "debug=fast", f"paths.output_dir={out}",
         f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={out}", *overrides],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
def test_ddp_two_cpu_ranks_match_one_process(tmp_path):
    # A model that detects something first (single process), so the compared metrics are not all 0.
    warm = tmp_path / "warm"
    _train(tmp_path, warm, "data.synthesize.train=60", "trainer.max_epochs=10", "checkpoint.monitor=[]")
    out = tmp_path / "ddp"
    _train(
        tmp_path, out, "trainer=ddp_cpu", f"init_from={warm / 'checkpoints' / 'last.ckpt'}",
        "data.synthesize.train=8", "data.synthesize.val=5",  # 5: the sampler pads one image onto a rank
        "trainer.max_epochs=1",
    )  # fmt: skip
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    # one set, from rank 0
    assert ckpts == ["best-val_EIR.ckpt", "best-val_dv_mAP.ckpt", "best-val_heldout_EIR.ckpt", "last.ckpt"]
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2  # 8 images / (2 ranks x batch 2): the sampler sharded the data
    ddp = {k: acc.Scalars(f"val/{k}")[-1].value for k in VAL_KEYS}
    report, _ = evaluate_checkpoint(str(out / "checkpoints" / "last.ckpt"), None)
    assert report["mAP_50"] > 0, "the warm-up should give a model with some detections"
    for key in VAL_KEYS:
        assert report[key] == pytest.approx(ddp[key], abs=1e-6), key
