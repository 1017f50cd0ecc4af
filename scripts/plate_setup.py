"""Shared by the benchmark scripts: the composed ``+experiment=plate`` config and its data, ready."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from lpr.data import CocoDataModule

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def plate_config_and_data(overrides: list[str]) -> tuple[DictConfig, CocoDataModule]:
    """The plate recipe's config with ``overrides`` and its data module, generated and set up."""
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=plate", "paths.output_dir=unused", *overrides])
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    return cfg, datamodule
