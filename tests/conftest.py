"""Shared fixtures: tiny data sets made on the fly (nothing is downloaded)."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lpr.data.synth import generate
from lpr.train import train

SHARED_TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"
CONF = str(Path(__file__).resolve().parents[1] / "conf")


def sigint_default() -> None:
    """``preexec_fn`` for a child that a test stops with Ctrl-C (SIGINT): a shell's background job
    (``python -m pytest ... &``) ignores SIGINT, and a child inheriting that would never see it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# the model config's parts (conf/model/maskrcnn_mobilenet.yaml), at sizes that train in seconds
TINY_SIZES = {
    "backbone": {"out_channels": 32},
    "transform": {"min_size": 128, "max_size": 160},
    "box_head": {"representation_size": 64},
    "mask_head": {"layers": [16]},
}


def tiny_net(**parts) -> dict:
    """``model.net`` of the CPU model config (its defaults, from the YAML) at tiny sizes, each part
    of ``parts`` (e.g. ``rpn={"anchor_scale": 2.0}``) merged into it; a part given as ``None`` is removed."""
    net = OmegaConf.load(Path(CONF) / "model" / "maskrcnn_mobilenet.yaml").net
    net = OmegaConf.merge(net, TINY_SIZES, {k: v for k, v in parts.items() if v is not None})
    net = OmegaConf.to_container(net, resolve=True)
    return {k: v for k, v in net.items() if k not in parts or parts[k] is not None}


def tiny_model(num_classes: int, char_labels: list[int] | None = None, **parts):
    """A Mask R-CNN built from :func:`tiny_net` (``char_reader`` needs ``char_labels``)."""
    extra = {} if char_labels is None else {"char_labels": char_labels}
    return instantiate(tiny_net(**parts), num_classes=num_classes, **extra, _convert_="all")


READER = {"_target_": "lpr.models.char_reader.CharReader", "_partial_": True, "size": 16, "channels": [8, 16]}


def compose_cfg(tmp: Path, *overrides: str):
    with initialize_config_dir(CONF, version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "+experiment=plate",
                "debug=fast",
                f"paths.output_dir={tmp}",
                f"paths.data_dir={tmp.parent / 'data'}",
                *overrides,
            ],
        )


@pytest.fixture(scope="session")
def fast_run(tmp_path_factory):
    """One ``+experiment=plate debug=fast`` run, shared by the tests that inspect its outputs."""
    out = tmp_path_factory.mktemp("fast") / "run"
    cfg = compose_cfg(out)
    logger = logging.getLogger("lpr")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        metrics, objects = train(cfg)
    finally:
        logger.removeHandler(handler)
    return out, metrics, objects, [r.getMessage() for r in records]


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small synthetic plate set: 16 train and 6 val images."""
    out = tmp_path_factory.mktemp("synth") / "plates"
    generate(out, train=16, val=6, seed=3)
    return out


def write_coco(
    root: Path, images: list[dict], annotations: list[dict], categories: list[dict], draw: bool = True
) -> Path:
    """Write a COCO JSON under ``root`` and (optionally) blank images of the stated sizes."""
    root.mkdir(parents=True, exist_ok=True)
    if draw:
        for im in images:
            cv2.imwrite(str(root / im["file_name"]), np.full((im["height"], im["width"], 3), 128, np.uint8))
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path
