"""MemoryGuard driven by fake readings through a real Trainer, and every ConsistencyCheck mismatch."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch
from conftest import tiny_net
from lightning.pytorch.callbacks import ModelCheckpoint

from lpr.callbacks.checkpoint import CheckpointMetadata, KeywordCheckpoint
from lpr.callbacks.consistency import ConsistencyCheck, ConsistencyError
from lpr.callbacks.memory import MemoryGuard, MemoryReading, SkipsWork
from lpr.checkpoint import load
from lpr.data import CocoDataModule
from lpr.models.module import MaskRCNNModule

TINY_NET = tiny_net(
    transform={"min_size": 288, "max_size": 384}, rpn={"post_nms_top_n_test": 50}, roi_heads={"detections_per_img": 20}
)


class FakeReader:
    """Returns ``high`` on the listed call numbers (1-based), ``low`` otherwise."""

    def __init__(self, high_calls=(), high=95.0, low=40.0):
        self.high_calls, self.high, self.low, self.calls = set(high_calls), high, low, 0

    def __call__(self) -> MemoryReading:
        self.calls += 1
        percent = self.high if self.calls in self.high_calls else self.low
        return MemoryReading(ram_percent=percent, rss_gb=1.0)


def _module(classes):
    return MaskRCNNModule(list(classes), TINY_NET, {"_target_": "torch.optim.SGD", "lr": 0.001})


def _fit(tmp_path, synth_dir, guard, *, batches=6, val_batches=0, callbacks=(), ckpt_path=None):
    dm = CocoDataModule(str(synth_dir), batch_size=2, check_images="none")
    dm.setup("fit")
    module = _module(dm.classes)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=val_batches,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[guard, CheckpointMetadata({}), *callbacks],
        enable_checkpointing=bool(callbacks),
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, module


class PlainModule(L.LightningModule):
    """A module that offers no way to skip work (not lpr.callbacks.memory.SkipsWork)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_module_that_cannot_skip_is_warned_about_and_trains_every_step(tmp_path, caplog):
    assert isinstance(_module(["0", "1"]), SkipsWork) and not isinstance(PlainModule(), SkipsWork)
    guard = MemoryGuard(every_n_steps=1, reader=FakeReader(high_calls={2, 4}, high=95))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(12, 4)), batch_size=2)
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, callbacks=[guard])  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="lpr.memory"):
        trainer.fit(PlainModule(), data)
    assert trainer.global_step == 6 and guard.skipped_batches == 0
    assert any("PlainModule cannot skip work" in r.message for r in caplog.records)
    assert sum("above skip_percent" in r.message for r in caplog.records) == 2


def test_warn_only_keeps_every_step(tmp_path, synth_dir, caplog):
    guard = MemoryGuard(
        every_n_steps=1, warn_percent=80, skip_percent=96, stop_percent=98, reader=FakeReader(high_calls={2}, high=90)
    )
    with caplog.at_level(logging.WARNING, logger="lpr.memory"):
        trainer, _ = _fit(tmp_path, synth_dir, guard, batches=4)
    assert trainer.global_step == 4
    assert sum("above warn_percent" in r.message for r in caplog.records) == 1


def test_skip_drops_exactly_the_skipped_optimizer_steps(tmp_path, synth_dir):
    guard = MemoryGuard(every_n_steps=1, reader=FakeReader(high_calls={2, 4}, high=95))
    trainer, _ = _fit(tmp_path, synth_dir, guard, batches=6)
    assert guard.skipped_batches == 2
    assert trainer.global_step == 6 - 2
    assert trainer.callback_metrics["mem/skipped_batches"] == 2


def test_skipped_validation_round_logs_no_metrics_and_saves_no_best(tmp_path, synth_dir, caplog):
    best = KeywordCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/mAP", mode="max", save_top_k=1)
    # training reads 2 low; the first validation batch (call 3) is high
    guard = MemoryGuard(every_n_steps=1, every_n_val_batches=1, reader=FakeReader(high_calls={3}, high=95))
    with caplog.at_level(logging.WARNING):
        trainer, _ = _fit(tmp_path, synth_dir, guard, batches=2, val_batches=2, callbacks=[best])
    assert "val/mAP" not in trainer.callback_metrics
    assert best.best_model_path == ""
    assert not list((tmp_path / "ckpt").glob("*.ckpt"))
    assert any("validation round at step 2 skipped" in r.message for r in caplog.records)


def test_stop_saves_a_loadable_checkpoint_and_ends_cleanly(tmp_path, synth_dir, caplog):
    last = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    guard = MemoryGuard(every_n_steps=1, reader=FakeReader(high_calls={2}, high=99))
    with caplog.at_level(logging.ERROR, logger="lpr.memory"):
        trainer, _ = _fit(tmp_path, synth_dir, guard, batches=6, callbacks=[last])
    stop = tmp_path / "ckpt" / "memory-stop.ckpt"
    assert stop.is_file()
    assert trainer.global_step == 2  # the reading after step 2 stopped the run
    assert load(stop).classes == trainer.datamodule.classes
    assert torch.load(stop, weights_only=True)["global_step"] == 2
    assert any("RAM 99%" in r.message and "stopped training" in r.message for r in caplog.records)


