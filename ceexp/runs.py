"""The life of a run folder: its status, its failure record, and its resumption.

Every run folder has a ``metrics.json`` whose ``"status"`` says where the run stands:

``running``      written when training starts (a run killed with SIGKILL keeps it);
``completed``    with the final metrics;
``failed``       with ``"error"``: one line, e.g. a non-finite loss or a bad value in one cell of a sweep;
``interrupted``  SIGINT or SIGTERM: ``checkpoints/last.ckpt`` holds the last completed epoch.

``python scripts/train.py resume=<run dir>`` re-runs the folder's own command-line overrides in the
same folder from ``checkpoints/last.ckpt`` (see :func:`resume_argv`).

Reading a run folder (everything else reads through these): :func:`read_metrics` (``metrics.json``),
:func:`read_overrides`, :func:`read_choices` and :func:`read_config` (``.hydra/``), :func:`read_hparams`
(``hparams.yaml``), :func:`has_predictions` / :func:`read_predictions`, :func:`read_ood_logits`; :func:`find_runs` (every run folder under
some folders, symbolic links followed) and :func:`sweep_jobs` (the jobs a sweep launched).

A sweep folder: ``<job number>_<overrides>/`` per job, named by :func:`job_folder_name` (registered as the
OmegaConf resolver ``ceexp.job_folder`` when this module is imported, which the entry point does before Hydra
composes), and ``.jobs/<job number>.json``, written by :class:`SweepRecord` as each job starts and ends: the
sweep's own list of what it launched.
"""
from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import Any

__all__ = [
    "PREDICTIONS", "STATUSES", "RunInterrupted", "SweepJob", "SweepRecord", "find_runs", "has_predictions",
    "is_run", "job_folder_name", "read_choices", "read_config", "read_hparams", "read_metrics", "read_overrides",
    "read_predictions", "read_status", "resume_argv", "sweep_jobs", "write_predictions", "write_status",
    "OOD_LOGITS", "read_ood_logits", "write_ood_logits",
]

STATUSES = ("running", "completed", "failed", "interrupted")
PREDICTIONS = "predictions.npz"
_PREDICTION_KEYS = ("val_logits", "val_labels", "test_logits", "test_labels", "temperature")


class RunInterrupted(Exception):
    """Training stopped by SIGINT or SIGTERM; ``metrics.json`` says ``interrupted``."""

    def __init__(self, run_dir: str | Path, epoch: int):
        self.run_dir = Path(run_dir)
        super().__init__(
            f"stopped in epoch {epoch}; continue with: python scripts/train.py resume={self.run_dir}"
        )


