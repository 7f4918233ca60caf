"""The checkpoint schedule (ceexp.callbacks.ScheduledCheckpoint, configs/callbacks/default.yaml): last.ckpt is
written at an epoch's end once every_n_seconds have passed since the last write, and always at the end of training,
so a short run writes it once and a resume from any write is exact."""
from __future__ import annotations

import pytest
import torch
from pytorch_lightning import Callback

from ceexp.files import AtomicCheckpointIO
from ceexp.train import train


@pytest.fixture
def writes(monkeypatch):
    """The epochs of every checkpoint written, read back from what the real writer was handed."""
    seen: list[int] = []
    real = AtomicCheckpointIO.save_checkpoint

    def counting(self, checkpoint, path, storage_options=None):
        seen.append(int(checkpoint["epoch"]))
        return real(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", counting)
    return seen


def _last(cfg):
    return torch.load(f"{cfg.paths.output_dir}/checkpoints/last.ckpt", map_location="cpu", weights_only=False)


def test_a_short_run_writes_last_ckpt_once_at_the_end(fast_cfg, writes):
    cfg = fast_cfg("trainer.max_epochs=4")
    train(cfg)
    assert writes == [3]  # the fourth epoch (0-based 3): training's end, not every epoch
    state = _last(cfg)
    assert state["epoch"] == 3 and state["global_step"] == 4 * 17  # 1078 training samples / 64 = 17 batches
    (end,) = [v for k, v in state["callbacks"].items() if k.startswith("EndOfTraining")]
    assert end["ended"] is True


def test_every_n_seconds_0_writes_every_epoch(fast_cfg, writes):
    train(fast_cfg("trainer.max_epochs=4", "callbacks.model_checkpoint.every_n_seconds=0"))
    assert writes == [0, 1, 2, 3]


class Clock:
    """A stand-in for the ``time`` module of ceexp.callbacks: ``monotonic()`` reads ``now`` (seconds)."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


class TenSecondEpochs(Callback):
    """Each training epoch takes ten seconds on the clock that ceexp.callbacks reads."""

    def on_train_epoch_start(self, trainer, pl_module):
        import ceexp.callbacks

        ceexp.callbacks.time.now += 10.0


def test_epochs_are_written_once_the_interval_has_passed(fast_cfg, writes, monkeypatch):
    import ceexp.callbacks as cb

    monkeypatch.setattr(cb, "time", Clock())
    train(fast_cfg("trainer.max_epochs=4", "callbacks.model_checkpoint.every_n_seconds=15",
                   "+callbacks.clock._target_=tests.test_checkpoints.TenSecondEpochs"))
    # ends at 10 s (skipped), 20 s (written), 30 s (10 s after the write: skipped), 40 s (training ends: written)
    assert writes == [1, 3]


def test_a_negative_interval_is_refused(fast_cfg):
    from ceexp.validation import ConfigError

    with pytest.raises(ConfigError, match=r"callbacks.model_checkpoint.every_n_seconds=-1 is invalid: expected a "
                                          r"number >= 0"):
        train(fast_cfg("callbacks.model_checkpoint.every_n_seconds=-1"))
