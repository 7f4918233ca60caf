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


def mlp_val_metrics64(ckpt_path: Path, datamodule, n_bins: int = 15) -> dict[str, float]:
    """Accuracy, NLL (nats) and top-label ECE of a checkpoint's MLP on ``datamodule``'s validation split, computed
    here in float64 numpy from the saved weights (Linear -> ReLU per hidden layer, then the head), independently
    of ceexp's metrics: ECE over equal-width bins (lo, hi], a confidence of 0 in the first bin."""
    import numpy as np
    import torch

    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"]
    datamodule.setup()
    h = datamodule.x_val.double().numpy().reshape(len(datamodule.y_val), -1)
    layers = sorted({k.rsplit(".", 1)[0] for k in state if k.startswith("model.net.")},
                    key=lambda k: int(k.split(".")[-1]))
    for i, name in enumerate(layers):
        h = h @ state[f"{name}.weight"].double().numpy().T + state[f"{name}.bias"].double().numpy()
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    y = datamodule.y_val.numpy()
    z = h - h.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    p = np.exp(logp)
    conf, correct = p.max(1), (p.argmax(1) == y).astype(float)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = sum(abs(correct[bins == b].sum() - conf[bins == b].sum()) for b in range(n_bins)) / len(y)
    return {"val/acc": correct.mean(), "val/nll": -logp[np.arange(len(y)), y].mean(), "val/ece": ece}
