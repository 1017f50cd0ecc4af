"""The recipes, validation, predict and the reader on CUDA, and CUDA agreeing with the CPU.

Runs where ``torch.cuda.is_available()``; skipped elsewhere (``scripts/gpu_check.sh`` runs it on a
GPU machine).
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import CONF
from hydra import compose, initialize_config_dir

from lpr.export import example_images
from lpr.reader import PlateReader
from lpr.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.mark.parametrize("recipe", ["plate", "plate_gpu"])
def test_a_few_steps_of_each_recipe_train_and_validate_on_cuda(tmp_path, recipe):
    out = tmp_path / recipe
    precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    overrides = ["trainer.accelerator=gpu", "trainer.devices=1", f"trainer.precision={precision}"]
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"+experiment={recipe}", "debug=fast", f"paths.output_dir={out}",
                f"paths.data_dir={tmp_path / 'data'}", *overrides,
            ],
        )  # fmt: skip
    _, objects = train(cfg)
    logged = objects["trainer"].callback_metrics
    for key in ("val/mAP", "val/EIR", "val/dv_mAP", "val_heldout/EIR"):
        assert key in logged and math.isfinite(float(logged[key])), key
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_reader_on_cuda_finds_what_the_cpu_finds(fast_run):
    ckpt = fast_run[0] / "checkpoints" / "last.ckpt"
    image = example_images(1, seed=3)[0]
    cpu, gpu = (PlateReader.from_checkpoint(ckpt, device=d, score_thr=0.05) for d in ("cpu", "cuda"))
    assert next(gpu.model.parameters()).is_cuda
    a, b = cpu.detect([image])[0], gpu.detect([image])[0]
    assert all(v.is_cuda for v in b.values())
    boxes_a, boxes_b = a["boxes"].numpy(), b["boxes"].cpu().numpy()
    labels_a, labels_b = a["labels"].numpy(), b["labels"].cpu().numpy()
    scores_a, scores_b = a["scores"].numpy(), b["scores"].cpu().numpy()
    # the same detections within 1 px and 1e-2 in score (cuDNN's convolutions round otherwise): matched
    # by label and box, as near-equal scores may come in either order
    matched = 0
    for box, label, score in zip(boxes_a, labels_a, scores_a, strict=True):
        near = (labels_b == label) & (np.abs(boxes_b - box).max(1) <= 1.0) & (np.abs(scores_b - score) <= 1e-2)
        matched += bool(near.any())
    assert len(boxes_a) > 0 and matched >= 0.9 * len(boxes_a), (matched, len(boxes_a))


def test_predict_cli_on_cuda(fast_run, synth_dir, tmp_path):
    ckpt = fast_run[0] / "checkpoints" / "last.ckpt"
    args = f"ckpt_path={ckpt}", f"input={synth_dir / 'images' / 'val'}", f"output={tmp_path}", "device=cuda"
    proc = subprocess.run([sys.executable, "-m", "lpr.predict", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert len(list(tmp_path.glob("*.json"))) == 6