def test_memory_guard_validates_thresholds():
    with pytest.raises(ValueError, match="skip_percent < stop_percent"):
        MemoryGuard(skip_percent=95, stop_percent=95)


# ----------------------------------------------------------------- consistency


def _trainer(tmp_path, **kw):
    return L.Trainer(
        default_root_dir=tmp_path,
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[ConsistencyCheck()],
        **kw,
    )


@pytest.fixture
def datamodule(synth_dir):
    dm = CocoDataModule(str(synth_dir), batch_size=2, check_images="none")
    dm.setup("fit")
    return dm


def test_head_size_mismatch(tmp_path, datamodule):
    module = _module(datamodule.classes)
    module.model.roi_heads.box_predictor.cls_score = torch.nn.Linear(64, 5)
    with pytest.raises(ConsistencyError, match=r"cls_score has 5 outputs but the class list needs 22"):
        _trainer(tmp_path).fit(module, datamodule=datamodule)


def test_mask_head_mismatch(tmp_path, datamodule):
    module = _module(datamodule.classes)
    module.model.roi_heads.mask_predictor.mask_fcn_logits = torch.nn.Conv2d(16, 3, 1)
    with pytest.raises(ConsistencyError, match=r"mask_fcn_logits has 3 outputs but the class list needs 22"):
        _trainer(tmp_path).fit(module, datamodule=datamodule)


def test_backbone_type_mismatch(tmp_path, datamodule):
    module = _module(datamodule.classes)
    module.hparams["net"]["backbone"]["_target_"] = "lpr.models.backbones.resnet50_fpn_v2"
    with pytest.raises(ConsistencyError, match=r"asks for backbone .*resnet50_fpn_v2 \(Bottleneck blocks\)"):
        _trainer(tmp_path).fit(module, datamodule=datamodule)


def test_fpn_width_mismatch(tmp_path, datamodule):
    module = _module(datamodule.classes)
    module.hparams["net"]["backbone"]["out_channels"] = 64
    with pytest.raises(ConsistencyError, match=r"FPN has 32 channels but the config says out_channels=64"):
        _trainer(tmp_path).fit(module, datamodule=datamodule)


def test_model_classes_differ_from_data(tmp_path, datamodule):
    module = _module([*datamodule.classes[:-1], "x"])
    with pytest.raises(ConsistencyError, match=r"the model has .* the data set has .*only in the first: \['x'\]"):
        _trainer(tmp_path).fit(module, datamodule=datamodule)


def test_split_categories_differ_from_datamodule(tmp_path, datamodule):
    # the data module refuses it at its own setup, before any callback runs
    datamodule.val_set.classes = datamodule.val_set.classes[::-1]
    with pytest.raises(ValueError, match=r"val\.json has categories \['r_m_n', .* but .*train\.json has \['0', "):
        _trainer(tmp_path).fit(_module(datamodule.classes), datamodule=datamodule)


def test_resume_checkpoint_classes_differ(tmp_path, datamodule):
    other = _module([*datamodule.classes[:-1], "zz"])
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_steps=0,
        logger=False,
        enable_checkpointing=False,
        callbacks=[CheckpointMetadata({})],
    )
    trainer.strategy.connect(other)
    trainer.save_checkpoint(tmp_path / "other.ckpt")
    with pytest.raises(ConsistencyError, match=r"checkpoint .*other\.ckpt has .*init_from=CKPT"):
        _trainer(tmp_path).fit(_module(datamodule.classes), datamodule=datamodule, ckpt_path=tmp_path / "other.ckpt")


def test_periodic_and_listed_epoch_checkpoints(tmp_path, synth_dir):
    from lpr.callbacks.checkpoint import checkpoint_callbacks

    policy = checkpoint_callbacks(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=3, keep_epochs=[2])
    dm = CocoDataModule(str(synth_dir), batch_size=2, check_images="none")
    dm.setup("fit")
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=3, limit_train_batches=2, limit_val_batches=0,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[*policy, CheckpointMetadata({})])  # fmt: skip
    trainer.fit(_module(dm.classes), datamodule=dm)
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["epoch001-step000003.ckpt", "epoch002-step000006.ckpt", "keep-epoch002.ckpt", "last.ckpt"]


def test_image_damaged_after_setup_is_skipped_and_counted(tmp_path, synth_dir, caplog):
    import shutil

    root = tmp_path / "set"
    shutil.copytree(synth_dir, root)
    dm = CocoDataModule(str(root), batch_size=2)
    dm.setup("fit")  # validated while intact...
    (root / "images" / dm.train_set.images[1]["file_name"]).write_bytes(b"broken")  # ...damaged afterwards
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="lpr.data.coco"):
        trainer.fit(_module(dm.classes), datamodule=dm)  # a whole epoch: the damaged image is drawn once
    assert trainer.global_step == 16 // 2  # the run went on: its batch trained on the other image
    assert trainer.callback_metrics["data/skipped_images"] == 1
    assert any("skipping image train/000001.jpg" in r.message for r in caplog.records)
