"""The schema of the run config and its checks: one rule per field, one message style.

:data:`SCHEMA` mirrors ``configs/train.yaml`` once composed: every field that any option of any config group
can set has exactly one :class:`Rule` here, and nothing else in ceexp states what a field allows. Fields that
take any value (paths, ``_target_``, names) have a rule too, marked as such (:data:`PATH`, :data:`TARGET`,
:data:`ANYTHING`), so "no rule" always means "not a field". A failure is one line,
``<field>=<value> is invalid: expected <what the rule allows>``, raised as :class:`ConfigError`:

    loss.gamma=-1 is invalid: expected a number >= 0
    data.split_seed='abc' is invalid: expected an integer in [0, 4294967295]
    loss.gamma=3 is invalid: expected an argument of torch.nn.CrossEntropyLoss (ignore_index, label_smoothing, ...)

Three users share the schema: :func:`validate_config` (every leaf of a composed config, before any data is
loaded), :func:`check_field` (a constructor checking an argument by its config name), and
:func:`check_command_line` (the overrides of ``scripts/train.py``, before Hydra runs: unknown choices and keys,
``trainer.<Lightning argument>=v`` completed to ``+trainer.<argument>=v``, and a single run's values, so that a
refused config leaves no run folder). This module imports neither torch nor Lightning.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = [
    "ANYTHING", "PATH", "SCHEMA", "TARGET", "ConfigError", "Entries", "Fields", "Instance", "MapOf", "Rule",
    "check_command_line", "check_field", "check_group_choices", "group_options", "invalid", "validate_config",
]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def epoch_share(share: float, *, _root_) -> int:
    """``${ceexp.epoch_share:s}``: the epoch at share ``s`` of ``trainer.max_epochs`` (rounded), so a schedule given
    for one run length keeps its proportions in another (FLSc-531's 100 and 250 of 350 epochs: 0.2857, 0.7143).

    Raises:
        ValueError: a share outside [0, 1].
    """
    share = float(share)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"ceexp.epoch_share:{share} is invalid: expected a share of trainer.max_epochs in [0, 1]")
    return int(round(share * int(_root_.trainer.max_epochs)))


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("ceexp.epoch_share"):
        OmegaConf.register_new_resolver("ceexp.epoch_share", epoch_share)


# loss presets schedule epochs with ${ceexp.epoch_share:...} (configs/loss_preset/flsc_531.yaml): registered
# wherever configs are composed, before they resolve
_register_resolvers()


class ConfigError(ValueError):
    """A config value outside what is allowed; the message is one line naming the field."""


# ---------------------------------------------------------------------------------------------------------
# rules: what one field allows


def show(value: Any) -> str:
    """A value as it appears in messages: Python's repr, but null/true/false as YAML writes them, on one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, (dict, DictConfig)):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    text = repr(value).replace("\n", "\\n")
    return text if len(text) <= 120 else text[:117] + "..."


def invalid(field_name: str, value: Any, expected: str) -> ConfigError:
    """The one message style: ``<field>=<value> is invalid: expected <expected>``."""
    return ConfigError(f"{field_name}={show(value)} is invalid: expected {expected}")


@dataclass(frozen=True)
class Rule:
    """What one field allows: ``accepts(value) -> bool`` on plain Python values, described by ``expected``.

    ``anything=True`` marks a field that legitimately takes any value (a path, a ``_target_``, a name); such a
    field is listed, never checked.
    """

    expected: str
    accepts: Callable[[Any], bool] = field(repr=False, default=lambda v: True)
    anything: bool = False

    def check(self, field_name: str, value: Any) -> None:
        """Raise :class:`ConfigError` unless ``value`` is allowed."""
        if not self.anything and not self.accepts(_plain(value)):
            raise invalid(field_name, value, self.expected)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bounds(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi}"
    return ""


def _within(v, lo, hi, lo_open: bool, hi_open: bool) -> bool:
    return ((lo is None or (v > lo if lo_open else v >= lo))
            and (hi is None or (v < hi if hi_open else v <= hi)))


def integer(lo: int | None = None, hi: int | None = None) -> Rule:
    """An ``int`` (not a bool, not a float) in ``[lo, hi]``."""
    return Rule(f"an integer{_bounds(lo, hi, False, False)}",
                lambda v: _is_int(v) and _within(v, lo, hi, False, False))


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Rule:
    """A finite ``int`` or ``float`` (not a bool) between ``lo`` and ``hi`` (open ends where said)."""
    return Rule(f"a number{_bounds(lo, hi, lo_open, hi_open)}",
                lambda v: _is_number(v) and _within(v, lo, hi, lo_open, hi_open))


def choice(*values: Any, expected: str | None = None) -> Rule:
    """One of ``values`` (compared with their type: ``1`` is not ``true``)."""
    text = expected or "one of " + ", ".join(v if isinstance(v, str) else show(v) for v in values)
    return Rule(text, lambda v: any(type(v) is type(c) and v == c for c in values))


def either(*rules: Rule, expected: str | None = None) -> Rule:
    """Any of ``rules``."""
    texts = [r.expected for r in rules]
    text = expected or (", ".join(texts[:-1]) + " or " + texts[-1] if len(texts) > 1 else texts[0])
    return Rule(text, lambda v: any(r.accepts(v) for r in rules))


def optional(rule: Rule) -> Rule:
    """``null`` or what ``rule`` allows."""
    return Rule(f"null or {rule.expected}", lambda v: v is None or rule.accepts(v))


def list_of(item: Rule, expected: str, min_len: int = 0, max_len: int | None = None) -> Rule:
    """A list whose every item ``item`` allows, of ``min_len`` to ``max_len`` items."""
    return Rule(expected, lambda v: isinstance(v, list) and min_len <= len(v) <= (max_len or len(v))
                and all(item.accepts(x) for x in v))


BOOL = Rule("true or false", lambda v: isinstance(v, bool))
TEXT = Rule("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "")
SEED = integer(0, 2**32 - 1)  # numpy's and pl.seed_everything's range
PROBABILITY = number(0, 1)
FRACTION = number(0, 1, lo_open=True, hi_open=True)
# fields that take any value: listed so that "no rule" means "not a field"
TARGET = Rule("a class or function to instantiate (checked by Hydra)", anything=True)
PATH = Rule("a path (any string)", anything=True)
ANYTHING = Rule("any value (checked by the class that takes it)", anything=True)
PARTIAL = Rule("true (completed with the model's parameters in configure_optimizers)", lambda v: v is True)
INSTANTIATE = {"_target_": TARGET, "_recursive_": BOOL,
               "_convert_": choice("none", "partial", "object", "all")}


# ---------------------------------------------------------------------------------------------------------
# nodes: how rules are arranged in the config tree


@dataclass(frozen=True)
class Fields:
    """A mapping with known keys. ``checks`` are cross-field rules ``(node, path) -> None`` that raise
    :class:`ConfigError`, run once every field passed its own rule."""

    fields: Mapping[str, Schema]
    required: tuple[str, ...] = ()
    checks: tuple[Callable[[DictConfig, str], None], ...] = ()
    nullable: bool = False
    expected: str = "a mapping"


@dataclass(frozen=True)
class Instance:
    """A node built by ``hydra.utils.instantiate``: its fields are those of its ``_target_`` in ``targets``.

    A ``_target_`` outside ``targets`` is the user's own class (``data._target_=my.Module``): its fields that
    share a name with a field of a known target are held to that rule, the others are its constructor's to check.
    ``group`` names the config group whose options choose the node (for ``data=null``).
    """

    targets: Mapping[str, Fields]
    group: str | None = None
    nullable: bool = False
    expected: str = "a mapping with a _target_"

    def fields_of(self, target: Any) -> tuple[Mapping[str, Schema], bool]:
        """``(fields, known)`` for a ``_target_``: a known target's own fields, else every target's, merged."""
        if target in self.targets:
            return self.targets[target].fields, True
        merged: dict[str, Schema] = {}
        for spec in self.targets.values():
            for k, v in spec.fields.items():
                merged.setdefault(k, v)
        return merged, False


@dataclass(frozen=True)
class Entries:
    """``callbacks`` / ``logger``: name -> an instance (or ``null``: the entry is dropped)."""

    instance: Instance
    nullable: bool = True
    expected: str = "a mapping of name -> config with a _target_"


@dataclass(frozen=True)
class MapOf:
    """A mapping with free keys whose values all follow ``value``."""

    value: Schema
    nullable: bool = False
    expected: str = "a mapping"
    non_empty: bool = False


Schema = Union[Rule, Fields, Instance, Entries, MapOf]


# ---------------------------------------------------------------------------------------------------------
# the schema


CHECKPOINTS = {"last": None, "best_val_nll": ("val/nll", "min"), "best_val_ece": ("val/ece", "min")}
TEMPERATURE_FITS = ("nll", "ece_grid")  # ceexp.calibration.METHODS, without importing torch here
# ceexp.calibration.CALIBRATORS, without importing torch here
CALIBRATION_METHODS = ("temperature", "vector", "matrix", "dirichlet", "histogram", "isotonic")
EXPECTED_KEYS = ("source", "key", "values")
REDUCTION = choice("mean", "sum", expected="'mean' or 'sum' (training needs a scalar)")
CLASS_WEIGHTS = list_of(number(0), "a list of per-class weights >= 0", min_len=1)


def _fractions_sum(node: DictConfig, path: str) -> None:
    total = node.get("val_fraction", 0.2) + node.get("test_fraction", 0.2)
    if total >= 1:
        raise ConfigError(f"{path}.val_fraction + {path}.test_fraction = {total:g} is invalid: expected a sum < 1 "
                          "(the rest is the training split)")


def _synthetic_sizes(node: DictConfig, path: str) -> None:
    n_classes, n_features = node.get("n_classes", 4), node.get("n_features", 20)
    n_informative, n_samples = node.get("n_informative", 10), node.get("n_samples", 3000)
    if n_informative > n_features:
        raise invalid(f"{path}.n_informative", n_informative, f"an integer in [1, {path}.n_features={n_features}]")
    if 2**n_informative < 2 * n_classes:
        raise invalid(f"{path}.n_informative", n_informative,
                      f"2**n_informative >= 2 * {path}.n_classes={n_classes} (make_classification's clusters)")
    if n_samples < 10 * n_classes:
        raise invalid(f"{path}.n_samples", n_samples, f"an integer >= 10 * {path}.n_classes={10 * n_classes}")


_LOADING = {**INSTANTIATE, "batch_size": integer(1),
            "on_device": choice("auto", True, False, expected="auto, true or false")}
_DEGRADING = {"split_seed": SEED, "val_fraction": FRACTION, "imbalance_ratio": number(1),
              "label_noise": number(0, 1, hi_open=True)}
ARRAY_DATA = Fields({**_LOADING, **_DEGRADING, "test_fraction": FRACTION}, checks=(_fractions_sum,))
SYNTHETIC_DATA = Fields(
    {**ARRAY_DATA.fields, "n_samples": integer(1), "n_classes": integer(2), "n_features": integer(1),
     "n_informative": integer(1), "class_sep": number(0, lo_open=True)},
    checks=(_fractions_sum, _synthetic_sizes),
)
IMAGE_DATA = Fields({**_LOADING, **_DEGRADING, "root": PATH, "download": BOOL, "augment": BOOL,
                     "mirrors": optional(list_of(TEXT, "a list of base URLs", min_len=1)), "checksum": BOOL})
DATA = Instance({
    "ceexp.data.DigitsDataModule": ARRAY_DATA,
    "ceexp.data.BreastCancerDataModule": ARRAY_DATA,
    "ceexp.data.MNIST5kDataModule": ARRAY_DATA,
    "ceexp.data.SyntheticDataModule": SYNTHETIC_DATA,
    "ceexp.data.MNISTDataModule": IMAGE_DATA,
    "ceexp.data.FashionMNISTDataModule": IMAGE_DATA,
    "ceexp.data.CIFAR10DataModule": IMAGE_DATA,
    "ceexp.data.CIFAR100DataModule": IMAGE_DATA,
}, group="data")

DROPOUT = number(0, 1, hi_open=True)
RESNET = Fields({**INSTANTIATE, "channels_last": BOOL})
MODEL = Instance({
    "ceexp.models.MLP": Fields({**INSTANTIATE, "hidden_sizes": list_of(integer(1), "a list of widths >= 1 (may be "
                                                                       "empty: logistic regression)"),
                                "dropout": DROPOUT}),
    "ceexp.models.SmallCNN": Fields({**INSTANTIATE, "channels": list_of(integer(1), "a non-empty list of channel "
                                                                        "counts >= 1", min_len=1),
                                     "hidden": integer(1), "dropout": DROPOUT, "channels_last": BOOL}),
    "ceexp.models.resnet18": RESNET,
    "ceexp.models.resnet34": RESNET,
    "ceexp.models.resnet50": RESNET,
    "ceexp.models.resnet110": RESNET,
}, group="model")

_LOSS_BASE = {**INSTANTIATE, "reduction": REDUCTION, "ignore_index": integer()}
EPOCH_SCHEDULE = Rule("a strictly increasing list of epochs (integers >= 0)",
                      lambda v: isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v)
                      and all(b > a for a, b in zip(v, v[1:])))
# AdaFocal's gammas: an inverse-focal weight reaches 2^|gamma| (ceexp.losses.ADAFOCAL_GAMMA_LIMIT, not imported:
# this module does not import torch)
ADAFOCAL_GAMMA_LIMIT = 100


def _gammas_per_stage(node: DictConfig, path: str) -> None:
    milestones, gammas = node.get("milestones", [100, 250]), node.get("gammas", [5.0, 3.0, 1.0])
    if len(gammas) != len(milestones) + 1:
        raise invalid(f"{path}.gammas", gammas, f"a list of len({path}.milestones) + 1 = {len(milestones) + 1} "
                                                "numbers >= 0 (one per stage of the schedule)")


def _gamma_initial_within_clip(node: DictConfig, path: str) -> None:
    low, high, initial = node.get("gamma_min", -2.0), node.get("gamma_max", 20.0), node.get("gamma_initial", 1.0)
    if not low <= initial <= high:
        raise invalid(f"{path}.gamma_initial", initial,
                      f"a number in [{path}.gamma_min, {path}.gamma_max] = [{low:g}, {high:g}]")


LOSS = Instance({
    "torch.nn.CrossEntropyLoss": Fields({
        **_LOSS_BASE, "label_smoothing": number(0, 1, hi_open=True),
        "weight": either(choice(None, "balanced"), CLASS_WEIGHTS,
                         expected='null, "balanced" or a list of C per-class weights >= 0')}),
    "ceexp.losses.FocalLoss": Fields({
        **_LOSS_BASE, "gamma": number(0),
        "alpha": either(choice(None, "balanced"), CLASS_WEIGHTS, PROBABILITY,
                        expected='null, "balanced", a list of C per-class weights >= 0, or a float in [0, 1] '
                                 '(2 classes only)')}),
    "ceexp.losses.SampleDependentFocalLoss": Fields({
        **_LOSS_BASE, "gamma_low": number(0), "gamma_high": number(0), "threshold": PROBABILITY}),
    "ceexp.losses.BrierLoss": Fields(_LOSS_BASE),
    "ceexp.losses.BinaryCrossEntropyLoss": Fields({
        **_LOSS_BASE, "pos_weight": either(choice(None, "balanced"), number(0, lo_open=True),
                                           expected='null, "balanced" or a number > 0')}),
    "ceexp.losses.SigmoidFocalLoss": Fields({**_LOSS_BASE, "gamma": number(0), "alpha": optional(PROBABILITY)}),
    "ceexp.losses.MarginBasedLabelSmoothingLoss": Fields({**_LOSS_BASE, "margin": number(0), "alpha": number(0)}),
    "ceexp.losses.MMCELoss": Fields({**_LOSS_BASE, "lamda": number(0), "kernel_width": number(0, lo_open=True)}),
    "ceexp.losses.DCALoss": Fields({**_LOSS_BASE, "beta": number(0)}),
    "ceexp.losses.ConfidencePenaltyLoss": Fields({**_LOSS_BASE, "beta": number(0)}),
    "ceexp.losses.Poly1Loss": Fields({**_LOSS_BASE, "epsilon": number(0)}),
    "ceexp.losses.DualFocalLoss": Fields({**_LOSS_BASE, "gamma": number(0)}),
    "ceexp.losses.ScheduledFocalLoss": Fields({
        **_LOSS_BASE, "milestones": EPOCH_SCHEDULE,
        "gammas": list_of(number(0), "a non-empty list of numbers >= 0", min_len=1)}, checks=(_gammas_per_stage,)),
    "ceexp.losses.AdaFocalLoss": Fields({
        **_LOSS_BASE, "n_bins": integer(1), "lamda": number(0), "switch_pt": number(0),
        "gamma_initial": number(-ADAFOCAL_GAMMA_LIMIT, ADAFOCAL_GAMMA_LIMIT),
        "gamma_min": number(-ADAFOCAL_GAMMA_LIMIT, 0), "gamma_max": number(0, ADAFOCAL_GAMMA_LIMIT)},
        checks=(_gamma_initial_within_clip,)),
}, group="loss")

_ADAM = {**INSTANTIATE, "_partial_": PARTIAL, "lr": number(0, lo_open=True), "weight_decay": number(0),
         "betas": list_of(number(0, 1, hi_open=True), "a list of 2 numbers in [0, 1)", 2, 2),
         "eps": number(0, lo_open=True), "amsgrad": BOOL, "maximize": BOOL, "foreach": optional(BOOL),
         "capturable": BOOL, "differentiable": BOOL, "fused": optional(BOOL)}
OPTIMIZER = Instance({
    "torch.optim.Adam": Fields({**_ADAM, "decoupled_weight_decay": BOOL}, required=("lr",)),
    "torch.optim.AdamW": Fields(_ADAM, required=("lr",)),
    "torch.optim.SGD": Fields({**INSTANTIATE, "_partial_": PARTIAL, "lr": number(0, lo_open=True),
                               "momentum": number(0, 1, hi_open=True), "dampening": number(0, 1),
                               "weight_decay": number(0), "nesterov": BOOL, "maximize": BOOL,
                               "foreach": optional(BOOL), "differentiable": BOOL, "fused": optional(BOOL)},
                              required=("lr",)),
}, group="optimizer")

SCHEDULER = Instance({
    "torch.optim.lr_scheduler.CosineAnnealingLR": Fields({**INSTANTIATE, "_partial_": PARTIAL,
                                                          "T_max": integer(1), "eta_min": number(0)}),
    "torch.optim.lr_scheduler.MultiStepLR": Fields({
        **INSTANTIATE, "_partial_": PARTIAL, "gamma": number(0, lo_open=True),
        "milestones": list_of(integer(0), "a list of epochs >= 0", min_len=1)}),
}, group="scheduler", nullable=True)

# pytorch_lightning.Trainer's arguments (tests/test_config_schema.py holds this to its signature)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_find_unused_parameters_true",
              "ddp_find_unused_parameters_false", "ddp_spawn_find_unused_parameters_true",
              "ddp_spawn_find_unused_parameters_false", "ddp_fork_find_unused_parameters_true",
              "ddp_fork_find_unused_parameters_false", "ddp_notebook_find_unused_parameters_true",
              "ddp_notebook_find_unused_parameters_false", "deepspeed", "deepspeed_stage_1", "deepspeed_stage_2",
              "deepspeed_stage_2_offload", "deepspeed_stage_3", "deepspeed_stage_3_offload",
              "deepspeed_stage_3_offload_nvme", "fsdp", "fsdp_cpu_offload", "single_device", "single_tpu",
              "single_xla", "xla", "xla_debug")
