"""TensorBoard extras that Lightning's logger does not do for us.

Lightning's ``TensorBoardLogger.log_hyperparams(params, metrics)`` re-logs the metrics at step 0,
which would put the final values at the start of every curve; and logging hparams at the start
of fit registers no metrics (or a ``hp_metric = -1`` placeholder). Here the HParams summaries are
written once, at the end, naming the final metrics: the HParams dashboard reads each metric's
value from the scalar of the same tag in the same run.
"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["flatten", "log_hparams", "log_custom_scalars", "CUSTOM_SCALARS"]

# TensorBoard's Custom Scalars tab: curves that belong together on one chart
CUSTOM_SCALARS = {
    "ceexp": {
        "cross-entropy (nats): train vs validation": ["Multiline", ["train/nll", "val/nll"]],
        "calibration error: ECE, AdaECE, classwise ECE": ["Multiline", ["val/ece", "val/adaece", "val/cwece"]],
        "accuracy vs mean confidence (the gap is over-confidence)": ["Multiline", ["val/acc", "val/confidence"]],
        "training objective vs its cross-entropy": ["Multiline", ["train/loss_epoch", "train/nll"]],
    }
}


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
    """Write the HParams summaries (experiment, session start, session end) into ``logger``'s run.

    Args:
        logger: a Lightning ``TensorBoardLogger`` (anything else is ignored).
        params: flat hyperparameters (bool/int/float/str values).
        metrics: final metrics ``{tag: float}``; their tags must also be logged as scalars in the run.
    """
    from pytorch_lightning.loggers import TensorBoardLogger
    from torch.utils.tensorboard.summary import hparams

    if not isinstance(logger, TensorBoardLogger):
        return
    logger.hparams.update(params)  # also saved to hparams.yaml beside the event file
    writer = logger.experiment._get_file_writer()
    for summary in hparams(dict(params), dict(metrics)):
        writer.add_summary(summary)
    writer.flush()


def log_custom_scalars(logger) -> None:
    """Write the :data:`CUSTOM_SCALARS` layout into ``logger``'s run (a TensorBoardLogger; others are ignored)."""
    from pytorch_lightning.loggers import TensorBoardLogger

    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_custom_scalars(CUSTOM_SCALARS)
