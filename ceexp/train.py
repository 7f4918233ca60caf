"""Train one classifier with one loss: ``train(cfg) -> final metrics``, and the Hydra entry point.

    python scripts/train.py                          # digits, MLP, cross-entropy
    python scripts/train.py loss=focal loss.gamma=3  # another loss
    python scripts/train.py -m loss=ce,focal seed=0,1,2

The run directory (``cfg.paths.output_dir``) receives the TensorBoard event file,
``checkpoints/last.ckpt``, ``metrics.json`` and ``reliability_diagram.png``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from ceexp.runs import RunInterrupted, SweepRecord, write_predictions
from ceexp.validation import CONFIG_DIR, ConfigError, validate_config

__all__ = ["train", "build_loss", "main"]

log = logging.getLogger(__name__)


def _instantiate(node: DictConfig, field: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` whose argument errors become one-line :class:`ConfigError`."""
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, (ValueError, TypeError)):
            message = str(cause).splitlines()[0]
            raise ConfigError(message if message.startswith(field) else f"{field}: {message}") from cause
        raise


def build_loss(loss_cfg: DictConfig, train_labels: torch.Tensor, n_classes: int) -> torch.nn.Module:
    """Instantiate the loss config for data with ``n_classes`` classes.

    ``weight: balanced`` / ``alpha: balanced`` become inverse-frequency class weights of the training
    labels (sklearn ``compute_class_weight("balanced")``: ``N / (C * count_c)``); ``pos_weight: balanced`` (one-logit
    BCE) becomes ``n_negative / n_positive``.

    Raises:
        ConfigError: a per-class list of the wrong length, or a float ``alpha`` with more than 2 classes.
    """
    kwargs: dict[str, Any] = {}
    if loss_cfg.get("pos_weight") == "balanced":  # one-logit BCE: n_negative / n_positive of the training labels
        positives = int((train_labels == 1).sum())
        if positives == 0 or positives == len(train_labels):
            raise ConfigError("loss.pos_weight=balanced is undefined: the training split lacks one of the two classes")
        kwargs["pos_weight"] = (len(train_labels) - positives) / positives
    for key in ("weight", "alpha"):
        value = loss_cfg.get(key)
        if value is None or (key == "alpha" and loss_cfg.get("_target_") != "ceexp.losses.FocalLoss"):
            continue  # only FocalLoss's alpha is per-class weights (MbLS's alpha weighs its penalty)
        if value == "balanced":
            from sklearn.utils.class_weight import compute_class_weight

            y = train_labels.numpy()
            present = sorted(set(y.tolist()))
            if len(present) < n_classes:
                raise ConfigError(f"loss.{key}=balanced is undefined: the training split lacks some of the {n_classes} classes")
            w = compute_class_weight("balanced", classes=torch.arange(n_classes).numpy(), y=y)
            kwargs[key] = torch.tensor(w, dtype=torch.float32)
        elif isinstance(value, ListConfig):
            if len(value) != n_classes:
                raise ConfigError(
                    f"loss.{key}={list(value)} is invalid: expected {n_classes} per-class weights (the data has "
                    f"{n_classes} classes), got {len(value)}"
                )
            kwargs[key] = torch.tensor(list(value), dtype=torch.float32)
        elif key == "alpha" and n_classes != 2:
            raise ConfigError(
                f"loss.alpha={value} is invalid for {n_classes} classes: a float alpha is only defined for 2 classes; "
                f"pass a list of {n_classes} per-class weights"
            )
    return _instantiate(loss_cfg, "loss", **kwargs)


def _model_outputs(loss_cfg: DictConfig, n_classes: int) -> int:
    """The model's number of outputs: 1 for a one-logit loss (``loss=bce``, ``sigmoid_focal``: its class has
    ``one_logit = True``), else ``n_classes``.

    Raises:
        ConfigError: a one-logit loss on data with more than two classes.
    """
    from hydra.utils import get_class

    try:
        one_logit = bool(getattr(get_class(loss_cfg._target_), "one_logit", False))
    except Exception:  # noqa: BLE001 - instantiating the loss names a bad target
        return n_classes
    if not one_logit:
        return n_classes
    if n_classes != 2:
        name = loss_cfg._target_.rsplit(".", 1)[-1]
        raise ConfigError(f"loss={name} is invalid for {n_classes} classes: a one-logit binary loss needs two-class "
                          f"data (data=breast_cancer, data=synthetic data.n_classes=2); use loss=ce for more classes")
    return 1


