"""Shared fixtures: a composed train config, shrunk so a real run takes seconds."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from ceexp.validation import CONFIG_DIR

ROOT = Path(__file__).resolve().parent.parent


def make_cfg(run_dir: Path, overrides: list[str] = ()) -> DictConfig:
    """Compose configs/train.yaml with ``overrides`` as Hydra would, with the run directory set to ``run_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


FAST = ["trainer.max_epochs=2", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]


@pytest.fixture
def fast_cfg(tmp_path):
    """A factory: ``fast_cfg(*overrides)`` -> config for a 2-epoch run in a fresh ``tmp_path`` run directory."""

    def factory(*overrides: str) -> DictConfig:
        return make_cfg(tmp_path / "run", [*FAST, *overrides])

    return factory
