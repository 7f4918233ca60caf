"""TensorBoard extras that Lightning's logger does not do for us.

HParams. Lightning's ``TensorBoardLogger.log_hyperparams(params, metrics)`` re-logs the metrics at step 0, which
would put the final values at the start of every curve; logging hparams at the start of fit registers no metrics
(or a ``hp_metric = -1`` placeholder); and its ``hparams.yaml`` is written once, early, so it stays ``{}``. Here a
run writes its HParams session (the hyperparameters, :func:`log_hparams`) once, at the end, and ``hparams.yaml``
with them. TensorBoard keeps *one* experiment summary (which hyperparameters and metrics exist, which differ) for
the whole log folder, taken from whichever run holds one: so a run writes none of its own (TensorBoard then
derives the experiment from every run's session), and a sweep writes one for all its jobs into the sweep folder
at its end (:func:`write_sweep_hparams`): every metric any job has, every hyperparameter with the values it takes
and whether it differs. The HParams dashboard reads each metric's value from the scalar of the same tag in
each run.

Custom Scalars. Each chart's tags are regular expressions, matched at the start of a tag (``re.match``): they
are anchored (``^val/nll$``), so the cross-entropy chart does not also draw ``val/nll_bits``.
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "CUSTOM_SCALARS",
    "SWEEP_SUMMARY_SUFFIX",
    "flatten",
    "hparam_infos",
    "log_custom_scalars",
    "log_hparams",
    "write_sweep_hparams",
]


def _exactly(*tags: str) -> list[str]:
    """Regular expressions that match exactly these tags (Custom Scalars matches at the start only)."""
    return [f"^{re.escape(tag)}$" for tag in tags]


# TensorBoard's Custom Scalars tab: curves that belong together on one chart
CUSTOM_SCALARS = {
    "ceexp": {
        "cross-entropy (nats): train vs validation": ["Multiline", _exactly("train/nll", "val/nll")],
        "calibration error: ECE, AdaECE, classwise ECE": ["Multiline", _exactly("val/ece", "val/adaece", "val/cwece")],
        "accuracy vs mean confidence (the gap is over-confidence)":
            ["Multiline", _exactly("val/acc", "val/confidence")],
        "training objective vs its cross-entropy": ["Multiline", _exactly("train/loss_epoch", "train/nll")],
    }
}
HPARAMS_FILE = "hparams.yaml"
# the sweep folder's event file holding the sweep's experiment summary (replaced when written again)
SWEEP_SUMMARY_SUFFIX = ".sweep_hparams"
# a numeric hyperparameter with at most this many values gets a discrete domain (filter by value), else an interval
MAX_DISCRETE_NUMBERS = 12


def flatten(tree: Mapping, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Flatten nested mappings to ``{"a.b.c": value}``; values become bool/int/float/str (lists and None as str)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name, sep))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def log_hparams(logger, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
    """Write the run's HParams session (start with ``params``, end with success) and ``hparams.yaml``.

    Args:
        logger: a Lightning ``TensorBoardLogger`` (anything else is ignored).
        params: flat hyperparameters (bool/int/float/str values), in the order of the HParams columns.
        metrics: the final metrics ``{tag: float}``; the HParams tab shows each from the scalar of the same tag
            in the run (the experiment summary that lists them is the sweep's, :func:`write_sweep_hparams`, or
            derived by TensorBoard from the runs).

    ``hparams.yaml`` (beside the event file) is written atomically (``ceexp.files``) with ``params``: Lightning
    writes it once when the run starts, before any hyperparameter is known.
    """
    import yaml
    from pytorch_lightning.loggers import TensorBoardLogger

    from ceexp.files import atomic_write_text

    if not isinstance(logger, TensorBoardLogger):
        return
    params = dict(params)
    logger.hparams.update(params)
    writer = logger.experiment._get_file_writer()
    for summary in _session_summaries(params):  # no experiment summary: see the module docstring
        writer.add_summary(summary)
    writer.flush()
    folder = Path(logger.log_dir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / HPARAMS_FILE, yaml.safe_dump(params, sort_keys=False, allow_unicode=True))


def _value(value: Any):
    """A hyperparameter as the ``google.protobuf.Value`` the HParams plugin reads (bool, number or string)."""
    from google.protobuf import struct_pb2

    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, (int, float)):
        return struct_pb2.Value(number_value=float(value))
    return struct_pb2.Value(string_value=value if isinstance(value, str) else str(value))


def _summary(tag: str, plugin_data):
    """A ``Summary`` holding one HParams plugin message under ``tag`` (as TensorBoard's hparams summaries)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import metadata

    plugin_data.version = metadata.PLUGIN_DATA_VERSION
    summary_metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=plugin_data.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=summary_metadata)])


