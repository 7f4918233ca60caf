"""Turn one or more sweeps (or folders of single runs) into a comparison table, its statistics, and figures.

    python scripts/compare.py outputs/multirun/2026-01-01/12-00-00.000000
    python scripts/compare.py SWEEP_A SWEEP_B --metrics acc ece ece_ts smece --by loss,loss.gamma --ref loss=ce

Jobs. A job is any folder under the given folders that holds a ``.hydra/`` record, and every job a sweep recorded
(:func:`ceexp.runs.find_runs`: symbolic links are followed, a folder reached twice is read once, hidden folders
are not searched, and nothing below a job is). Run folders are read through :mod:`ceexp.runs`. Its settings are
its command-line overrides (``.hydra/overrides.yaml``); a key that some jobs override and others do not is read
from the others' own record (the group choice in ``.hydra/hydra.yaml``, else the value in
``.hydra/config.yaml``), so ``python scripts/train.py`` and
``python scripts/train.py loss=ce`` are the same setting. Its result is ``metrics.json``: only ``completed``
jobs enter the statistics; the others (``failed``, ``interrupted``, ``running``, or ``unknown`` when there is
no readable ``metrics.json``) are listed with their error line, never dropped silently.

Groups. Jobs are grouped by every overridden key except ``seed`` and ``resume`` whose value is not the same
in all jobs (keys with one value for all jobs are printed once as common settings), or by the keys of
``--by``. Within a group, a run is known by its values of the other varying keys (its seed): groups whose runs
have the same seeds are compared seed by seed.

Metrics. A run's value is its ``metrics.json`` value. A test (or validation) metric that ``ceexp.metrics``
defines, with or without ``_ts`` (after temperature scaling), is recomputed from the run's ``predictions.npz``
when ``metrics.json`` lacks it (``--metrics smece`` on a sweep that ran before smECE existed), with the run's
own ``n_bins``. A metric that needs predictions some runs lack stops the comparison (the runs are listed).

Statistics (:mod:`ceexp.stats`, :mod:`ceexp.bootstrap`). Each cell shows the mean over the group's completed
runs ± their sample standard deviation (ddof=1) and the 95 % interval of the mean: a two-level basic
bootstrap (seeds, then test samples; 1,000 resamples) when the runs have predictions, else a t-interval over
the seeds (and none for one run). The table of differences gives each group's difference to the reference group
(``--ref``; default: the cross-entropy group, ``loss`` or ``loss_preset`` ``ce``, else the first), its
interval (paired by seed and by test sample where the runs allow) and a Holm-adjusted p-value (t-tests over
seeds; a permutation test over test samples for one run against one run). Marks: ``*`` (bold in markdown)
``best``, when the best-mean group is significantly better than every other group after Holm's correction;
otherwise ``≈`` on the best-mean group and every group not significantly different from it (``tied``).
Directions: highest accuracy; temperature closest to 1 (smallest ``|log T|``); signed ECE closest to 0;
none for mean confidence; lowest for every other metric.

Published numbers. When the jobs' composed config has an ``expected:`` block (``source``, ``key``, ``values``:
setting of ``key`` -> tag -> published value), a second table sets each matching group's mean and interval
beside the published value.

Comparability. Values measured differently are not ranked against each other: a binned metric (ECE, MCE,
AdaECE, classwise ECE, debiased ECE, with or without ``_ts``) of runs with different ``n_bins``, and any metric of
runs on different test splits (their ``predictions.npz`` test labels differ; without predictions, their data set
or a data setting other than the training-only ones, :data:`TRAINING_ONLY_DATA`). One line says which groups
differ in what; marks are given within each set of groups measured alike, differences only to groups measured
like the reference. Figure labels give the runs' own bins.

Reliability diagram per group. The group's figure tiles the diagrams the runs drew themselves
(``reliability_diagram.png``: test split before and after temperature scaling), one tile per run,
captioned by the settings that differ within the group (the seed): the variation across seeds stays visible.

Written into the first folder given (after every check has passed; on bad input nothing is written):
``comparison.md`` (the tables, the jobs left out, the figures), ``comparison.csv`` (one row per group: per
metric ``<tag>_mean``, ``_std``, ``_n``, ``_ci_low``, ``_ci_high``, ``_diff``, ``_diff_ci_low``,
``_diff_ci_high``, ``_p``, ``_mark``) and ``comparison/`` (replaced as a whole) with ``intervals.png`` (each
metric per group with its interval, the reference's mean as a line), ``val_nll.png`` (per group: mean line over
the seeds, min-max band; x: epoch, counted from 1, read from the event files), ``ece_vs_acc.png`` (one point per
run), ``ece_temperature_scaling.png`` (per group: mean test ECE before and after temperature scaling, each
run's pair joined), ``reliability_<i>_<group>.png``, and where the runs have them (:func:`_robustness_figures`)
``risk_coverage.png`` (per group: the mean selective risk over the runs at each coverage, from ``predictions.npz``),
``ood_scores_<set>.png`` (per group: MSP histograms of the test split against OOD set ``<set>``, pooled over the
runs, from ``ood_logits.npz``) and ``shift_calibration.png`` (accuracy, ECE and ECE after temperature scaling against
the severity of ``shift=`` corruptions, per group a box over the corruptions, as Ovadia et al. 2019, Fig. 2) and,
the same for the published CIFAR-C images of ``shift_c=``, ``shift_c_calibration.png``.

Selective classification (``test/aurc``, ``eaurc``, ``augrc``), OOD (``ood/<set>/<metric>_<score>``) and shift
(``shift/<corruption>/s<severity>/<metric>``, ``shift_c/...``) tags are metrics like any other for ``--metrics``;
AUROC and AUPR are best highest, FPR95 lowest.

Bad input (an empty or non-sweep folder, no completed job, an unknown metric, a ``--by`` key no job has, a
``--ref`` that is no group, runs without the predictions a metric needs) raises :class:`CompareError`; the
command line prints it as one line and exits with code 2.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_METRICS",
    "CompareError",
    "Comparison",
    "Group",
    "Job",
    "best_direction",
    "compare",
    "default_reference",
    "find_jobs",
    "main",
    "read_curve",
    "write_report",
]

DEFAULT_METRICS = (
    "test/acc", "test/nll", "test/ece", "test/adaece", "test/cwece", "test/brier", "test/ece_ts", "test/temperature",
)
# keys never used to group: the seed is what a group averages over; resume=DIR continues the same run
NOT_GROUPED = ("seed", "resume")
# metrics whose value depends on the number of bins (n_bins): not comparable across runs with different n_bins
BINNED_METRICS = ("ece", "mce", "rmsce", "adaece", "cwece", "ece_debiased")
_UNBINNED = ("ece_signed",)  # = mean confidence - accuracy, whatever the bins
# data settings that change the training data only, not the test split (used when a run has no predictions.npz
# whose test labels would say)
TRAINING_ONLY_DATA = ("batch_size", "imbalance_ratio", "label_noise", "augment", "on_device", "download", "root",
                      "mirrors", "num_workers", "pin_memory")
CURVE_TAG = "val/nll"
FIGURES_DIR = "comparison"
_ABSENT = object()


class CompareError(ValueError):
    """Input that cannot be compared; the message is one line naming the input and what is expected."""


# ---------------------------------------------------------------------------------------------------------
# jobs


def _canonical(value: Any) -> str | None:
    """A setting as one string, equal for equal values however written (``2`` and ``2.0``; ``None`` stays None)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        x = float(value)
        return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(_canonical(v)) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_canonical(v)}" for k, v in value.items()) + "}"
    return str(value)


