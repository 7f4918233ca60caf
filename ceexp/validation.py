"""Checks of a composed run config, before any data is loaded or any model trained.

Each failure raises :class:`ConfigError` with one line naming the field, the value and what is
allowed, e.g. ``loss.gamma=-1 is invalid: expected a number >= 0``. ``train`` turns it into an
error line on stderr and exit code 2.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

__all__ = ["ConfigError", "validate_config", "check_group_choices", "group_options"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


# checkpoint=: which weights are tested and calibrated (the monitored tag and its direction for best_*)
CHECKPOINTS = {"last": None, "best_val_nll": ("val/nll", "min"), "best_val_ece": ("val/ece", "min")}


class ConfigError(ValueError):
    """A config value outside what is allowed; the message is one line naming the field."""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check(field: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{field}={value!r} is invalid: expected {allowed}")


def group_options(group: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """The option names of a config group (the ``.yaml`` files in ``configs/<group>/``)."""
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def check_group_choices(overrides: list[str], config_dir: Path = CONFIG_DIR) -> None:
    """Refuse ``group=name`` command-line overrides whose option does not exist, listing the choices.

    Sweep values (``loss=ce,focal``) are checked one by one; ``hydra/...`` groups are left to Hydra.

    Raises:
        ConfigError: e.g. ``loss=focla is not a known choice: expected one of ce, focal, ...``.
    """
    for item in overrides:
        if item.startswith(("-", "+", "~")) or "=" not in item:
            continue
        key, value = item.split("=", 1)
        if "." in key or key.startswith("hydra") or not (config_dir / key).is_dir():
            continue
        options = group_options(key, config_dir)
        for choice in value.split(","):
            choice = choice.strip()
            if choice in ("null", "") or choice.startswith(("choice(", "range(", "glob(", "interval(")):
                break
            if choice not in options:
                raise ConfigError(f"{key}={choice} is not a known choice: expected one of {', '.join(options)}")


def _loss(cfg: DictConfig) -> None:
    loss = cfg.get("loss")
    if loss is None:
        raise ConfigError("loss=null is invalid: expected one of " + ", ".join(group_options("loss")))
    if "gamma" in loss:
        _check("loss.gamma", loss.gamma, _is_number(loss.gamma) and loss.gamma >= 0, "a number >= 0")
    for key in ("gamma_low", "gamma_high"):
        if key in loss:
            _check(f"loss.{key}", loss[key], _is_number(loss[key]) and loss[key] >= 0, "a number >= 0")
    if "threshold" in loss:
        _check("loss.threshold", loss.threshold, _is_number(loss.threshold) and 0 <= loss.threshold <= 1,
               "a probability in [0, 1]")
    if "label_smoothing" in loss:
        ls = loss.label_smoothing
        _check("loss.label_smoothing", ls, _is_number(ls) and 0 <= ls < 1, "a number in [0, 1)")
    for key in ("alpha", "weight"):
        value = loss.get(key)
        if value is None or value == "balanced":
            continue
        if isinstance(value, ListConfig):
            _check(f"loss.{key}", list(value), len(value) > 0 and all(_is_number(v) and v >= 0 for v in value),
                   'a list of per-class weights >= 0, a float, null or "balanced"')
        elif key == "alpha":
            _check("loss.alpha", value, _is_number(value) and 0 <= value <= 1,
                   'null, "balanced", a list of C per-class weights >= 0, or a float in [0, 1] (2 classes only)')
        else:
            _check("loss.weight", value, False, 'null, "balanced" or a list of C per-class weights >= 0')
    if "reduction" in loss:
        _check("loss.reduction", loss.reduction, loss.reduction in ("mean", "sum"),
               "'mean' or 'sum' (training needs a scalar)")


TEMPERATURE_FITS = ("nll", "ece_grid")  # ceexp.calibration.METHODS, without importing torch here
EXPECTED_KEYS = ("source", "key", "values")


def _expected(cfg: DictConfig) -> None:
    """``expected``: null, or a published table to compare a sweep with (see configs/train.yaml)."""
    exp = cfg.get("expected")
    if exp is None:
        return
    _check("expected", exp, isinstance(exp, DictConfig) and sorted(exp) == sorted(EXPECTED_KEYS),
           "null or a mapping with the keys source, key, values")
    for field in ("source", "key"):
        _check(f"expected.{field}", exp[field], isinstance(exp[field], str) and exp[field] != "",
               "a non-empty string")
    _check("expected.values", exp["values"], isinstance(exp["values"], DictConfig),
           "a mapping from each value of the setting named by expected.key to {metric tag: number}")
    for row, tags in exp["values"].items():
        _check(f"expected.values.{row}", tags, isinstance(tags, DictConfig) and len(tags) > 0,
               "a non-empty mapping from metric tag (test/ece, ...) to number")
        for tag, value in tags.items():
            _check(f"expected.values.{row}.{tag}", value, _is_number(value), "a number")


def validate_config(cfg: DictConfig) -> None:
    """Check the user-settable fields of a composed train config.

    Raises:
        ConfigError: for the first invalid field found.
    """
    _check("seed", cfg.get("seed"), isinstance(cfg.get("seed"), int) and not isinstance(cfg.get("seed"), bool),
           "an integer")
    _check("n_bins", cfg.get("n_bins"), isinstance(cfg.get("n_bins"), int) and not isinstance(cfg.n_bins, bool)
           and cfg.n_bins >= 1, "an integer >= 1")
    for group in ("data", "model", "optimizer", "trainer"):
        if cfg.get(group) is None:
            raise ConfigError(f"{group}=null is invalid: expected one of {', '.join(group_options(group))}")
    _loss(cfg)
    fit = cfg.get("temperature_fit", "nll")
    _check("temperature_fit", fit, fit in TEMPERATURE_FITS, "one of " + ", ".join(TEMPERATURE_FITS))
    _expected(cfg)
    opt = cfg.optimizer
    _check("optimizer.lr", opt.get("lr"), _is_number(opt.get("lr")) and opt.lr > 0, "a number > 0")
    if "weight_decay" in opt:
        _check("optimizer.weight_decay", opt.weight_decay, _is_number(opt.weight_decay) and opt.weight_decay >= 0,
               "a number >= 0")
    if "momentum" in opt:
        _check("optimizer.momentum", opt.momentum, _is_number(opt.momentum) and 0 <= opt.momentum < 1,
               "a number in [0, 1)")
    data = cfg.data
    bs = data.get("batch_size")
    _check("data.batch_size", bs, isinstance(bs, int) and not isinstance(bs, bool) and bs >= 1, "an integer >= 1")
    if "n_classes" in data:
        n = data.n_classes
        _check("data.n_classes", n, isinstance(n, int) and not isinstance(n, bool) and n >= 2, "an integer >= 2")
    if "imbalance_ratio" in data:
        r = data.imbalance_ratio
        _check("data.imbalance_ratio", r, _is_number(r) and r >= 1, "a number >= 1")
    if "label_noise" in data:
        r = data.label_noise
        _check("data.label_noise", r, _is_number(r) and 0 <= r < 1, "a number in [0, 1)")
    for key in ("val_fraction", "test_fraction"):
        if key in data:
            f = data[key]
            _check(f"data.{key}", f, _is_number(f) and 0 < f < 1, "a number in (0, 1)")
    me = cfg.trainer.get("max_epochs")
    _check("trainer.max_epochs", me, isinstance(me, int) and not isinstance(me, bool) and me >= 1, "an integer >= 1")
    ck = cfg.get("checkpoint", "last")
    _check("checkpoint", ck, ck in CHECKPOINTS, f"one of {', '.join(CHECKPOINTS)}")
    for key in ("save_predictions", "temperature_scaling"):
        v = cfg.get(key, True)
        _check(key, v, isinstance(v, bool), "true or false")
