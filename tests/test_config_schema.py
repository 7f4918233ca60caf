"""The config schema (ceexp.validation): every leaf of every composed option has a rule that refuses a wrong type
and an out-of-range value in one line; Lightning's Trainer flags typed as users type them; the command line
checked before Hydra (exit code 2, one line, no run folder, no torch import)."""
from __future__ import annotations

import copy
import inspect
import math
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from ceexp.validation import (
    CONFIG_DIR,
    TRAINER_ARGS,
    ConfigError,
    check_command_line,
    check_field,
    group_options,
    rule_of,
    validate_config,
)
from tests.conftest import ROOT, make_cfg

SCRIPT = str(ROOT / "scripts" / "train.py")

# every config group a user picks from, and how its option is chosen on the command line
GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra")
ADDED_GROUPS = {"loss_preset"}  # not in the defaults list: +loss_preset=<option>
# the leaves that legitimately take any value, by name (written here, not read from the schema)
ANY_VALUE = {"_target_", "root_dir", "output_dir", "root", "dirpath", "filename", "save_dir", "name", "version",
             "resume", "plugins"}  # plugins: a list of Lightning plugin configs, each built from its _target_
# free texts: any non-empty string
FREE_TEXT = {"expected.source", "expected.key"}


def _leaves(node, keys=(), owner=None):
    """``(keys, value, owner _target_)`` for every leaf: scalars, lists, nulls (mappings are walked into)."""
    if isinstance(node, DictConfig) and not node._is_none():
        owner = node.get("_target_", owner) if "_target_" in node else owner
        for key in node:
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_none():
                yield from _leaves(child, (*keys, str(key)), owner)
            else:
                yield (*keys, str(key)), child, owner


def _replace(cfg: DictConfig, keys: tuple, value) -> DictConfig:
    out = copy.deepcopy(cfg)
    node = out
    for key in keys[:-1]:
        node = node[key]
    with open_dict(node):
        node[keys[-1]] = value
    return out


def _wrong_type_and_bad_value(value):
    """Values no rule of that kind may accept: a wrong type, and a value outside any sensible range."""
    if isinstance(value, bool):
        return "yes", -3  # -3: no flag is a count below 0 either (fast_dev_run takes true or a count)
    if isinstance(value, int):
        return "abc", -10**6
    if isinstance(value, float):
        return "abc", -1e6
    if isinstance(value, str):
        return {"x": 1}, "no-such-value"
    if isinstance(value, (list, ListConfig)):
        return "abc", [-1]
    assert value is None, value
    return {"x": 1}, -5


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    """One composed config per option of every group: ``{"group=option": cfg}``."""
    run_dir = tmp_path_factory.mktemp("schema") / "run"
    out = {}
    for group in GROUPS:
        for option in group_options(group):
            override = f"+{group}={option}" if group in ADDED_GROUPS else f"{group}={option}"
            out[override] = make_cfg(run_dir, [override])
    return out


def test_every_option_of_every_group_is_valid_as_shipped(composed):
    assert {"data", "model", "loss", "optimizer", "scheduler", "trainer", "callbacks", "logger", "experiment"} \
        <= set(GROUPS)
    assert len(composed) >= 40
    for name, cfg in composed.items():
        validate_config(cfg)  # the shipped configs pass their own schema


def test_every_leaf_refuses_a_wrong_type_and_a_bad_value_in_one_line(composed):
    """For every leaf of every composed option (deduplicated by path and owning class): the schema has a rule;
    a path, a name or a _target_ is marked as taking any value, and every other leaf refuses a wrong type and
    a value outside any range with one line naming it."""
    seen, tested, anything = set(), 0, set()
    for name, cfg in composed.items():
        for keys, node, owner in _leaves(cfg):
            path = ".".join(keys)
            if (path, owner) in seen:
                continue
            seen.add((path, owner))
            leaf = keys[-1]
            try:
                rule = rule_of(keys, owner)
            except KeyError:
                rule = None  # a node that is null here (scheduler: null, expected: null)
                assert node._is_none(), f"{name}: no rule for {path}"
            if rule is not None and rule.anything:
                anything.add(path)
                assert leaf in ANY_VALUE, f"{path} takes any value, but is not a path, name or _target_"
                continue
            assert leaf not in ANY_VALUE or path == "resume", f"{path} should take any value"
            if node._is_none():
                value = None
            elif isinstance(node, ListConfig):
                value = OmegaConf.to_container(node, resolve=True)
            else:
                value = cfg_value(cfg, keys)
            wrong, bad = _wrong_type_and_bad_value(value)
            if keys[:2] == ("expected", "values"):
                bad = math.nan  # a published number has no range, but it is a finite number
            if path in FREE_TEXT:
                bad = " "
            for mutated in (wrong, bad):
                with pytest.raises(ConfigError) as info:
                    validate_config(_replace(cfg, keys, mutated))
                message = str(info.value)
                assert "\n" not in message, message
                assert message.startswith((f"{path}=", f"{path}.")), (name, path, message)
                assert " is invalid: expected " in message or " is missing: expected " in message, message
            tested += 1
    assert tested >= 100, tested
    assert {"data._target_", "paths.output_dir", "callbacks.model_checkpoint.dirpath"} <= anything


