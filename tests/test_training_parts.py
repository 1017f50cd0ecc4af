"""Pieces of training tested alone: ETA format, schedules, the non-finite-loss stop, checkpoint errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CONF, READER, tiny_model, tiny_net
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import EMAWeightAveraging
from omegaconf import OmegaConf

from lpr.callbacks.budget import TimeBudget
from lpr.callbacks.checkpoint import checkpoint_callbacks, infer_mode
from lpr.callbacks.progress import format_eta
from lpr.checkpoint import CheckpointError, load, net_as_parts
from lpr.data import CocoDataModule
from lpr.hardware import cpu_flags, cpu_precision
from lpr.models.backbones import BackboneWithImage, Float32Conv2d, mobilenet_v3_fpn
from lpr.models.heads import LevelRPN
from lpr.models.module import MaskRCNNModule
from lpr.models.schedules import warmup_cosine
from lpr.models.transform import DetectionTransform
from lpr.train import build_module

NET = tiny_net(transform={"min_size": 288, "max_size": 384})
# model.net as lpr 0.2.0 stored it for +experiment=plate: one builder taking flags
NET_0_2 = json.loads((Path(__file__).parent / "data" / "net_lpr_0.2_plate.json").read_text())


def quiet_trainer(**kw) -> L.Trainer:
    """A CPU Trainer with no logger, checkpoints, progress bar or summary (and no validation unless asked)."""
    defaults = {"limit_val_batches": 0, "num_sanity_val_steps": 0}
    off = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
    return L.Trainer(**{**defaults, **off, **kw})


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


def test_warmup_then_cosine():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=110, warmup_steps=10, warmup_factor=0.1, min_lr_ratio=0.0)
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[5] == pytest.approx(0.55) and lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5) and lrs[-1] < 0.001


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
    trainer = quiet_trainer(max_steps=2)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss at global step 0 .*loss_classifier="):
        trainer.fit(module, datamodule=dm)


def test_weights_decay_and_norms_and_biases_do_not(synth_dir):
    dm = CocoDataModule(str(synth_dir), batch_size=2, check_images="none")
    optimizer = {"_target_": "torch.optim.AdamW", "lr": 0.01, "weight_decay": 0.1}
    module = MaskRCNNModule(list(dm.classes), NET, optimizer)
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(module, datamodule=dm)
    groups = trainer.optimizers[0].param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]  # the order of old runs' checkpoints
    group_of = {id(p): g for g in groups for p in g["params"]}
    named = dict(module.model.named_parameters())
    assert len(group_of) == len(named) == sum(len(g["params"]) for g in groups)  # each parameter once
    for name, param in named.items():  # conv and linear weights decay; biases and norm weights (1-D) do not
        assert group_of[id(param)]["weight_decay"] == (0.1 if param.dim() > 1 else 0.0), name


def test_checkpoints_of_lpr_0_1_load_unless_they_used_a_removed_option(fast_run, tmp_path):
    ckpt = torch.load(fast_run[0] / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = ckpt["hyper_parameters"]
    widths = hparams["net"]["char_reader"]["channels"]  # the recipe's reader since lpr 0.6: lpr 0.2 took the default
    hparams["net"] = copy.deepcopy(NET_0_2)  # the run's model config as lpr 0.1-0.2 wrote it: builder flags
    hparams |= {"loss_weights": None, "lr_multipliers": None}  # as lpr 0.1 wrote them: off
    hparams["net"] |= {"pixel_head": None, "rpn_featmap_names": None, "exact_paste": True, "mask_boundary_weight": 1.0}
    hparams["net"]["char_reader"] |= {"agnostic": False, "repeats": 1, "channels": widths}
    hparams["net"]["backbone"]["stage_end"] = False
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    loaded = [load(old), load(fast_run[0] / "checkpoints" / "last.ckpt")]  # the weights fit the model rebuilt
    assert loaded[0].classes == loaded[1].classes
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = [c.model([image])[0] for c in loaded]
    for key in out[0]:
        torch.testing.assert_close(out[0][key], out[1][key])
    hparams["net"]["char_reader"]["agnostic"] = True
    torch.save(ckpt, old)
    with pytest.raises(
        CheckpointError, match=r"model\.net\.char_reader\.agnostic=True, an option lpr .* no longer has"
    ):
        load(old)


def test_depthwise_float32_runs_only_the_depthwise_convs_in_float32_under_autocast():
    plain, mixed = mobilenet_v3_fpn(out_channels=16), mobilenet_v3_fpn(out_channels=16, depthwise_float32=True)
    mixed.load_state_dict(plain.state_dict())  # the same keys: checkpoints load either way
    depthwise = [m for m in mixed.body.modules() if isinstance(m, Float32Conv2d)]
    assert len(depthwise) == 15 and all(m.groups == m.in_channels > 1 for m in depthwise)  # one per block
    seen: dict[str, set[torch.dtype]] = {"depthwise": set(), "other": set()}
    for m in mixed.body.modules():
        if isinstance(m, torch.nn.Conv2d):
            kind = "depthwise" if isinstance(m, Float32Conv2d) else "other"
            m.register_forward_hook(lambda mod, args, out, kind=kind: seen[kind].add(out.dtype))
    x = torch.rand(1, 3, 64, 96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed.eval()(x)
    assert seen == {"depthwise": {torch.float32}, "other": {torch.bfloat16}}
    with torch.no_grad():  # without autocast the two are the same network
        for a, b in zip(plain.eval()(x).values(), mixed(x).values(), strict=True):
            torch.testing.assert_close(a, b)


def test_box_targets_stay_float32_under_bf16_autocast():
    """The RPN's outputs are float32, so the proposals and the RoI heads' box targets are too: in bf16 a
    0.7 px wide box at x = 300 (2 px steps there) collapsed to zero width and the box loss was NaN."""
    model = tiny_model(num_classes=3, transform={"min_size": 288, "max_size": 384, "crop": None}).train()
    seen: set[torch.dtype] = set()
    select = model.roi_heads.select_training_samples

    def recording(proposals, targets):
        out = select(proposals, targets)
        seen.update({proposals[0].dtype, out[0][0].dtype, out[3][0].dtype})  # proposals, sampled, box targets
        return out

    model.roi_heads.select_training_samples = recording
    boxes = torch.tensor([[300.2, 100.0, 300.9, 112.0], [40.0, 50.0, 160.0, 90.0]])
    masks = torch.zeros(2, 288, 384, dtype=torch.uint8)
    masks[0, 100:112, 300], masks[1, 50:90, 40:160] = 1, 1
    target = {"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model([torch.rand(3, 288, 384)], [target])
    assert seen == {torch.float32}
    assert all(torch.isfinite(v) for v in losses.values()), losses


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
    trainer = quiet_trainer(
        precision="bf16-mixed", max_steps=2, limit_val_batches=1, val_check_interval=2, callbacks=[seen]
    )
    trainer.fit(module, datamodule=dm)
    assert seen.dtypes == {torch.float32}
    assert {"val/mAP", "val/EIR", "val/dv_mAP"} <= set(trainer.callback_metrics)
    assert all(p.dtype == torch.float32 for p in module.parameters())  # mixed precision keeps fp32 weights


def test_training_with_lightning_weight_averaging_validates(synth_dir):
    """Lightning's EMA callback swaps the averaged weights in for each validation round, walking the
    module (metrics included) mid-round."""
    dm = CocoDataModule(str(synth_dir), batch_size=2, check_images="none")
    module = MaskRCNNModule(list(dm.classes), NET, {"_target_": "torch.optim.SGD", "lr": 0.01})
    trainer = quiet_trainer(
        max_steps=2, limit_val_batches=1, val_check_interval=2, callbacks=[EMAWeightAveraging(decay=0.5)]
    )
    trainer.fit(module, datamodule=dm)
    assert {"val/mAP", "val/EIR", "val/dv_mAP"} <= set(trainer.callback_metrics)


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
    """Weights that do not fit the model its own config describes (e.g. from another architecture), and a
    config this lpr cannot build (e.g. from a newer one)."""
    ckpt = torch.load(fast_run[0] / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["net"]["box_head"]["representation_size"] = 256  # the stored weights are for 512
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    with pytest.raises(CheckpointError, match=r"other\.ckpt: weights do not fit the model its config describes"):
        load(other)
    # a model config this lpr cannot build, as a newer lpr may write: an option it does not take, a class it lacks
    ckpt["hyper_parameters"]["net"]["box_head"]["representation_size"] = 512
    ckpt["hyper_parameters"]["net"]["char_reader"]["letter_copies"] = 3
    ckpt["lpr"]["versions"]["lpr"] = "9.0"
    torch.save(ckpt, other)
    with pytest.raises(
        CheckpointError,
        match=r"other\.ckpt: its model config does not build in lpr .* \(it was written by lpr 9\.0\): .*"
        r"unexpected keyword argument 'letter_copies'",
    ):
        load(other)
    with pytest.raises(CheckpointError, match=r"other\.ckpt: its model config does not build"):  # resuming it
        build_module(OmegaConf.create({}), ckpt["hyper_parameters"]["classes"], str(other))
    del ckpt["hyper_parameters"]["net"]["char_reader"]["letter_copies"]
    ckpt["hyper_parameters"]["net"]["mask_head"]["_target_"] = "lpr.models.heads.future_mask_branch"
    torch.save(ckpt, other)
    with pytest.raises(CheckpointError, match=r"does not build .*: Error locating target 'lpr\.models\.heads\.future"):
        load(other)


def test_channels_last_module_keeps_nhwc_weights_through_a_checkpoint(synth_dir, tmp_path):
    dm = CocoDataModule(str(synth_dir), batch_size=2, check_images="none")
    module = MaskRCNNModule(list(dm.classes), NET, {"_target_": "torch.optim.SGD", "lr": 0.01}, channels_last=True)
    convs = [m.weight for m in module.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    ckpt["lpr"] = {"classes": list(dm.classes)}
    torch.save(ckpt, tmp_path / "m.ckpt")
    loaded = load(tmp_path / "m.ckpt")
    weights = dict(loaded.model.named_parameters())
    for name, w in module.model.named_parameters():
        assert torch.equal(weights[name], w.detach())
    conv = loaded.model.backbone.fpn.layer_blocks[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    ("flags", "precision"),
    [
        ("fpu sse avx512f avx512_vnni", "32-true"),  # AVX-512 without bf16: emulated, slower
        ("fpu avx512f avx512_bf16", "bf16-mixed"),
        ("fpu amx_bf16 amx_tile", "bf16-mixed"),
        ("", "32-true"),
    ],
)
def test_cpu_precision_follows_the_cpu_flags(tmp_path, flags, precision):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_precision(cpu_flags.__wrapped__(str(cpuinfo))) == precision
    assert cpu_flags.__wrapped__(str(tmp_path / "missing")) == frozenset()


def test_heads_that_read_pixels_get_the_input_and_the_rpn_does_not():
    model = tiny_model(3, [1, 2], char_reader=READER)
    assert isinstance(model.backbone, BackboneWithImage)
    assert isinstance(model.rpn, LevelRPN) and model.rpn.featmap_names == ["0", "1", "2", "pool"]
    assert "backbone.body.0.0.weight" in model.state_dict()  # the body keeps its keys
    with pytest.raises(Exception, match=r"one tuple per feature map of the RPN \(4: \['0', '1', '2', 'pool'\]\)"):
        tiny_model(3, rpn={"anchor_sizes": [[16], [32]]})


def test_a_model_config_of_lpr_0_2_is_the_plate_recipe_in_parts():
    parts = net_as_parts(NET_0_2)
    assert net_as_parts(parts) is parts  # a config in parts is left as it is
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=plate"])
    recipe = OmegaConf.to_container(cfg.model.net, resolve=True)
    assert recipe.pop("zoom")["_target_"] == "lpr.zoom.BoardZoom"  # since lpr 0.5; an lpr 0.2 model reads in one pass
    assert recipe.pop("train_zoom") == 0.5  # since lpr 0.5.1; lpr 0.2's has none: the default, 0
    assert recipe["char_reader"].pop("channels") == [64, 128, 256]  # since lpr 0.6; lpr 0.2's: the default widths
    assert recipe["char_reader"].pop("letter_weight") == 1.0  # since lpr 0.6.1; lpr 0.2's: none
    assert parts == recipe


def test_time_budget_stops_on_time_with_the_schedule_ending_there(synth_dir):
    dm = CocoDataModule(str(synth_dir), batch_size=2, check_images="none")
    scheduler = {"_target_": "lpr.models.schedules.warmup_cosine", "warmup_steps": 2, "min_lr_ratio": 0.01}
    module = MaskRCNNModule(list(dm.classes), NET, {"_target_": "torch.optim.SGD", "lr": 0.01}, scheduler=scheduler)
    budget = TimeBudget(minutes=0.2, window=5, every_n_steps=1)  # 12 s: a dozen steps even on a busy machine
    lrs = LearningRates()
    trainer = quiet_trainer(max_steps=10_000, max_epochs=-1, callbacks=[budget, lrs])
    trainer.fit(module, datamodule=dm)
    steps = trainer.global_step
    step_seconds = budget.spent / steps
    # it stops when the next step would not fit: within a step or two of the twelve seconds
    assert 5 < steps < 10_000 and 12.0 - 2 * step_seconds < budget.spent < 12.0 + step_seconds
    # the cosine ran over the steps the twelve seconds held, not over the 10 000 of max_steps
    assert trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0].total_steps == steps
    assert max(lrs.seen) > 0.005 and lrs.seen[-1] < 0.1 * max(lrs.seen)
    assert budget.state_dict() == {"spent": budget.spent}


class LearningRates(L.Callback):
    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_cropping_transform_trains_on_a_window_that_holds_the_objects_at_inference_scale():
    transform = DetectionTransform(432, 576, [0.0] * 3, [1.0] * 3, size_divisible=1, crop=[96, 128])
    image = torch.rand(3, 288, 384)
    masks = torch.zeros(2, 288, 384, dtype=torch.uint8)
    masks[0, 50:90, 100:120] = masks[1, 60:100, 130:150] = 1
    target = {"boxes": torch.tensor([[100.0, 50.0, 120.0, 90.0], [130.0, 60.0, 150.0, 100.0]]), "masks": masks}
    whole = transform.eval()([image])[0].tensors[0]  # 1.5x: 432x576
    # the targets are resized as the image is; their fringe outside the boxes may fall outside a window
    soft = torch.nn.functional.interpolate(masks[:, None].float(), size=(432, 576), mode="bilinear")[:, 0]
    assert float(soft.sum()) == pytest.approx(float(masks.sum()) * 1.5**2)
    transform.train()
    for _ in range(20):  # about one window in ten starts or ends on a box edge
        images, (out,) = transform([image], [dict(target)])
        crop = images.tensors[0]
        assert crop.shape[-2:] == (96, 128)
        x, y = (target["boxes"][0, :2] * 1.5 - out["boxes"][0, :2]).round().int().tolist()
        assert torch.allclose(crop, whole[:, y : y + 96, x : x + 128], atol=1e-5)
        assert torch.allclose(out["boxes"], target["boxes"] * 1.5 - torch.tensor([x, y, x, y]))
        assert out["masks"].shape[-2:] == (96, 128)
        assert torch.allclose(out["masks"], soft[:, y : y + 96, x : x + 128])
    # objects spanning more than the window widen it; no objects: a window anywhere
    wide = {"boxes": torch.tensor([[10.0, 50.0, 300.0, 70.0]]), "masks": torch.zeros(1, 288, 384, dtype=torch.uint8)}
    assert transform([image], [wide])[0].tensors.shape[-2:] == (96, 435)
    empty = {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 288, 384, dtype=torch.uint8)}
    assert transform([image], [empty])[0].tensors.shape[-2:] == (96, 128)
    assert transform.eval()([image])[0].tensors.shape[-2:] == (432, 576)
