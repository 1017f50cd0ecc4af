"""Pieces of training tested alone: ETA format, schedules, the non-finite-loss stop, checkpoint errors."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lpr.callbacks.budget import TimeBudget
from lpr.callbacks.checkpoint import checkpoint_callbacks, infer_mode
from lpr.callbacks.progress import format_eta
from lpr.checkpoint import CheckpointError, load
from lpr.data import CocoDataModule
from lpr.hardware import cpu_flags, cpu_precision
from lpr.models.maskrcnn import (
    BackboneWithImage,
    DetectionTransform,
    Float32Conv2d,
    LevelRPN,
    PixelBoxHead,
    PixelRoIPool,
    build_maskrcnn,
    mobilenet_v3_fpn,
)
from lpr.models.module import MaskRCNNModule
from lpr.models.schedules import warmup_cosine, warmup_multistep

NET = {
    "_target_": "lpr.models.maskrcnn.build_maskrcnn",
    "backbone": {"_target_": "lpr.models.maskrcnn.mobilenet_v3_fpn", "out_channels": 32},
    "representation_size": 64,
    "mask_head_layers": [16],
}


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
    trainer = quiet_trainer(max_steps=2)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss at global step 0 .*loss_classifier="):
        trainer.fit(module, datamodule=dm)


def test_loss_weights_scale_each_loss_in_the_trained_loss(synth_dir):
    dm = CocoDataModule(str(synth_dir), batch_size=2, check_images="none")
    weights = {"loss_mask": 3.0, "loss_objectness": 0.5}
    module = MaskRCNNModule(list(dm.classes), NET, {"_target_": "torch.optim.SGD", "lr": 0.01}, loss_weights=weights)
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(module, datamodule=dm)
    logged = {k.removeprefix("train/"): v.item() for k, v in trainer.callback_metrics.items() if "loss" in k}
    parts = {k: v for k, v in logged.items() if k != "loss"}
    assert set(parts) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert logged["loss"] == pytest.approx(sum(v * weights.get(k, 1.0) for k, v in parts.items()), rel=1e-5)
    assert logged["loss"] != pytest.approx(sum(parts.values()), rel=1e-3)  # the factors did count
    assert module.hparams["loss_weights"] == weights  # kept in the checkpoint, with the config
    with pytest.raises(ValueError, match=r"unknown losses \['loss_masks'\]"):
        MaskRCNNModule(list(dm.classes), NET, {"_target_": "torch.optim.SGD"}, loss_weights={"loss_masks": 2.0})


def test_lr_multipliers_scale_the_lr_of_named_parameters_through_the_schedule(synth_dir):
    dm = CocoDataModule(str(synth_dir), batch_size=2, check_images="none")
    optimizer = {"_target_": "torch.optim.AdamW", "lr": 0.01, "weight_decay": 0.1}
    scheduler = {"_target_": "lpr.models.schedules.warmup_cosine", "warmup_steps": 2}
    factors = {"roi_heads.mask": 3.0, "roi_heads.mask_predictor": 0.5}  # the longest matching key counts
    module = MaskRCNNModule(list(dm.classes), NET, optimizer, scheduler=scheduler, lr_multipliers=factors)
    trainer = quiet_trainer(max_steps=3)
    trainer.fit(module, datamodule=dm)
    groups = trainer.optimizers[0].param_groups
    group_of = {id(p): g for g in groups for p in g["params"]}
    named = dict(module.model.named_parameters())
    assert len(group_of) == len(named) == sum(len(g["params"]) for g in groups)  # each parameter once
    base = groups[0]["lr"]
    assert 0 < base < 0.01 and groups[0]["weight_decay"] == 0.1  # the schedule moved it; group 0 is the plain one
    expected = {"roi_heads.mask_head.": 3.0, "roi_heads.mask_predictor.": 0.5, "roi_heads.box_head.": 1.0}
    for name, param in named.items():
        factor = next((f for prefix, f in expected.items() if name.startswith(prefix)), None)
        if factor is not None:
            assert group_of[id(param)]["lr"] == pytest.approx(base * factor), name
        # conv and linear weights decay; biases and norm weights (1-D) do not, whatever their lr
        assert group_of[id(param)]["weight_decay"] == (0.1 if param.dim() > 1 else 0.0), name
    with pytest.raises(ValueError, match=r"no parameter of the network starts with \['roi_heads.masks'\]"):
        MaskRCNNModule(list(dm.classes), NET, optimizer, lr_multipliers={"roi_heads.masks": 2.0})


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


def test_rpn_on_a_subset_of_maps_leaves_the_stride4_map_to_the_roi_heads():
    """``rpn_featmap_names`` keeps the RPN (and its anchors) off map "0"; the RoI heads still pool from it."""
    backbone = mobilenet_v3_fpn(returned_layers=[1, 2, 3, 5], out_channels=32)
    model = build_maskrcnn(
        num_classes=3,
        backbone=backbone,
        anchor_sizes=[[16], [32], [64], [128]],
        min_size=128,
        max_size=160,
        representation_size=64,
        mask_head_layers=[16],
        rpn_featmap_names=["pool", "1", "2", "3"],  # any order: the backbone's is used
    )
    assert isinstance(model.rpn, LevelRPN) and model.rpn.featmap_names == ["1", "2", "3", "pool"]
    seen: list[list[tuple[int, int]]] = []
    model.rpn.head.register_forward_hook(lambda m, args, out: seen.append([tuple(f.shape[-2:]) for f in args[0]]))
    image = torch.rand(3, 128, 160)
    target = {
        "boxes": torch.tensor([[20.0, 30.0, 40.0, 70.0]]),
        "labels": torch.tensor([1]),
        "masks": torch.zeros(1, 128, 160, dtype=torch.uint8),
    }
    target["masks"][0, 30:70, 20:40] = 1
    losses = model.train()([image], [target])
    assert set(losses) >= {"loss_objectness", "loss_classifier", "loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert seen == [[(16, 20), (8, 10), (4, 5), (2, 3)]]  # strides 8, 16, 32, 64: no stride-4 map
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2", "3"]
    assert model.roi_heads.box_roi_pool.scales[0] == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match=r"rpn_featmap_names must be distinct names among"):
        build_maskrcnn(num_classes=3, backbone=backbone, rpn_featmap_names=["0", "5"])
    with pytest.raises(ValueError, match=r"one tuple per feature map of the RPN \(3: \['1', '2', 'pool'\]\)"):
        build_maskrcnn(num_classes=3, backbone=backbone, rpn_featmap_names=["1", "2", "pool"])


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


def test_pixel_roi_pool_crops_a_square_around_each_box_from_the_input():
    pool = PixelRoIPool(["0"], size=8, context=0.0)
    image = torch.zeros(1, 3, 64, 64)
    image[:, 0, :, 32:] = 1.0  # red on the right half
    image[:, 1, 40:, :] = 1.0  # green in the bottom rows
    features = {"0": torch.rand(1, 4, 16, 16), "image": image}
    boxes = torch.tensor([[40.0, 8.0, 56.0, 16.0], [4.0, 44.0, 12.0, 60.0]])  # 16x8 and 8x16
    fpn, pixels = pool(features, [boxes], [(64, 64)])
    assert fpn.shape == (2, 4, 7, 7) and pixels.shape == (2, 3, 8, 8)
    assert torch.allclose(pixels[0, 0], torch.ones(8, 8)) and pixels[0, 1].max() == 0  # right half, top
    assert pixels[1, 0].max() == 0 and torch.allclose(pixels[1, 1], torch.ones(8, 8))  # left half, bottom
    # square: the 16x8 box is read as 16x16 around its centre, rows 4..20 (pixel row r holds value r;
    # each of the 8 output rows averages two samples 1 px apart)
    rows = torch.arange(64.0).view(1, 1, 64, 1).expand(1, 3, 64, 64)
    _, square = pool({**features, "image": rows}, [boxes], [(64, 64)])
    assert square[0, 0, 0, 0] == pytest.approx(4.5) and square[0, 0, -1, 0] == pytest.approx(18.5)


def test_pixel_box_head_trains_and_its_cnn_gets_gradients():
    model = build_maskrcnn(
        num_classes=3,
        backbone=mobilenet_v3_fpn(out_channels=32),
        min_size=128,
        max_size=160,
        representation_size=64,
        mask_head_layers=[16],
        pixel_head={"size": 16, "channels": [8, 16]},
    )
    assert isinstance(model.backbone, BackboneWithImage) and isinstance(model.roi_heads.box_head, PixelBoxHead)
    assert model.roi_heads.box_predictor.cls_score.in_features == 64 + 16
    assert isinstance(model.rpn, LevelRPN) and "image" not in model.rpn.featmap_names
    assert "backbone.body.0.0.weight" in model.state_dict()  # the body keeps its keys
    image = torch.rand(3, 128, 160)
    target = {
        "boxes": torch.tensor([[20.0, 30.0, 40.0, 70.0]]),
        "labels": torch.tensor([2]),
        "masks": torch.zeros(1, 128, 160, dtype=torch.uint8),
    }
    losses = model.train()([image], [target])
    sum(losses.values()).backward()
    grad = model.roi_heads.box_head.pixels[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    detections = model.eval()([image])[0]
    assert set(detections) == {"boxes", "labels", "scores", "masks"}


def test_time_budget_stops_on_time_with_the_schedule_ending_there(synth_dir):
    dm = CocoDataModule(str(synth_dir), batch_size=2, check_images="none")
    scheduler = {"_target_": "lpr.models.schedules.warmup_cosine", "warmup_steps": 2, "min_lr_ratio": 0.01}
    module = MaskRCNNModule(list(dm.classes), NET, {"_target_": "torch.optim.SGD", "lr": 0.01}, scheduler=scheduler)
    budget = TimeBudget(minutes=0.1, window=5, every_n_steps=1)
    lrs = LearningRates()
    trainer = quiet_trainer(max_steps=10_000, max_epochs=-1, callbacks=[budget, lrs])
    trainer.fit(module, datamodule=dm)
    steps = trainer.global_step
    step_seconds = budget.spent / steps
    # it stops when the next step would not fit: within a step or two of the six seconds
    assert 5 < steps < 10_000 and 6.0 - 2 * step_seconds < budget.spent < 6.0 + step_seconds
    # the cosine ran over the steps the six seconds held, not over the 10 000 of max_steps
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