def _session_summaries(params: Mapping[str, Any]) -> list:
    """The session start (the run's hyperparameters: bools as bools, numbers, else text) and its successful end."""
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    now = time.time()
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=now)
    for name, value in params.items():
        start.hparams[name].CopyFrom(_value(value))
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=now)
    return [_summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)),
            _summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))]


def log_custom_scalars(logger) -> None:
    """Write the :data:`CUSTOM_SCALARS` layout into ``logger``'s run (a TensorBoardLogger; others are ignored)."""
    from pytorch_lightning.loggers import TensorBoardLogger

    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_custom_scalars(CUSTOM_SCALARS)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "string"


def hparam_infos(runs: Sequence[Mapping[str, Any]]) -> list:
    """One ``api_pb2.HParamInfo`` per hyperparameter of ``runs`` (each run's flat hyperparameters), in order of
    first appearance.

    Type: bool when every value is, a number (float64) when every value is, else a string (each value as text).
    Domain: the values taken (``domain_discrete``), or ``[min, max]`` (``domain_interval``) for a number with more
    than :data:`MAX_DISCRETE_NUMBERS` values. ``differs``: it takes more than one value, or some runs lack it.
    """
    from tensorboard.plugins.hparams import api_pb2

    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run))
    infos = []
    for name in names:
        values = [run[name] for run in runs if name in run]
        kinds = {_kind(v) for v in values}
        kind = kinds.pop() if len(kinds) == 1 else "string"
        if kind == "number":
            values = [float(v) for v in values]
        elif kind == "string":
            values = [v if isinstance(v, str) else str(v) for v in values]
        distinct = sorted(set(values), key=lambda v: (isinstance(v, float) and math.isnan(v), v))
        info = api_pb2.HParamInfo(
            name=name, display_name=name,
            type={"bool": api_pb2.DATA_TYPE_BOOL, "number": api_pb2.DATA_TYPE_FLOAT64,
                  "string": api_pb2.DATA_TYPE_STRING}[kind],
            differs=len(distinct) > 1 or len(values) < len(runs),
        )
        if kind == "number" and len(distinct) > MAX_DISCRETE_NUMBERS:
            info.domain_interval.min_value, info.domain_interval.max_value = min(distinct), max(distinct)
        else:
            info.domain_discrete.values.extend(_value(v) for v in distinct)
        infos.append(info)
    return infos


def _metric_tags(record: Mapping[str, Any]) -> list[str]:
    """The final-metric tags of a ``metrics.json`` record: ``split/name`` keys with a number (or NaN: null)."""
    return [k for k, v in record.items() if "/" in k and not k.startswith("time/")
            and (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) or v in ("inf", "-inf"))]


def write_sweep_hparams(sweep_dir: str | Path, runs: Sequence[str | Path]) -> Path | None:
    """Write the HParams experiment summary of a sweep into ``sweep_dir``'s own event file.

    It lists every hyperparameter of the runs' ``hparams.yaml`` with the values it takes (:func:`hparam_infos`:
    ``loss`` in a ``-m loss=ce,focal`` sweep differs, so the HParams table shows it first) and every metric tag of
    their ``metrics.json`` (union over the runs: a metric only some runs have is still a column). Runs without
    ``hparams.yaml`` (failed, or without a logger) are left out. A summary written before by this function is
    replaced (TensorBoard keeps the first experiment summary of a run).

    Returns:
        the event file written, or ``None`` when no run has hyperparameters.
    """
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    from ceexp.runs import read_hparams, read_metrics

    params, tags = [], {}
    for run in runs:
        hp = read_hparams(run)
        if not hp:
            continue
        params.append(hp)
        try:
            tags.update(dict.fromkeys(_metric_tags(read_metrics(run))))
        except (OSError, ValueError):
            pass
    if not params:
        return None
    experiment = api_pb2.Experiment(
        time_created_secs=time.time(), hparam_infos=hparam_infos(params),
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t), display_name=t) for t in sorted(tags)])
    summary = _summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))

    sweep = Path(sweep_dir)
    for old in sweep.glob(f"events.out.tfevents.*{SWEEP_SUMMARY_SUFFIX}"):
        old.unlink()
    return _write_events(sweep, [Event(wall_time=time.time(), file_version="brain.Event:2"),
                                 Event(wall_time=time.time(), summary=summary)])


def _write_events(folder: Path, events: Sequence) -> Path:
    """An event file of ``events`` in ``folder``, written atomically (``ceexp.files``): TensorBoard, reading the
    folder at any moment, sees the whole file or none."""
    import io
    import os
    import socket

    from tensorboard.summary.writer.record_writer import RecordWriter

    from ceexp.files import atomic_write_bytes

    buffer = io.BytesIO()
    records = RecordWriter(buffer)
    for event in events:
        records.write(event.SerializeToString())
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}{SWEEP_SUMMARY_SUFFIX}"
    return atomic_write_bytes(folder / name, buffer.getvalue())