def write_status(run_dir: str | Path, status: str, **fields: Any) -> dict:
    """Write ``metrics.json`` = ``{"status": status, **fields}`` atomically; returns the dict."""
    from ceexp.files import write_json

    if status not in STATUSES:
        raise ValueError(f"Expected `status` to be one of {list(STATUSES)}, but got {status!r}")
    record = {"status": status, **fields, "time/finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(Path(run_dir) / "metrics.json", record)
    return record


def read_status(run_dir: str | Path) -> str:
    """The ``status`` of a run folder, or ``"unknown"`` when it has no (readable) ``metrics.json``."""
    from ceexp.files import read_json

    try:
        return str(read_json(Path(run_dir) / "metrics.json").get("status", "unknown"))
    except (OSError, ValueError):
        return "unknown"


def read_metrics(run_dir: str | Path) -> dict:
    """The run's ``metrics.json``: ``{"status": ..., tag: float or None (NaN), ...}`` (see :func:`write_status`).

    Raises:
        FileNotFoundError: the run has no ``metrics.json`` (not started, still starting, or killed).
        ValueError: the file is unreadable or not a JSON object (one line).
    """
    import json

    from ceexp.files import read_json

    path = Path(run_dir) / "metrics.json"
    try:
        record = read_json(path)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        message = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise ValueError(f"metrics.json unreadable: {message}") from e
    if not isinstance(record, dict):
        raise ValueError("metrics.json unreadable: not a JSON object")
    return record


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is a run folder (one holding Hydra's ``.hydra/`` record)."""
    return (Path(path) / ".hydra").is_dir()


def read_overrides(run_dir: str | Path) -> list[str]:
    """The run's command-line overrides (``.hydra/overrides.yaml``), ``[]`` when missing or unreadable."""
    import yaml

    try:
        lines = yaml.safe_load((Path(run_dir) / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        return []
    return [str(line) for line in lines] if isinstance(lines, list) else []


def read_choices(run_dir: str | Path) -> dict:
    """The run's config group choices (``.hydra/hydra.yaml``, ``hydra.runtime.choices``), ``{}`` when missing."""
    import yaml

    try:
        hydra_cfg = yaml.safe_load((Path(run_dir) / ".hydra" / "hydra.yaml").read_text()) or {}
        return dict(hydra_cfg.get("hydra", {}).get("runtime", {}).get("choices") or {})
    except (OSError, ValueError, AttributeError, TypeError, yaml.YAMLError):
        return {}


def read_config(run_dir: str | Path):
    """The run's composed config (``.hydra/config.yaml``) as an OmegaConf ``DictConfig``, ``None`` when missing or
    unreadable."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml")
    except Exception:  # noqa: BLE001 - a missing or broken record: nothing to read
        return None


def read_hparams(run_dir: str | Path) -> dict:
    """The hyperparameters of TensorBoard's HParams tab (``hparams.yaml``, written at the end of a run by
    ``ceexp.tensorboard.log_hparams``), ``{}`` when missing or unreadable."""
    import yaml

    try:
        params = yaml.safe_load((Path(run_dir) / "hparams.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return dict(params) if isinstance(params, dict) else {}


def has_predictions(run_dir: str | Path) -> bool:
    """Whether the run left a ``predictions.npz`` (read it with :func:`read_predictions`)."""
    return (Path(run_dir) / PREDICTIONS).is_file()


def _natural(name: str) -> tuple:
    """Sort key: job folders ``<num>_<overrides>`` by number (``10_`` after ``9_``), the rest by name."""
    import re

    m = re.match(r"(\d+)_", name)
    return (0, int(m.group(1)), name) if m else (1, 0, name)


def find_runs(folder: str | Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """Every run folder (:func:`is_run`) under ``folder`` (``folder`` itself included), in sweep order.

    Symbolic links to folders are followed (a folder of links to runs is a folder of runs); a folder reached
    twice, through a link loop or two links, is searched once. Hidden folders, the folders named in ``skip``, and
    anything below a run folder (``checkpoints/``, ...) are not searched. A recorded sweep lists its jobs
    (:func:`sweep_jobs`) and its folder is searched for the rest.

    Returns:
        the run folders as reached (through the links, not resolved), without repeats.
    """
    import os

    root = Path(folder)
    out: list[Path] = []
    seen_runs: set[Path] = set()
    visited: set[Path] = set()

    def add(path: Path) -> None:
        real = path.resolve()
        if real not in seen_runs:
            seen_runs.add(real)
            out.append(path)

    for top, subdirs, _ in os.walk(root, followlinks=True):
        here = Path(top)
        real = here.resolve()
        if real in visited:  # a link loop, or a folder reached twice
            subdirs[:] = []
            continue
        visited.add(real)
        if is_run(here):
            subdirs[:] = []  # nothing below a run is another run
            add(here)
            continue
        if (here / JOBS_DIR).is_dir():
            for job in sweep_jobs(here, search=False):
                if job.path.is_dir() and is_run(job.path):
                    add(job.path)
        subdirs[:] = sorted((d for d in subdirs if not d.startswith(".") and d not in skip), key=_natural)
    return out


def write_predictions(
    run_dir: str | Path,
    val_logits,
    val_labels,
    test_logits,
    test_labels,
    temperature: float | None = None,
) -> Path:
    """Write ``<run_dir>/predictions.npz`` atomically: what every metric of the run can be recomputed from.

    Args:
        val_logits, test_logits: ``(N, C)`` logits (tensors or arrays; stored as float32).
        val_labels, test_labels: ``(N,)`` class indices (stored as int64).
        temperature: the fitted temperature T (stored as a float64 scalar; NaN when none was fitted).

    Returns:
        the path written. The file is written under a temporary name and renamed, so a reader sees the whole
        file or none.
    """
    import io

    import numpy as np

    from ceexp.files import atomic_write_bytes

    def array(x, dtype):
        if hasattr(x, "detach"):
            x = x.detach().cpu().float().numpy() if dtype == np.float32 else x.detach().cpu().numpy()
        return np.ascontiguousarray(np.asarray(x), dtype=dtype)

    buffer = io.BytesIO()
    np.savez(
        buffer,
        val_logits=array(val_logits, np.float32), val_labels=array(val_labels, np.int64),
        test_logits=array(test_logits, np.float32), test_labels=array(test_labels, np.int64),
        temperature=np.float64(np.nan if temperature is None else temperature),
    )
    return atomic_write_bytes(Path(run_dir) / PREDICTIONS, buffer.getvalue())


def read_predictions(run_dir: str | Path) -> dict:
    """The arrays of ``<run_dir>/predictions.npz`` (see :func:`write_predictions`), loaded into memory.

    Returns:
        ``{"val_logits": (N, C) float32, "val_labels": (N,) int64, "test_logits", "test_labels",
        "temperature": float (NaN when none was fitted)}``.

    Raises:
        FileNotFoundError: the run has no ``predictions.npz``.
        ValueError: the file is not a predictions file (a key missing, or not an ``.npz``).
    """
    import zipfile

    import numpy as np

    path = Path(run_dir) / PREDICTIONS
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in _PREDICTION_KEYS if k not in data.files]
            if missing:
                raise ValueError(f"{path} is not a predictions file: expected arrays {', '.join(_PREDICTION_KEYS)}, "
                                 f"missing {', '.join(missing)}")
            out = {k: data[k] for k in _PREDICTION_KEYS}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise ValueError(f"{path} is unreadable: {e}") from e
    except ValueError as e:  # numpy's own (about pickles), for a file that is neither .npz nor .npy
        if str(e).startswith(f"{path} "):
            raise
        raise ValueError(f"{path} is not an .npz file (not a zip archive of arrays)") from e
    out["temperature"] = float(out["temperature"])
    return out


OOD_LOGITS = "ood_logits.npz"


def write_ood_logits(run_dir: str | Path, logits: dict) -> Path:
    """Write ``<run_dir>/ood_logits.npz`` atomically: the tested model's logits on each OOD set of ``ood=[...]``
    (``{set name: (N_set, C)}``, stored as float32), beside ``predictions.npz`` whose test logits are the
    in-distribution side; every ``ood/<set>/*`` metric can be recomputed from the two."""
    import io

    import numpy as np

    from ceexp.files import atomic_write_bytes

    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.ascontiguousarray(x.detach().cpu().float().numpy() if hasattr(x, "detach") else x,
                                                   dtype=np.float32) for name, x in logits.items()})
    return atomic_write_bytes(Path(run_dir) / OOD_LOGITS, buffer.getvalue())


def read_ood_logits(run_dir: str | Path) -> dict:
    """``{set name: (N_set, C) float32}`` of ``<run_dir>/ood_logits.npz``; ``{}`` when the run has none.

    Raises:
        ValueError: the file is not an ``.npz``.
    """
    import zipfile

    import numpy as np

    path = Path(run_dir) / OOD_LOGITS
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise ValueError(f"{path} is unreadable: {e}") from e
    except ValueError as e:  # numpy's own, for a file that is neither .npz nor .npy
        raise ValueError(f"{path} is not an .npz file (not a zip archive of arrays)") from e


def resume_argv(argv: list[str]) -> list[str]:
    """Rewrite ``[..., "resume=DIR", ...]`` into the command line that continues DIR in place.

    The run's own overrides come from ``DIR/.hydra/overrides.yaml`` (so the config is composed exactly
    as before); ``hydra.run.dir=DIR`` puts the run in the same folder, and ``hydra.output_subdir=null``
    keeps Hydra from rewriting the folder's ``.hydra/`` record. Other arguments are refused: a resumed run
    must be the same run.

    Raises:
        ValueError: DIR is not a run folder, or other overrides were given.
    """
    import yaml

    resume = [a for a in argv if a.startswith("resume=")]
    if not resume:
        return argv
    others = [a for a in argv if not a.startswith("resume=")]
    run_dir = Path(resume[-1].split("=", 1)[1]).expanduser()
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise ValueError(f"resume={run_dir} is invalid: expected a run folder with .hydra/overrides.yaml")
    if others:
        raise ValueError(f"resume={run_dir} takes no other overrides, but got {' '.join(others)}")
    overrides = yaml.safe_load(overrides_file.read_text()) or []
    overrides = [o for o in overrides if not o.startswith(("resume=", "hydra."))]
    return [*overrides, f"hydra.run.dir={run_dir}", "hydra.output_subdir=null", f"resume={run_dir.resolve()}"]


# ---------------------------------------------------------------------------------------------------------
# sweeps: job folder names, the sweep's record of its jobs

JOBS_DIR = ".jobs"  # in a sweep folder: <job number>.json per launched job (SweepRecord)
NAME_BYTES = 128  # the longest job folder name (file systems allow 255 bytes; TensorBoard shows the name)
_ESCAPED = {"%": "%25", "/": "%2F", "\\": "%5C"}


def job_folder_name(num: Any, overrides: Any, max_bytes: int = NAME_BYTES) -> str:
    """A sweep job's folder name: ``<num>_<overrides>`` that is one folder, never a path, and never too long.

    ``/`` (a path or a tag such as ``optimized_metric=val/ece`` in the overrides), ``\\`` and ``%`` are
    percent-escaped (``val%2Fece``), as are control characters, so the name never nests folders and maps back to
    one text. A name longer than ``max_bytes`` (UTF-8) keeps the job number, the start of the overrides and
    ``~`` + the first 8 hex digits of the SHA-1 of the whole override text; the full overrides are in the job's
    ``.hydra/overrides.yaml``.

    Args:
        num: the job number (``hydra.job.num``).
        overrides: Hydra's ``hydra.job.override_dirname`` (``loss=focal,seed=0``).
        max_bytes: the longest name, in bytes (at least 32).

    Example:
        >>> job_folder_name(3, "optimized_metric=val/ece,seed=0")
        '3_optimized_metric=val%2Fece,seed=0'
    """
    import hashlib

    text = "" if overrides is None else str(overrides)
    safe = "".join(_ESCAPED.get(c, c) if c in _ESCAPED or c.isprintable() else "%" + "%".join(
        f"{b:02X}" for b in c.encode()) for c in text)
    name = f"{num}_{safe}"
    if len(name.encode()) <= max_bytes:
        return name
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    room = max(int(max_bytes), 32) - len(f"{num}_~{digest}".encode())
    prefix = safe.encode()[:room].decode("utf-8", errors="ignore")
    if "%" in prefix[-2:]:  # never end inside an escape
        prefix = prefix[: prefix.rindex("%")]
    return f"{num}_{prefix}~{digest}"


def _register_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("ceexp.job_folder"):
        OmegaConf.register_new_resolver("ceexp.job_folder", job_folder_name)


# configs/hydra/default.yaml names job folders ${ceexp.job_folder:...}: registered before Hydra composes
_register_resolver()


class SweepJob:
    """One job of a sweep, as :func:`sweep_jobs` lists it.

    Attributes:
        num: the job number (``None`` for a folder the sweep did not record: an older sweep).
        path: the job folder.
        name: the folder's path relative to the sweep folder.
        status: its ``metrics.json`` status (:func:`read_status`; ``unknown`` when there is none).
        error: ``metrics.json``'s one-line ``error``, or what the sweep's record says went wrong (e.g. the value
            returned to the sweeper was not a number); ``""`` when nothing did.
    """

    def __init__(self, num: int | None, path: Path, name: str, status: str, error: str = ""):
        self.num, self.path, self.name, self.status, self.error = num, path, name, status, error

    @property
    def completed(self) -> bool:
        """``completed``, and nothing went wrong in the sweep's record."""
        return self.status == "completed" and not self.error

    def __repr__(self) -> str:
        return f"SweepJob({self.num!r}, {self.name!r}, {self.status!r}, {self.error!r})"


def sweep_jobs(sweep_dir: str | Path, search: bool = True) -> list[SweepJob]:
    """The jobs of a sweep folder, in job-number order.

    The jobs :class:`SweepRecord` recorded as Hydra launched them (``.jobs/<num>.json``), whatever their folder
    is called or wherever it is; with ``search``, also every run folder under ``sweep_dir`` that the record does
    not list (a sweep run before the record existed), after them.
    """
    import os

    from ceexp.files import read_json

    sweep = Path(sweep_dir)
    jobs: list[SweepJob] = []
    seen: set[Path] = set()
    records = []
    for file in (sweep / JOBS_DIR).glob("*.json"):
        try:
            record = read_json(file)
            records.append((int(record["num"]), record))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    for num, record in sorted(records, key=lambda r: r[0]):
        path = sweep / str(record.get("dir", ""))
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        jobs.append(_sweep_job(num, path, str(record.get("dir", "")), str(record.get("problem") or "")))
    if search:
        for path in find_runs(sweep):
            if path.resolve() not in seen and path.resolve() != sweep.resolve():
                seen.add(path.resolve())
                jobs.append(_sweep_job(None, path, Path(os.path.relpath(path, sweep)).as_posix()))
    return jobs


def _sweep_job(num: int | None, path: Path, name: str, problem: str = "") -> SweepJob:
    try:
        record = read_metrics(path)
        status, error = str(record.get("status", "unknown")), str(record.get("error") or "")
    except FileNotFoundError:
        status, error = "unknown", "no metrics.json (not started, still starting, or killed)"
    except ValueError as e:
        status, error = "unknown", str(e)
    lines = (problem or error).strip().splitlines()
    return SweepJob(num, path, name, status, lines[0] if lines else "")


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra < 1.2
    Callback = object

# the Optuna sweeper is the extra ceexp[sweeps]; its config (configs/hydra/sweeper/optuna_study.yaml) composes
# without it: the packages each sweeper needs
_SWEEPER_MODULES = {"hydra_plugins.hydra_optuna_sweeper": ("optuna", "hydra_plugins.hydra_optuna_sweeper")}


class SweepRecord(Callback):
    """Hydra callback around a sweep: what it launched, and which jobs failed.

    Before the sweep (launching process): stops with one line and exit code 2 when the sweeper's package is not
    installed (``pip install "ceexp[sweeps]"``); creates ``paths.root_dir`` (an Optuna sqlite study is kept there
    before any job has run).

    Around each job (the job's process, whatever the launcher): writes ``.jobs/<num>.json`` in the sweep folder
    when it starts (its folder and overrides) and when it ends (what went wrong, if anything). A job that did not
    complete, or whose returned value (``optimized_metric``) is not a finite number, hands the sweeper ``None``:
    an optimising sweeper (Optuna) records a failed trial and goes on, instead of being told NaN.

    After: lists the jobs (:func:`sweep_jobs`) that did not complete, or returned no finite value, in
    :attr:`SweepRecord.failed`, which ``ceexp.train.main`` turns into exit code 1; writes the sweep's HParams
    experiment summary into the sweep folder (``ceexp.tensorboard.write_sweep_hparams``).
    """

    failed: list[str] = []
    unfinished: str | None = None  # the sweep folder between on_multirun_start and on_multirun_end

    def on_multirun_start(self, config, **kwargs) -> None:
        _require_sweeper(config)
        SweepRecord.failed[:] = []
        SweepRecord.unfinished = str(config.hydra.sweep.dir)
        root = config.get("paths", {}).get("root_dir")
        if root:
            Path(root).mkdir(parents=True, exist_ok=True)

    @staticmethod
    def report(sweep: str | Path) -> list:
        """List (log) the jobs of ``sweep`` that did not complete and record them in :attr:`failed`; returns every
        job of the sweep. Also called when the sweeper itself fails after its jobs ran (Optuna, every trial failed),
        so those failures are listed too."""
        import logging

        log = logging.getLogger("ceexp")
        jobs = sweep_jobs(Path(sweep))
        bad = [job for job in jobs if not job.completed]
        SweepRecord.failed[:] = [str(job.path) for job in bad]
        if bad:
            log.error("%d of %d jobs did not complete:", len(bad), len(jobs))
            for job in bad:
                log.error("  %s: %s%s", job.name, job.status, f": {job.error}" if job.error else "")
        return jobs

    def on_job_start(self, config, **kwargs) -> None:
        if _is_sweep_job(config):
            _write_record(config, {})

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if not _is_sweep_job(config):
            return
        from hydra.core.utils import JobStatus

        problem = ""
        if job_return.status == JobStatus.COMPLETED:
            value = job_return.return_value
            status = read_status(config.hydra.runtime.output_dir)
            metric = config.get("optimized_metric") or "the returned value"
            if status != "completed":
                problem = ""  # metrics.json says what went wrong
            elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                   and not _finite(value)):
                problem = f"completed, but {metric} is {value}: not a finite number to optimise"
            if status != "completed" or problem:
                job_return.return_value = None  # a sweeper told NaN aborts (Optuna); None is a failed trial
        else:
            error = job_return._return_value
            problem = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
        _write_record(config, {"problem": problem, "status": read_status(config.hydra.runtime.output_dir)})

    def on_multirun_end(self, config, **kwargs) -> None:
        import logging

        log = logging.getLogger("ceexp")
        sweep = Path(config.hydra.sweep.dir)
        SweepRecord.unfinished = None
        jobs = SweepRecord.report(sweep)
        try:
            from ceexp.tensorboard import write_sweep_hparams

            write_sweep_hparams(sweep, [job.path for job in jobs])
        except Exception as e:  # noqa: BLE001 - the sweep's results stand without its summary
            log.warning("the sweep's HParams summary was not written: %s: %s", type(e).__name__, e)


def _finite(value: float) -> bool:
    import math

    return math.isfinite(value)


def _is_sweep_job(config) -> bool:
    from hydra.types import RunMode

    try:
        return config.hydra.mode == RunMode.MULTIRUN and config.hydra.runtime.output_dir is not None
    except Exception:  # noqa: BLE001 - no Hydra config: not a job of a sweep
        return False


def _write_record(config, fields: dict) -> None:
    """Write (or update) ``<sweep>/.jobs/<num>.json`` of the job ``config`` describes."""
    import os

    from ceexp.files import read_json, write_json

    sweep = Path(str(config.hydra.sweep.dir)).resolve()
    job_dir = Path(str(config.hydra.runtime.output_dir)).resolve()
    record_file = sweep / JOBS_DIR / f"{int(config.hydra.job.num)}.json"
    record_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        record = read_json(record_file) if fields else {}
    except (OSError, ValueError):
        record = {}
    record.update({"num": int(config.hydra.job.num), "dir": os.path.relpath(job_dir, sweep),
                   "overrides": [str(o) for o in config.hydra.overrides.task], **fields})
    write_json(record_file, record)


def _require_sweeper(config) -> None:
    """Stop with one line (exit code 2) when the configured sweeper's packages are not installed."""
    import importlib.util
    import sys

    from omegaconf import OmegaConf

    target = str(OmegaConf.select(config, "hydra.sweeper._target_", default="") or "")
    for prefix, modules in _SWEEPER_MODULES.items():
        if not target.startswith(prefix):
            continue
        missing = []
        for module in modules:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing.append(module.split(".")[-1])
        if missing:
            choice = OmegaConf.select(config, "hydra.runtime.choices.hparams_search", default=None)
            what = f"hparams_search={choice}" if choice else f"hydra.sweeper {target}"
            print(f'error: {what} needs the Optuna sweeper ({", ".join(missing)} not installed): '
                  f'pip install "ceexp[sweeps]"', file=sys.stderr)
            sys.exit(2)


# ---------------------------------------------------------------------------------------------------------
# the failure policy: what an exception means for the run folder, the console and the exit code
#
#   exception                          metrics.json   console (single run)                     exit code / sweep
#   ConfigError                        failed*        error: <field>=<value> is invalid: ...    2 / job failed, go on
#   RunInterrupted, KeyboardInterrupt  interrupted    interrupted: ... resume=<run dir>         130 (a sweep stops)
#   OSError (disk full, read-only...)  failed         error: cannot write <file>: <reason>      1 / job failed, go on
#   FloatingPointError                 failed         error: <message>; the last good ...       1 / job failed, go on
#   any other Exception                failed         error: <Type>: <message> (traceback: log) 1 / job failed, go on
#
# * a single run refused by ConfigError leaves no folder (one that holds only Hydra's record is removed).
# A record train() already wrote for the same status during this attempt (with the metrics so far) is kept.

EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 1, 2, 130
# a file could not be written: the disk or the quota is full, the file too large, the file system read-only or failing
_WRITE_ERRNOS = {getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EIO") if hasattr(errno, name)}


class Failure:
    """What one exception means for a run (see the table above).

    Attributes:
        status: what ``metrics.json`` records (``failed`` or ``interrupted``).
        error: ``metrics.json``'s ``"error"``: ``<Type>: <one line>``.
        message: the console line after ``error:`` / ``interrupted:``.
        exit_code: 2 (config), 130 (interrupted) or 1.
        expected: False for an exception the policy does not know (a bug): its traceback goes to the run's log.
    """

    def __init__(self, status: str, error: str, message: str, exit_code: int, expected: bool = True):
        self.status, self.error, self.message = status, error, message
        self.exit_code, self.expected = exit_code, expected

    def __repr__(self) -> str:
        return f"Failure({self.status!r}, {self.error!r}, {self.message!r}, {self.exit_code}, {self.expected})"


def one_line(e: BaseException) -> str:
    """``<Type>: <first line of the message>`` (``<Type>`` alone when there is no message)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text and text[0] else type(e).__name__


def first_failure(e: BaseException) -> BaseException:
    """The failure to report: a write that failed while an earlier failure was handled (recording it on a full
    disk) is a consequence; the earlier one is the cause."""
    while isinstance(e, OSError):
        # ceexp.files re-raises a failed write naming its file (``from`` the system's error): look behind it
        origin = e.__cause__ if isinstance(e.__cause__, OSError) else e
        if origin.__context__ is None or origin.__suppress_context__ or origin.__context__ is e:
            break
        e = origin.__context__
    return e


def failure_of(e: BaseException, run_dir: str | Path) -> Failure:
    """The policy for one exception raised by a run in ``run_dir`` (the table above)."""
    from ceexp.validation import ConfigError

    e = first_failure(e)
    run_dir = Path(run_dir)
    if isinstance(e, ConfigError):
        return Failure("failed", f"ConfigError: {e}", str(e), EXIT_CONFIG)
    if isinstance(e, RunInterrupted):
        return Failure("interrupted", one_line(e), str(e), EXIT_INTERRUPTED)
    if isinstance(e, KeyboardInterrupt):
        return Failure("interrupted", "KeyboardInterrupt",
                       f"stopped; continue with: python scripts/train.py resume={run_dir}", EXIT_INTERRUPTED)
    if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
        import os

        reason = e.strerror or os.strerror(e.errno)
        message = f"cannot write {e.filename}: {reason}" if e.filename else f"cannot write a file: {reason}"
        return Failure("failed", f"{type(e).__name__}: {message}", message, EXIT_FAILED)
    if isinstance(e, FloatingPointError):
        return Failure("failed", one_line(e), f"{str(e).strip().splitlines()[0]}; the last good checkpoint is in "
                       f"{run_dir / 'checkpoints'}", EXIT_FAILED)
    return Failure("failed", one_line(e), one_line(e), EXIT_FAILED, expected=False)


def remove_fresh_run(run_dir: str | Path) -> None:
    """Remove a new run folder that holds nothing but Hydra's own record (``.hydra/``, ``train.log``), and its
    date folder and ``runs/`` when that leaves them empty: a config refused before training leaves nothing."""
    import contextlib
    import shutil

    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in (run_dir.parent, run_dir.parent.parent):
        with contextlib.suppress(OSError):
            parent.rmdir()


def run_job(task, run_dir: str | Path, *, multirun: bool, resumed: bool = False):
    """Run ``task()`` (one job: ``train(cfg)``) under the failure policy; lightning-hydra-template's
    ``task_wrapper``.

    Returns:
        what ``task`` returned; ``None`` when it failed in a sweep (recorded in ``metrics.json``; the sweep goes on).

    Raises:
        SystemExit: a single run that failed (after one line on stderr), or any interrupted run: the exit code
            of :func:`failure_of`.
    """
    import logging
    import sys

    run_dir = Path(run_dir)
    before = _record_stamp(run_dir)
    try:
        return task()
    except (Exception, KeyboardInterrupt) as e:
        error = e
    failure = failure_of(error, run_dir)
    if failure.exit_code == EXIT_CONFIG and not multirun:
        if not resumed:
            remove_fresh_run(run_dir)
    else:
        _record_failure(run_dir, failure, before)
    if not failure.expected:
        _to_log_files(run_dir, f"{failure.error} (traceback below)", error)
    if multirun and failure.exit_code != EXIT_INTERRUPTED:
        logging.getLogger("ceexp").error("job failed: %s", failure.message)
        return None
    _to_log_files(run_dir, failure.message)
    where = _log_file(run_dir)
    hint = f" (traceback in {where})" if not failure.expected and where else ""
    print(f"{'interrupted' if failure.status == 'interrupted' else 'error'}: {failure.message}{hint}",
          file=sys.stderr)
    raise SystemExit(failure.exit_code)


def _record_stamp(run_dir: Path) -> tuple | None:
    """What identifies the current ``metrics.json`` (each atomic write makes a new file), or None."""
    try:
        st = (run_dir / "metrics.json").stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _record_failure(run_dir: Path, failure: Failure, before: tuple | None) -> None:
    import logging

    path = run_dir / "metrics.json"
    if _record_stamp(run_dir) not in (None, before) and read_status(run_dir) == failure.status:
        return  # train() recorded this failure itself during this attempt, with the metrics so far
    try:
        write_status(run_dir, failure.status, error=failure.error)
    except OSError as e:  # the disk is full: metrics.json keeps its last good record
        logging.getLogger("ceexp").warning("could not record the failure in %s: %s", path, e.strerror or e)


def _file_handlers(run_dir: Path) -> list:
    """The root logger's file handlers that write into ``run_dir`` (Hydra's ``<run dir>/train.log``)."""
    import logging

    folder = Path(run_dir).resolve()
    return [h for h in logging.getLogger().handlers
            if isinstance(h, logging.FileHandler) and folder in Path(h.baseFilename).resolve().parents]


def _log_file(run_dir: Path) -> str | None:
    handlers = _file_handlers(run_dir)
    return handlers[0].baseFilename if handlers else None


def _to_log_files(run_dir: Path, message: str, error: BaseException | None = None) -> None:
    """Write a line (and ``error``'s traceback) to the run's log file only (Hydra's ``train.log``), not to the
    console, which gets one line."""
    import logging

    exc_info = (type(error), error, error.__traceback__) if error is not None else None
    record = logging.getLogger("ceexp").makeRecord("ceexp", logging.ERROR, __file__, 0, message, (), exc_info)
    for handler in _file_handlers(run_dir):
        handler.handle(record)


_checked_argv: set[tuple[str, ...]] = set()


def checked_argv(argv: list[str]) -> list[str]:
    """The command line of ``scripts/train.py`` made ready for Hydra: ``resume=DIR`` expanded (:func:`resume_argv`)
    and the overrides checked and completed (``ceexp.validation.check_command_line``). Idempotent: the entry
    script calls it before importing torch, ``ceexp.train.main`` again after.

    Raises:
        SystemExit: 2, after one line on stderr, for a refused command line (no run folder is made).
    """
    import sys

    from ceexp.validation import check_command_line

    if tuple(argv) in _checked_argv:
        return list(argv)
    try:
        out = check_command_line(resume_argv(list(argv)))
    except ValueError as e:  # ConfigError, or resume= of something that is not a run folder
        print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    _checked_argv.add(tuple(out))
    return out


def run_hydra(hydra_main) -> None:
    """Call a ``@hydra.main`` function with Hydra's own failures (composition, overrides, plugins) as one line on
    stderr and exit code 2 (1 for anything else Hydra lets through); ``HYDRA_FULL_ERROR=1`` set by the user
    keeps Hydra's tracebacks."""
    import os
    import sys

    if os.environ.get("HYDRA_FULL_ERROR") == "1" and os.environ.get("CEEXP_HYDRA_ERRORS") != "1":
        hydra_main()
        return
    saved = {k: os.environ.get(k) for k in ("HYDRA_FULL_ERROR", "CEEXP_HYDRA_ERRORS")}
    os.environ.update({"HYDRA_FULL_ERROR": "1", "CEEXP_HYDRA_ERRORS": "1"})  # Hydra raises instead of printing
    try:
        hydra_main()
    except Exception as e:  # noqa: BLE001 - the policy: every failure is one line and an exit code
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        config = isinstance(e, (HydraException, OmegaConfBaseException, ValueError))
        if SweepRecord.unfinished is not None and SweepRecord.report(SweepRecord.unfinished):
            config = False  # the sweeper failed after its jobs ran (Optuna: "No trials are completed yet"): listed
        lines = str(e).strip().splitlines()
        cause = e.__cause__ if e.__cause__ is not None and str(e.__cause__).strip() else None
        line = (lines[0] if lines else type(e).__name__) + (f" ({str(cause).strip().splitlines()[0]})" if cause else "")
        print(f"error: {line if config else one_line(e)}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG if config else EXIT_FAILED) from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
