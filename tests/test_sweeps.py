"""Config composition and sweeps (lightning-hydra-template style): experiments, multirun, Optuna, Slurm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import lpr.train  # noqa: F401  (registers the lpr.direction resolver)
from lpr.train import train

EXPERIMENTS = sorted(p.stem for p in (Path(CONF) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_trains_one_step(tmp_path, experiment):
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"+experiment={experiment}",
                "debug=fast",
                "trainer.max_steps=1",
                "trainer.accelerator=cpu",
                "trainer.devices=1",
                "trainer.precision=32-true",
                "data.num_workers=0",
                "data.synthesize.workers=1",
                f"paths.output_dir={tmp_path / 'run'}",
                f"paths.data_dir={tmp_path / 'data'}",
            ],
        )
    _, objects = train(cfg)
    assert objects["trainer"].global_step == 1
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_multirun_records_every_job_and_a_failing_one_does_not_stop_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "lpr.train", "-m", "+experiment=plate", "debug=fast",
         "model.optimizer.lr=-1,0.001", f"hydra.sweep.dir={sweep}", f"paths.data_dir={tmp_path / 'data'}"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    jobs = summary["jobs"]
    assert [Path(j["job_dir"]).name for j in jobs] == ["0", "1"]
    assert [j["status"] for j in jobs] == ["failed", "completed"]  # the first failed, the next one still ran
    assert "lr" in jobs[0]["error"].lower() and "model.optimizer.lr=-1" in jobs[0]["overrides"]
    job = jobs[1]
    assert "model.optimizer.lr=0.001" in job["overrides"]
    assert set(job["best"]) == {"val/EIR", "val_heldout/EIR", "val/dv_mAP"}
    for best in job["best"].values():
        assert isinstance(best["value"], float) and Path(best["path"]).is_file()
    assert (Path(job["job_dir"]) / "checkpoints" / "last.ckpt").is_file()
    assert list((Path(job["job_dir"]) / "tensorboard").glob("events.*"))
    assert not (Path(jobs[0]["job_dir"]) / "checkpoints").exists()  # the failed job's folder holds no run
    assert "Sweep summary (2 jobs" in proc.stdout and "failed" in proc.stdout


def _hydra_cfg(*overrides: str):
    with initialize_config_dir(CONF, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_optuna_search_composes_with_direction_from_the_monitored_key():
    cfg = _hydra_cfg("+experiment=plate", "hparams_search=plate_optuna", "paths.output_dir=x")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert OmegaConf.to_container(sweeper, resolve=True)["direction"] == "maximize"  # val/EIR
    assert set(sweeper.params) == {
        "model.optimizer.lr", "model.optimizer.weight_decay", "model.net.rpn.anchor_scale",
        "model.net.roi_heads.batch_size_per_image",
    }  # fmt: skip
    cfg = _hydra_cfg(
        "+experiment=plate", "hparams_search=plate_optuna", "checkpoint.monitor=val/loss", "paths.output_dir=x"
    )
    assert OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)["direction"] == "minimize"


def test_slurm_launcher_composes_with_devices_from_the_trainer():
    cfg = _hydra_cfg(
        "+experiment=plate_gpu",
        "hydra/launcher=slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "hydra.launcher.partition=gpu",
        "paths.output_dir=x",
    )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["partition"] == "gpu"
    resolved = OmegaConf.to_container(cfg, resolve=False)
    assert resolved["trainer"]["strategy"] == "ddp" and resolved["trainer"]["devices"] == 4
