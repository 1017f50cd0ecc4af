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


def plate_config(overrides: list[str]) -> DictConfig:
    """The plate recipe's composed config with ``overrides``; oneDNN's cache enlarged as ``lpr.train`` does."""
    enlarge_onednn_cache()
    with initialize_config_dir(CONF, version_base="1.3"):
        return compose("train", overrides=["+experiment=plate", "paths.output_dir=unused", *overrides])


def plate_config_and_data(overrides: list[str]) -> tuple[DictConfig, CocoDataModule]:
    """The plate recipe's config with ``overrides`` and its data module, generated and set up."""
    cfg = plate_config(overrides)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    return cfg, datamodule


def train_autocast(cfg: DictConfig) -> torch.autocast:
    """The forward's autocast under the recipe's ``trainer.precision`` (``bf16-mixed`` where the CPU has
    native bf16: bf16 autocast, as Lightning applies it); disabled for full precision."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=str(cfg.trainer.precision).startswith("bf16"))