PRECISIONS = (64, 32, 16, "64", "32", "16", "bf16", "16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true",
              "64-true", "transformer-engine", "transformer-engine-float16")
A_CONFIG = Rule("a config with a _target_", lambda v: isinstance(v, dict) and "_target_" in v)
_TIME = either(Rule('a time "DD:HH:MM:SS"',
                    lambda v: isinstance(v, str) and bool(re.fullmatch(r"\d+:\d\d:\d\d:\d\d", v))),
               Rule("a mapping of days, hours, minutes, seconds",
                    lambda v: isinstance(v, dict) and len(v) > 0 and set(v) <= {"days", "hours", "minutes", "seconds"}
                    and all(_is_number(x) and x >= 0 for x in v.values())))
_BATCHES = optional(either(integer(0), number(0, 1), expected="an integer >= 0 (batches) or a float in [0, 1] "
                                                              "(a fraction)"))
_SET_BY = Rule("no value here: train() passes it (choose with callbacks=/logger= or their entries)",
               lambda v: False)
TRAINER_ARGS = {
    "accelerator": either(choice(*ACCELERATORS), A_CONFIG),
    "strategy": either(choice(*STRATEGIES), A_CONFIG),
    "devices": either(integer(1), choice(-1, "auto"), list_of(integer(0), "a list of device indices", min_len=1),
                      Rule('a string of device indices ("0,1")',
                           lambda v: isinstance(v, str) and bool(re.fullmatch(r"-1|\d+(,\d+)*,?", v.strip())))),
    "num_nodes": integer(1),
    "precision": optional(choice(*PRECISIONS)),
    "logger": _SET_BY,
    "callbacks": _SET_BY,
    "fast_dev_run": either(BOOL, integer(0), expected="true, false or a number of batches >= 0"),
    "max_epochs": integer(1),
    "min_epochs": optional(integer(0)),
    "max_steps": integer(-1),
    "min_steps": optional(integer(0)),
    "max_time": optional(_TIME),
    "limit_train_batches": _BATCHES,
    "limit_val_batches": _BATCHES,
    "limit_test_batches": _BATCHES,
    "limit_predict_batches": _BATCHES,
    "overfit_batches": either(integer(0), number(0, 1), expected="an integer >= 0 (batches) or a float in [0, 1]"),
    "val_check_interval": optional(either(integer(1), number(0, 1, lo_open=True), _TIME)),
    "check_val_every_n_epoch": optional(integer(1)),
    "num_sanity_val_steps": optional(integer(-1)),
    "log_every_n_steps": optional(integer(0)),  # 0: no per-step logging
    "enable_checkpointing": optional(BOOL),
    "enable_progress_bar": optional(BOOL),
    "enable_model_summary": optional(BOOL),
    "accumulate_grad_batches": integer(1),
    "gradient_clip_val": optional(number(0)),
    "gradient_clip_algorithm": optional(choice("norm", "value")),
    "deterministic": optional(either(BOOL, choice("warn"))),
    "benchmark": optional(BOOL),
    "inference_mode": BOOL,
    "use_distributed_sampler": BOOL,
    "profiler": optional(either(choice("simple", "advanced", "pytorch", "xla"), A_CONFIG)),
    "detect_anomaly": BOOL,
    "barebones": BOOL,
    "plugins": Rule("Lightning plugins (configs with a _target_; checked by Lightning)", anything=True),
    "sync_batchnorm": BOOL,
    "reload_dataloaders_every_n_epochs": integer(0),
    "default_root_dir": PATH,
    "enable_autolog_hparams": BOOL,
    "model_registry": optional(TEXT),
}
TRAINER_TARGET = "pytorch_lightning.Trainer"
TRAINER = Instance({TRAINER_TARGET: Fields({**INSTANTIATE, **TRAINER_ARGS}, required=("max_epochs",))},
                   group="trainer")