def cfg_value(cfg: DictConfig, keys: tuple):
    node = cfg
    for key in keys:
        node = node[key]
    return node


def test_unknown_fields_are_refused_with_the_class_and_close_matches(tmp_path):
    cases = {
        "+loss.gama=3": "loss.gama=3 is invalid: expected an argument of torch.nn.CrossEntropyLoss "
                        "(ignore_index, label_smoothing, reduction, weight)",
        "+trainer.fast_dev_runn=1": "trainer.fast_dev_runn=1 is invalid: expected an argument of "
                                    "pytorch_lightning.Trainer (close matches: fast_dev_run)",
        "+sed=3": "sed=3 is invalid: expected a field of the config (close matches: seed)",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError) as info:
            validate_config(make_cfg(tmp_path / "run", [override]))
        assert str(info.value) == message


def test_interpolated_fields_are_reported_where_they_were_set(tmp_path):
    """scheduler.T_max follows trainer.max_epochs: a bad max_epochs is named, not the interpolation."""
    cfg = make_cfg(tmp_path / "run", ["scheduler=cosine", "trainer.max_epochs=abc"])
    with pytest.raises(ConfigError, match=r"^trainer\.max_epochs='abc' is invalid: expected an integer >= 1$"):
        validate_config(cfg)


def test_cross_field_rules(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.val_fraction \+ data\.test_fraction = 1\.1 is invalid"):
        validate_config(make_cfg(tmp_path / "run", ["data.val_fraction=0.5", "data.test_fraction=0.6"]))
    with pytest.raises(ConfigError, match=r"^data\.n_informative=30 is invalid: expected an integer in "
                                          r"\[1, data\.n_features=20\]$"):
        validate_config(make_cfg(tmp_path / "run", ["data=synthetic", "data.n_informative=30"]))
    with pytest.raises(ConfigError, match=r"^data\.n_samples=30 is invalid: expected an integer >= 10 \* "):
        validate_config(make_cfg(tmp_path / "run", ["data=synthetic", "data.n_samples=30"]))


def test_users_own_class_keeps_its_arguments_and_the_known_ones_checked(tmp_path):
    base = ["data._target_=tests.test_faults.PoisonedDigits", "+data.poison_epoch=2"]
    validate_config(make_cfg(tmp_path / "run", base))
    with pytest.raises(ConfigError, match=r"^data\.batch_size=0 is invalid: expected an integer >= 1$"):
        validate_config(make_cfg(tmp_path / "run", [*base, "data.batch_size=0"]))


def test_check_field_is_the_same_rule_for_constructors():
    with pytest.raises(ConfigError) as info:
        check_field("data.split_seed", "abc")
    assert str(info.value) == "data.split_seed='abc' is invalid: expected an integer in [0, 4294967295]"
    check_field("data.split_seed", 2**32 - 1)
    with pytest.raises(ConfigError, match=r"^data\.split_seed=4294967296 is invalid"):
        check_field("data.split_seed", 2**32)
    with pytest.raises(ConfigError, match=r"^loss\.gamma=-0\.5 is invalid: expected a number >= 0$"):
        check_field("loss.gamma", -0.5, "ceexp.losses.FocalLoss")
    with pytest.raises(KeyError):
        rule_of("loss.no_such_field", "ceexp.losses.FocalLoss")


# ---------------------------------------------------------------------------------------------------------
# Lightning's Trainer flags

# a value each argument must refuse, written from Lightning's documentation (not from the schema)
BAD_TRAINER_VALUES = {
    "accelerator": "abacus", "strategy": "no_such_strategy", "devices": -5, "num_nodes": 0, "precision": "8-bit",
    "logger": False, "callbacks": [], "fast_dev_run": -1, "max_epochs": 0, "min_epochs": -1, "max_steps": -2,
    "min_steps": -1, "max_time": "ten minutes", "limit_train_batches": 1.5, "limit_val_batches": -1,
    "limit_test_batches": "all", "limit_predict_batches": 2.5, "overfit_batches": -0.5, "val_check_interval": 0,
    "check_val_every_n_epoch": 0, "num_sanity_val_steps": -2, "log_every_n_steps": -1,
    "enable_checkpointing": "yes", "enable_progress_bar": 2, "enable_model_summary": "no", "accumulate_grad_batches": 0, "gradient_clip_val": -1,
    "gradient_clip_algorithm": "l2", "deterministic": "sometimes", "benchmark": "fast", "inference_mode": None,
    "use_distributed_sampler": "x", "profiler": "perf", "detect_anomaly": 1, "barebones": "y",
    "sync_batchnorm": 0, "reload_dataloaders_every_n_epochs": -1, "enable_autolog_hparams": "z",
    "model_registry": "",
}
ANY_TRAINER_VALUE = {"plugins", "default_root_dir"}
# values as Lightning documents them, each of which must pass
GOOD_TRAINER_VALUES = [
    ("fast_dev_run", True), ("fast_dev_run", 5), ("max_steps", 5), ("max_steps", -1), ("limit_val_batches", 0),
    ("limit_train_batches", 0.25), ("limit_train_batches", 10), ("val_check_interval", 0.5),
    ("val_check_interval", 100), ("devices", [0, 1]), ("devices", "0,1"), ("devices", -1), ("devices", "auto"),
    ("precision", "bf16-mixed"), ("precision", 32), ("precision", "16"), ("profiler", "simple"),
    ("max_time", "00:00:30:00"), ("max_time", {"minutes": 30}), ("deterministic", "warn"),
    ("num_sanity_val_steps", -1), ("overfit_batches", 0.1), ("log_every_n_steps", 0), ("accelerator", "gpu"), ("strategy", "ddp_spawn"),
]


def test_trainer_rules_cover_every_lightning_argument():
    import pytorch_lightning as pl
    from pytorch_lightning.accelerators import AcceleratorRegistry
    from pytorch_lightning.strategies import StrategyRegistry

    from ceexp.validation import ACCELERATORS, PRECISIONS, STRATEGIES

    params = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    assert set(TRAINER_ARGS) == params
    assert set(BAD_TRAINER_VALUES) | ANY_TRAINER_VALUE == params
    assert set(AcceleratorRegistry.available_accelerators()) <= set(ACCELERATORS)
    assert set(StrategyRegistry.available_strategies()) | {"auto"} == set(STRATEGIES)
    literal = inspect.signature(pl.Trainer.__init__).parameters["precision"].annotation
    documented = {v for arg in typing.get_args(literal) for v in typing.get_args(arg)}
    assert documented == set(PRECISIONS)


def test_every_trainer_argument_refuses_a_bad_value(tmp_path):
    cfg = make_cfg(tmp_path / "run", [])
    for arg, bad in BAD_TRAINER_VALUES.items():
        with pytest.raises(ConfigError) as info:
            validate_config(_replace(cfg, ("trainer", arg), bad))
        assert str(info.value).startswith(f"trainer.{arg}=") and "\n" not in str(info.value), arg
    for arg, good in GOOD_TRAINER_VALUES:
        validate_config(_replace(cfg, ("trainer", arg), good))


# ---------------------------------------------------------------------------------------------------------
# the command line, before Hydra


def test_trainer_flags_parse_as_users_type_them():
    """Lightning arguments the trainer config lacks get Hydra's +; those it has stay as typed; + stays +."""
    argv = ["trainer.fast_dev_run=true", "trainer.max_steps=5", "trainer.limit_val_batches=0",
            "trainer.max_epochs=2", "+trainer.limit_train_batches=3", "loss=focal", "loss.gamma=1"]
    assert check_command_line(argv) == [
        "+trainer.fast_dev_run=true", "+trainer.max_steps=5", "+trainer.limit_val_batches=0",
        "trainer.max_epochs=2", "+trainer.limit_train_batches=3", "loss=focal", "loss.gamma=1"]
    # on the ddp trainer, which sets them, they stay overrides
    argv = ["trainer=ddp", "trainer.strategy=ddp_spawn", "trainer.sync_batchnorm=true"]
    assert check_command_line(argv) == argv


@pytest.mark.parametrize("argv, message", [
    (["trainer.fast_dev_runn=1"], "trainer.fast_dev_runn=1 is invalid: expected an argument of "
                                  "pytorch_lightning.Trainer (close matches: fast_dev_run)"),
    (["loss.foo=1"], "loss.foo=1 is invalid: expected an argument of torch.nn.CrossEntropyLoss "
                     "(ignore_index, label_smoothing, reduction, weight)"),
    (["loss=focal", "loss.gama=3"], "loss.gama=3 is invalid: expected an argument of ceexp.losses.FocalLoss "
                                    "(close matches: gamma)"),
    (["-m", "loss=ce,focal", "loss.foo=1"], "loss.foo=1 is invalid: expected an argument of "
                                            "torch.nn.CrossEntropyLoss (ignore_index, label_smoothing, reduction, "
                                            "weight)"),
    (["scheduler.gamma=0.5"], "scheduler.gamma=0.5 is invalid: expected a field of scheduler, but scheduler is "
                              "null (choose one of cosine, multistep first)"),
    (["data.split_seed=abc"], "data.split_seed='abc' is invalid: expected an integer in [0, 4294967295]"),
    (["trainer.max_steps=-7"], "trainer.max_steps=-7 is invalid: expected an integer >= -1"),
    (["loss.gamma=["], "loss.gamma=[ is invalid: expected Hydra's override syntax key=value (no viable "
                       "alternative at input '[')"),
    (["+loss_preset=focal_9"], "loss_preset=focal_9 is not a known choice: expected one of adafocal, brier, ce, "
                               "confidence_penalty, dca, dual_focal, flsc_531, flsd_53, focal_1, focal_2, focal_3, "
                               "ls_0.05, ls_0.1, mbls, mmce, poly1"),
])
def test_command_line_refusals_are_one_line(argv, message):
    with pytest.raises(ConfigError) as info:
        check_command_line(argv)
    assert str(info.value) == message


def test_a_key_some_cells_of_a_sweep_lack_is_left_to_their_jobs():
    """-m loss=ce,focal loss.gamma=3: focal has gamma, ce does not; ++ lets each cell compose, and the ce job's
    own validation refuses it (test_faults.py runs the sweep)."""
    assert check_command_line(["-m", "loss=ce,focal", "loss.gamma=3"]) == ["-m", "loss=ce,focal", "++loss.gamma=3"]
    # every cell has it: unchanged; an experiment's own sweep counts as cells too
    assert check_command_line(["-m", "loss=focal,focal_sd53", "loss.reduction=sum"]) == \
        ["-m", "loss=focal,focal_sd53", "loss.reduction=sum"]
    assert check_command_line(["experiment=focal_gamma", "loss.alpha=0.5", "trainer.max_steps=3"]) == \
        ["experiment=focal_gamma", "loss.alpha=0.5", "+trainer.max_steps=3"]
    assert check_command_line(["experiment=imbalance", "loss.gamma=2"]) == ["experiment=imbalance", "++loss.gamma=2"]


def test_checked_command_line_is_left_alone_and_help_untouched():
    once = check_command_line(["trainer.max_steps=5", "seed=1"])
    assert check_command_line(once) == once
    assert check_command_line(["--help", "loss.foo=1"]) == ["--help", "loss.foo=1"]
    assert check_command_line(["--cfg", "job", "trainer.max_steps=5"]) == ["--cfg", "job", "+trainer.max_steps=5"]


def _cli(*args: str, cwd: Path, extra: tuple = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *extra, SCRIPT, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args, line", [
    (["data.split_seed=abc"], "error: data.split_seed='abc' is invalid: expected an integer in [0, 4294967295]"),
    (["loss.foo=1"], "error: loss.foo=1 is invalid: expected an argument of torch.nn.CrossEntropyLoss "
                     "(ignore_index, label_smoothing, reduction, weight)"),
    (["-m", "loss=ce,focal", "trainer.fast_dev_runn=1"],
     "error: trainer.fast_dev_runn=1 is invalid: expected an argument of pytorch_lightning.Trainer "
     "(close matches: fast_dev_run)"),
    (["data=null"], "error: Config group override must be a string or a list. Got NoneType"),
])
def test_cli_config_error_is_one_line_exit_2_no_folder_no_torch(tmp_path, args, line):
    proc = _cli(*args, cwd=tmp_path, extra=("-X", "importtime"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if not x.startswith("import time:")]
    assert lines == [line]
    assert "torch" not in _imported(proc.stderr) and "pytorch_lightning" not in _imported(proc.stderr)
    assert not (tmp_path / "outputs").exists()


def _imported(stderr: str) -> set[str]:
    return {x.split("|")[-1].strip() for x in stderr.splitlines() if x.startswith("import time:")}


def test_cli_trainer_flag_reaches_the_composed_config(tmp_path):
    """--cfg and --help are answered from the configs alone: no torch, no Lightning, no run folder."""
    proc = _cli("trainer.fast_dev_run=true", "trainer.limit_val_batches=0", "--cfg", "job", "--package", "trainer",
                cwd=tmp_path, extra=("-X", "importtime"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    trainer = OmegaConf.create(proc.stdout)  # the trainer node alone (--package trainer)
    assert trainer.fast_dev_run is True and trainer.limit_val_batches == 0
    assert "torch" not in _imported(proc.stderr)
    proc = _cli("--help", cwd=tmp_path, extra=("-X", "importtime"))
    assert proc.returncode == 0 and "== Config ==" in proc.stdout and "data: " in proc.stdout
    assert "torch" not in _imported(proc.stderr) and "pytorch_lightning" not in _imported(proc.stderr)
    assert not (tmp_path / "outputs").exists()
