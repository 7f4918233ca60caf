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

from ceexp.runs import RunInterrupted, SweepRecord, resume_argv, write_predictions, write_status
from ceexp.validation import CHECKPOINTS, CONFIG_DIR, ConfigError, check_group_choices, validate_config

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
    labels (sklearn ``compute_class_weight("balanced")``: ``N / (C * count_c)``).

    Raises:
        ConfigError: a per-class list of the wrong length, or a float ``alpha`` with more than 2 classes.
    """
    kwargs: dict[str, Any] = {}
    for key in ("weight", "alpha"):
        value = loss_cfg.get(key)
        if value is None:
            continue
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


def _instantiate_dict(group: DictConfig | None, field: str, purge_step: int | None = None) -> list:
    """Instantiate every entry of a callbacks/logger dict that has a ``_target_`` (``null`` entries are skipped).

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


def _choices() -> dict[str, str]:
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


# the groups that define an experiment, in the order the HParams tab shows them after the overridden keys
HPARAM_GROUPS = ("loss", "seed", "model", "data", "optimizer", "scheduler", "n_bins")


def hparams_of(config: dict) -> dict[str, Any]:
    """The hyperparameters shown in TensorBoard's HParams tab, in the order of its columns.

    TensorBoard shows only the first few columns by default, so they come in this order: first what this job's
    command line set (in a sweep: what varies, e.g. ``loss``, ``loss.gamma``, ``seed``), then for each group of
    :data:`HPARAM_GROUPS` its chosen option (``loss: focal``) followed by its flattened settings (``loss.gamma``,
    ...), the other group choices (``trainer``, ``experiment``...), and ``trainer.max_epochs``; no ``_target_``
    or paths.
    """
    from ceexp.tensorboard import flatten

    choices = _choices()
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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, test and temperature-scale one model as ``cfg`` says; return the final metrics.

    Args:
        cfg: a composed ``configs/train.yaml`` (``cfg.paths.output_dir`` is the run directory).

    Returns:
        ``{tag: float}`` for every ``train/``, ``val/`` (last epoch) and ``test/`` metric, plus
        ``"status": "completed"``; the same dict is written to ``<run dir>/metrics.json``.

    Raises:
        ConfigError: a config value outside what is allowed, before any training.
        FloatingPointError: a non-finite training loss.
    """
    validate_config(cfg)  # before the heavy imports: a bad value is refused at once
    import pytorch_lightning as pl

    from ceexp.module import ClassifierModule
    from ceexp.plots import save_reliability_diagrams
    from ceexp.tensorboard import log_custom_scalars, log_hparams

    started = time.time()
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # the data live in memory as tensors: loader workers would only add start-up time
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    # epoch metrics are torchmetrics values already reduced across processes (trainer=ddp)
    warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed setting.*")
    warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")  # inside Lightning, not ours
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NO_ADVERTS)  # once, however many jobs

    _set_threads(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = _instantiate(cfg.data, "data")
    datamodule.setup()
    model = _instantiate(cfg.model, "model", input_shape=datamodule.input_shape, num_classes=datamodule.n_classes)
    loss = build_loss(cfg.loss, datamodule.train_labels, datamodule.n_classes)
    optimizer = _instantiate(cfg.optimizer, "optimizer")
    scheduler = _instantiate(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None

    config = OmegaConf.to_container(cfg, resolve=True)
    module = ClassifierModule(
        model, loss, optimizer, datamodule.n_classes, scheduler,
        n_bins=cfg.n_bins, diagram_every_n_epochs=cfg.get("diagram_every_n_epochs", 10), hparams=config,
        seed=cfg.seed,
    )
    ckpt_path, resumed_step = _checkpoint_to_resume(cfg)
    callbacks = _instantiate_dict(cfg.get("callbacks"), "callbacks")
    best = _best_checkpoint(cfg)
    if best is not None:  # before last.ckpt's callback, so last.ckpt holds this epoch's best-so-far (resume)
        callbacks.insert(0, best)
    # resuming: TensorBoard drops what the interrupted run logged after the checkpoint, so no step repeats
    loggers = _instantiate_dict(cfg.get("logger"), "logger", purge_step=resumed_step)
    trainer = _instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)

    for logger in loggers:
        log_custom_scalars(logger)
    # with several processes (trainer=ddp) rank 0 alone writes the run's files
    record_status = write_status if trainer.is_global_zero else _no_status
    record_status(run_dir, "running")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if not any(k.startswith("val/") for k in trainer.callback_metrics):
            trainer.validate(module, datamodule=datamodule, verbose=False)  # resumed after its last epoch
        metrics = {k: v for k, v in _numbers(trainer.callback_metrics).items() if k.startswith(("train/", "val/"))}
        tested_epoch = _load_tested_weights(module, trainer, best)
        val_logits = val_target = None
        if cfg.temperature_scaling or cfg.get("save_predictions", True):
            # the datamodule's predict split is the whole validation split, in every process
            batches = trainer.predict(module, datamodule=datamodule)
            val_logits = torch.cat([b[0] for b in batches]).float()
            val_target = torch.cat([b[1] for b in batches])
        temperatures = {}
        if cfg.temperature_scaling:
            temperatures = _fit_temperatures(val_logits, val_target, cfg.n_bins)
            module.temperature = temperatures[cfg.get("temperature_fit", "nll")]
        for result in trainer.test(module, datamodule=datamodule, verbose=False):
            metrics.update(_numbers(result))
        metrics["test/epoch"] = float(tested_epoch)
        metrics.update(_temperature_fits(temperatures, module.test_logits, module.test_labels, cfg.n_bins))
        if cfg.get("save_predictions", True) and trainer.is_global_zero:
            write_predictions(run_dir, val_logits, val_target, module.test_logits, module.test_labels,
                              module.temperature)
    except (KeyboardInterrupt, SystemExit) as e:  # Ctrl+C (Lightning turns it into SystemExit) or SIGTERM
        record_status(run_dir, "interrupted", error=f"{type(e).__name__} at epoch {trainer.current_epoch}, "
                      f"step {trainer.global_step}", **_numbers(trainer.callback_metrics))
        raise RunInterrupted(run_dir, trainer.current_epoch) from None
    except Exception as e:
        record_status(run_dir, "failed", error=_one_line(e), **_numbers(trainer.callback_metrics))
        raise
    metrics = dict(sorted(metrics.items()))

    loss_name = _choices().get("loss", cfg.loss._target_.rsplit(".", 1)[-1])
    # reliability_bins() gathers across processes: every rank calls it, rank 0 draws
    panels = [(module.test_metrics.ece.reliability_bins(), "test, before temperature scaling", metrics["test/ece"])]
    if module.temperature is not None:
        panels.append(
            (module.test_metrics_ts.ece.reliability_bins(), f"after temperature scaling (T = {module.temperature:.3g})",
             metrics["test/ece_ts"])
        )
    if not trainer.is_global_zero:
        return {"status": "completed", **metrics}
    save_reliability_diagrams(run_dir / "reliability_diagram.png", panels,
                              suptitle=f"loss={loss_name}, test accuracy {100 * metrics['test/acc']:.1f}%")

    params = hparams_of(config)
    for logger in loggers:
        log_hparams(logger, params, metrics)
        logger.finalize("success")
    result = record_status(run_dir, "completed", **metrics, **{"time/seconds": time.time() - started})
    log.info("test: acc %.4f  nll %.4f  ece %.4f -> ece_ts %.4f (T=%.3f)  run dir %s",
             metrics["test/acc"], metrics["test/nll"], metrics["test/ece"], metrics.get("test/ece_ts", float("nan")),
             module.temperature or float("nan"), run_dir)
    return result


def _best_checkpoint(cfg: DictConfig):
    """For ``checkpoint=best_val_nll|best_val_ece``: a ModelCheckpoint keeping ``checkpoints/<name>.ckpt``, the
    weights of the epoch with the lowest monitored validation metric; ``None`` for ``checkpoint=last``."""
    name = cfg.get("checkpoint", "last")
    if CHECKPOINTS[name] is None:
        return None
    from pytorch_lightning.callbacks import ModelCheckpoint

    monitor, mode = CHECKPOINTS[name]
    return ModelCheckpoint(dirpath=Path(cfg.paths.output_dir) / "checkpoints", filename=name, monitor=monitor,
                           mode=mode, save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)


def _load_tested_weights(module, trainer, best) -> int:
    """Put the weights to test and calibrate into ``module``; return their epoch (epochs trained, from 1).

    ``best`` is the callback of :func:`_best_checkpoint` (its best file is loaded), or ``None``: the weights at
    the end of training stay.
    """
    if best is None:
        return int(trainer.current_epoch)
    if not best.best_model_path:
        raise RuntimeError(f"checkpoint: no {best.monitor} was logged, so there is no best epoch to test "
                           "(validation off?); use checkpoint=last")
    state = torch.load(best.best_model_path, map_location=module.device, weights_only=False)
    module.load_state_dict(state["state_dict"])
    log.info("testing the weights of epoch %d (%s %.4f)", state["epoch"] + 1, best.monitor, float(best.best_model_score))
    return int(state["epoch"]) + 1


def _fit_temperatures(logits: torch.Tensor, target: torch.Tensor, n_bins: int) -> dict[str, float]:
    """The temperature of each fit in ``ceexp.calibration`` (``nll``: L-BFGS on the NLL; ``ece_grid``: the grid
    of Mukhoti et al.'s code minimising ECE) on the validation logits ``(N, C)`` and labels ``(N,)``."""
    from ceexp.calibration import METHODS, TemperatureScaler

    return {method: TemperatureScaler(method=method, n_bins=n_bins).fit(logits, target).temperature
            for method in METHODS}


def _temperature_fits(temperatures: dict[str, float], logits, target, n_bins: int) -> dict[str, float]:
    """``test/temperature_<fit>``, ``test/ece_ts_<fit>`` and ``test/nll_ts_<fit>`` for every temperature fit, so
    that the fit ``temperature_fit`` did not choose is reported too (the chosen one is also ``test/*_ts``)."""
    from ceexp.metrics import expected_calibration_error

    out = {}
    for method, t in temperatures.items():
        scaled = logits.double() / t
        out[f"test/temperature_{method}"] = float(t)
        out[f"test/ece_ts_{method}"] = float(expected_calibration_error(scaled.softmax(1), target, n_bins=n_bins))
        out[f"test/nll_ts_{method}"] = float(torch.nn.functional.cross_entropy(scaled, target))
    return out


def _no_status(run_dir, status, **fields) -> dict:
    return {"status": status, **fields}


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


def _numbers(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()}


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
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        with _one_ddp_job():
            metrics = train(cfg)
    except ConfigError as e:
        if multirun:  # one bad cell of a grid: record it and let the sweep go on
            write_status(run_dir, "failed", error=f"ConfigError: {e}")
            log.error("job failed: %s", e)
            return float("nan")
        print(f"error: {e}", file=sys.stderr)
        _remove_if_fresh(run_dir, cfg)
        sys.exit(2)
    except RunInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(130)
    except FloatingPointError as e:  # already recorded as failed in metrics.json
        if multirun:
            log.error("job failed: %s", e)
            return float("nan")
        print(f"error: {e}; the last good checkpoint is in {run_dir / 'checkpoints'}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        if multirun:
            log.exception("job failed: %s", _one_line(e))
            return float("nan")
        raise
    # the value a Hydra sweeper (Optuna) optimises
    return metrics.get(cfg.get("optimized_metric") or "val/nll", float("nan"))


def _remove_if_fresh(run_dir: Path, cfg: DictConfig) -> None:
    """Remove a new run folder that holds nothing but Hydra's own record (a config refused before training)."""
    import shutil

    if cfg.get("resume") or not run_dir.is_dir():
        return
    if {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in (run_dir.parent, run_dir.parent.parent):  # runs/<date>/ and runs/, when left empty
            with contextlib.suppress(OSError):
                parent.rmdir()


def main() -> None:
    """Command-line entry: resume and group-choice checks in one line each, then Hydra; exit 1 if a sweep job failed."""
    try:
        args = resume_argv(sys.argv[1:])
        check_group_choices(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = args
    _hydra_main()
    if SweepRecord.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