_MONITOR = {"monitor": optional(TEXT), "mode": choice("min", "max"), "verbose": BOOL}
_MODEL_CHECKPOINT = {
    **INSTANTIATE, **_MONITOR, "dirpath": PATH, "filename": PATH,
    "save_last": optional(either(BOOL, choice("link"))), "save_top_k": integer(-1),
    "save_on_exception": BOOL, "save_weights_only": BOOL, "auto_insert_metric_name": BOOL,
    "every_n_train_steps": optional(integer(0)), "train_time_interval": ANYTHING,
    "every_n_epochs": optional(integer(0)), "save_on_train_epoch_end": optional(BOOL),
    "enable_version_counter": BOOL}
CALLBACK = Instance({
    "pytorch_lightning.callbacks.ModelCheckpoint": Fields(_MODEL_CHECKPOINT),
    "ceexp.callbacks.ScheduledCheckpoint": Fields({**_MODEL_CHECKPOINT, "every_n_seconds": number(0)}),
    "pytorch_lightning.callbacks.RichProgressBar": Fields({
        **INSTANTIATE, "refresh_rate": integer(0), "leave": BOOL, "theme": ANYTHING, "console_kwargs": ANYTHING}),
    "pytorch_lightning.callbacks.TQDMProgressBar": Fields({
        **INSTANTIATE, "refresh_rate": integer(0), "process_position": integer(0), "leave": BOOL}),
    "pytorch_lightning.callbacks.EarlyStopping": Fields({
        **INSTANTIATE, **_MONITOR, "monitor": TEXT, "min_delta": number(0), "patience": integer(0),
        "strict": BOOL, "check_finite": BOOL, "stopping_threshold": optional(number()),
        "divergence_threshold": optional(number()), "check_on_train_epoch_end": optional(BOOL),
        "log_rank_zero_only": BOOL}),
    "pytorch_lightning.callbacks.LearningRateMonitor": Fields({
        **INSTANTIATE, "logging_interval": optional(choice("step", "epoch")), "log_momentum": BOOL,
        "log_weight_decay": BOOL}),
}, nullable=True)
LOGGER = Instance({
    "pytorch_lightning.loggers.TensorBoardLogger": Fields({
        **INSTANTIATE, "save_dir": PATH, "name": PATH, "version": PATH, "log_graph": BOOL,
        "default_hp_metric": BOOL, "prefix": PATH, "sub_dir": PATH}),
    "pytorch_lightning.loggers.CSVLogger": Fields({
        **INSTANTIATE, "save_dir": PATH, "name": PATH, "version": PATH, "prefix": PATH,
        "flush_logs_every_n_steps": integer(1)}),
}, nullable=True)