def _instantiate_dict(group: DictConfig | dict | None, field: str, purge_step: int | None = None) -> list:
    """Instantiate every entry of a callbacks/logger dict (a config node or ``{name: node}``) that has a
    ``_target_`` (``null`` entries are skipped).

    ``purge_step`` goes to TensorBoard loggers (``SummaryWriter(purge_step=...)``) when resuming.
    """
    if not group:
        return []
    out = []
    for name, node in group.items():
        if isinstance(node, DictConfig) and "_target_" in node:
            extra = {"purge_step": purge_step} if purge_step is not None and "TensorBoard" in node._target_ else {}
            out.append(_instantiate(node, f"{field}.{name}", **extra))
    return out


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, calibrate and test one model as ``cfg`` says; return the final metrics.

    A straight line: build (data, model, loss, module, callbacks, loggers, trainer), fit, the final weights'
    validation, calibrate (temperature scaling on the validation split), test, report (``predictions.npz``,
    ``reliability_diagram.png``, HParams, ``metrics.json``). What happens around fit is in ``ceexp.callbacks``;
    after testing, the OOD sets and corrupted test splits of ``ood=`` / ``shift=`` in ``ceexp.robustness``.

    Args:
        cfg: a composed ``configs/train.yaml`` (``cfg.paths.output_dir`` is the run directory).

    Returns:
        ``{tag: float}`` for every ``train/``, ``val/`` (the final weights) and ``test/`` metric, plus
        ``"status": "completed"``; the same dict is written to ``<run dir>/metrics.json``. ``resume=`` of a
        completed run returns its ``metrics.json`` unchanged (one log line says so).

    Raises:
        ConfigError: a config value outside what is allowed, before any training.
        FloatingPointError: a non-finite training loss.
        RunInterrupted: Ctrl+C or SIGTERM (``metrics.json`` says ``interrupted``).
    """
    validate_config(cfg)  # before the heavy imports: a bad value is refused at once
    done = _completed_run(cfg)
    if done is not None:
        return done
    import pytorch_lightning as pl

    from ceexp import callbacks as cb
    from ceexp import robustness
    from ceexp.module import ClassifierModule
    from ceexp.tensorboard import log_custom_scalars

    started = time.time()
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _quiet_lightning()
    _set_threads(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = _instantiate(cfg.data, "data")
    datamodule.setup()
    model = _instantiate(cfg.model, "model", input_shape=datamodule.input_shape,
                         num_classes=_model_outputs(cfg.loss, datamodule.n_classes))
    loss = build_loss(cfg.loss, datamodule.train_labels, datamodule.n_classes)
    config = OmegaConf.to_container(cfg, resolve=True)
    module = ClassifierModule(
        model, loss, _instantiate(cfg.optimizer, "optimizer"), datamodule.n_classes,
        _instantiate(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None,
        n_bins=cfg.n_bins, hparams=config, seed=cfg.seed,
    )
    ckpt_path, resumed_step = _checkpoint_to_resume(cfg)
    callbacks, best = cb.build_callbacks(cfg, _instantiate_dict(cb.enabled_callbacks(cfg), "callbacks"))
    # resuming: TensorBoard drops what the interrupted run logged after the checkpoint, so no step repeats
    loggers = _instantiate_dict(cfg.get("logger"), "logger", purge_step=resumed_step)
    trainer = _instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)
    end = cb.EndOfTraining.attach(trainer)
    for logger in trainer.loggers:
        log_custom_scalars(logger)

    with _interruptions_raised(run_dir, trainer):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = cb.validate_final_weights(trainer, module, datamodule, end)
        tested_epoch = _load_tested_weights(module, trainer, best)
        val_logits, val_labels = _validation_predictions(trainer, module, datamodule, cfg)
        temperatures = _calibrate(module, val_logits, val_labels, cfg)
        metrics.update(_test(trainer, module, datamodule, tested_epoch, temperatures, cfg.n_bins))
        metrics.update(cb.other_calibrators(module, val_logits, val_labels, cfg))  # calibration=[vector, ...]
        metrics.update(robustness.evaluate(trainer, module, datamodule, cfg))  # ood=[...], shift=[...]
    metrics = dict(sorted(metrics.items()))
    return _report(cfg, trainer, module, metrics, val_logits, val_labels, config, started)


def _completed_run(cfg: DictConfig) -> dict[str, Any] | None:
    """For ``resume=<run dir>`` of a run whose ``metrics.json`` says ``completed``: that record, untouched (one log
    line says there is nothing to do); ``None`` otherwise."""
    from ceexp.runs import read_metrics

    if not cfg.get("resume"):
        return None
    run_dir = Path(cfg.paths.output_dir)
    try:
        record = read_metrics(run_dir)
    except (OSError, ValueError):
        return None
    if record.get("status") != "completed":
        return None
    log.info("resume: %s completed already; nothing to do (its metrics.json is left as it is)", run_dir)
    return record


def _quiet_lightning() -> None:
    """Silence warnings that say nothing about this run."""
    # the data live in memory as tensors: loader workers would only add start-up time
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    # epoch metrics are torchmetrics values already reduced across processes (trainer=ddp)
    warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed setting.*")
    warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")  # inside Lightning, not ours
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NO_ADVERTS)  # once, however many jobs


@contextlib.contextmanager
def _interruptions_raised(run_dir: Path, trainer):
    """Raise Ctrl+C and SIGTERM as :class:`RunInterrupted` (Lightning turns both into ``SystemExit``; its
    ``on_exception`` hook has recorded ``interrupted`` through ``ceexp.callbacks.RunStatus``)."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise RunInterrupted(run_dir, trainer.current_epoch) from None


