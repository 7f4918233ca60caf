"""Losses that learn from the run, wired by ceexp.callbacks.LossUpdates in a real training run: the scheduled focal
loss (FLSc-531) trains each epoch with its scheduled gamma, and AdaFocal's gammas after an epoch are the update of
its validation, recomputed here from the run's own predictions.npz."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from pytorch_lightning import Callback

from ceexp.losses import AdaFocalLoss
from ceexp.train import train


class GammaRecorder(Callback):
    """Writes the loss's gamma at each epoch's first training batch to ``path`` (one JSON list)."""

    def __init__(self, path: str):
        self.path, self.seen = Path(path), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.seen.append(pl_module.loss.gamma)
            self.path.write_text(json.dumps(self.seen))


def test_scheduled_focal_trains_each_epoch_with_its_gamma(fast_cfg):
    cfg = fast_cfg("loss=focal_scheduled", "loss.milestones=[1,3]", "trainer.max_epochs=4", "logger=none",
                   "+callbacks.gammas._target_=tests.test_loss_updates.GammaRecorder",
                   "+callbacks.gammas.path=${paths.output_dir}/gammas.json")
    train(cfg)
    # epochs 0 | 1, 2 | 3: gamma 5, then 3 from epoch 1, then 1 from epoch 3
    assert json.loads((Path(cfg.paths.output_dir) / "gammas.json").read_text()) == [5.0, 3.0, 3.0, 1.0]


def test_adafocal_gammas_are_the_update_of_the_last_validation(fast_cfg):
    cfg = fast_cfg("loss=adafocal", "trainer.max_epochs=1", "logger=none")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    with np.load(run / "predictions.npz") as f:  # the validation of the one epoch's weights
        probs = torch.from_numpy(f["val_logits"]).double().softmax(dim=1).float()
        labels = torch.from_numpy(f["val_labels"])
    fresh = AdaFocalLoss()
    before = fresh.gammas.clone()
    expected = fresh.update_from_validation(probs, labels)
    assert not torch.equal(expected, before)  # the update moved them
    torch.testing.assert_close(state["loss.gammas"], expected, rtol=1e-6, atol=1e-9)


def test_flsc_531_preset_keeps_the_released_proportions_at_any_length(tmp_path):
    from tests.conftest import make_cfg

    # 100 and 250 of the released 350 epochs: at 7 epochs, 2 and 5; at 350, 100 and 250
    for epochs, expected in ((7, [2, 5]), (350, [100, 250]), (20, [6, 14])):
        cfg = make_cfg(tmp_path, ["+loss_preset=flsc_531", f"trainer.max_epochs={epochs}"])
        assert list(cfg.loss.milestones) == expected and list(cfg.loss.gammas) == [5.0, 3.0, 1.0]


def test_epoch_share_outside_0_1_is_refused():
    import pytest
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"trainer": {"max_epochs": 10}, "m": "${ceexp.epoch_share:1.5}"})
    with pytest.raises(Exception, match=r"ceexp.epoch_share:1.5 is invalid: expected a share of trainer.max_epochs"):
        OmegaConf.to_container(cfg, resolve=True)