METRIC_TAG = Rule("a metric tag (val/nll, test/ece, ...)",
                  lambda v: isinstance(v, str) and bool(re.fullmatch(r"(train|val|test)/\S+", v)))
EXPECTED = Fields(
    {"source": TEXT, "key": TEXT,
     "values": MapOf(MapOf(number(), non_empty=True,
                           expected="a non-empty mapping from metric tag (test/ece, ...) to number"),
                     expected="a mapping from each value of the setting named by expected.key to "
                              "{metric tag: number}")},
    required=EXPECTED_KEYS, nullable=True, expected="null or a mapping with the keys source, key, values",
)

# -- robustness after testing (ceexp.robustness): OOD sets and corruptions, named here without importing torch

# OOD set -> the input shape of its images (None: drawn in the data's own shape); the files are those of
# ceexp.download.RESOURCES[set] (test images only), read from <data.root>/<set>
OOD_SETS = {"noise": None, "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "svhn": (3, 32, 32)}
# ceexp.shift.CORRUPTIONS (tests/test_robustness.py holds the two equal)
CORRUPTION_NAMES = ("gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur", "contrast", "brightness",
                    "pixelate", "rotation")
# data target -> (input shape, image shape (C, H, W) or None for tabular data, the OOD set that is its own data)
DATA_SHAPES = {
    "ceexp.data.DigitsDataModule": ((64,), (1, 8, 8), None),
    "ceexp.data.MNIST5kDataModule": ((1, 28, 28), (1, 28, 28), "mnist"),
    "ceexp.data.MNISTDataModule": ((1, 28, 28), (1, 28, 28), "mnist"),
    "ceexp.data.FashionMNISTDataModule": ((1, 28, 28), (1, 28, 28), "fashion_mnist"),
    "ceexp.data.CIFAR10DataModule": ((3, 32, 32), (3, 32, 32), None),
    "ceexp.data.CIFAR100DataModule": ((3, 32, 32), (3, 32, 32), None),
    "ceexp.data.BreastCancerDataModule": ((30,), None, None),
    "ceexp.data.SyntheticDataModule": (None, None, None),  # (n_features,)
}
SEVERITY_RANGE = (1, 5)  # ceexp.shift.SEVERITIES
# ceexp.data.formats.CIFAR_C_CORRUPTIONS (tests/test_cifar_c_shift.py holds the two equal): shift_c=[...]
CIFAR_C_NAMES = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                 "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                 "jpeg_compression", "speckle_noise", "gaussian_blur", "spatter", "saturate")
# data target -> the published corrupted copies of its test split (a key of ceexp.download.RESOURCES)
CIFAR_C_SETS = {"ceexp.data.CIFAR10DataModule": "cifar10_c", "ceexp.data.CIFAR100DataModule": "cifar100_c"}


def _names(names) -> str:
    return ", ".join(names)


def ood_folder(data: Mapping, name: str) -> Path:
    """Where OOD set ``name``'s files are: ``<data.root>/<name>``, ``data.root`` (default ``data``, the image data
    sets' default) resolved as ``ceexp.data.images.data_root`` resolves it (kept here free of torch)."""
    path = Path(str(data.get("root") or "data")).expanduser()
    if not path.is_absolute():
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized() and HydraConfig.get().job.get("chdir"):
            path = Path(HydraConfig.get().runtime.cwd) / path
    return path.resolve() / name


def ood_files(name: str) -> tuple[str, ...]:
    """The files OOD set ``name`` is read from: its test images (none for ``noise``)."""
    from ceexp.download import MNIST_FILES, RESOURCES

    if OOD_SETS[name] is None:
        return ()
    return (MNIST_FILES[2],) if name in ("mnist", "fashion_mnist") else tuple(RESOURCES[name].files)


def ood_fetch_hint(data: Mapping, name: str, folder: Path) -> str:
    """How to get OOD set ``name``'s files: the data config's download switch, or (embedded data, which has none)
    the one call that fetches them."""
    if "download" in data:
        return "put them there, or pass data.download=true to fetch them"
    return (f"put them there, or fetch them: python -c \"from ceexp.download import download; "
            f"download('{name}', '{folder}')\"")


def cifar_c_file(data: Mapping) -> Path | None:
    """Where the CIFAR-C archive of data config ``data`` is: ``<data.root>/cifar10_c/CIFAR-10-C.tar`` (data=cifar10)
    or ``<data.root>/cifar100_c/CIFAR-100-C.tar`` (data=cifar100), ``data.root`` resolved as :func:`ood_folder`
    does; ``None`` for other data."""
    from ceexp.download import RESOURCES

    name = CIFAR_C_SETS.get(data.get("_target_"))
    if name is None:
        return None
    (filename,) = RESOURCES[name].files
    return ood_folder(data, name) / filename


def cifar_c_missing(shift_c: list, path: Path) -> ConfigError:
    """The one-line error of a CIFAR-C archive ``path`` that is missing: the file, its folder, the download switch."""
    return invalid("shift_c", shift_c, f"the file {path.name} in {path.parent} (missing); put it there, or pass "
                                       f"data.download=true to fetch it (2.9 GB)")


def _robustness_fits_data(node: DictConfig, path: str) -> None:
    """``ood``, ``shift`` and ``shift_c`` against the data: an OOD set of another input shape than the model's, an
    OOD set that is the training data's own distribution, corruptions of tabular data or of images they do not
    apply to (``rotation``: 28x28 grey only), CIFAR-C corruptions of data other than CIFAR-10 / CIFAR-100, and OOD or
    CIFAR-C files missing where ``data.download`` will not fetch them."""
    ood, shift = list(node.get("ood") or []), list(node.get("shift") or [])
    shift_c = list(node.get("shift_c") or [])
    data = node.get("data")
    if not (ood or shift or shift_c) or not isinstance(data, DictConfig):
        return
    if shift_c and data.get("_target_") not in CIFAR_C_SETS:
        kind = str(data.get("_target_")).rsplit(".", 1)[-1]
        raise invalid("shift_c", shift_c, f"data=cifar10 (CIFAR-10-C) or data=cifar100 (CIFAR-100-C), the data with "
                                          f"published corrupted copies, not {kind}")
    known = DATA_SHAPES.get(data.get("_target_"))
    if known is None:  # the user's own data class: its shapes are unknown here (ceexp.robustness checks them)
        return
    input_shape, image_shape, own = known
    if input_shape is None:
        input_shape = (data.get("n_features", 20),)
    kind = str(data._target_).rsplit(".", 1)[-1]
    for name in ood:
        shape = OOD_SETS[name]
        if shape is not None and shape != input_shape:
            raise invalid("ood", ood, f"OOD sets of the model's input shape {input_shape} ({kind}): {name} has "
                                      f"shape {shape}; noise fits any data")
        if name == own:
            raise invalid("ood", ood, f"sets other than the training data's own distribution: {kind} is {name}")
    if shift and image_shape is None:
        raise invalid("shift", shift, f"image data: {kind} is tabular (corruptions act on pixels)")
    if "rotation" in shift and image_shape != (1, 28, 28):
        raise invalid("shift", shift, f"corruptions that apply to the images: rotation needs 28x28 grey images "
                                      f"(MNIST-like), {kind} has {image_shape}")
    if data.get("download") is True:
        return
    for name in ood:
        folder = ood_folder(data, name)
        missing = [f for f in ood_files(name) if not (folder / f).is_file()]
        if missing:
            raise invalid("ood", ood, f"the {name} files {_names(missing)} in {folder} (missing); "
                                      f"{ood_fetch_hint(data, name, folder)}")
    archive = cifar_c_file(data) if shift_c else None
    if archive is not None and not archive.is_file():
        raise cifar_c_missing(shift_c, archive)


ROBUSTNESS = {
    "ood": list_of(choice(*OOD_SETS), f"a list of OOD sets from {_names(OOD_SETS)}"),
    "shift": list_of(choice(*CORRUPTION_NAMES), f"a list of corruptions from {_names(CORRUPTION_NAMES)}"),
    "shift_c": list_of(choice(*CIFAR_C_NAMES), f"a list of CIFAR-C corruptions from {_names(CIFAR_C_NAMES)}"),
    "shift_severities": list_of(integer(*SEVERITY_RANGE), "a non-empty list of severities, integers from 1 to 5",
                                min_len=1),
}

SCHEMA = Fields({
    "seed": SEED,
    **ROBUSTNESS,
    "n_bins": integer(1),
    "diagram_every_n_epochs": integer(0),
    "checkpoint": choice(*CHECKPOINTS),
    "temperature_scaling": BOOL,
    "temperature_fit": choice(*TEMPERATURE_FITS),
    "calibration": list_of(choice(*CALIBRATION_METHODS),
                           f"a list of calibrators, each one of {', '.join(CALIBRATION_METHODS)}"),
    "expected": EXPECTED,
    "save_predictions": BOOL,
    "resume": PATH,
    "optimized_metric": METRIC_TAG,
    "threads": optional(integer(1)),
    "data": DATA,
    "model": MODEL,
    "loss": LOSS,
    "optimizer": OPTIMIZER,
    "scheduler": SCHEDULER,
    "trainer": TRAINER,
    "callbacks": Entries(CALLBACK),
    "logger": Entries(LOGGER),
    "paths": Fields({"root_dir": PATH, "output_dir": PATH}),
}, required=("seed", "n_bins", "data", "model", "loss", "optimizer", "trainer"), checks=(_robustness_fits_data,))

# keys of a composed config that are not the run's: Hydra's own
_NOT_OURS = ("hydra",)


# ---------------------------------------------------------------------------------------------------------
# checking a composed config


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _unknown(field_name: str, value: Any, owner: str, names: list[str]) -> ConfigError:
    name = field_name.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if close:
        hint = f" (close matches: {', '.join(close)})"
    elif len(names) <= 15:
        hint = f" ({', '.join(sorted(names))})"
    else:
        hint = ""
    return invalid(field_name, value, f"{owner}{hint}")


def _public(names) -> list[str]:
    return [str(n) for n in names if not str(n).startswith("_")]


class _Walk:
    """One pass over a composed config: leaves first, then interpolated leaves, then cross-field checks."""

    def __init__(self) -> None:
        self.leaves: list[tuple[str, Rule, DictConfig, Any]] = []
        self.interpolated: list[tuple[str, Rule, DictConfig, Any]] = []
        self.checks: list[tuple[Callable, DictConfig, str]] = []

    def child(self, parent: DictConfig, key: Any, schema: Schema, path: str) -> None:
        if isinstance(schema, Rule):
            if schema.anything:
                return
            into = self.interpolated if OmegaConf.is_interpolation(parent, str(key)) else self.leaves
            into.append((path, schema, parent, key))
            return
        if OmegaConf.is_missing(parent, str(key)):
            raise invalid(path, "???", f"{schema.expected} (a value is required)")
        node = _value(parent, key, path, schema.expected)
        if node is None:
            if schema.nullable:
                return
            if isinstance(schema, Instance) and schema.group:
                raise ConfigError(f"{path}=null is invalid: expected one of {', '.join(group_options(schema.group))}")
            raise invalid(path, None, schema.expected)
        if not isinstance(node, DictConfig):
            raise invalid(path, node, schema.expected)
        self.node(node, schema, path)

    def node(self, node: DictConfig, schema: Schema, path: str) -> None:
        if isinstance(schema, Fields):
            self.fields(node, schema.fields, schema, path, owner=f"a field of {path or 'the config'}")
        elif isinstance(schema, Instance):
            target = node.get("_target_") if "_target_" in node else None
            if target is None:
                raise invalid(_join(path, "_target_"), None, "a class to instantiate")
            fields, known = schema.fields_of(target)
            spec = schema.targets.get(target)
            self.fields(node, fields, spec, path, owner=f"an argument of {target}", strict=known)
        elif isinstance(schema, Entries):
            for key in node:
                self.child(node, key, schema.instance, _join(path, key))
        elif isinstance(schema, MapOf):
            if schema.non_empty and len(node) == 0:
                raise invalid(path, {}, schema.expected)
            for key in node:
                self.child(node, key, schema.value, _join(path, key))

    def fields(self, node: DictConfig, fields: Mapping[str, Schema], spec: Fields | None, path: str, owner: str,
               strict: bool = True) -> None:
        for key in node:
            if not path and key in _NOT_OURS:
                continue
            sub = fields.get(str(key))
            where = _join(path, key)
            if sub is None:
                if strict:
                    raise _unknown(where, _raw(node, key), owner, _public(fields))
                continue  # an argument of the user's own class: its constructor checks it
            self.child(node, key, sub, where)
        if spec is not None:
            for key in spec.required:
                if key not in node:
                    sub = spec.fields[key]
                    raise ConfigError(f"{_join(path, key)} is missing: expected {sub.expected}")
            for check in spec.checks:
                self.checks.append((check, node, path))


def _raw(node: DictConfig, key: Any) -> Any:
    """A value for a message: resolved where possible, else the interpolation as written."""
    try:
        return _plain(node[key])
    except Exception:  # noqa: BLE001 - an unresolvable interpolation: show it as written
        return node._get_node(key)._value()


def _value(node: DictConfig, key: Any, path: str, expected: str) -> Any:
    try:
        return node[key]
    except Exception as e:  # noqa: BLE001 - OmegaConf's interpolation errors: one line naming the field
        raise invalid(path, node._get_node(key)._value(),
                      f"{expected}; its interpolation fails: {str(e).strip().splitlines()[0]}") from None


def validate_config(cfg: DictConfig) -> None:
    """Check every field of a composed train config against :data:`SCHEMA`.

    Interpolated fields (``scheduler.T_max: ${trainer.max_epochs}``) are checked after the others, so a bad
    value is reported at the field that was set. Fields with an ``anything`` rule are not read.

    Raises:
        ConfigError: for the first invalid, unknown or missing field: one line naming it.
    """
    walk = _Walk()
    walk.node(cfg, SCHEMA, "")
    for path, rule, parent, key in walk.leaves + walk.interpolated:
        if OmegaConf.is_missing(parent, str(key)):
            raise invalid(path, "???", f"{rule.expected} (a value is required)")
        rule.check(path, _value(parent, key, path, rule.expected))
    for check, node, path in walk.checks:
        check(node, path)


def rule_of(field_name: str | tuple[str, ...], target: str | None = None) -> Rule:
    """The rule of a config field, dotted (``data.split_seed``) or as its keys (for keys that hold a dot);
    ``target`` picks the instance's class (default: the rule any known class has for that name).

    Raises:
        KeyError: the schema has no such field.
    """
    schema: Schema = SCHEMA
    parts = field_name.split(".") if isinstance(field_name, str) else list(field_name)
    for i, part in enumerate(parts):
        if isinstance(schema, Fields):
            schema = schema.fields[part]
        elif isinstance(schema, Instance):
            fields, _ = schema.fields_of(target)
            schema = fields[part]
        elif isinstance(schema, Entries):
            schema = schema.instance  # the entry's name
            continue
        elif isinstance(schema, MapOf):
            schema = schema.value
        else:
            raise KeyError(field_name)
        if isinstance(schema, Rule) and i < len(parts) - 1:
            raise KeyError(field_name)
    if not isinstance(schema, Rule):
        raise KeyError(field_name)
    return schema


def check_field(field_name: str, value: Any, target: str | None = None) -> None:
    """Hold one value to its field's rule, for a constructor given arguments outside a config:
    ``check_field("data.split_seed", split_seed)``.

    Raises:
        ConfigError: ``<field>=<value> is invalid: expected ...``.
    """
    rule_of(field_name, target).check(field_name, value)


# ---------------------------------------------------------------------------------------------------------
# the command line, before Hydra


def group_options(group: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """The option names of a config group (the ``.yaml`` files in ``configs/<group>/``)."""
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def _is_group(key: str, config_dir: Path = CONFIG_DIR) -> bool:
    return "." not in key and not key.startswith("hydra") and (config_dir / key).is_dir()


def check_group_choices(overrides: list[str], config_dir: Path = CONFIG_DIR) -> None:
    """Refuse ``group=name`` (or ``+group=name``) overrides whose option does not exist, listing the choices.

    Sweep values (``loss=ce,focal``) are checked one by one; ``hydra/...`` groups are left to Hydra.

    Raises:
        ConfigError: e.g. ``loss=focla is not a known choice: expected one of ce, focal, ...``.
    """
    for item in overrides:
        if item.startswith(("-", "~")) or "=" not in item:
            continue
        key, value = item.split("=", 1)
        key = key.lstrip("+")
        if not _is_group(key, config_dir):
            continue
        options = group_options(key, config_dir)
        for option in value.split(","):
            option = option.strip()
            if option in ("null", "") or option.startswith(("choice(", "range(", "glob(", "interval(")):
                break
            if option not in options:
                raise ConfigError(f"{key}={option} is not a known choice: expected one of {', '.join(options)}")


# flags after which Hydra answers without running anything: the overrides are left to it as typed
_INSPECTING = ("help", "hydra_help", "info", "shell_completion", "config_path", "config_dir", "experimental_rerun")


def check_command_line(argv: list[str]) -> list[str]:
    """Check and complete the arguments of ``scripts/train.py`` before Hydra sees them; return the arguments
    Hydra should get.

    - ``group=option`` must name an existing option (:func:`check_group_choices`);
    - an override of a key the composed config lacks is refused in one line with close matches, except
      ``trainer.<a pytorch_lightning.Trainer argument>=v``, which becomes ``+trainer.<argument>=v`` (Lightning's
      flags typed as Lightning documents them);
    - in a sweep, a key that some cells have and others lack (``-m loss=ce,focal loss.gamma=3``) becomes
      ``++key=v``: the cells that lack it are refused by their own job (recorded as failed) and the others run;
    - a single run's composed config goes through :func:`validate_config`, so a refused config stops before
      Hydra creates the run folder.

    Its result, checked again, comes back unchanged (``ceexp.runs.checked_argv`` remembers what it checked).

    Raises:
        ConfigError: one line naming the field.
    """
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    if any(getattr(args, flag, None) for flag in _INSPECTING):
        return list(argv)
    overrides = list(args.overrides)
    check_group_choices(overrides)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        completed, cfg = _complete(overrides, args.config_name or "train", args.multirun)
    except (HydraException, OmegaConfBaseException) as e:  # Hydra's own refusals, in one line too
        raise ConfigError(_one_line(e)) from None
    if cfg is not None and not args.cfg:
        with _hydra_config(cfg):
            validate_config(cfg)
    renamed = dict(zip(overrides, completed))
    return [renamed.get(a, a) for a in argv]


@dataclass
class _Plain:
    """A plain ``key=value`` override (no ``+``/``++``/``~``) of a key that may be missing."""

    line: str
    key: str
    value: str
    first: str  # the override with the sweep's first value, for composing


def _complete(overrides: list[str], config_name: str, multirun: bool) -> tuple[list[str], DictConfig | None]:
    """``(completed overrides, the composed config of a single run or None for a sweep)``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    parsed = []
    for line in overrides:
        try:
            (o,) = parser.parse_overrides([line])
        except OverrideParseException as e:
            lines = [x for x in str(e).strip().splitlines() if not x.startswith(("Error parsing", "See https"))]
            reason = lines[0] if lines else "unreadable"
            raise ConfigError(f"{line} is invalid: expected Hydra's override syntax key=value ({reason})") from None
        parsed.append(o)

    plain, fixed_cell, groups = [], [], []  # groups: (key element, [values]) of swept config groups
    for line, o in zip(overrides, parsed):
        swept = o.is_sweep_override()
        try:
            values = list(o.sweep_string_iterator()) if swept else [o.get_value_element_as_str()]
        except Exception:  # noqa: BLE001 - interval() and other sweeps of a sweeper plugin: not enumerable
            values = None
        key = o.get_key_element()
        if not (o.is_add() or o.is_force_add() or o.is_delete()) and not _is_group(o.key_or_group) \
                and not o.key_or_group.startswith("hydra") and "/" not in o.key_or_group:
            if values is not None:
                plain.append(_Plain(line, o.key_or_group, line.split("=", 1)[1], f"{key}={values[0]}"))
            continue
        if values is None:
            continue
        if swept and _is_group(o.key_or_group.lstrip("+")) and len(values) > 1:
            groups.append((key, values))
        fixed_cell.append(f"{key}={values[0]}" if swept else line)

    with _composer(config_name) as compose:
        cfg, missing = _compose_cell(compose, fixed_cell, plain)
        single = not multirun and getattr(cfg.hydra.mode, "name", cfg.hydra.mode) != "MULTIRUN"
        cells: list[set[str]] = [missing]
        if not single and plain:
            cells += [_compose_cell(compose, cell, plain)[1] for cell in _other_cells(cfg, fixed_cell, groups)]
        lacking = {p.key: sum(p.key in m for m in cells) for p in plain}
        out = list(overrides)
        for p in plain:
            if lacking[p.key] == 0:
                continue
            index = overrides.index(p.line)
            if lacking[p.key] < len(cells):
                out[index] = "++" + p.line  # some cells have it: their jobs decide
            elif p.key.startswith("trainer.") and p.key.split(".", 1)[1] in TRAINER_ARGS:  # Lightning's flags
                out[index] = "+" + p.line
            else:
                raise _missing_key(cfg, p)
        if not single:
            return out, None
        if out != list(overrides):
            added = [o for o in out if o not in overrides]
            cfg, _ = _compose_cell(compose, [*fixed_cell, *added], [p for p in plain if not lacking[p.key]])
        return out, cfg


def _other_cells(cfg: DictConfig, fixed_cell: list[str], groups: list[tuple[str, list[str]]]) -> list[list[str]]:
    """The overrides of every combination of the swept config groups but the first (``fixed_cell``'s): from the
    command line and from the basic sweeper's ``hydra.sweeper.params`` (an experiment's sweep)."""
    import itertools

    groups, typed_only = list(groups), True
    if "basic_sweeper" in str(cfg.hydra.sweeper.get("_target_", "")):
        typed = {k.lstrip("+") for k, _ in groups}
        for k, v in (cfg.hydra.sweeper.get("params") or {}).items():
            if _is_group(str(k).lstrip("+")) and str(k).lstrip("+") not in typed:
                groups.append((str(k), [s.strip() for s in str(v).split(",")]))
                typed_only = False
    swept = {k for k, _ in groups}
    base = [c for c in fixed_cell if c.split("=", 1)[0] not in swept]
    combos = itertools.product(*[[f"{k}={v}" for v in values] for k, values in groups])
    if typed_only:
        next(combos, None)  # the first combination is fixed_cell's own
    return [[*base, *combo] for combo in combos]


def _missing_key(cfg: DictConfig, p: _Plain) -> ConfigError:
    """The error for an override of a key that no cell of the command line has."""
    parent_key = p.key.rpartition(".")[0]
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if parent_key and parent is None and _is_group(parent_key):
        return invalid(p.key, _parsed_value(p), f"a field of {parent_key}, but {parent_key} is null (choose one of "
                                                f"{', '.join(group_options(parent_key))} first)")
    owner = _owner(cfg, parent_key)
    if owner is None:
        names = [n for n in _public(parent.keys()) if n not in _NOT_OURS] if isinstance(parent, DictConfig) else []
        owner = (f"a field of {parent_key or 'the config'}", names)
    return _unknown(p.key, _parsed_value(p), *owner)


def _owner(cfg: DictConfig, path: str) -> tuple[str, list[str]] | None:
    """``(what the node at path is, the names of its fields)`` from the schema, or None when it has no entry."""
    schema: Schema | None = SCHEMA
    node: Any = cfg
    for part in path.split(".") if path else []:
        if isinstance(schema, Fields):
            schema = schema.fields.get(part)
        elif isinstance(schema, Instance):
            schema = schema.fields_of(node.get("_target_") if isinstance(node, DictConfig) else None)[0].get(part)
        elif isinstance(schema, Entries):
            schema = schema.instance
        elif isinstance(schema, MapOf):
            schema = schema.value
        else:
            return None
        node = node.get(part) if isinstance(node, DictConfig) else None
    if isinstance(schema, Instance) and isinstance(node, DictConfig) and node.get("_target_") in schema.targets:
        return f"an argument of {node._target_}", _public(schema.targets[node._target_].fields)
    if isinstance(schema, Fields):
        return f"a field of {path or 'the config'}", _public(schema.fields)
    return None


def _parsed_value(p: _Plain) -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(p.first).value()
    except Exception:  # noqa: BLE001
        return p.value


class _composer:
    """``with _composer("train") as compose: compose(overrides)`` -> the config with its ``hydra`` node; Hydra's
    global state is as before afterwards (tests compose in-process)."""

    def __init__(self, config_name: str):
        self.config_name = config_name

    def __enter__(self) -> Callable[[list[str]], DictConfig]:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from hydra.initialize import get_gh_backup

        self.backup = get_gh_backup()
        GlobalHydra.instance().clear()
        self.context = initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR))
        return lambda overrides: compose(self.config_name, overrides=overrides, return_hydra_config=True)

    def __exit__(self, *exc) -> None:
        from hydra.core.global_hydra import GlobalHydra
        from hydra.initialize import restore_gh_from_backup

        GlobalHydra.instance().clear()
        if self.backup is not None:
            restore_gh_from_backup(self.backup)


_COULD_NOT = re.compile(r"Could not override '([^']+)'")


def _compose_cell(compose, fixed: list[str], plain: list[_Plain]) -> tuple[DictConfig, set[str]]:
    """Compose ``fixed`` + ``plain``; the keys of ``plain`` the composition lacks are left out and returned."""
    from hydra.errors import ConfigCompositionException

    pending, missing = list(plain), set()
    while True:
        try:
            return compose([*fixed, *(p.first for p in pending)]), missing
        except ConfigCompositionException as e:
            match = _COULD_NOT.search(str(e))
            if not match or match.group(1) not in {p.key for p in pending}:
                raise ConfigError(_one_line(e)) from None
            missing.add(match.group(1))
            pending = [p for p in pending if p.key != match.group(1)]


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    cause = e.__cause__
    line = text[0] if text else type(e).__name__
    if cause is not None and str(cause).strip():
        line += f" ({str(cause).strip().splitlines()[0]})"
    return line


class _hydra_config:
    """While checking a composed config: its ``hydra`` node is HydraConfig (so ``${hydra:...}`` resolves) and is
    taken out of the config, as in a job; HydraConfig is as before afterwards."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def __enter__(self) -> None:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import open_dict

        self.previous = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(self.cfg)
        with open_dict(self.cfg):
            del self.cfg["hydra"]

    def __exit__(self, *exc) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().cfg = self.previous
