"""The life of a run folder: its status, its failure record, and its resumption.

Every run folder has a ``metrics.json`` whose ``"status"`` says where the run stands:

``running``      written when training starts (a run killed with SIGKILL keeps it);
``completed``    with the final metrics;
``failed``       with ``"error"``: one line, e.g. a non-finite loss or a bad value in one cell of a sweep;
``interrupted``  SIGINT or SIGTERM: ``checkpoints/last.ckpt`` holds the last completed epoch.

``python scripts/train.py resume=<run dir>`` re-runs the folder's own command-line overrides in the
same folder from ``checkpoints/last.ckpt`` (see :func:`resume_argv`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

__all__ = [
    "PREDICTIONS", "STATUSES", "RunInterrupted", "SweepRecord", "read_predictions", "read_status", "resume_argv",
    "write_predictions", "write_status",
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
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path} is unreadable: {e}") from e
    out["temperature"] = float(out["temperature"])
    return out


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


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra < 1.2
    Callback = object


class SweepRecord(Callback):
    """Hydra callback around a sweep, in the launching process whatever the launcher.

    Before: creates ``paths.root_dir`` (an Optuna sqlite study is kept there before any job has run).
    After: lists the jobs whose ``metrics.json`` is not ``completed`` and records them in
    :attr:`SweepRecord.failed`, which ``ceexp.train.main`` turns into exit code 1.
    """

    failed: list[str] = []

    def on_multirun_start(self, config, **kwargs) -> None:
        root = config.get("paths", {}).get("root_dir")
        if root:
            Path(root).mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        jobs = sorted(p.parent for p in sweep.glob("*/.hydra"))
        bad = [(job, read_status(job)) for job in jobs if read_status(job) != "completed"]
        SweepRecord.failed[:] = [str(job) for job, _ in bad]
        if bad:
            import logging

            log = logging.getLogger("ceexp")
            log.error("%d of %d jobs did not complete:", len(bad), len(jobs))
            for job, status in bad:
                log.error("  %s: %s", job.name, status)
