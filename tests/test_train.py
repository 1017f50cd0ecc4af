"""Training end to end on the real composed config, shrunk by debug=fast."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import compose_cfg
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lpr.config_check import logged_keys
from lpr.data.synth import PLATE_CLASSES
from lpr.models.transfer import CLASS_HEADS
from lpr.plates import is_character_class
from lpr.train import _validates_a_subset, build_module, train

VAL_TAGS = [
    "val/mAP",
    "val/mAP_50",
    "val/segm_mAP",
    "val/segm_mAP_50",
    "val/dv_mAP",
    "val/dv_mAP_50",
    "val/dv_mAP_75",
    "val/EIR",
    "val/plate_precision",
]


def test_fast_run_writes_checkpoints_tensorboard_and_eta(fast_run):
    out, metrics, objects, lines = fast_run
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "config.yaml").is_file()
    assert objects["trainer"].global_step == 12  # 12 images / batch 2 x 2 epochs
    assert "train/loss" in metrics and set(VAL_TAGS) <= set(metrics)

    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    heldout_tags = [tag.replace("val/", "val_heldout/") for tag in VAL_TAGS]  # the held-out-style split
    for key in ("train/loss", "train/loss_classifier", "train/loss_mask", "train/lr", *VAL_TAGS, *heldout_tags):
        assert key in tags
    assert [e.step for e in acc.Scalars("val_heldout/EIR")] == [5, 11]
    assert len(acc.Scalars("train/loss")) >= 10
    assert [e.step for e in acc.Scalars("val/EIR")] == [5, 11]  # one point per validation (each epoch)
    assert {f"val_images/{i}" for i in range(4)} <= set(acc.Tags()["images"])
    # every key the run logged is one its objects declare (what checkpoint.monitor is checked against)
    # (Lightning suffixes what a callback logs while validating with several loaders: /dataloader_idx_N)
    declared = logged_keys(compose_cfg(out))
    written = {re.sub(r"/dataloader_idx_\d+$", "", tag) for tag in tags} - {"epoch"}
    assert written <= set(declared) and "mem/rss_gb" in tags and "train/minutes" in tags
    assert len(acc.Images("val_images/0")) == 2  # one drawing per validation

    summaries = [line for line in lines if line.startswith("validation at epoch")]
    assert len(summaries) == 2 and "dv_mAP_50" in summaries[0] and "EIR" in summaries[0]
    assert re.search(r"not read: \d+ board, \d+ board_type, \d+ region, \d+ too_few, \d+ too_many, \d+ grammar, "
                     r"\d+ misread$", summaries[0])  # fmt: skip
    assert len([line for line in lines if line.startswith("val_heldout: validation at epoch")]) == 2

    eta = [line for line in lines if re.search(r"ETA \d+d \d{2}h \d{2}m \d{2}s$", line)]
    assert len(eta) >= 4
    assert all(re.search(r"epoch \d/2 step \d+/12 \| loss .* \| lr .* s/it \(data .*\) \| RAM", line) for line in eta)


def test_best_checkpoints_per_watched_key_record_key_and_value(fast_run):
    out, _, objects, _ = fast_run
    for key, name in (("val/EIR", "best-val_EIR.ckpt"), ("val/dv_mAP", "best-val_dv_mAP.ckpt")):
        meta = torch.load(out / "checkpoints" / name, weights_only=True)["lpr"]
        callback = next(c for c in objects["callbacks"] if getattr(c, "monitor", None) == key)
        assert meta["monitor"] == {"key": key, "value": float(callback.best_model_score), "mode": "max"}


def test_checkpoint_monitor_from_the_command_line(tmp_path):
    cfg = compose_cfg(
        tmp_path, "checkpoint.monitor=[val/mAP,val_heldout/EIR]", "data.synthesize.train=4", "trainer.max_epochs=1"
    )
    train(cfg)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best-val_heldout_EIR.ckpt", "best-val_mAP.ckpt", "last.ckpt"]
    meta = torch.load(tmp_path / "checkpoints" / "best-val_heldout_EIR.ckpt", weights_only=True)["lpr"]
    assert meta["monitor"]["key"] == "val_heldout/EIR"


def test_checkpoint_is_self_describing_and_weights_only(fast_run):
    out, *_ = fast_run
    best = torch.load(out / "checkpoints" / "best-val_EIR.ckpt", weights_only=True)
    meta = best["lpr"]
    assert meta["classes"] == list(PLATE_CLASSES)
    assert meta["monitor"]["key"] == "val/EIR" and isinstance(meta["monitor"]["value"], float)
    assert set(meta["versions"]) == {"lpr", "torch", "torchvision", "lightning"}
    assert meta["config"]["model"]["optimizer"]["lr"] == pytest.approx(1e-3)
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["lpr"]["monitor"] is None  # last.ckpt is not a best file


def test_checkpoint_loads_in_a_fresh_process_from_elsewhere(fast_run, tmp_path):
    out, *_ = fast_run
    code = (
        "import json, sys; from lpr.checkpoint import load; r = load(sys.argv[1]); "
        "print(json.dumps({'out': r.model.roi_heads.box_predictor.cls_score.out_features, "
        "'classes': r.classes, 'training': r.model.training}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out / "checkpoints" / "last.ckpt")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"out": 22, "classes": list(PLATE_CLASSES), "training": False}


def test_resume_continues_steps_with_the_checkpoints_model_config(fast_run):
    out, *_ = fast_run
    ckpt = out / "checkpoints" / "last.ckpt"
    # conf/ "changed" since: a different head width; resume must keep the checkpoint's (512).
    cfg = compose_cfg(
        out.parent / "resumed",
        f"ckpt_path={ckpt}",
        "trainer.max_epochs=3",
        "model.net.box_head.representation_size=64",
    )
    _, objects = train(cfg)
    assert objects["trainer"].global_step == 18
    assert objects["model"].model.roi_heads.box_head.fc7.out_features == 512


def _rows(state: dict, classes: list[str], name: str) -> dict[str, torch.Tensor]:
    out = {}
    for head, rows in CLASS_HEADS.items():
        for kind in ("weight", "bias"):
            tensor = state[f"model.{head}.{kind}"]
            out[f"{head}.{kind}"] = tensor[(classes.index(name) + 1) * rows : (classes.index(name) + 2) * rows]
    return out


@pytest.mark.parametrize(
    "new_classes",
    [list(reversed(PLATE_CLASSES)), ["l_board", "7", "x_new", "a", "r_m_n"]],
    ids=["reordered", "reduced"],
)
def test_init_from_carries_head_rows_by_class_name(fast_run, new_classes):
    out, *_ = fast_run
    ckpt = out / "checkpoints" / "last.ckpt"
    source = torch.load(ckpt, weights_only=True)["state_dict"]
    cfg = compose_cfg(out.parent / "finetune", f"init_from={ckpt}")
    module = build_module(cfg, new_classes, None)
    state = module.state_dict()
    assert module.model.roi_heads.box_predictor.cls_score.out_features == len(new_classes) + 1
    for name in new_classes:
        if name not in PLATE_CLASSES:
            continue
        mine, theirs = _rows(state, new_classes, name), _rows(source, list(PLATE_CLASSES), name)
        for key in mine:
            assert torch.equal(mine[key], theirs[key]), f"{name}: {key}"
    for head, rows in CLASS_HEADS.items():  # background row kept
        assert torch.equal(state[f"model.{head}.weight"][:rows], source[f"model.{head}.weight"][:rows])
    # the character reader's rows (characters only, no background) follow the names too
    reader = "model.roi_heads.reader.classifier.weight"
    source_chars = [c for c in PLATE_CLASSES if is_character_class(c)]
    for j, name in enumerate(c for c in new_classes if is_character_class(c)):
        if name in source_chars:
            assert torch.equal(state[reader][j], source[reader][source_chars.index(name)]), name
    key = "model.backbone.fpn.inner_blocks.0.0.weight"
    assert torch.equal(state[key], source[key])


def test_resume_refuses_other_classes(fast_run, tmp_path):
    out, *_ = fast_run
    cfg = compose_cfg(tmp_path)
    with pytest.raises(ValueError, match="init_from="):
        build_module(cfg, ["0", "1"], str(out / "checkpoints" / "last.ckpt"))


def test_the_final_full_validation_follows_a_subset_not_no_validation():
    # Lightning's limit_val_batches: a float is a share of the split, an int a count of batches
    assert [_validates_a_subset(v) for v in (0.25, 20, 1)] == [True, True, True]
    assert [_validates_a_subset(v) for v in (0, 0.0, 1.0)] == [False, False, False]
