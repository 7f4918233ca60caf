"""Turn one or more sweeps (or folders of single runs) into a comparison table and figures.

    python scripts/compare.py outputs/multirun/2026-01-01/12-00-00.000000
    python scripts/compare.py SWEEP_A SWEEP_B --metrics acc ece ece_ts --by loss,loss.gamma

Jobs. A job is any folder under the given folders that holds a ``.hydra/`` record (hidden folders are not
searched, and nothing below a job is). Its settings are its command-line overrides (``.hydra/overrides.yaml``);
a key that some jobs override and others do not is read from the others' own record (the group choice in
``.hydra/hydra.yaml``, else the value in ``.hydra/config.yaml``), so ``python scripts/train.py`` and
``python scripts/train.py loss=ce`` are the same setting. Its result is ``metrics.json``: only ``completed``
jobs enter the statistics; the others (``failed``, ``interrupted``, ``running``, or ``unknown`` when there is
no readable ``metrics.json``) are listed with their error line, never dropped silently.

Groups. Jobs are grouped by every overridden key except ``seed`` and ``resume`` whose value is not the same
in all jobs (keys with one value for all jobs are printed once as common settings), or by the keys of
``--by``. Each group's row gives, per metric, the mean and the sample standard deviation (ddof=1, pandas)
over its completed runs, and n.

Best value per column (bold, and ``*`` in the console). By the mean over the group's runs: the highest for
accuracy (``acc``, ``acc_ts``); for the fitted temperature the one closest to 1 on a log scale (smallest
``abs(log T)``: T = 2 and T = 1/2 are equally far from a model that needs no rescaling, which is what
"best" can mean for T); none for mean confidence (neither direction is better); the lowest for every other
metric (NLL, ECE, AdaECE, classwise ECE, Brier, MCE, loss, time). No test of significance is made: read
the ± before reading the mark.

Reliability diagram per group. The runs do not store their test predictions, and recomputing them from
``checkpoints/last.ckpt`` would rebuild data and model inside the comparison (slow for a large model, and
wrong if the data has changed since). So the group's figure tiles the diagrams the runs drew themselves
(``reliability_diagram.png``: test split before and after temperature scaling), one tile per run,
captioned by the settings that differ within the group (the seed): the variation across seeds stays visible.

Written into the first folder given (after every check has passed; on bad input nothing is written):
``comparison.md`` (the table, the jobs left out, the figures), ``comparison.csv`` (one row per group:
``<tag>_mean``, ``<tag>_std``, ``<tag>_n`` per metric) and ``comparison/`` (replaced as a whole) with
``val_nll.png`` (per group: mean line over the seeds, min-max band; x: epoch, counted from 1, read from
the event files), ``ece_vs_acc.png`` (one point per run), ``ece_temperature_scaling.png`` (per group: mean
test ECE before and after temperature scaling, each run's pair joined) and ``reliability_<i>_<group>.png``.

Bad input (an empty or non-sweep folder, no completed job, an unknown metric, a ``--by`` key no job has)
raises :class:`CompareError`; the command line prints it as one line and exits with code 2.
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
        import yaml

        try:
            hydra_cfg = yaml.safe_load((self.path / ".hydra" / "hydra.yaml").read_text()) or {}
            return dict(hydra_cfg.get("hydra", {}).get("runtime", {}).get("choices") or {})
        except (OSError, ValueError, AttributeError, yaml.YAMLError):
            return {}

    @cached_property
    def _config(self):
        from omegaconf import OmegaConf

        try:
            return OmegaConf.load(self.path / ".hydra" / "config.yaml")
        except Exception:  # noqa: BLE001 - a missing or broken record: no value to fall back on
            return None

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


def _natural(name: str) -> tuple:
    """Sort key: Hydra job folders ``<num>_<overrides>`` by number (``10_`` after ``9_``), the rest by name."""
    m = re.match(r"(\d+)_", name)
    return (0, int(m.group(1)), name) if m else (1, 0, name)


def read_job(path: Path, name: str) -> Job:
    """Read one job folder's overrides and ``metrics.json``."""
    import yaml

    from ceexp.files import read_json

    try:
        lines = yaml.safe_load((path / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        lines = []
    job = Job(path=path, name=name, overrides=_parse_overrides(lines))
    metrics_file = path / "metrics.json"
    if not metrics_file.is_file():
        job.problem = "no metrics.json (not started, still starting, or killed)"
    else:
        try:
            job.record = read_json(metrics_file)
            if not isinstance(job.record, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            job.record, job.problem = {}, f"metrics.json unreadable: {e}"
    return job


def find_jobs(dirs: Sequence[str | Path]) -> list[Job]:
    """Every job folder (one holding ``.hydra/``) under ``dirs``, in sweep order (job number), without repeats.

    Raises:
        CompareError: a folder that does not exist, or no job folder under any of them.
    """
    jobs: list[Job] = []
    seen: set[Path] = set()
    for d in map(Path, dirs):
        if not d.exists():
            raise CompareError(f"{d} does not exist: expected a sweep folder (outputs/multirun/<date>/<time>) "
                               f"or a folder of runs (outputs/runs/<date>)")
        if not d.is_dir():
            raise CompareError(f"{d} is not a folder: expected a sweep folder or a folder of runs")
        prefix = f"{d.name}/" if len(dirs) > 1 else ""
        for root, subdirs, _ in os.walk(d):
            root_path = Path(root)
            if (root_path / ".hydra").is_dir():
                subdirs[:] = []  # nothing below a job is another job (checkpoints/, ...)
                resolved = root_path.resolve()
                if resolved not in seen:
                    seen.add(resolved)
                    rel = root_path.relative_to(d).as_posix()
                    jobs.append(read_job(root_path, prefix + (rel if rel != "." else d.name)))
                continue
            subdirs[:] = sorted((s for s in subdirs if not s.startswith(".") and s != FIGURES_DIR), key=_natural)
    if not jobs:
        where = ", ".join(str(d) for d in dirs)
        raise CompareError(f"no job folders (folders with .hydra/) under {where}: expected a sweep folder "
                           f"(outputs/multirun/<date>/<time>) or a folder of runs (outputs/runs/<date>)")
    return jobs


# ---------------------------------------------------------------------------------------------------------
# the comparison


def best_direction(tag: str) -> str | None:
    """How the best mean of ``tag`` is chosen: ``"max"`` (accuracy), ``"one"`` (temperature: smallest
    ``abs(log T)``), ``None`` (mean confidence, epoch: not marked), ``"min"`` (everything else)."""
    base = tag.rsplit("/", 1)[-1]
    base = base.removesuffix("_ts")
    if base == "acc":
        return "max"
    if base == "temperature":
        return "one"
    if base in ("confidence", "epoch", "step"):
        return None
    return "min"


def short_name(tag: str) -> str:
    """``test/ece`` -> ``ece``; other tags stay whole (``val/nll``)."""
    return tag.removeprefix("test/")


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
        best: tag -> indices of the groups whose mean is best.
    """

    dirs: list[Path]
    jobs: list[Job]
    keys: list[str]
    common: dict[str, str]
    inner: dict[str, list[str]]
    groups: list[Group]
    metrics: list[str]
    table: Any
    best: dict[str, set[int]]
    notes: list[str] = field(default_factory=list)

    @property
    def not_completed(self) -> list[Job]:
        return [j for j in self.jobs if not j.completed]


def _split(items: Sequence[str] | None) -> list[str]:
    """``["acc,ece", "nll"]`` -> ``["acc", "ece", "nll"]`` without repeats."""
    out: list[str] = []
    for item in items or []:
        for part in str(item).split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def _choose_metrics(completed: list[Job], names: Sequence[str] | None) -> list[str]:
    available: list[str] = []
    for job in completed:
        available += [t for t in job.numeric_tags() if t not in available]
    if not names:
        chosen = [t for t in DEFAULT_METRICS if t in available]
        if not chosen:
            raise CompareError(f"none of the default metrics ({', '.join(DEFAULT_METRICS)}) is in the completed "
                               f"jobs' metrics.json: choose with --metrics among {', '.join(available)}")
        return chosen
    chosen = []
    for name in names:
        tag = name if "/" in name else f"test/{name}"
        if tag not in available:
            shorts = ", ".join(short_name(t) for t in available if t.startswith("test/"))
            raise CompareError(f"--metrics {name} is not a known metric: expected a tag of the completed jobs' "
                               f"metrics.json (e.g. val/nll) or a test metric's short name: {shorts}")
        if tag not in chosen:
            chosen.append(tag)
    return chosen


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


def _best(values, direction: str | None) -> set[int]:
    import numpy as np

    values = np.asarray(values, dtype=float)
    if direction is None or not np.isfinite(values).any():
        return set()
    if direction == "one":
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.abs(np.log(values))
        score[~np.isfinite(score)] = np.inf
    else:
        score = -values if direction == "max" else values.copy()
        score[~np.isfinite(score)] = np.inf
    if not np.isfinite(score).any():
        return set()
    return set(np.flatnonzero(score == score.min()).tolist())


def compare(
    dirs: Sequence[str | Path], metrics: Sequence[str] | None = None, by: Sequence[str] | None = None
) -> Comparison:
    """Read the jobs under ``dirs``, group them and compute the table; nothing is written.

    Args:
        dirs: sweep folders, folders of single runs, or job folders.
        metrics: tags (``test/ece``, ``val/nll``) or short names of test tags (``ece``); comma-separated
            items are split. Default: :data:`DEFAULT_METRICS` (those present).
        by: grouping keys (comma-separated items are split). Default: every varying override but ``seed``.

    Raises:
        CompareError: no job folder, no completed job, an unknown metric, a ``by`` key that no job has.
    """
    import pandas as pd

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

    rows = [{"group": i, **{t: job.metric(t) for t in chosen}} for i, g in enumerate(group_list) for job in g.completed]
    frame = pd.DataFrame(rows, columns=["group", *chosen])
    # pandas: std is the sample standard deviation (ddof=1); count leaves NaN out
    table = frame.groupby("group")[chosen].agg(["mean", "std", "count"]).reindex(range(len(group_list)))
    table = table.rename(columns={"count": "n"}, level=1)
    for tag in chosen:
        table[(tag, "n")] = table[(tag, "n")].fillna(0).astype(int)
    best = {tag: _best(table[(tag, "mean")].to_numpy(), best_direction(tag)) for tag in chosen}
    return Comparison(dirs=dirs, jobs=jobs, keys=keys, common=common, inner=inner, groups=group_list,
                      metrics=chosen, table=table, best=best)


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


def _fmt(mean: float, std: float, n: int, n_group: int) -> str:
    if n == 0 or not math.isfinite(mean):
        return "–" if n == 0 else f"{mean}"
    text = f"{mean:.4f}" if n == 1 or not math.isfinite(std) else f"{mean:.4f} ± {std:.4f}"
    return text + (f" (n={n})" if n != n_group else "")


def _left_out(group: Group) -> str:
    counts: dict[str, int] = {}
    for job in group.jobs:
        if not job.completed:
            counts[job.status] = counts.get(job.status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def _rows(cmp: Comparison) -> list[tuple[list[str], list[tuple[str, bool]]]]:
    """Per group: (key cells + n + left out, [(metric cell, is best)])."""
    out = []
    for i, group in enumerate(cmp.groups):
        n = len(group.completed)
        keys = [group.settings[k] if group.settings[k] is not None else "" for k in cmp.keys]
        cells = [(_fmt(cmp.table.at[i, (t, "mean")], cmp.table.at[i, (t, "std")], int(cmp.table.at[i, (t, "n")]), n),
                  i in cmp.best[t]) for t in cmp.metrics]
        left_out = [_left_out(group)] if cmp.not_completed else []
        out.append(([*keys, str(n), *left_out], cells))
    return out


def _header(cmp: Comparison) -> list[str]:
    left_out = ["left out"] if cmp.not_completed else []
    return [*(cmp.keys or ["group"]), "n", *left_out, *(short_name(t) for t in cmp.metrics)]


def _rule_text(cmp: Comparison) -> str:
    marked = [t for t in cmp.metrics if best_direction(t) is not None]
    rules = {"max": "highest", "min": "lowest", "one": "closest to 1 (smallest |log T|)"}
    parts = [f"{short_name(t)}: {rules[best_direction(t)]}" for t in marked]
    return ("mean ± sample std (ddof=1) over each group's completed runs; n: completed runs; "
            "best mean per column marked (" + "; ".join(parts) + ")")


def print_table(cmp: Comparison, console=None) -> None:
    """Print the table (rich), the common settings and the jobs left out."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 240)
    completed = len(cmp.jobs) - len(cmp.not_completed)
    table = Table(title=f"{completed} completed runs of {len(cmp.jobs)} in {', '.join(map(str, cmp.dirs))}",
                  caption=_rule_text(cmp) + "; * best", caption_justify="left")
    for i, name in enumerate(_header(cmp)):
        table.add_column(name, justify="left" if i < max(len(cmp.keys), 1) else "right")
    for (keys, cells), group in zip(_rows(cmp), cmp.groups):
        if not cmp.keys:
            keys = [group.label, *keys]
        if cmp.not_completed and keys[-1]:
            keys[-1] = f"[red]{keys[-1]}[/red]"
        table.add_row(*keys, *(f"[bold green]{c} *[/bold green]" if b else c for c, b in cells))
    for line in _settings_lines(cmp):
        console.print(line, markup=False, highlight=False)
    console.print(table)
    if cmp.not_completed:
        console.print(f"[red]{len(cmp.not_completed)} jobs left out (not completed):[/red]")
        for job in cmp.not_completed:
            console.print(f"  {job.status}: {job.name}" + (f": {job.error}" if job.error else ""), markup=False,
                          highlight=False)
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


def to_markdown(cmp: Comparison, figures: Sequence[tuple[str, str]] = ()) -> str:
    """The report: common settings, the table (best in bold), the jobs left out, the figures."""
    lines = [f"# Comparison: {', '.join(str(d) for d in cmp.dirs)}", ""]
    completed = len(cmp.jobs) - len(cmp.not_completed)
    lines.append(f"{len(cmp.jobs)} jobs: {completed} completed, {len(cmp.not_completed)} left out "
                 f"(listed below). Grouped by {', '.join(cmp.keys) or 'nothing (one group)'}.")
    settings = _settings_lines(cmp, code="`")
    if settings:
        lines += ["", *(f"- {line}" for line in settings)]
    header = _header(cmp)
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for (keys, cells), group in zip(_rows(cmp), cmp.groups):
        if not cmp.keys:
            keys = [group.label, *keys]
        cells_md = [f"**{c}**" if b else c for c, b in cells]
        lines.append("| " + " | ".join(_md_cell(c) for c in [*keys, *cells_md]) + " |")
    lines += ["", _rule_text(cmp) + ". Metrics are fractions (acc, ECE: 0.05 is 5 %); NLL in nats.", ""]
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


def to_csv(cmp: Comparison) -> str:
    """One row per group: ``group``, the key columns, ``n``, ``left_out``, then ``<tag>_mean/_std/_n``."""
    import pandas as pd

    rows = []
    for i, group in enumerate(cmp.groups):
        row: dict[str, Any] = {"group": group.label, **{k: group.settings[k] for k in cmp.keys},
                               "n": len(group.completed), "left_out": len(group.jobs) - len(group.completed)}
        for tag in cmp.metrics:
            for stat in ("mean", "std", "n"):
                row[f"{tag}_{stat}"] = cmp.table.at[i, (tag, stat)]
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
                           "test accuracy (%)", "test ECE (%, 15 equal-width bins)")
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
            "Test ECE before and after temperature scaling", "test ECE (%, 15 equal-width bins)",
            subtitle="bars: mean over runs; dots: runs; T: mean fitted temperature")
        drawn.append(("ece_temperature_scaling.png", "Test ECE before and after temperature scaling"))
    else:
        cmp.notes.append("test/ece_ts missing (temperature_scaling=false?): ece_temperature_scaling.png not drawn")

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
        description="Compare the runs of one or more sweeps: a table of mean ± std per group (printed, and "
                    "written as comparison.md / comparison.csv) and figures in comparison/, in the first folder.",
    )
    p.add_argument("dirs", nargs="+", metavar="SWEEP_DIR",
                   help="sweep folder (outputs/multirun/<date>/<time>), folder of runs, or job folder")
    p.add_argument("--metrics", nargs="+", metavar="METRIC",
                   help="tags or short names of test tags, space- or comma-separated (default: "
                        + ", ".join(short_name(t) for t in DEFAULT_METRICS) + ")")
    p.add_argument("--by", metavar="KEY[,KEY...]",
                   help="group by these keys (default: every override that varies, except seed)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``compare.py SWEEP_DIR [SWEEP_DIR ...] [--metrics ...] [--by ...]``; returns the exit code
    (0, or 2 on bad input, with one line on stderr and nothing written)."""
    args = _parser().parse_args(argv)
    try:
        cmp = compare(args.dirs, metrics=args.metrics, by=[args.by] if args.by else None)
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
