"""Pieces of training tested alone: ETA format, schedules, the non-finite-loss stop, checkpoint errors."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lpr.callbacks.checkpoint import checkpoint_callbacks, infer_mode
from lpr.callbacks.progress import format_eta
from lpr.checkpoint import CheckpointError, load
from lpr.data import CocoDataModule
from lpr.models.maskrcnn import mobilenet_v3_fpn
from lpr.models.module import MaskRCNNModule
from lpr.models.schedules import warmup_cosine, warmup_multistep

NET = {
    "_target_": "lpr.models.maskrcnn.build_maskrcnn",
    "backbone": {"_target_": "lpr.models.maskrcnn.mobilenet_v3_fpn", "out_channels": 32},
    "representation_size": 64,
    "mask_head_layers": [16],
}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0d 00h 00m 00s"),
        (59, "0d 00h 00m 59s"),
        (59.6, "0d 00h 01m 00s"),
        (86401, "1d 00h 00m 01s"),
        (93784, "1d 02h 03m 04s"),
        (-5, "0d 00h 00m 00s"),
        (10**9, "11574d 01h 46m 40s"),
        (float("inf"), "?"),
        (float("nan"), "?"),
    ],
)
def test_format_eta(seconds, text):
    assert format_eta(seconds) == text


def test_warmup_then_cosine_and_steps():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=110, warmup_steps=10, warmup_factor=0.1, min_lr_ratio=0.0)
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[5] == pytest.approx(0.55) and lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5) and lrs[-1] < 0.001
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_multistep(opt, total_steps=100, milestones=[0.5, 0.9], gamma=0.1, warmup_steps=0)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[49] == 1.0 and lrs[50] == pytest.approx(0.1) and lrs[95] == pytest.approx(0.01)


def test_checkpoint_policy_infers_modes_and_validates():
    cbs = checkpoint_callbacks(dirpath="x", monitor=["val/EIR", "val/loss"], every_n_epochs=2, keep_epochs=[3])
    best = [c for c in cbs if getattr(c, "monitor", None)]
    assert [(c.monitor, c.mode) for c in best] == [("val/EIR", "max"), ("val/loss", "min")]
    assert len({c.state_key for c in cbs}) == len(cbs)
    assert infer_mode("train/loss_mask") == "min"
    with pytest.raises(ValueError, match=r"checkpoint\.mode must be"):
        checkpoint_callbacks(dirpath="x", monitor="val/EIR", mode="best")


class _NaNImages:
    def __call__(self, image, target):
        return image.float() * float("nan"), target


def test_non_finite_loss_stops_training_with_step_and_losses(synth_dir):
    dm = CocoDataModule(str(synth_dir), batch_size=2, train_transforms=_NaNImages(), check_images="none")
    module = MaskRCNNModule(list(dm.classes), NET, {"_target_": "torch.optim.SGD", "lr": 0.01})
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        enable_model_summary=False,
    )
    with pytest.raises(FloatingPointError, match=r"non-finite training loss at global step 0 .*loss_classifier="):
        trainer.fit(module, datamodule=dm)


def test_mobilenet_stage_end_feeds_the_last_block_of_each_stage():
    first, last = mobilenet_v3_fpn(stage_end=False), mobilenet_v3_fpn(stage_end=True)
    # MobileNetV3-Large: blocks 4-6 at stride 8, 7-12 at stride 16, 13-15 + the 1x1 conv 16 at stride 32
    assert first.body.return_layers == {"4": "0", "7": "1", "16": "2"}
    assert last.body.return_layers == {"6": "0", "12": "1", "16": "2"}
    assert [b[0].in_channels for b in first.fpn.inner_blocks] == [40, 80, 960]
    assert [b[0].in_channels for b in last.fpn.inner_blocks] == [40, 112, 960]
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        shapes = [{k: tuple(v.shape[-2:]) for k, v in m.eval()(x).items()} for m in (first, last)]
    assert shapes[0] == shapes[1] == {"0": (8, 12), "1": (4, 6), "2": (2, 3), "pool": (1, 2)}


class _OutputDtypes(L.Callback):
    def __init__(self) -> None:
        self.dtypes: set[torch.dtype] = set()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.dtypes |= {v.dtype for out in outputs for k, v in out.items() if k in ("boxes", "scores", "masks")}


def test_bf16_mixed_training_validates_in_float32(synth_dir):
    """Under ``precision=bf16-mixed`` the training step runs in bf16 autocast; validation stays float32."""
    dm = CocoDataModule(str(synth_dir), batch_size=2, check_images="none")
    module = MaskRCNNModule(list(dm.classes), NET, {"_target_": "torch.optim.SGD", "lr": 0.01})
    seen = _OutputDtypes()
    trainer = L.Trainer(
        precision="bf16-mixed",
        max_steps=2,
        limit_val_batches=1,
        val_check_interval=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[seen],
    )
    trainer.fit(module, datamodule=dm)
    assert seen.dtypes == {torch.float32}
    assert {"val/mAP", "val/EIR", "val/dv_mAP"} <= set(trainer.callback_metrics)
    assert all(p.dtype == torch.float32 for p in module.parameters())  # mixed precision keeps fp32 weights


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nope.ckpt")
    plain = tmp_path / "plain.pth"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match=r"plain\.pth is not an lpr checkpoint.*bare state_dict"):
        load(plain)
    truncated = tmp_path / "cut.ckpt"
    torch.save({"lpr": {}, "state_dict": {"w": torch.zeros(1000)}, "hyper_parameters": {}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"cut\.ckpt \(300 bytes\) cannot be read: truncated or corrupt"):
        load(truncated)


def test_checkpoint_of_another_model_is_named(fast_run, tmp_path):
    """Weights that do not fit the model its own config describes (e.g. from another architecture)."""
    ckpt = torch.load(fast_run[0] / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["net"]["representation_size"] = 256  # the stored weights are for 512
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    with pytest.raises(CheckpointError, match=r"other\.ckpt: weights do not fit the model its config describes"):
        load(other)