def _parse_overrides(lines: Sequence[str]) -> dict[str, str | None]:
    """``["loss=focal", "loss.gamma=1"]`` -> ``{"loss": "focal", "loss.gamma": "1"}`` (Hydra's own parser)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out: dict[str, str | None] = {}
    for line in lines:
        try:
            (override,) = parser.parse_overrides([str(line)])
            key = override.key_or_group + (f"@{override.package}" if override.package else "")
            out[key] = None if override.is_delete() else _canonical(override.value())
        except Exception:  # noqa: BLE001 - a record Hydra wrote but cannot read back: keep the raw text
            key, _, value = str(line).lstrip("+~").partition("=")
            out[key] = value
    return out


@dataclass
class Job:
    """One job folder: where it is, what it overrode, and its ``metrics.json`` record (``{}`` when missing).

    Attributes:
        path: the job folder.
        name: the folder as shown to users (relative to the folder given on the command line).
        overrides: command-line overrides, key -> canonical value string, in the order given.
        record: the parsed ``metrics.json``.
        problem: why ``record`` is empty (no file, unreadable), else ``None``.
    """

    path: Path
    name: str
    overrides: dict[str, str | None]
    record: dict = field(default_factory=dict)
    problem: str | None = None

    @property
    def status(self) -> str:
        """``completed``, ``failed``, ``interrupted``, ``running``, or ``unknown`` (no readable metrics.json)."""
        return str(self.record.get("status", "unknown"))

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def error(self) -> str:
        """The one-line error of a job that did not complete (``""`` when there is none)."""
        lines = str(self.problem or self.record.get("error") or "").strip().splitlines()
        return lines[0] if lines else ""

    def metric(self, tag: str) -> float:
        """``record[tag]`` as a float; NaN when absent or null (``write_json`` writes NaN as null)."""
        value = self.record.get(tag)
        try:
            return float(value) if value is not None else math.nan
        except (TypeError, ValueError):
            return math.nan

    def numeric_tags(self) -> list[str]:
        return [k for k, v in self.record.items()
                if (isinstance(v, (int, float)) and not isinstance(v, bool)) or v in ("inf", "-inf")]

    @cached_property
    def _choices(self) -> dict:
        from ceexp.runs import read_choices

        return read_choices(self.path)

    @cached_property
    def _config(self):
        from ceexp.runs import read_config

        return read_config(self.path)

    @property
    def has_predictions(self) -> bool:
        """Whether the run left a ``predictions.npz`` (read it with :meth:`predictions`)."""
        from ceexp.runs import has_predictions

        return has_predictions(self.path)

    def predictions(self) -> dict:
        """The run's ``predictions.npz`` arrays (``ceexp.runs.read_predictions``).

        Raises:
            CompareError: the file is missing or unreadable (one line).
        """
        from ceexp.runs import read_predictions

        try:
            return read_predictions(self.path)
        except (OSError, ValueError) as e:
            raise CompareError(f"{self.name}: " + " ".join(str(e).split())) from e

    @cached_property
    def test_labels(self) -> tuple | None:
        """``("labels", SHA-1 of the test labels)`` of ``predictions.npz``: equal for runs tested on the same
        split; ``None`` without predictions."""
        import hashlib

        if not self.has_predictions:
            return None
        import numpy as np

        labels = np.ascontiguousarray(self.predictions()["test_labels"], dtype=np.int64)
        return ("labels", hashlib.sha1(labels.tobytes()).hexdigest())

    @cached_property
    def data_setting(self) -> tuple:
        """``("data", choice, ((key, value), ...))``: the data set and the settings that define its test split."""
        block = self.config_block("data")
        settings = tuple(sorted((str(k), _canonical(v)) for k, v in (block or {}).items()
                                if k not in TRAINING_ONLY_DATA)) if isinstance(block, dict) else ()
        choice = self.overrides.get("data", self._choices.get("data"))  # the group's option, not its values
        return ("data", None if choice is None else _canonical(choice), settings)

    @property
    def n_bins(self) -> int:
        """The run's ``n_bins`` (its config's; 15, the default, when it has none)."""
        value = self.setting("n_bins")
        try:
            return int(float(value)) if value is not _ABSENT else 15
        except (TypeError, ValueError):
            return 15

    def config_block(self, key: str) -> Any:
        """The composed config's value of ``key`` as plain Python (dicts, lists), ``None`` when absent or null."""
        if self._config is None:
            return None
        from omegaconf import OmegaConf

        value = OmegaConf.select(self._config, key, default=None, throw_on_resolution_failure=False)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    def setting(self, key: str) -> Any:
        """The job's value of ``key`` as a canonical string: its override, else its config group choice, else
        its composed config value; ``_ABSENT`` when the job has no such key (e.g. ``loss.gamma`` for ``loss=ce``)."""
        if key in self.overrides:
            return self.overrides[key]
        if key in self._choices:
            return _canonical(self._choices[key])
        if self._config is not None:
            from omegaconf import OmegaConf

            value = OmegaConf.select(self._config, key, default=_ABSENT, throw_on_resolution_failure=False)
            if value is not _ABSENT:
                if OmegaConf.is_config(value):
                    value = OmegaConf.to_container(value, resolve=False)
                return _canonical(value)
        return _ABSENT


def read_job(path: Path, name: str) -> Job:
    """Read one job folder's overrides and ``metrics.json`` (through :mod:`ceexp.runs`)."""
    from ceexp.runs import read_metrics, read_overrides

    job = Job(path=path, name=name, overrides=_parse_overrides(read_overrides(path)))
    try:
        job.record = read_metrics(path)
    except FileNotFoundError:
        job.problem = "no metrics.json (not started, still starting, or killed)"
    except (OSError, ValueError) as e:
        job.problem = str(e)
    return job


def find_jobs(dirs: Sequence[str | Path]) -> list[Job]:
    """Every job folder under ``dirs`` (:func:`ceexp.runs.find_runs`: symbolic links followed, a sweep's recorded
    jobs first), in sweep order (job number), without repeats.

    Raises:
        CompareError: a folder that does not exist, or no job folder under any of them.
    """
    from ceexp.runs import find_runs
    jobs: list[Job] = []
    seen: set[Path] = set()
    for d in map(Path, dirs):
        if not d.exists():
            raise CompareError(f"{d} does not exist: expected a sweep folder (outputs/multirun/<date>/<time>) "
                               f"or a folder of runs (outputs/runs/<date>)")
        if not d.is_dir():
            raise CompareError(f"{d} is not a folder: expected a sweep folder or a folder of runs")
        prefix = f"{d.name}/" if len(dirs) > 1 else ""
        for path in find_runs(d, skip=(FIGURES_DIR,)):
            resolved = path.resolve()
            if resolved not in seen:
                seen.add(resolved)
                rel = Path(os.path.relpath(path, d)).as_posix()
                jobs.append(read_job(path, prefix + (rel if rel != "." else d.name)))
    if not jobs:
        where = ", ".join(str(d) for d in dirs)
        raise CompareError(f"no job folders (folders with .hydra/) under {where}: expected a sweep folder "
                           f"(outputs/multirun/<date>/<time>) or a folder of runs (outputs/runs/<date>)")
    return jobs


# ---------------------------------------------------------------------------------------------------------
# the comparison


def best_direction(tag: str) -> str | None:
    """How the best group of ``tag`` is chosen (:func:`ceexp.stats.score`): ``"max"`` (accuracy), ``"one"``
    (temperature: smallest ``abs(log T)``), ``"zero"`` (signed ECE: smallest ``abs``), ``None`` (mean
    confidence, epoch: not marked), ``"min"`` (everything else)."""
    base = tag.rsplit("/", 1)[-1]
    base = base.removesuffix("_ts")
    if base == "acc" or base.startswith(("auroc_", "aupr_")):  # OOD detection: ood/<set>/auroc_msp, ...
        return "max"
    if base == "temperature":
        return "one"
    if base == "ece_signed":
        return "zero"
    if base in ("confidence", "epoch", "step"):
        return None
    return "min"


def is_binned(tag: str) -> bool:
    """Whether ``tag`` depends on ``n_bins`` (``test/ece``, ``test/ece_ts``, ``val/adaece``...; not
    ``test/ece_signed``, ``test/smece``, ``test/nll``)."""
    name = tag.partition("/")[2] or tag
    if any(name == m or name.startswith(m + "_") for m in _UNBINNED):
        return False
    return any(name == m or name.startswith(m + "_") for m in BINNED_METRICS)


def short_name(tag: str) -> str:
    """``test/ece`` -> ``ece``; other tags stay whole (``val/nll``)."""
    return tag.removeprefix("test/")


def _tag(name: str) -> str:
    """``ece`` -> ``test/ece``; a tag with a split stays as it is."""
    return name if "/" in name else f"test/{name}"


