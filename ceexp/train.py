"""Train one classifier with one loss: ``train(cfg) -> final metrics``, and the Hydra entry point.

    python scripts/train.py                          # digits, MLP, cross-entropy
    python scripts/train.py loss=focal loss.gamma=3  # another loss
    python scripts/train.py -m loss=ce,focal seed=0,1,2

The run directory (``cfg.paths.output_dir``) receives the TensorBoard event file,
``checkpoints/last.ckpt``, ``metrics.json`` and ``reliability_diagram.png``.
"""
from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from ceexp.validation import CONFIG_DIR, ConfigError, check_group_choices, validate_config

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


def _instantiate_dict(group: DictConfig | None, field: str) -> list:
    """Instantiate every entry of a callbacks/logger dict that has a ``_target_`` (``null`` entries are skipped)."""
    if not group:
        return []
    return [
        _instantiate(node, f"{field}.{name}")
        for name, node in group.items()
        if isinstance(node, DictConfig) and "_target_" in node
    ]


def _choices() -> dict[str, str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items()
            if k in HPARAM_GROUPS and v is not None}


HPARAM_GROUPS = ("seed", "data", "model", "loss", "optimizer", "scheduler", "n_bins")


def hparams_of(config: dict) -> dict[str, Any]:
    """The hyperparameters shown in TensorBoard's HParams tab: the chosen option of each config group
    (``loss: focal``), then the flattened settings of the groups that define the experiment
    (``loss.gamma``, ``optimizer.lr``, ...) and ``trainer.max_epochs``; no ``_target_`` or paths."""
    from ceexp.tensorboard import flatten

    params: dict[str, Any] = dict(_choices())
    chosen = {k: config[k] for k in HPARAM_GROUPS if config.get(k) is not None}
    params.update({k: v for k, v in flatten(chosen).items() if not k.endswith(("_target_", "_partial_"))})
    params["trainer.max_epochs"] = config["trainer"].get("max_epochs")
    return params


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
    import pytorch_lightning as pl

    from ceexp.calibration import TemperatureScaler
    from ceexp.files import write_json
    from ceexp.module import ClassifierModule
    from ceexp.plots import save_reliability_diagrams
    from ceexp.tensorboard import log_hparams

    validate_config(cfg)
    started = time.time()
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # the data live in memory as tensors: loader workers would only add start-up time
    warnings.filterwarnings("ignore", ".*does not have many workers.*")

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
    )
    callbacks = _instantiate_dict(cfg.get("callbacks"), "callbacks")
    loggers = _instantiate_dict(cfg.get("logger"), "logger")
    trainer = _instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)

    trainer.fit(module, datamodule=datamodule)
    metrics: dict[str, Any] = {
        k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))
    }
    if cfg.temperature_scaling:
        batches = trainer.predict(module, dataloaders=datamodule.val_dataloader())
        logits = torch.cat([b[0] for b in batches])
        target = torch.cat([b[1] for b in batches])
        module.temperature = TemperatureScaler().fit(logits, target).temperature
    for result in trainer.test(module, datamodule=datamodule, verbose=False):
        metrics.update({k: float(v) for k, v in result.items()})
    metrics = dict(sorted(metrics.items()))

    loss_name = _choices().get("loss", cfg.loss._target_.rsplit(".", 1)[-1])
    panels = [(module.test_metrics.ece.reliability_bins(), "test, before temperature scaling", metrics["test/ece"])]
    if module.temperature is not None:
        panels.append(
            (module.test_metrics_ts.ece.reliability_bins(), f"after temperature scaling (T = {module.temperature:.3g})",
             metrics["test/ece_ts"])
        )
    save_reliability_diagrams(run_dir / "reliability_diagram.png", panels,
                              suptitle=f"loss={loss_name}, test accuracy {100 * metrics['test/acc']:.1f}%")

    params = hparams_of(config)
    for logger in loggers:
        log_hparams(logger, params, metrics)
        logger.finalize("success")
    result = {"status": "completed", **metrics, "time/seconds": time.time() - started}
    write_json(run_dir / "metrics.json", result)
    log.info("test: acc %.4f  nll %.4f  ece %.4f -> ece_ts %.4f (T=%s)  run dir %s",
             metrics["test/acc"], metrics["test/nll"], metrics["test/ece"], metrics.get("test/ece_ts", float("nan")),
             module.temperature, run_dir)
    return result


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    try:
        metrics = train(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    # the value a Hydra sweeper (Optuna) optimises
    return metrics.get(cfg.get("optimized_metric") or "val/nll", float("nan"))


def main() -> None:
    """Command-line entry: refuse unknown ``group=option`` names in one line, then run Hydra."""
    try:
        check_group_choices(sys.argv[1:])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
