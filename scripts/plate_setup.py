"""Shared by the benchmark scripts: the composed ``+experiment=plate`` config and its data, ready."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

import lpr.train  # noqa: F401  (registers the config resolvers)
from lpr.data import CocoDataModule
from lpr.hardware import enlarge_onednn_cache

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def plate_config(overrides: list[str], experiment: str = "plate") -> DictConfig:
    """A plate recipe's composed config with ``overrides``; oneDNN's cache enlarged as ``lpr.train`` does."""
    enlarge_onednn_cache()
    with initialize_config_dir(CONF, version_base="1.3"):
        return compose("train", overrides=[f"+experiment={experiment}", "paths.output_dir=unused", *overrides])


def plate_config_and_data(overrides: list[str], experiment: str = "plate") -> tuple[DictConfig, CocoDataModule]:
    """A plate recipe's config with ``overrides`` and its data module, generated and set up."""
    cfg = plate_config(overrides, experiment)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    return cfg, datamodule


def train_autocast(cfg: DictConfig, device: str = "cpu") -> torch.autocast:
    """The forward's autocast under the recipe's ``trainer.precision`` as Lightning applies it on ``device``
    (``bf16-mixed``: bf16, ``16-mixed``: fp16); disabled for full precision."""
    precision = str(cfg.trainer.precision)
    dtype = torch.float16 if precision.startswith("16") else torch.bfloat16
    return torch.autocast(device, dtype=dtype, enabled=precision.startswith(("bf16", "16")))