@dataclass
class Group:
    """Jobs that share the value of every grouping key."""

    settings: dict[str, str | None]  # key -> value (None: the jobs have no such key)
    jobs: list[Job] = field(default_factory=list)

    @property
    def label(self) -> str:
        text = ", ".join(f"{k}={v}" for k, v in self.settings.items() if v is not None)
        return text or "all runs"

    @property
    def completed(self) -> list[Job]:
        return [j for j in self.jobs if j.completed]


@dataclass
class Published:
    """One row of the published-numbers table: a group's observed mean of ``tag`` beside a published value."""

    source: str
    group: int
    tag: str
    published: float
    mean: float
    low: float
    high: float

    @property
    def inside(self) -> bool | None:
        """Whether the published value lies in the interval (None without an interval)."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return None
        return self.low <= self.published <= self.high


@dataclass
class Comparison:
    """The result of :func:`compare`: everything needed to print and write the report (nothing written yet).

    Attributes:
        dirs: the folders given; the report goes into the first.
        jobs: every job found, in sweep order.
        keys: the grouping keys (the varying overrides, or ``--by``).
        common: settings shared by all jobs (not shown per row).
        inner: the overridden keys whose values differ within groups (``seed``; with ``--by``, also the
            keys left out of it), each with its values: what a group's statistics are taken over.
        groups: in order of first appearance.
        metrics: the tags in the table.
        table: pandas DataFrame, one row per group, columns ``(tag, "mean" | "std" | "n")``.
        ref: index of the reference group of the differences.
        analysis: the statistics (:class:`ceexp.stats.Analysis`) of ``metrics`` and of the published tags.
        published: the rows of the published-numbers table (empty without an ``expected:`` block).
        comparability: one line saying which groups' metrics were measured differently (other ``n_bins``,
            another test split) and so are ranked and differenced only within groups measured alike; ``""``
            when all are alike.
        notes: what the figures left out.
        footer: how the statistics were made, and their caveats (printed under the tables).
    """

    dirs: list[Path]
    jobs: list[Job]
    keys: list[str]
    common: dict[str, str]
    inner: dict[str, list[str]]
    groups: list[Group]
    metrics: list[str]
    table: Any
    ref: int
    analysis: Any
    published: list[Published] = field(default_factory=list)
    comparability: str = ""
    notes: list[str] = field(default_factory=list)
    footer: list[str] = field(default_factory=list)

    @property
    def not_completed(self) -> list[Job]:
        return [j for j in self.jobs if not j.completed]

    @property
    def marks(self) -> dict[str, list[str]]:
        """tag -> per group ``"best"``, ``"tied"`` or ``""``."""
        return {tag: self.analysis.tags[tag].mark for tag in self.metrics}

    def stats(self, tag: str):
        """The :class:`ceexp.stats.TagStats` of ``tag``."""
        return self.analysis.tags[tag]


def _split(items: Sequence[str] | None) -> list[str]:
    """``["acc,ece", "nll"]`` -> ``["acc", "ece", "nll"]`` without repeats."""
    out: list[str] = []
    for item in items or []:
        for part in str(item).split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def _recorded(completed: list[Job]) -> list[str]:
    available: list[str] = []
    for job in completed:
        available += [t for t in job.numeric_tags() if t not in available]
    return available


def _choose_metrics(completed: list[Job], names: Sequence[str] | None) -> list[str]:
    from ceexp.bootstrap import available_metrics, tag_metric

    available = _recorded(completed)
    if not names:
        chosen = [t for t in DEFAULT_METRICS if t in available]
        if not chosen:
            raise CompareError(f"none of the default metrics ({', '.join(DEFAULT_METRICS)}) is in the completed "
                               f"jobs' metrics.json: choose with --metrics among {', '.join(available)}")
        return chosen
    chosen = []
    for name in names:
        tag = _tag(name)
        if tag not in available and tag_metric(tag) is None:
            shorts = ", ".join(short_name(t) for t in available if t.startswith("test/"))
            computed = ", ".join(m for m in available_metrics() if f"test/{m}" not in available)
            raise CompareError(f"--metrics {name} is not a known metric: expected a tag of the completed jobs' "
                               f"metrics.json (e.g. val/nll) or a test metric's short name: {shorts}; or one "
                               f"recomputed from predictions.npz: {computed} (each also with _ts)")
        if tag not in chosen:
            chosen.append(tag)
    return chosen


def _check_predictions(completed: list[Job], tags: Sequence[str]) -> None:
    """A tag that some runs lack in ``metrics.json`` is recomputed from their predictions: they must have them."""
    from ceexp.bootstrap import tag_metric

    for tag in tags:
        if tag_metric(tag) is None:
            continue
        missing = [job.name for job in completed if tag not in job.record and not job.has_predictions]
        if missing:
            raise CompareError(f"--metrics {short_name(tag)} is not in the metrics.json of {len(missing)} runs and "
                               f"they have no predictions.npz to recompute it from: {', '.join(missing)}")


def _grouping_keys(
    jobs: list[Job], by: Sequence[str] | None
) -> tuple[list[str], dict[str, str], dict[str, list[str]]]:
    """(grouping keys, common settings, keys varying within groups with their values)."""
    overridden: list[str] = []
    for job in jobs:
        overridden += [k for k in job.overrides if k not in overridden]
    for key in by or []:
        if all(job.setting(key) is _ABSENT for job in jobs):
            raise CompareError(f"--by {key} is not a setting of any job: expected an override key (these jobs "
                               f"override {', '.join(overridden) or 'nothing'}) or a config key such as optimizer.lr")
    common: dict[str, str] = {}
    varying: dict[str, list[str]] = {}
    for key in overridden:
        values = {job.setting(key) for job in jobs}
        if len(values) == 1:
            if (value := values.pop()) is not _ABSENT and key not in (by or []):
                common[key] = value
        else:
            varying[key] = sorted((v for v in values if v is not _ABSENT), key=_natural_value)
    keys = list(by) if by else [k for k in varying if k not in NOT_GROUPED]
    return keys, common, {k: v for k, v in varying.items() if k not in keys}


def _natural_value(value: str) -> tuple:
    """Sort key: numbers by value, then the rest by text."""
    try:
        return (0, float(value), value)
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _is_cross_entropy(job: Job) -> bool:
    preset = job.setting("loss_preset")
    if preset not in (_ABSENT, "null"):
        return preset == "ce"
    return job.setting("loss") == "ce"


def default_reference(groups: Sequence[Group]) -> int:
    """The default reference group: the first with completed runs that all trained with cross-entropy
    (``loss_preset`` ``ce``, or ``loss`` ``ce`` without a preset), else the first with completed runs."""
    live = [i for i, g in enumerate(groups) if g.completed]
    for i in live:
        if all(_is_cross_entropy(job) for job in groups[i].completed):
            return i
    return live[0]


def _reference(groups: list[Group], keys: list[str], ref: str | None) -> int:
    if ref is None:
        return default_reference(groups)
    for i, group in enumerate(groups):
        if ref == group.label or (len(keys) == 1 and ref == group.settings[keys[0]]):
            if not group.completed:
                raise CompareError(f"--ref {ref} has no completed run: expected one of "
                                   f"{', '.join(g.label for g in groups if g.completed)}")
            return i
    raise CompareError(f"--ref {ref} is not a group: expected one of {', '.join(g.label for g in groups)}")


def _run_key(job: Job, inner: Sequence[str]) -> str:
    """A run's identity within its group: its values of the keys that vary within groups (its seed)."""
    parts = [f"{k}={v}" for k in inner if (v := job.setting(k)) is not _ABSENT]
    return ", ".join(parts) if parts else job.name


def _expected_blocks(groups: list[Group]) -> tuple[dict[int, tuple[str, dict]], list[str]]:
    """Per group, ``(source, {tag: published})`` from its runs' ``expected:`` config block, and notes."""
    out: dict[int, tuple[str, dict]] = {}
    notes: list[str] = []
    for i, group in enumerate(groups):
        if not group.completed:
            continue
        job = group.completed[0]
        block = job.config_block("expected")
        if block is None:
            continue
        if not isinstance(block, dict) or not isinstance(block.get("values"), dict) or not block.get("key"):
            notes.append(f"{job.name}: the expected: block is not {{source, key, values}}: published numbers skipped")
            continue
        setting = job.setting(str(block["key"]))
        rows = {_canonical(k): v for k, v in block["values"].items()}
        row = rows.get(setting) if setting is not _ABSENT else None
        if isinstance(row, dict):
            published = {}
            for tag, value in row.items():
                try:
                    published[_tag(str(tag))] = float(value)
                except (TypeError, ValueError):
                    notes.append(f"expected: {tag} = {value!r} is not a number: skipped")
            out[i] = (str(block.get("source") or "published"), published)
    return out, notes