def _validation_predictions(trainer, module, datamodule, cfg: DictConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation split's logits ``(N, C)`` and labels ``(N,)`` of the tested weights, when temperature scaling
    or ``predictions.npz`` needs them and validation is on; else empty ``(0, C)`` / ``(0,)`` tensors.

    They are those of the last validation when it validated the tested weights on the whole split in one process
    (the usual case: ``checkpoint=last``), else a prediction pass over the split."""
    from ceexp import callbacks as cb

    if not (cfg.temperature_scaling or cfg.get("save_predictions", True)) or trainer.limit_val_batches == 0:
        return torch.empty(0, datamodule.n_classes), torch.empty(0, dtype=torch.int64)
    same_weights = module.val_step == trainer.global_step and cfg.get("checkpoint", "last") == "last"
    whole_split = trainer.limit_val_batches == 1.0 and trainer.world_size == 1
    if same_weights and whole_split and module.val_logits is not None:
        # clones: outside the inference mode that trainer.validate() ran in, so temperature scaling can use autograd
        return module.val_logits.clone(), module.val_labels.clone()
    return cb.predict_validation(trainer, module, datamodule)


def _calibrate(module, val_logits: torch.Tensor, val_labels: torch.Tensor, cfg: DictConfig) -> dict[str, float]:
    """Fit every temperature on the validation logits and set ``module.temperature`` to the ``temperature_fit``
    one; ``{}`` (one log line) when temperature scaling is off (``temperature_scaling=false``, or ``calibration``
    without ``temperature``) or there is no validation."""
    from ceexp import callbacks as cb

    if not cfg.temperature_scaling or "temperature" not in cfg.get("calibration", ["temperature"]):
        return {}
    if len(val_labels) == 0:
        log.info("temperature scaling skipped: no validation (trainer.limit_val_batches=0)")
        return {}
    temperatures = cb.fit_temperatures(val_logits, val_labels, cfg.n_bins)
    module.temperature = temperatures[cfg.get("temperature_fit", "nll")]
    return temperatures


def _test(trainer, module, datamodule, tested_epoch: int, temperatures: dict[str, float],
          n_bins: int) -> dict[str, float]:
    """Test the module; return ``test/*`` (the logged ones, ``test/epoch`` and every temperature fit's), ``{}``
    (one log line) when there are no test batches (``trainer.limit_test_batches=0``)."""
    from ceexp import callbacks as cb

    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = dict(module.test_results)
    if module.test_logits is None:
        log.info("nothing tested: no test batches (trainer.limit_test_batches=0)")
        return {}
    metrics["test/epoch"] = float(tested_epoch)
    metrics.update(cb.temperature_fits(temperatures, module.test_logits, module.test_labels, n_bins))
    return metrics


def _report(cfg: DictConfig, trainer, module, metrics: dict[str, float], val_logits, val_labels, config: dict,
            started: float) -> dict[str, Any]:
    """The run's files and its last log line: ``predictions.npz``, ``reliability_diagram.png``, HParams, and
    ``metrics.json`` saying ``completed`` (with ``resumable: false`` when no ``last.ckpt`` was written)."""
    from ceexp import callbacks as cb

    run_dir = Path(cfg.paths.output_dir)
    if cfg.get("save_predictions", True) and trainer.is_global_zero:
        n_classes = int(val_logits.shape[1])
        test_logits = module.test_logits if module.test_logits is not None else torch.empty(0, n_classes)
        test_labels = module.test_labels if module.test_labels is not None else torch.empty(0, dtype=torch.int64)
        write_predictions(run_dir, val_logits, val_labels, test_logits, test_labels, module.temperature)
    loss_name = cb.group_choices().get("loss", cfg.loss._target_.rsplit(".", 1)[-1])
    cb.save_test_diagram(trainer, module, run_dir / "reliability_diagram.png", metrics, loss_name)
    cb.log_final_hparams(trainer, config, metrics)
    extra: dict[str, Any] = {"time/seconds": time.time() - started}
    not_resumable = _not_resumable(cfg, trainer, run_dir)
    if not_resumable:
        extra["resumable"] = False
    status = next(c for c in trainer.callbacks if isinstance(c, cb.RunStatus))
    result = status.completed(trainer, {**metrics, **extra})
    if trainer.is_global_zero:  # with several processes (trainer=ddp), one says it
        if not_resumable:
            log.warning("this run cannot be resumed: %s", not_resumable)
        log.info("test: acc %.4f  nll %.4f  ece %.4f -> ece_ts %.4f (T=%.3f)  run dir %s",
                 *(metrics.get(k, float("nan")) for k in ("test/acc", "test/nll", "test/ece", "test/ece_ts")),
                 module.temperature or float("nan"), run_dir)
    return result


def _not_resumable(cfg: DictConfig, trainer, run_dir: Path) -> str | None:
    """Why ``resume=`` cannot continue this run (no ``checkpoints/last.ckpt``), or ``None`` when it can."""
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return None
    if trainer.fast_dev_run:
        return "trainer.fast_dev_run writes no checkpoint"
    if cfg.trainer.get("enable_checkpointing", True) is False:
        return "trainer.enable_checkpointing=false writes no checkpoint"
    if trainer.global_step == 0:
        return "nothing was trained, so no checkpoint was written"
    return "no checkpoints/last.ckpt was written (callbacks.model_checkpoint=null?)"


def _load_tested_weights(module, trainer, best) -> int:
    """Put the weights to test and calibrate into ``module``; return their epoch (epochs trained, from 1).

    ``best`` is the callback of ``ceexp.callbacks.best_checkpoint`` (its best file is loaded), or ``None``: the
    weights at the end of training stay. A best checkpoint that saved nothing (``trainer.fast_dev_run``, no
    validation metric logged) falls back to the weights at the end of training, with one log line.
    """
    if best is None:
        return int(trainer.current_epoch)
    if not best.best_model_path:
        log.info("checkpoint: no %s was logged, so there is no best epoch: the weights at the end of training are "
                 "tested", best.monitor)
        return int(trainer.current_epoch)
    state = torch.load(best.best_model_path, map_location=module.device, weights_only=False)
    module.load_state_dict(state["state_dict"])
    log.info("testing the weights of epoch %d (%s %.4f)", state["epoch"] + 1, best.monitor, float(best.best_model_score))
    return int(state["epoch"]) + 1


_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextlib.contextmanager
def _one_ddp_job():
    """Keep Lightning's DDP launcher to this job, in this job's folder.

    For ranks > 0 Lightning re-runs this script with the same arguments plus ``hydra.run.dir=<HydraConfig
    run.dir>``. Pin that to this job's output folder (``run.dir`` holds ``${now:}``, which could resolve anew),
    and in a multirun replay this job's overrides alone, as a single run: the whole ``-m`` command line would
    start the sweep again in every extra process, each in new folders. Afterwards tear down the process group
    and the launcher's environment variables, so the next job of a sweep launches processes of its own.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    argv, env = list(sys.argv), {k: os.environ.get(k) for k in _DDP_ENV}
    hc = HydraConfig.get()
    with read_write(hc), open_dict(hc):
        hc.run.dir = hc.runtime.output_dir
    if hc.mode == RunMode.MULTIRUN:
        sys.argv = [argv[0], *hc.overrides.task, "hydra.mode=RUN"]
    try:
        yield
    finally:
        sys.argv = argv
        if env["LOCAL_RANK"] is None:  # the launching process (not a relaunched rank, nor torchrun's)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


class _NoAdverts(logging.Filter):
    """Drop Lightning's start-up advert for a logging service."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


def _set_threads(cfg: DictConfig) -> None:
    """``cfg.threads`` torch threads; under the joblib launcher, by default the cores shared out among its
    workers, so parallel jobs do not oversubscribe the machine."""
    import os

    threads = cfg.get("threads")
    if threads is None:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized() and HydraConfig.get().runtime.choices.get("hydra/launcher") == "joblib":
            n_jobs = HydraConfig.get().launcher.get("n_jobs", -1)
            cores = os.cpu_count() or 1
            workers = cores if n_jobs is None or n_jobs < 1 else min(n_jobs, cores)
            threads = max(1, cores // workers)
    if threads:
        torch.set_num_threads(int(threads))


_NO_ADVERTS = _NoAdverts()


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _checkpoint_to_resume(cfg: DictConfig) -> tuple[str | None, int | None]:
    """``(path of last.ckpt, its global step)`` when ``cfg.resume`` names a run with one, else ``(None, None)``.

    A resumed run whose checkpoint is missing (killed before its first epoch ended) starts over in
    place: TensorBoard purges from step 0.
    """
    if not cfg.get("resume"):
        return None, None
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        log.warning("resume: no %s; starting this run over in place", ckpt)
        return None, 0
    step = int(torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)["global_step"])
    log.info("resume: continuing from %s (step %d)", ckpt, step)
    return str(ckpt), step


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    """One job: ``train(cfg)`` under the failure policy (``ceexp.runs.run_job``); returns the value a sweeper
    optimises (``optimized_metric``), NaN when the job failed in a sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ceexp.runs import run_job

    def job() -> dict[str, Any]:
        with _one_ddp_job():
            return train(cfg)

    hc = HydraConfig.get()
    metrics = run_job(job, Path(hc.runtime.output_dir), multirun=hc.mode == RunMode.MULTIRUN,
                      resumed=bool(cfg.get("resume")))
    if metrics is None:
        return float("nan")
    return metrics.get(cfg.get("optimized_metric") or "val/nll", float("nan"))


def main() -> None:
    """Command-line entry: the command line checked and completed in one line each (``ceexp.runs.checked_argv``:
    ``resume=``, unknown choices and keys, Lightning's ``trainer.<argument>`` flags, a single run's values), then
    Hydra, whose own failures are one line too (exit code 2); exit 1 if a job of a sweep failed."""
    from ceexp.runs import checked_argv, run_hydra

    sys.argv[1:] = checked_argv(sys.argv[1:])
    run_hydra(_hydra_main)
    if SweepRecord.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
