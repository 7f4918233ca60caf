"""What happens around fit: the run's Lightning callbacks, and the steps after training, one job each.

Callbacks (:func:`build_callbacks`; every process holds them, rank 0 alone writes files):

* the config's ``callbacks.*`` entries (among them ``model_checkpoint``, a :class:`ScheduledCheckpoint` writing
  ``last.ckpt``), less those a trainer flag turns off (:func:`enabled_callbacks`:
  ``trainer.enable_progress_bar=false`` drops a progress bar, ``trainer.enable_checkpointing=false`` a checkpoint);
* for ``checkpoint=best_val_nll|best_val_ece``, a ``ModelCheckpoint`` keeping the best epoch (:func:`best_checkpoint`);
* :class:`RunStatus`: ``metrics.json`` says ``running`` from the start of fit, ``completed`` with the final metrics;
* :class:`ReliabilityDiagrams`: the ``val/reliability_diagram`` image every n epochs and of the last validation;
* :class:`LossUpdates`: a loss that learns from the run (FLSc-531's epoch, AdaFocal's validation bins) is told;
* :class:`EndOfTraining` (added after the Trainer is built: :meth:`EndOfTraining.attach`): the weights that end
  training are validated within fit, whatever ends it, and a checkpoint knows whether training had ended.

After fit: :func:`validate_final_weights` (when fit could not), :func:`predict_validation` and
:func:`fit_temperatures` (temperature scaling on the validation split), :func:`temperature_fits` (every fit's
test metrics), :func:`other_calibrators` (``calibration=[vector, dirichlet, ...]``), :func:`save_test_diagram`
(``reliability_diagram.png``), :func:`log_final_hparams` (HParams).
``train()`` raises failures and interruptions; the entry point's wrapper (``ceexp.runs.run_job``) records them, and
keeps the record :class:`RunStatus` wrote for one inside a Lightning call (with the metrics so far).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback, Checkpoint, ModelCheckpoint, ModelSummary, ProgressBar
from pytorch_lightning.trainer.states import TrainerFn

from ceexp.runs import write_status

__all__ = [
    "EndOfTraining", "HPARAM_GROUPS", "LossUpdates", "ReliabilityDiagrams", "RunStatus", "ScheduledCheckpoint",
    "best_checkpoint",
    "build_callbacks", "other_calibrators",
    "enabled_callbacks", "epoch_metrics", "fit_temperatures", "hparams_of", "log_final_hparams",
    "predict_validation", "save_test_diagram", "temperature_fits", "training_ends", "validate_final_weights",
    "validation_is_on",
]

log = logging.getLogger(__name__)

# a trainer flag set to false turns off the callbacks of these kinds (Lightning refuses them otherwise)
FLAG_CALLBACKS = {"enable_progress_bar": ProgressBar, "enable_checkpointing": Checkpoint,
                  "enable_model_summary": ModelSummary}

# the tags of the epoch metrics that fit logs (metrics.json keeps the final ones)
_EPOCH_TAGS = ("train/", "val/")


# -- building ---------------------------------------------------------------------------------------------

def enabled_callbacks(cfg: DictConfig) -> dict[str, DictConfig]:
    """The entries of ``cfg.callbacks`` to instantiate: those with a ``_target_``, less the kinds a trainer flag
    turns off (:data:`FLAG_CALLBACKS`), each left out with one log line.

    Returns:
        ``{name: node}`` in config order (a ``_target_`` that does not import is kept: instantiating it reports it).
    """
    from hydra.utils import get_class

    out: dict[str, DictConfig] = {}
    for name, node in (cfg.get("callbacks") or {}).items():
        if not (isinstance(node, DictConfig) and "_target_" in node):
            continue
        try:
            cls = get_class(node._target_)
        except Exception:  # noqa: BLE001 - instantiation names the bad target
            cls = object
        off = [flag for flag, kind in FLAG_CALLBACKS.items()
               if issubclass(cls, kind) and cfg.trainer.get(flag, True) is False]
        if off:
            log.info("trainer.%s=false: callbacks.%s left out", off[0], name)
            continue
        out[name] = node
    return out


def validation_is_on(trainer_cfg: DictConfig) -> bool:
    """Whether the trainer config validates at all (``trainer.limit_val_batches`` is not 0)."""
    return trainer_cfg.get("limit_val_batches", 1.0) != 0


def best_checkpoint(cfg: DictConfig) -> Optional[ModelCheckpoint]:
    """For ``checkpoint=best_val_nll|best_val_ece``: a ModelCheckpoint keeping ``checkpoints/<name>.ckpt``, the
    weights of the epoch with the lowest monitored validation metric.

    Returns:
        ``None`` for ``checkpoint=last``, and (with one log line: the weights at the end of training are tested)
        when there is no validation (``trainer.limit_val_batches=0``) or no checkpointing
        (``trainer.enable_checkpointing=false``).
    """
    from ceexp.validation import CHECKPOINTS

    name = cfg.get("checkpoint", "last")
    if CHECKPOINTS[name] is None:
        return None
    off = ("trainer.limit_val_batches=0" if not validation_is_on(cfg.trainer) else
           "trainer.enable_checkpointing=false" if cfg.trainer.get("enable_checkpointing", True) is False else None)
    if off:
        log.info("checkpoint=%s: %s, so the weights at the end of training are tested", name, off)
        return None
    monitor, mode = CHECKPOINTS[name]
    return ModelCheckpoint(dirpath=Path(cfg.paths.output_dir) / "checkpoints", filename=name, monitor=monitor,
                           mode=mode, save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)


def build_callbacks(cfg: DictConfig, configured: list[Callback]) -> tuple[list[Callback], Optional[ModelCheckpoint]]:
    """The run's callbacks for the Trainer: ``configured`` (the instantiated :func:`enabled_callbacks`), the
    best-epoch checkpoint first (so ``last.ckpt``, saved after it, holds its best-so-far for a resume), then
    :class:`RunStatus` and :class:`ReliabilityDiagrams`. :class:`EndOfTraining` joins once the Trainer exists.

    Returns:
        ``(callbacks, best)``: ``best`` is the :func:`best_checkpoint` (``None`` when the last weights are tested).
    """
    best = best_checkpoint(cfg)
    callbacks = ([best] if best is not None else []) + list(configured)
    callbacks += [RunStatus(cfg.paths.output_dir), ReliabilityDiagrams(cfg.get("diagram_every_n_epochs", 10)),
                  LossUpdates()]
    return callbacks, best


# -- callbacks ----------------------------------------------------------------------------------------------

class RunStatus(Callback):
    """The run's ``metrics.json`` status: ``running`` from the start of fit, ``completed`` with the final metrics
    (:meth:`completed`), and a failure inside a Lightning call with the metrics so far (:meth:`on_exception`); the
    entry point's wrapper (``ceexp.runs.run_job``) records the rest and keeps such a record.

    Args:
        run_dir: the run folder.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            write_status(self.run_dir, "running")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Record a failure inside fit/validate/test/predict with the metrics so far, as the entry point's failure
        policy (``ceexp.runs.failure_of``) names it; Ctrl+C and SIGTERM (Lightning's ``SystemExit``) are
        ``interrupted`` (``train()`` raises them as ``RunInterrupted``)."""
        from ceexp.runs import RunInterrupted, failure_of

        if isinstance(exception, (KeyboardInterrupt, SystemExit)):
            exception = RunInterrupted(self.run_dir, trainer.current_epoch)
        failure = failure_of(exception, self.run_dir)
        if trainer.is_global_zero:
            so_far = {k: float(v) for k, v in trainer.callback_metrics.items()}
            write_status(self.run_dir, failure.status, error=failure.error, **so_far)

    def completed(self, trainer: pl.Trainer, metrics: dict[str, Any]) -> dict[str, Any]:
        """Write ``{"status": "completed", **metrics}`` (rank 0) and return the record."""
        if trainer.is_global_zero:
            return write_status(self.run_dir, "completed", **metrics)
        return {"status": "completed", **metrics}


class EndOfTraining(Callback):
    """The weights that end training are validated within fit, and each checkpoint knows whether training had ended.

    Lightning validates at the last batch of every ``check_val_every_n_epoch``-th epoch, and at any batch where
    ``trainer.should_stop`` is set. Training that ends anywhere else (``max_epochs`` not a multiple of the
    validation interval, ``max_steps`` in the middle of an epoch, ``max_time``) would end on weights nobody validated,
    and its last validation metrics, last checkpoint and last reliability diagram would be of older weights. At the
    batch after which training ends (:attr:`ended` from then on), this callback lets that epoch validate
    (``check_val_every_n_epoch`` is 1 until fit ends; in the middle of an epoch it also sets ``trainer.should_stop``),
    so the epoch's validation, the ``last.ckpt`` written at the epoch's end and the diagram are of the final weights.
    It runs after Lightning's Timer (``max_time``), which sets ``should_stop`` in the same hook: add it with
    :meth:`attach`.

    Training that early stopping ends after a validation is already validated; training that ends where this
    callback cannot see it coming is validated after fit by :func:`validate_final_weights`.

    State (in every checkpoint):
        ``ended``: training had ended when the checkpoint was written: a run resumed from it trains no further
        (``max_time`` is no loop limit that Lightning would see as reached);
        ``validated_step``: the global step of the last validation during fit (-1: none);
        ``metrics``: the ``train/`` and ``val/`` epoch metrics at that moment, ``{tag: float}``.

    Attributes:
        ended: training ends after the current batch or has ended.
        metrics: the checkpoint's ``metrics`` after a resume (``{}`` otherwise).
        validated_step: as above, for this run.
    """

    def __init__(self):
        self.ended = False
        self.resumed_ended = False
        self.validated_step = -1
        self.metrics: dict[str, float] = {}
        self._interval: Optional[int] = None
        self._trainer: Optional[pl.Trainer] = None

    @classmethod
    def attach(cls, trainer: pl.Trainer) -> "EndOfTraining":
        """Add a new instance to ``trainer``'s callbacks after Lightning's own (its Timer) and before the checkpoints
        (which save its state); return it."""
        callback = cls()
        callbacks = trainer.callbacks
        first_checkpoint = next((i for i, c in enumerate(callbacks) if isinstance(c, Checkpoint)), len(callbacks))
        callbacks.insert(first_checkpoint, callback)
        return callback

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.resumed_ended:
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self.ended or not _ends_after(trainer, batch_idx):
            return
        self.ended = True
        if batch_idx + 1 < trainer.num_training_batches:
            # Lightning validates in the middle of an epoch that stops early (min_epochs/min_steps permitting);
            # not set at an epoch's last batch, where it would also re-log the last per-step values at this step
            trainer.should_stop = True
        if trainer.check_val_every_n_epoch not in (None, 1):
            self._interval, trainer.check_val_every_n_epoch = trainer.check_val_every_n_epoch, 1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.validated_step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._interval is not None:
            trainer.check_val_every_n_epoch, self._interval = self._interval, None

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        ended = bool(trainer is not None and training_ends(trainer))  # early stopping decides after validation
        metrics = {**self.metrics, **epoch_metrics(trainer)} if trainer is not None else dict(self.metrics)
        return {"ended": ended, "validated_step": self.validated_step, "metrics": metrics}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.resumed_ended = bool(state_dict.get("ended", False))
        self.validated_step = int(state_dict.get("validated_step", -1))
        self.metrics = dict(state_dict.get("metrics", {}))


def training_ends(trainer: pl.Trainer) -> bool:
    """Whether training ends after the current epoch: ``trainer.should_stop``, or :class:`EndOfTraining` saw it
    coming (consistent across processes: the loop limits are, and Lightning syncs ``should_stop``)."""
    return trainer.should_stop or any(c.ended for c in trainer.callbacks if isinstance(c, EndOfTraining))


def _ends_after(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether training ends after batch ``batch_idx`` (checked in ``on_train_batch_end``, after the optimizer
    step): ``trainer.should_stop`` (e.g. ``max_time``), ``max_steps`` reached, or the last batch of the last epoch."""
    if trainer.should_stop:
        return True
    max_steps = trainer.max_steps
    if max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps:
        return True
    max_epochs = trainer.max_epochs
    last_batch = batch_idx + 1 >= trainer.num_training_batches
    return last_batch and max_epochs is not None and max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs


class ScheduledCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` on a schedule: at the end of a training epoch (after its validation) once
    ``every_n_seconds`` of training have passed since the last write, at the end of the epoch that ends training,
    and when training ends after this callback's epoch-end hook (a stop decided by a later callback).

    A checkpoint every epoch costs ~8 ms on the default run's MLP, a quarter of a digits sweep job's 30 epochs; a
    resume continues from the last write, which is exact (an epoch boundary), so a kill loses at most
    ``every_n_seconds`` of training, not the run.

    Args:
        every_n_seconds: the least time between two writes during training (seconds, >= 0; 0: every epoch).
        **kwargs: ``ModelCheckpoint``'s arguments (``dirpath``, ``filename``, ``save_top_k``, ...).

    Raises:
        ValueError: ``every_n_seconds`` negative.
    """

    def __init__(self, every_n_seconds: float = 60.0, **kwargs: Any):
        super().__init__(**kwargs)
        if not every_n_seconds >= 0:
            raise ValueError(f"every_n_seconds={every_n_seconds} is invalid: expected a number of seconds >= 0")
        self.every_n_seconds = float(every_n_seconds)
        self._last_write = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_write = time.monotonic()

    def _should_skip_saving_checkpoint(self, trainer: pl.Trainer) -> bool:
        if super()._should_skip_saving_checkpoint(trainer):
            return True
        return not training_ends(trainer) and time.monotonic() - self._last_write < self.every_n_seconds

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self._last_write = time.monotonic()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))


class LossUpdates(Callback):
    """What a training objective learns from the run: a loss with ``set_epoch(epoch)`` (the scheduled focal loss
    FLSc-531) hears each training epoch's number (from 0) before its first batch; a loss with
    ``update_from_validation(probs (N, C), target (N,))`` (AdaFocal's per-bin gammas) gets the whole validation
    split's softmax probabilities and labels after each validation during fit (gathered from every process, so
    each holds the same state). The losses keep their state in buffers, so checkpoints and resumes carry it.
    """

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = getattr(pl_module, "loss", None)
        if hasattr(loss, "set_epoch"):
            loss.set_epoch(trainer.current_epoch)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = getattr(pl_module, "loss", None)
        if (not hasattr(loss, "update_from_validation") or trainer.sanity_checking
                or trainer.state.fn != TrainerFn.FITTING or pl_module.val_logits is None):
            return
        logits, labels = pl_module.val_logits, pl_module.val_labels
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(parts, (logits, labels))
            logits, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        device = next(iter(loss.buffers()), logits).device
        loss.update_from_validation(logits.float().softmax(dim=1).to(device), labels.to(device))


class ReliabilityDiagrams(Callback):
    """The ``val/reliability_diagram`` image (TensorBoard loggers): every ``every_n_epochs`` epochs, and of the last
    validation of training whatever ended it (max_epochs, max_steps, max_time, early stopping, fast_dev_run).

    Drawn from ``pl_module.val_metrics`` (its ``ece`` metric's ``reliability_bins()``, gathered from every process;
    rank 0 draws) after the validation, at the step of the validation's scalars, titled with the epochs trained.

    Args:
        every_n_epochs: 0 draws the last validation's only.

    State (in every checkpoint): ``drawn_step``, the global step of the last image, so a run resumed after its
    training ended does not draw its last diagram twice.
    """

    TAG = "val/reliability_diagram"

    def __init__(self, every_n_epochs: int = 10):
        self.every_n_epochs = int(every_n_epochs or 0)
        self.validated_step = -1
        self.drawn_step = -1
        self._trainer: Optional[pl.Trainer] = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == TrainerFn.VALIDATING:  # the final weights, validated after fit
            self._draw(trainer, pl_module, trainer.current_epoch)
            return
        if trainer.state.fn != TrainerFn.FITTING:
            return
        self.validated_step = trainer.global_step
        epoch = trainer.current_epoch + 1
        if training_ends(trainer) or (self.every_n_epochs and epoch % self.every_n_epochs == 0):
            self._draw(trainer, pl_module, epoch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # training stopped after its last validation (early stopping decides after it): draw that one now
        if self.validated_step == trainer.global_step != self.drawn_step:
            self._draw(trainer, pl_module, trainer.current_epoch)

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        from pytorch_lightning.loggers import TensorBoardLogger

        self.drawn_step = trainer.global_step
        if not any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers):
            return
        metric = pl_module.val_metrics.ece
        bins, ece = metric.reliability_bins(), float(metric.compute())  # every process: they gather
        if not trainer.is_global_zero:
            return
        from ceexp.plots import reliability_diagram_image

        image = reliability_diagram_image(bins, title=f"validation, epoch {epoch}", ece=ece)
        # the step of the validation's scalars (the last optimizer step's): a resume purges from the step after
        step = max(trainer.global_step - 1, 0)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(self.TAG, image, step, dataformats="HWC")

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        # written as training ends after its last validation: on_train_end draws that diagram after this checkpoint
        ending = trainer is not None and training_ends(trainer) and self.validated_step == trainer.global_step
        return {"drawn_step": trainer.global_step if ending else self.drawn_step, "validated_step": self.validated_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.drawn_step = int(state_dict.get("drawn_step", -1))
        self.validated_step = int(state_dict.get("validated_step", -1))


# -- after fit --------------------------------------------------------------------------------------------

def epoch_metrics(trainer: Optional[pl.Trainer]) -> dict[str, float]:
    """The ``train/`` and ``val/`` values among ``trainer.callback_metrics``, as floats."""
    if trainer is None:
        return {}
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(_EPOCH_TAGS)}


def validate_final_weights(trainer: pl.Trainer, pl_module: pl.LightningModule, datamodule: pl.LightningDataModule,
                           end: EndOfTraining) -> dict[str, float]:
    """The final ``train/`` and ``val/`` epoch metrics, validating the final weights first if fit did not.

    Fit validates the weights that end training (:class:`EndOfTraining`) unless training ended where no callback
    could see it coming (e.g. early stopping on a training metric between validations, or
    ``trainer.limit_train_batches=0``); then they are validated here, logged at the last training step (one log
    line says so), and ``last.ckpt`` is written again so that it records this validation (a resume of the ended
    run validates nothing twice). Nothing is validated when validation is off (``trainer.limit_val_batches=0``).

    Returns:
        ``{tag: float}``: the metrics of this fit over those restored from the checkpoint of a resumed run (a run
        resumed after its training ended trains and validates nothing, and keeps its own).
    """
    metrics = {**end.metrics, **epoch_metrics(trainer)}
    if trainer.limit_val_batches == 0 or end.validated_step == trainer.global_step:
        return metrics
    log.info("validating the final weights (step %d): training ended after an epoch without validation",
             trainer.global_step)
    trainer.validate(pl_module, datamodule=datamodule, verbose=False)
    metrics.update({k: v for k, v in epoch_metrics(trainer).items() if k.startswith("val/")})
    # last.ckpt must know this validation happened: a resume of the ended run would otherwise repeat it
    end.validated_step, end.metrics = trainer.global_step, dict(metrics)  # train/* too: validate() drops them
    for checkpoint in trainer.checkpoint_callbacks:
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.monitor is None and checkpoint.best_model_path:
            trainer.save_checkpoint(checkpoint.best_model_path)
    return metrics


def predict_validation(trainer: pl.Trainer, pl_module: pl.LightningModule,
                       datamodule: pl.LightningDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole validation split's logits ``(N, C)`` float32 and labels ``(N,)`` int64 (the datamodule's predict
    split, in every process), on the CPU."""
    batches = trainer.predict(pl_module, datamodule=datamodule)
    return torch.cat([b[0] for b in batches]).float().cpu(), torch.cat([b[1] for b in batches]).cpu()


def fit_temperatures(logits: torch.Tensor, target: torch.Tensor, n_bins: int) -> dict[str, float]:
    """The temperature of each fit in ``ceexp.calibration.METHODS`` (``nll``: L-BFGS on the NLL; ``ece_grid``: the
    grid of Mukhoti et al.'s code minimising ECE) on validation logits ``(N, C)`` and labels ``(N,)``."""
    from ceexp.calibration import METHODS, TemperatureScaler

    return {method: TemperatureScaler(method=method, n_bins=n_bins).fit(logits, target).temperature
            for method in METHODS}


def temperature_fits(temperatures: dict[str, float], logits: torch.Tensor, target: torch.Tensor,
                     n_bins: int) -> dict[str, float]:
    """``test/temperature_<fit>``, ``test/ece_ts_<fit>`` and ``test/nll_ts_<fit>`` (nats) of every temperature fit on
    the test logits ``(N, C)`` and labels ``(N,)``, so the fit ``temperature_fit`` did not choose is reported too
    (the chosen one is also ``test/*_ts``)."""
    from ceexp.metrics import expected_calibration_error

    out = {}
    for method, t in temperatures.items():
        scaled = logits.double() / t
        out[f"test/temperature_{method}"] = float(t)
        out[f"test/ece_ts_{method}"] = float(expected_calibration_error(scaled.softmax(1), target, n_bins=n_bins))
        out[f"test/nll_ts_{method}"] = float(torch.nn.functional.cross_entropy(scaled, target))
    return out


def other_calibrators(pl_module: pl.LightningModule, val_logits: torch.Tensor, val_labels: torch.Tensor,
                      cfg: DictConfig) -> dict[str, float]:
    """The post-hoc calibrators of ``cfg.calibration`` other than temperature scaling (``vector``, ``matrix``,
    ``dirichlet``, ``histogram``, ``isotonic``; ``ceexp.calibration.CALIBRATORS``), each fitted on the validation
    logits ``(N, C)`` and applied to the test logits: ``test/<metric>_<method>`` for every metric ``EvalMetrics``
    logs (``ceexp.calibration.calibrated_metrics``), logged to TensorBoard and returned. A method the validation
    split is too small for (fewer samples than it needs, a class absent) is left out with one log line; the
    others still run. ``{}`` when none is asked for, nothing was tested or there is no validation.
    """
    from ceexp.calibration import calibrated_log_probs, calibrated_metrics, fit_calibrators

    methods = [m for m in cfg.get("calibration", ["temperature"]) if m != "temperature"]
    test_logits = pl_module.test_logits
    if not methods or test_logits is None or len(test_logits) == 0:
        return {}
    if len(val_labels) == 0:
        log.info("calibration=%s skipped: no validation (trainer.limit_val_batches=0)", methods)
        return {}
    n_classes = int(val_logits.shape[1])
    fitted, _ = fit_calibrators(methods, val_logits, val_labels, n_classes)  # it logs a skip in one line
    values = calibrated_metrics(calibrated_log_probs(fitted, test_logits), pl_module.test_labels, cfg.n_bins)
    out = {f"test/{k}": float(v) for k, v in values.items()}
    if out and pl_module._trainer is not None:
        pl_module._log_epoch(dict(out))
    return out


def save_test_diagram(trainer: pl.Trainer, pl_module: pl.LightningModule, path: str | Path,
                      metrics: dict[str, float], loss_name: str) -> Optional[Path]:
    """Draw the test split's reliability diagram, before and (with a temperature) after temperature scaling, into
    ``path`` (rank 0; every process gathers the bins). ``None`` when nothing was tested."""
    from ceexp.plots import save_reliability_diagrams

    if "test/ece" not in metrics:
        return None
    panels = [(pl_module.test_metrics.ece.reliability_bins(), "test, before temperature scaling", metrics["test/ece"])]
    if pl_module.temperature is not None:
        panels.append((pl_module.test_metrics_ts.ece.reliability_bins(),
                       f"after temperature scaling (T = {pl_module.temperature:.3g})", metrics["test/ece_ts"]))
    if not trainer.is_global_zero:
        return None
    return save_reliability_diagrams(path, panels,
                                     suptitle=f"loss={loss_name}, test accuracy {100 * metrics['test/acc']:.1f}%")


# -- HParams ------------------------------------------------------------------------------------------------

# the groups that define an experiment, in the order the HParams tab shows them after the overridden keys
HPARAM_GROUPS = ("loss", "seed", "model", "data", "optimizer", "scheduler", "n_bins")


def group_choices() -> dict[str, str]:
    """This job's config group choices (``loss: focal``...), less Hydra's own and paths/callbacks/logger; ``{}``
    outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None
            and not k.startswith("hydra") and k not in ("paths", "callbacks", "logger")}


def _overridden() -> list[str]:
    """The keys this job's command line set (``loss``, ``loss.gamma``, ``seed``...): in a sweep, what varies."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    keys = []
    for line in HydraConfig.get().overrides.task:
        key = line.split("=", 1)[0].lstrip("+~").split("@", 1)[0]
        if key and not key.startswith(("hydra", "paths", "resume", "callbacks", "logger")) and key not in keys:
            keys.append(key)
    return keys


def hparams_of(config: dict) -> dict[str, Any]:
    """The hyperparameters shown in TensorBoard's HParams tab, in the order of its columns.

    TensorBoard shows only the first few columns by default, so they come in this order: first what this job's
    command line set (in a sweep: what varies, e.g. ``loss``, ``loss.gamma``, ``seed``), then for each group of
    :data:`HPARAM_GROUPS` its chosen option (``loss: focal``) followed by its flattened settings (``loss.gamma``,
    ...), the other group choices (``trainer``, ``experiment``...), and ``trainer.max_epochs``; no ``_target_``
    or paths.

    Args:
        config: the plain, resolved run config.
    """
    from ceexp.tensorboard import flatten

    choices = group_choices()
    settings = {k: v for k, v in flatten({k: config[k] for k in HPARAM_GROUPS if config.get(k) is not None}).items()
                if not k.endswith(("_target_", "_partial_"))}
    ordered: dict[str, Any] = {}
    for group in HPARAM_GROUPS:
        if group in choices:
            ordered[group] = choices[group]
        ordered.update({k: v for k, v in settings.items() if k == group or k.startswith(group + ".")})
    ordered.update({k: v for k, v in choices.items() if k not in ordered})
    ordered["trainer.max_epochs"] = config["trainer"].get("max_epochs")
    flat = flatten(config)
    first = {k: choices.get(k, ordered.get(k, flat.get(k))) for k in _overridden()}
    first = {k: v for k, v in first.items() if v is not None}
    return {**first, **{k: v for k, v in ordered.items() if k not in first}}


def log_final_hparams(trainer: pl.Trainer, config: dict, metrics: dict[str, float]) -> None:
    """Write the run's HParams (:func:`hparams_of` of ``config``, with the final ``metrics``) into every logger
    and finalise it as a success (rank 0)."""
    from ceexp.tensorboard import log_hparams

    if not trainer.is_global_zero:
        return
    params = hparams_of(config)
    for logger in trainer.loggers:
        log_hparams(logger, params, metrics)
        logger.finalize("success")