def _comparability(groups: Sequence[Group], tags: Sequence[str]) -> tuple[dict[str, list], str]:
    """Per tag, each group's comparability class for :func:`ceexp.stats.analyse` (``(test set, n_bins)`` for a
    binned tag, ``(test set, None)`` otherwise; ``None`` for a group whose runs differ in it), and one line naming
    what differs between groups (``""`` when nothing does)."""
    live = [i for i, g in enumerate(groups) if g.completed]
    # the test split: the runs' test labels where every run has them, else their data settings
    by_labels = all(job.test_labels is not None for i in live for job in groups[i].completed)
    tests = {i: list(dict.fromkeys(job.test_labels if by_labels else job.data_setting
                                   for job in groups[i].completed)) for i in live}
    bins = {i: sorted({job.n_bins for job in groups[i].completed}) for i in live}
    classes: dict[str, list] = {}
    for tag in tags:
        per_group: list = [None] * len(groups)
        for i in live:
            if len(tests[i]) == 1 and (len(bins[i]) == 1 or not is_binned(tag)):
                per_group[i] = (tests[i][0], bins[i][0] if is_binned(tag) else None)
        ref_like = next((per_group[i] for i in live if per_group[i] is not None), None)
        for i in range(len(groups)):
            if i not in live:
                per_group[i] = ref_like  # no values: nothing to rank, no note
        classes[tag] = per_group

    label = [g.label for g in groups]
    parts = []
    single_tests = list(dict.fromkeys(tests[i][0] for i in live if len(tests[i]) == 1))
    if len(single_tests) > 1:
        parts.append("every metric: " + " vs ".join(
            f"test split {k + 1} ({', '.join(label[i] for i in live if tests[i] == [t])})"
            for k, t in enumerate(single_tests)))
    binned = [short_name(t) for t in tags if is_binned(t)]
    single_bins = sorted({bins[i][0] for i in live if len(bins[i]) == 1})
    if binned and len(single_bins) > 1:
        parts.append(f"{', '.join(binned)}: " + " vs ".join(
            f"n_bins {b} ({', '.join(label[i] for i in live if bins[i] == [b])})" for b in single_bins))
    mixed = [label[i] for i in live if len(tests[i]) > 1 or (binned and len(bins[i]) > 1)]
    if mixed:
        parts.append(f"{', '.join(mixed)} mix runs measured differently (not ranked)")
    if not parts:
        return classes, ""
    return classes, ("not ranked against each other, measured with different settings: " + "; ".join(parts)
                     + "; marks and differences are within groups measured alike")


def _bins_text(cmp: Comparison) -> str:
    """The bins of the runs' ECE, for figure labels: ``15 equal-width bins`` (or which, when they differ)."""
    values = sorted({job.n_bins for g in cmp.groups for job in g.completed})
    if len(values) == 1:
        return f"{values[0]} equal-width bins"
    return f"equal-width bins: n_bins {' or '.join(map(str, values))} by group, not comparable"


def compare(
    dirs: Sequence[str | Path],
    metrics: Sequence[str] | None = None,
    by: Sequence[str] | None = None,
    ref: str | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> Comparison:
    """Read the jobs under ``dirs``, group them and compute the table and its statistics; nothing is written.

    Args:
        dirs: sweep folders, folders of single runs, or job folders.
        metrics: tags (``test/ece``, ``val/nll``) or short names of test tags (``ece``, ``smece``); comma-separated
            items are split. Default: :data:`DEFAULT_METRICS` (those present).
        by: grouping keys (comma-separated items are split). Default: every varying override but ``seed``.
        ref: the reference group of the differences, by label (``loss=ce``) or, with one grouping key, by value
            (``ce``). Default: :func:`default_reference`.
        n_resamples: bootstrap resamples.
        seed: the bootstrap's seed.

    Raises:
        CompareError: no job folder, no completed job, an unknown metric, a ``by`` key that no job has, a ``ref``
            that is no group, runs without the predictions a metric needs, unreadable predictions.
    """
    import pandas as pd

    from ceexp import stats
    from ceexp.bootstrap import LOOP_RESAMPLES, tag_metric

    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise CompareError(f"--resamples {n_resamples} is invalid: expected a positive integer")
    dirs = [Path(d) for d in dirs]
    jobs = find_jobs(dirs)
    completed = [j for j in jobs if j.completed]
    if not completed:
        counts = ", ".join(f"{sum(j.status == s for j in jobs)} {s}" for s in dict.fromkeys(j.status for j in jobs))
        first = next((f" (first error: {j.name}: {j.error})" for j in jobs if j.error), "")
        raise CompareError(f"no completed job under {', '.join(map(str, dirs))}: {len(jobs)} jobs, {counts}{first}")
    chosen = _choose_metrics(completed, _split(metrics))
    keys, common, inner = _grouping_keys(jobs, _split(by))

    groups: dict[tuple, Group] = {}
    for job in jobs:
        settings = {k: (None if (v := job.setting(k)) is _ABSENT else v) for k in keys}
        groups.setdefault(tuple(settings.values()), Group(settings)).jobs.append(job)
    group_list = list(groups.values())
    ref_index = _reference(group_list, keys, ref)
    _check_predictions(completed, chosen)

    expected, expected_notes = _expected_blocks(group_list)
    recorded = set(_recorded(completed))
    # published tags outside --metrics are measured too, where they can be
    extra = [t for _, (_, row) in sorted(expected.items()) for t in row
             if t not in chosen and (t in recorded or tag_metric(t) is not None)]
    tags = [*chosen, *dict.fromkeys(extra)]
    classes, comparability = _comparability(group_list, tags)
    runs = [[stats.Run(key=_run_key(job, list(inner)), values={t: job.metric(t) for t in tags},
                       predictions=job.predictions if job.has_predictions else None, n_bins=job.n_bins,
                       name=job.name) for job in g.completed] for g in group_list]
    analysis = stats.analyse(runs, tags, ref_index, {t: best_direction(t) for t in tags},
                             stats.Settings(n_resamples=n_resamples, seed=seed,
                                            loop_resamples=min(n_resamples, LOOP_RESAMPLES)), classes)

    columns = pd.MultiIndex.from_tuples([(t, s) for t in chosen for s in ("mean", "std", "n")])
    table = pd.DataFrame([[x for t in chosen for x in (analysis.tags[t].mean[i], analysis.tags[t].std[i],
                                                         int(analysis.tags[t].n[i]))]
                          for i in range(len(group_list))], columns=columns)
    published = []
    for i, (source, row) in sorted(expected.items()):
        for tag, value in row.items():
            st = analysis.tags.get(tag)
            mean, low, high = (st.mean[i], st.ci_low[i], st.ci_high[i]) if st is not None else (math.nan,) * 3
            published.append(Published(source, i, tag, value, float(mean), float(low), float(high)))
    cmp = Comparison(dirs=dirs, jobs=jobs, keys=keys, common=common, inner=inner, groups=group_list,
                     metrics=chosen, table=table, ref=ref_index, analysis=analysis, published=published,
                     comparability=comparability)
    cmp.footer = _footer(cmp) + expected_notes
    return cmp


def _footer(cmp: Comparison) -> list[str]:
    """How the intervals, differences, p-values and marks were made; what could not be done."""
    from ceexp.bootstrap import VECTORISED_METRICS, tag_metric

    settings = cmp.analysis.settings
    level = f"{100 * settings.level:g}%"
    labels = [g.label for g in cmp.groups]
    tags = [cmp.stats(t) for t in cmp.metrics]
    lines = []
    boot = [t.tag for t in tags if "bootstrap" in t.interval or "test samples" in t.interval]
    if boot:
        lines.append(f"intervals: {level} basic bootstrap ({settings.n_resamples} resamples, seed "
                     f"{settings.seed}), two levels: the seeds with replacement, then the test samples (runs on one "
                     f"test split share each resample; differences are paired by seed and by test sample where the "
                     f"runs allow)")
    single = sorted({labels[i] for t in tags for i, how in enumerate(t.interval) if how == "test samples"})
    if single:
        lines.append(f"one run in {', '.join(single)}: the interval is the test-sample bootstrap alone "
                     f"(seed-to-seed variation not included)")
    by_t: dict[str, set[str]] = {}
    for t in tags:
        for i, how in enumerate(t.interval):
            if how == "t":
                reason = ("not computable from test predictions" if tag_metric(t.tag) is None
                          else "no predictions.npz")
                by_t.setdefault(f"{short_name(t.tag)} ({reason})", set()).add(labels[i])
    for what, groups in by_t.items():
        lines.append(f"{what}: seed-level statistics only, a t-interval over seeds (scipy.stats.t) in "
                     f"{', '.join(sorted(groups))}")
    looped = [short_name(t.tag) for t in tags if (m := tag_metric(t.tag)) is not None
              and m[1] not in VECTORISED_METRICS]
    if looped:
        lines.append(f"{', '.join(looped)}: computed one resample at a time, {settings.loop_resamples} resamples")
    tests: dict[str, set[str]] = {}
    for t in tags:
        for i, name in enumerate(t.test):
            if i != cmp.ref and name:
                tests.setdefault(name, set()).add(labels[i])
    if tests:
        lines.append(f"differences to {labels[cmp.ref]}; p two-sided, Holm-adjusted across groups per metric "
                     f"(statsmodels): " + "; ".join(f"{name}: {', '.join(sorted(g))}" for name, g in tests.items()))
    lines.append(f"marks: * best (better than every other group, Holm-adjusted p < {settings.alpha:g}); "
                 f"≈ tied with the best mean (not significantly different)")
    recomputed = [short_name(t.tag) for t in tags if tag_metric(t.tag) is not None
                  and any(t.tag not in job.record for g in cmp.groups for job in g.completed)]
    if recomputed:
        lines.append(f"recomputed from predictions.npz (not in every run's metrics.json): {', '.join(recomputed)}")
    return lines + list(cmp.analysis.notes)


# ---------------------------------------------------------------------------------------------------------
# curves from the event files


def read_curve(job_dir: str | Path, tag: str = CURVE_TAG):
    """The per-epoch values of scalar ``tag`` in a job's TensorBoard event files.

    Returns:
        a pandas Series indexed by epoch (counted from 1: the value after the first epoch of training is at 1),
        or ``None`` when the event files hold no ``tag``. The epoch of each value is the ``epoch`` scalar that
        Lightning logs at the same global step; a repeated epoch (a resumed run) keeps its last value.
    """
    import pandas as pd
    from tensorboard.backend.event_processing import event_accumulator as ea

    sizes = {ea.SCALARS: 0, ea.IMAGES: 1, ea.TENSORS: 1, ea.HISTOGRAMS: 1, ea.COMPRESSED_HISTOGRAMS: 1, ea.AUDIO: 1}
    acc = ea.EventAccumulator(str(job_dir), size_guidance=sizes)
    acc.Reload()
    scalars = acc.Tags().get("scalars", [])
    if tag not in scalars:
        return None
    events = acc.Scalars(tag)
    epoch_at = {e.step: int(e.value) for e in acc.Scalars("epoch")} if "epoch" in scalars else {}
    if all(e.step in epoch_at for e in events):
        epochs = [epoch_at[e.step] + 1 for e in events]
    else:  # no epoch scalar: one value per epoch, in order
        epochs = list(range(1, len(events) + 1))
    series = pd.Series([e.value for e in events], index=epochs, dtype=float, name=tag)
    return series[~series.index.duplicated(keep="last")].sort_index()


# ---------------------------------------------------------------------------------------------------------
# output

_MARK_SYMBOL = {"best": "*", "tied": "≈", "": ""}


def _fmt(mean: float, std: float, n: int, n_group: int) -> str:
    if n == 0 or not math.isfinite(mean):
        return "–" if n == 0 else f"{mean}"
    text = f"{mean:.4f}" if n == 1 or not math.isfinite(std) else f"{mean:.4f} ± {std:.4f}"
    return text + (f" (n={n})" if n != n_group else "")


def _interval(low: float, high: float, signed: bool = False) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return ""
    spec = "+.4f" if signed else ".4f"
    return f"[{low:{spec}}, {high:{spec}}]"


def _p_text(p: float) -> str:
    if not math.isfinite(p):
        return "p –"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _left_out(group: Group) -> str:
    counts: dict[str, int] = {}
    for job in group.jobs:
        if not job.completed:
            counts[job.status] = counts.get(job.status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def _key_cells(cmp: Comparison, i: int, group: Group, left_out: bool = True) -> list[str]:
    keys = [group.settings[k] if group.settings[k] is not None else "" for k in cmp.keys] or [group.label]
    n = [str(len(group.completed))]
    return [*keys, *n, *([_left_out(group)] if cmp.not_completed and left_out else [])]


def _rows(cmp: Comparison) -> list[tuple[list[str], list[tuple[str, str, str]]]]:
    """Per group: (key cells + n + left out, [(mean ± std, interval, mark)] per metric)."""
    out = []
    for i, group in enumerate(cmp.groups):
        n = len(group.completed)
        cells = []
        for tag in cmp.metrics:
            st = cmp.stats(tag)
            cells.append((_fmt(st.mean[i], st.std[i], int(st.n[i]), n), _interval(st.ci_low[i], st.ci_high[i]),
                          st.mark[i]))
        out.append((_key_cells(cmp, i, group), cells))
    return out


def _diff_rows(cmp: Comparison) -> list[tuple[list[str], list[tuple[str, str, str]]]]:
    """Per group but the reference: (key cells + n, [(difference, its interval, p)] per metric)."""
    out = []
    for i, group in enumerate(cmp.groups):
        if i == cmp.ref:
            continue
        cells = []
        for tag in cmp.metrics:
            st = cmp.stats(tag)
            if not math.isfinite(st.diff[i]):
                cells.append(("–", "", ""))
                continue
            cells.append((f"{st.diff[i]:+.4f}", _interval(st.diff_low[i], st.diff_high[i], signed=True),
                          _p_text(st.p[i])))
        out.append((_key_cells(cmp, i, group, left_out=False), cells))
    return out


def _header(cmp: Comparison, left_out: bool = True) -> list[str]:
    left = ["left out"] if cmp.not_completed and left_out else []
    return [*(cmp.keys or ["group"]), "n", *left, *(short_name(t) for t in cmp.metrics)]


def _rule_text(cmp: Comparison) -> str:
    marked = [t for t in cmp.metrics if best_direction(t) is not None]
    rules = {"max": "highest", "min": "lowest", "one": "closest to 1 (smallest |log T|)",
             "zero": "closest to 0 (smallest |value|)"}
    parts = [f"{short_name(t)}: {rules[best_direction(t)]}" for t in marked]
    level = f"{100 * cmp.analysis.settings.level:g}%"
    return (f"mean ± sample std (ddof=1) over each group's completed runs, and the {level} interval of the mean; "
            f"n: completed runs; * best, ≈ tied with the best (" + "; ".join(parts) + ")")


def _published_rows(cmp: Comparison) -> dict[str, list[list[str]]]:
    """source -> rows of (group, metric, observed [interval], published, difference, published inside)."""
    out: dict[str, list[list[str]]] = {}
    for row in cmp.published:
        if math.isfinite(row.mean):
            observed = f"{row.mean:.4f} {_interval(row.low, row.high)}".strip()
            diff = f"{row.mean - row.published:+.4f}"
        else:
            observed, diff = "not measured", "–"
        inside = {True: "yes", False: "no", None: "–"}[row.inside]
        out.setdefault(row.source, []).append([cmp.groups[row.group].label, short_name(row.tag), observed,
                                                f"{row.published:.4f}", diff, inside])
    return out


_PUBLISHED_HEADER = ["group", "metric", "observed [interval]", "published", "observed − published", "inside"]


def print_table(cmp: Comparison, console=None) -> None:
    """Print the tables (rich), the common settings, the jobs left out and the notes on the statistics."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 240)
    completed = len(cmp.jobs) - len(cmp.not_completed)
    n_keys = max(len(cmp.keys), 1)
    table = Table(title=escape(f"{completed} completed runs of {len(cmp.jobs)} in {', '.join(map(str, cmp.dirs))}"),
                  caption=escape(_rule_text(cmp)), caption_justify="left")
    for i, name in enumerate(_header(cmp)):
        table.add_column(escape(name), justify="left" if i < n_keys else "right")
    for keys, cells in _rows(cmp):
        keys = [escape(k) for k in keys]
        if cmp.not_completed and keys[-1]:
            keys[-1] = f"[red]{keys[-1]}[/red]"
        rendered = []
        for text, interval, mark in cells:
            symbol = f" {_MARK_SYMBOL[mark]}" if mark else ""
            cell = escape(f"{text}{symbol}\n{interval}" if interval else f"{text}{symbol}")
            style = {"best": "bold green", "tied": "green"}.get(mark)
            rendered.append(f"[{style}]{cell}[/{style}]" if style else cell)
        table.add_row(*keys, *rendered)
    for line in _settings_lines(cmp):
        console.print(line, markup=False, highlight=False)
    if cmp.comparability:
        console.print(cmp.comparability, markup=False, highlight=False)
    console.print(table)
    if len(cmp.groups) > 1:
        diffs = Table(title=escape(f"Difference to {cmp.groups[cmp.ref].label} (the reference): mean difference "
                                   f"[interval], Holm-adjusted p"))
        for i, name in enumerate(_header(cmp, left_out=False)):
            diffs.add_column(escape(name), justify="left" if i < n_keys else "right")
        for keys, cells in _diff_rows(cmp):
            diffs.add_row(*map(escape, keys), *(escape("\n".join(x for x in cell if x)) for cell in cells))
        console.print(diffs)
    for source, rows in _published_rows(cmp).items():
        published = Table(title=escape(f"Published numbers: {source}"))
        for name in _PUBLISHED_HEADER:
            published.add_column(escape(name), justify="left" if name in ("group", "metric") else "right")
        for row in rows:
            published.add_row(*map(escape, row))
        console.print(published)
    if cmp.not_completed:
        console.print(f"[red]{len(cmp.not_completed)} jobs left out (not completed):[/red]")
        for job in cmp.not_completed:
            console.print(f"  {job.status}: {job.name}" + (f": {job.error}" if job.error else ""), markup=False,
                          highlight=False)
    for line in cmp.footer:
        console.print(f"- {line}", markup=False, highlight=False)
    for note in cmp.notes:
        console.print(f"note: {note}", markup=False, highlight=False)


def _settings_lines(cmp: Comparison, code: str = "") -> list[str]:
    lines = []
    if cmp.common:
        lines.append("common settings: " + ", ".join(f"{code}{k}={v}{code}" for k, v in cmp.common.items()))
    if cmp.inner:
        lines.append("taken over, within each group: " + "; ".join(
            f"{code}{k}{code} in {{{', '.join(v)}}}" for k, v in cmp.inner.items()))
    return lines


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]


def to_markdown(cmp: Comparison, figures: Sequence[tuple[str, str]] = ()) -> str:
    """The report: common settings, the table (best in bold), the differences, the published numbers, the notes
    on the statistics, the jobs left out, the figures."""
    lines = [f"# Comparison: {', '.join(str(d) for d in cmp.dirs)}", ""]
    completed = len(cmp.jobs) - len(cmp.not_completed)
    lines.append(f"{len(cmp.jobs)} jobs: {completed} completed, {len(cmp.not_completed)} left out "
                 f"(listed below). Grouped by {', '.join(cmp.keys) or 'nothing (one group)'}.")
    settings = _settings_lines(cmp, code="`") + ([f"**{cmp.comparability}**"] if cmp.comparability else [])
    if settings:
        lines += ["", *(f"- {line}" for line in settings)]
    rows = []
    for keys, cells in _rows(cmp):
        rendered = []
        for text, interval, mark in cells:
            head = f"**{text}**" if mark == "best" else text
            rendered.append(" ".join(x for x in (head, interval, _MARK_SYMBOL[mark]) if x))
        rows.append([*keys, *rendered])
    lines += ["", *_md_table(_header(cmp), rows)]
    lines += ["", _rule_text(cmp) + ". Metrics are fractions (acc, ECE: 0.05 is 5 %); NLL in nats.", ""]
    if len(cmp.groups) > 1:
        lines += [f"## Difference to {cmp.groups[cmp.ref].label}", "",
                  "Mean difference to the reference group [interval], Holm-adjusted p-value.", ""]
        diff_rows = [[*keys, *(", ".join(x for x in (f"{d} {iv}".strip(), p) if x) for d, iv, p in cells)]
                     for keys, cells in _diff_rows(cmp)]
        lines += [*_md_table(_header(cmp, left_out=False), diff_rows), ""]
    for source, rows in _published_rows(cmp).items():
        lines += [f"## Published numbers: {source}", "", *_md_table(_PUBLISHED_HEADER, rows), "",
                  "observed: mean over the group's runs [interval]; inside: whether the published value lies in "
                  "the interval.", ""]
    lines += _calibration_markdown(cmp)
    if cmp.footer:
        lines += ["## How the statistics were made", "", *(f"- {line}" for line in cmp.footer), ""]
    if cmp.not_completed:
        lines += ["## Jobs left out", "", "| job | status | error |", "|---|---|---|"]
        lines += [f"| {_md_cell(j.name)} | {j.status} | {_md_cell(j.error)} |" for j in cmp.not_completed]
        lines.append("")
    if figures or cmp.notes:
        lines += ["## Figures", ""]
        for rel, title in figures:
            lines += [f"### {title}", "", f"![{title}]({rel})", ""]
        lines += [f"Note: {n}" for n in cmp.notes]
    return "\n".join(lines).rstrip() + "\n"


# post-hoc calibration, as metrics.json names its tags: none (test/<metric>), temperature scaling (_ts) and the
# other calibrators of calibration=[...] (_<method>)
CALIBRATIONS = (("none", ""), ("temperature", "_ts"), ("vector", "_vector"), ("matrix", "_matrix"),
                ("dirichlet", "_dirichlet"), ("histogram", "_histogram"), ("isotonic", "_isotonic"))


def calibration_ranks(cmp: Comparison, metric: str) -> tuple[list[str], list[list[float]], list[list[int]]] | None:
    """Does the ranking of the groups survive post-hoc calibration? For test metric ``metric`` (``ece``, ``nll``...):
    the calibrations recorded for every completed run (:data:`CALIBRATIONS`), each group's mean over its runs
    before and after each, and the group's rank under each (1 = best: lowest, or highest for accuracy; ties share
    the lowest rank, as ``pandas.Series.rank(method="min")``).

    Returns:
        ``(calibration names, means[group][calibration], ranks[group][calibration])`` over the groups with completed
        runs, in group order; ``None`` when fewer than two calibrations (none and one other) are recorded.
    """
    import numpy as np
    import pandas as pd

    live = [g for g in cmp.groups if g.completed]
    base = f"test/{metric}"
    present = [(name, suffix) for name, suffix in CALIBRATIONS
               if live and all(np.isfinite(job.metric(base + suffix)) for g in live for job in g.completed)]
    if len(present) < 2 or present[0][0] != "none":
        return None
    means = [[float(np.mean([job.metric(base + suffix) for job in g.completed])) for _, suffix in present]
             for g in live]
    lower_is_better = best_direction(base) != "max"
    frame = pd.DataFrame(means)
    ranks = frame.rank(axis=0, method="min", ascending=lower_is_better).astype(int).values.tolist()
    return [name for name, _ in present], means, ranks


def _calibration_markdown(cmp: Comparison) -> list[str]:
    """A table per metric with calibrated variants: each group's mean and (rank) before and after each calibrator."""
    live = [g for g in cmp.groups if g.completed]
    lines: list[str] = []
    for tag in cmp.metrics:
        metric = short_name(tag)
        found = calibration_ranks(cmp, metric) if tag.startswith("test/") and not tag.endswith("_ts") else None
        if found is None:
            continue
        names, means, ranks = found
        if not lines:
            lines += ["## Does the ranking survive post-hoc calibration?", "",
                      "Each group's mean over its runs after each calibrator fitted on the validation split, and its "
                      "rank among the groups (1: best) in brackets.", ""]
        header = [*(cmp.keys or ["group"]), "n", *names]
        rows = [[*_key_cells(cmp, cmp.groups.index(g), g, left_out=False),
                 *(f"{m:.4g} ({r})" for m, r in zip(means[i], ranks[i]))] for i, g in enumerate(live)]
        lines += [f"### test/{metric}", "", *_md_table(header, rows), ""]
    return lines


CSV_STATS = ("mean", "std", "n", "ci_low", "ci_high", "diff", "diff_ci_low", "diff_ci_high", "p", "mark")


def to_csv(cmp: Comparison) -> str:
    """One row per group: ``group``, the key columns, ``n``, ``left_out``, then per tag ``<tag>_<stat>`` for the
    stats of :data:`CSV_STATS` (``_p`` Holm-adjusted; ``_mark`` ``best``, ``tied`` or empty)."""
    import pandas as pd

    rows = []
    for i, group in enumerate(cmp.groups):
        row: dict[str, Any] = {"group": group.label, **{k: group.settings[k] for k in cmp.keys},
                               "n": len(group.completed), "left_out": len(group.jobs) - len(group.completed)}
        for tag in cmp.metrics:
            st = cmp.stats(tag)
            values = {"mean": st.mean[i], "std": st.std[i], "n": int(st.n[i]), "ci_low": st.ci_low[i],
                      "ci_high": st.ci_high[i], "diff": st.diff[i], "diff_ci_low": st.diff_low[i],
                      "diff_ci_high": st.diff_high[i], "p": st.p[i], "mark": st.mark[i]}
            for stat in CSV_STATS:
                row[f"{tag}_{stat}"] = values[stat]
        rows.append(row)
    return pd.DataFrame(rows).to_csv(index=False)


def _slug(text: str, limit: int = 80) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", text)[:limit].strip("_") or "group"


def _draw_figures(cmp: Comparison, out: Path) -> list[tuple[str, str]]:
    """Draw every figure into ``out``; returns ``(file name, title)`` pairs. Adds to ``cmp.notes`` what it skips."""
    import numpy as np
    import pandas as pd

    from ceexp import plots

    colors = plots.group_colors(len(cmp.groups))
    drawn: list[tuple[str, str]] = []
    live = [(g, c) for g, c in zip(cmp.groups, colors) if g.completed]

    # each metric per group with its interval, the reference group's mean as a line
    panels = []
    for tag in cmp.metrics:
        st = cmp.stats(tag)
        if np.isfinite(st.mean).any():
            panels.append((short_name(tag), st.mean, st.ci_low, st.ci_high, st.mean[cmp.ref], st.mark))
    if panels:
        level = f"{100 * cmp.analysis.settings.level:g}%"
        plots.save_intervals(
            out / "intervals.png", panels, [g.label for g in cmp.groups], colors,
            f"Each metric per group: mean over runs and {level} interval",
            f"dashed line: the mean of the reference group ({cmp.groups[cmp.ref].label}); best: better than every "
            f"other group; tied: not distinguishable from the best (Holm-adjusted p >= "
            f"{cmp.analysis.settings.alpha:g})")
        drawn.append(("intervals.png", "Each metric per group with its interval"))

    # validation NLL per epoch
    curves, missing = [], []
    for group, color in live:
        series = {}
        for job in group.completed:
            s = read_curve(job.path, CURVE_TAG)
            if s is None or s.empty:
                missing.append(job.name)
            else:
                series[job.name] = s
        if series:
            frame = pd.DataFrame(series)  # rows: epochs, columns: runs
            curves.append((group.label, color, frame.index.to_numpy(), frame.mean(axis=1).to_numpy(),
                           frame.min(axis=1).to_numpy(), frame.max(axis=1).to_numpy(), frame.shape[1]))
    if missing:
        cmp.notes.append(f"{len(missing)} completed runs have no {CURVE_TAG} in their event files (logger off?), "
                         f"not in the curves: {', '.join(missing)}")
    if curves:
        title = "Validation NLL per epoch (line: mean over runs; band: min to max)"
        plots.save_curves(out / "val_nll.png", curves, title, "epoch", "validation NLL (nats)")
        drawn.append(("val_nll.png", "Validation NLL per epoch"))

    def values(group: Group, tag: str) -> np.ndarray:
        return np.array([job.metric(tag) for job in group.completed], dtype=float)

    # ECE against accuracy, one point per run
    def have(*tags: str) -> bool:
        return all(np.isfinite(values(g, t)).any() for g, _ in live for t in tags)

    if have("test/acc", "test/ece"):
        points = [(g.label, c, 100 * values(g, "test/acc"), 100 * values(g, "test/ece")) for g, c in live]
        plots.save_scatter(out / "ece_vs_acc.png", points, "Test ECE against test accuracy (one point per run)",
                           "test accuracy (%)", f"test ECE (%, {_bins_text(cmp)})")
        drawn.append(("ece_vs_acc.png", "Test ECE against accuracy"))
    else:
        cmp.notes.append("test/acc or test/ece missing in some group: ece_vs_acc.png not drawn")

    # ECE before and after temperature scaling
    if have("test/ece", "test/ece_ts"):
        pairs = []
        for g, c in live:
            t = values(g, "test/temperature")
            note = f"T={np.nanmean(t):.2g}" if np.isfinite(t).any() else ""
            pairs.append((g.label, c, 100 * values(g, "test/ece"), 100 * values(g, "test/ece_ts"), note))
        plots.save_paired_bars(
            out / "ece_temperature_scaling.png", pairs, ("before temperature scaling", "after temperature scaling"),
            "Test ECE before and after temperature scaling", f"test ECE (%, {_bins_text(cmp)})",
            subtitle="bars: mean over runs; dots: runs; T: mean fitted temperature")
        drawn.append(("ece_temperature_scaling.png", "Test ECE before and after temperature scaling"))
    else:
        cmp.notes.append("test/ece_ts missing (temperature_scaling=false?): ece_temperature_scaling.png not drawn")

    found = calibration_ranks(cmp, "ece")
    if found is not None and len(live) > 1:
        names, _, ranks = found
        plots.save_rank_lines(out / "calibration_ranks.png", [(g.label, c, r) for (g, c), r in zip(live, ranks)],
                              names, "Rank of each group by test ECE before and after each post-hoc calibrator",
                              "rank by test ECE (1: lowest)")
        drawn.append(("calibration_ranks.png", "Does the ranking by ECE survive post-hoc calibration?"))

    drawn += _robustness_figures(cmp, out, live)

    # the runs' own reliability diagrams, one figure per group
    inner = list(cmp.inner) or ["seed"]
    for i, (group, _) in enumerate(live, start=1):
        tiles = []
        for job in group.completed:
            caption = ", ".join(f"{k}={v}" for k in inner if (v := job.setting(k)) is not _ABSENT)
            caption = caption or (job.name if len(job.name) <= 60 else job.name[:57] + "...")
            png = job.path / "reliability_diagram.png"
            tiles.append((png if png.is_file() else None, caption))
        name = f"reliability_{i}_{_slug(group.label)}.png"
        plots.save_image_grid(out / name, tiles, f"Reliability diagrams of {group.label}: test split, one run a "
                              f"tile (left: before, right: after temperature scaling)")
        drawn.append((name, f"Reliability diagrams: {group.label}"))
    return drawn


def _risk_on(grid, logits, labels):
    """The selective risk ``E(c) / c`` at the coverages ``grid`` (in (0, 1]) of one run's test predictions, ``E``
    (the fraction of all samples accepted and wrong) linear between the points of
    ``ceexp.metrics.risk_coverage_curve``, as ``ceexp.metrics.aurc`` integrates it: the area under the curve is the
    run's AURC."""
    import numpy as np
    import torch

    from ceexp.metrics import risk_coverage_curve

    z = torch.as_tensor(logits, dtype=torch.float32)  # the run's probabilities: softmax of the float32 logits
    curve = risk_coverage_curve(z.softmax(dim=1), torch.as_tensor(labels, dtype=torch.int64))
    coverage = np.concatenate([[0.0], curve.coverage.numpy()])
    errors = np.concatenate([[0.0], curve.generalized_risk.numpy()])
    return np.interp(grid, coverage, errors) / grid


def _robustness_figures(cmp: Comparison, out: Path, live: list) -> list[tuple[str, str]]:
    """Risk-coverage curves, OOD score histograms and calibration under shift (see the module docstring), each
    drawn when some group's runs have what it needs; returns ``(file name, title)`` pairs."""
    import numpy as np

    from ceexp import plots
    from ceexp.runs import read_ood_logits

    drawn: list[tuple[str, str]] = []
    grid = np.linspace(0.005, 1.0, 200)
    curves = []
    for group, color in live:
        risks = []
        for job in group.completed:
            if job.has_predictions and len((p := job.predictions())["test_labels"]):
                risks.append(_risk_on(grid, p["test_logits"], p["test_labels"]))
        if risks:
            r = np.array(risks)
            aurc = np.nanmean([job.metric("test/aurc") for job in group.completed])
            label = group.label + (f", AURC {aurc:.4f}" if np.isfinite(aurc) else "")
            curves.append((label, color, grid, r.mean(0), r.min(0), r.max(0), len(r)))
    if curves:
        plots.save_curves(out / "risk_coverage.png", curves,
                          "Risk-coverage of the test split (line: mean over runs; band: min to max)",
                          "coverage (fraction of test samples accepted, most confident first)",
                          "selective risk (error rate among them)", integer_x=False)
        drawn.append(("risk_coverage.png", "Risk-coverage curves (selective classification)"))

    # OOD: MSP histograms of the test split against each OOD set, pooled over each group's runs
    per_set: dict[str, list] = {}
    for group, color in live:
        scores: dict[str, tuple[list, list]] = {}
        for job in group.completed:
            try:
                ood = read_ood_logits(job.path)
            except ValueError as e:
                cmp.notes.append(str(e))
                continue
            if not ood or not job.has_predictions:
                continue
            msp_in = _msp(job.predictions()["test_logits"])
            for name, logits in ood.items():
                scores.setdefault(name, ([], []))[0].append(msp_in)
                scores[name][1].append(_msp(logits))
        for name, (inside, outside) in scores.items():
            per_set.setdefault(name, []).append((f"{group.label} ({len(inside)} runs)", [
                ("test split (in)", np.concatenate(inside), "tab:blue"),
                (f"{name} (out)", np.concatenate(outside), "tab:red")]))
    for name, panels in per_set.items():
        file = f"ood_scores_{_slug(name)}.png"
        plots.save_histograms(out / file, panels, f"MSP: test split (in) against {name} (out), runs pooled",
                              "max softmax probability")
        drawn.append((file, f"OOD scores (MSP): test split against {name}"))

    # shift: accuracy and ECE against severity, a box over the corruptions per group and severity; one figure for
    # the test split corrupted here (shift/), one for the published CIFAR-C images (shift_c/)
    for prefix, what, title in (
            ("shift", "the test split corrupted (shift=...)", "Accuracy and ECE under distribution shift"),
            ("shift_c", "the published CIFAR-10-C / CIFAR-100-C images (shift_c=...)",
             "Accuracy and ECE on CIFAR-C (published corruptions)")):
        pattern = re.compile(prefix + r"/(?P<corruption>[^/]+)/s(?P<severity>\d+)/(?P<metric>[a-z_]+)")
        metrics = (("acc", "test/acc", "accuracy"), ("ece", "test/ece", "ECE"),
                   ("ece_ts", "test/ece_ts", "ECE after temperature scaling"))
        panels: dict[str, dict] = {m: {} for m, _, _ in metrics}
        severities: set[int] = set()
        for g, (group, _) in enumerate(live):
            for metric, clean, _ in metrics:
                cells: dict[int, dict[str, list]] = {}
                for job in group.completed:
                    for tag in job.record:
                        m = pattern.fullmatch(tag)
                        if m and m["metric"] == metric:
                            cells.setdefault(int(m["severity"]), {}).setdefault(m["corruption"], []).append(
                                job.metric(tag))
                if not cells:
                    continue
                severities.update(cells)
                boxes = {s: [np.nanmean(v) for v in by_corruption.values()] for s, by_corruption in cells.items()}
                boxes[0] = [np.nanmean([job.metric(clean) for job in group.completed])]
                panels[metric][g] = boxes
        shown = [(label, panels[m]) for m, _, label in metrics if panels[m]]
        if shown:
            plots.save_severity_boxes(
                out / f"{prefix}_calibration.png", shown, [(g.label, c) for g, c in live], [0, *sorted(severities)],
                f"Under distribution shift: {what}, per group and severity",
                "each box: the corruptions at that severity (per corruption the mean over the group's runs); "
                f"{_bins_text(cmp)}")
            drawn.append((f"{prefix}_calibration.png", title))
    return drawn


def _msp(logits):
    """Maximum softmax probability per row of ``logits`` ``(N, C)``, float64 numpy."""
    import numpy as np

    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return 1.0 / np.exp(z).sum(axis=1)


def write_report(cmp: Comparison, out_dir: str | Path | None = None) -> list[Path]:
    """Write ``comparison.md``, ``comparison.csv`` and ``comparison/*.png`` into ``out_dir`` (default: the first
    folder compared). The figures are drawn into a temporary folder that then replaces ``comparison/``, and
    the two files are written atomically (``ceexp.files``). Returns the paths written."""
    from ceexp.files import atomic_write_text

    out = Path(out_dir) if out_dir is not None else cmp.dirs[0]
    tmp = Path(tempfile.mkdtemp(prefix=f".{FIGURES_DIR}.", dir=out))
    final = out / FIGURES_DIR
    try:
        figures = _draw_figures(cmp, tmp)
        if final.is_dir() and not (final / ".hydra").exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    written = [final / name for name, _ in figures]
    written.append(atomic_write_text(out / "comparison.csv", to_csv(cmp)))
    md = to_markdown(cmp, [(f"{FIGURES_DIR}/{name}", title) for name, title in figures])
    written.append(atomic_write_text(out / "comparison.md", md))
    return written


# ---------------------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compare.py",
        description="Compare the runs of one or more sweeps: a table of mean ± std and the 95%% interval per "
                    "group, differences to a reference group with p-values (printed, and written as "
                    "comparison.md / comparison.csv) and figures in comparison/, in the first folder.",
    )
    p.add_argument("dirs", nargs="+", metavar="SWEEP_DIR",
                   help="sweep folder (outputs/multirun/<date>/<time>), folder of runs, or job folder")
    p.add_argument("--metrics", nargs="+", metavar="METRIC",
                   help="tags or short names of test tags, space- or comma-separated (default: "
                        + ", ".join(short_name(t) for t in DEFAULT_METRICS) + "); metrics that ceexp.metrics "
                        "defines (smece, ece_debiased, ece_signed, ...) are recomputed from predictions.npz "
                        "where metrics.json lacks them")
    p.add_argument("--by", metavar="KEY[,KEY...]",
                   help="group by these keys (default: every override that varies, except seed)")
    p.add_argument("--ref", metavar="GROUP",
                   help="the reference group of the differences, as its label (loss=ce) or, with one grouping "
                        "key, its value (ce); default: the cross-entropy group, else the first")
    p.add_argument("--resamples", type=int, default=1000, metavar="R", help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``compare.py SWEEP_DIR [SWEEP_DIR ...] [--metrics ...] [--by ...] [--ref GROUP]``; returns the exit code
    (0, or 2 on bad input, with one line on stderr and nothing written)."""
    args = _parser().parse_args(argv)
    try:
        cmp = compare(args.dirs, metrics=args.metrics, by=[args.by] if args.by else None, ref=args.ref,
                      n_resamples=args.resamples, seed=args.seed)
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import warnings

    warnings.filterwarnings("ignore", ".*TensorFlow installation not found.*")
    written = write_report(cmp)
    print_table(cmp)
    out = cmp.dirs[0]
    print(f"wrote {out / 'comparison.md'}, {out / 'comparison.csv'} and {len(written) - 2} figures in "
          f"{out / FIGURES_DIR}")
    return 0
