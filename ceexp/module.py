"""The LightningModule that wires a model, a loss and the calibration metrics together.

It knows nothing about which loss or dataset it holds: the loss is any ``nn.Module`` taking
logits ``(N, C)`` and int64 targets ``(N,)``. A one-logit head (``loss=bce``, ``sigmoid_focal``: logits ``(N, 1)``)
is measured as the two-class logits ``[0, z]`` (``ceexp.losses.class_logits``: probabilities ``[1 - p, p]``), so
every metric, diagram, temperature and prediction file reads as for a two-logit model. Besides the training
objective (``*/loss``) it always logs the cross-entropy of the predictions (``*/nll``, nats), so runs trained with
different objectives are compared on the same axis.

``*/loss`` is the objective per sample: a loss with ``reduction="sum"`` is divided by the batch size. Its epoch
value is the mean that the loss's own ``"mean"`` reduction would give on the whole split at once, whatever the
batching: each batch counts with what that reduction divides by (:func:`mean_denominator`), e.g. the sum of the
class weights ``w_y`` of its samples for ``CrossEntropyLoss(weight=w)``, so the epoch value is
``sum_i w_{y_i} l_i / sum_i w_{y_i}``.

TensorBoard tags (x axis: the global step):
    per step:   ``train/loss`` (every ``trainer.log_every_n_steps`` steps; none when it is 0)
    per epoch:  ``train/loss_epoch``, ``train/nll``, ``val/{loss,nll,nll_bits,acc,ece,mce,adaece,cwece,brier,
                confidence,smece,ece_debiased,ece_signed}`` (the image ``val/reliability_diagram`` is drawn by
                ``ceexp.callbacks.ReliabilityDiagrams`` from :attr:`ClassifierModule.val_metrics`)
    test:       ``test/*`` as for val; with a fitted temperature T also ``test/temperature`` and
                ``test/{nll,nll_bits,acc,ece,mce,adaece,cwece,brier,confidence,smece,ece_debiased,ece_signed}_ts``
                (metrics of logits / T); from the gathered test logits, the selective-classification metrics
                ``test/{aurc,eaurc,augrc}`` (and ``_ts``; :func:`selective_metrics`)
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from ceexp.losses import class_logits
from ceexp.metrics import (
    AdaptiveCalibrationError, BrierScore, CalibrationError, ClasswiseCalibrationError, nats_to_bits,
)

__all__ = ["ClassifierModule", "EvalMetrics", "mean_denominator", "selective_metrics"]


def mean_denominator(loss: nn.Module, target: torch.Tensor) -> torch.Tensor:
    """What ``loss`` with ``reduction="mean"`` divides the batch's summed loss by, for targets ``target`` ``(B,)``.

    ``torch.nn.CrossEntropyLoss`` / ``NLLLoss`` with class weights ``w``: the sum of ``w_y`` over the batch's
    non-ignored samples (PyTorch's convention, with or without label smoothing); every other loss: the number of
    samples whose target is not the loss's ``ignore_index`` (if it has one). ceexp's ``FocalLoss(alpha=...)`` is of
    the second kind: its mean divides by the number of samples, not by the sum of their ``alpha``.

    Weighting each batch's mean by this value and dividing by the total gives the split's mean
    ``sum_i w_i l_i / sum_i w_i``, the same for every batch size.

    Returns:
        a float scalar tensor on ``target``'s device (0 for a batch with nothing to count).
    """
    ignore = getattr(loss, "ignore_index", None)
    keep = target != ignore if isinstance(ignore, int) else torch.ones_like(target, dtype=torch.bool)
    weight = getattr(loss, "weight", None)
    if isinstance(loss, (nn.CrossEntropyLoss, nn.NLLLoss)) and weight is not None:
        return weight.to(target.device)[target[keep]].sum().float()
    return keep.sum().float()


def selective_metrics(logits: torch.Tensor, target: torch.Tensor, temperature: Optional[float] = None,
                      prefix: str = "test/") -> dict[str, float]:
    """The selective-classification metrics of a whole split (``ceexp.metrics.SELECTIVE_FUNCTIONS``: ``aurc``,
    ``eaurc``, ``augrc``, fractions, ranked by the top-label probability), and with a temperature T the same of
    ``logits / T`` (``_ts``; the ranking of the samples can change with T).

    Not accumulated per batch like :class:`EvalMetrics`: a risk-coverage curve needs every sample's confidence, so
    it is computed once from the gathered split. The probabilities are those of the other metrics, the softmax of
    the float32 logits (so ``ceexp.bootstrap`` recomputes the same values from ``predictions.npz``); confidences
    that round to the same float32 are ties, which the definitions accept together.

    Args:
        logits: ``(N, C)`` the whole split's logits; target: ``(N,)`` int64.

    Returns:
        ``{f"{prefix}{tag}[_ts]": float}``; ``{}`` when the split is empty.
    """
    from ceexp.metrics import SELECTIVE_FUNCTIONS

    if logits.numel() == 0:
        return {}
    z = logits.float()
    scaled = [("", z)] + ([] if temperature is None else [("_ts", z / temperature)])
    return {f"{prefix}{tag}{suffix}": float(fn(z.softmax(dim=1), target))
            for suffix, z in scaled for tag, fn in SELECTIVE_FUNCTIONS.items()}


class EvalMetrics(nn.Module):
    """All evaluation metrics of one stage, updated from logits and accumulated over an epoch.

    ``update(logits (B, C) float, target (B,) int64, objective: scalar tensor or None)``; ``compute()``
    returns a dict of python floats keyed by the tag suffixes of the module docstring. Accuracy, mean
    confidence, ECE, MCE and signed ECE all come from the one per-bin state of :class:`CalibrationError`;
    AdaECE, the debiased ECE and smECE from the one list of top-label confidences and correctness flags of
    :class:`AdaptiveCalibrationError` (its ``summary()``). Each probability-based value equals
    ``ceexp.metrics.METRIC_FUNCTIONS[tag](softmax(logits), target, n_bins)`` on the epoch's samples.
    """

    def __init__(self, num_classes: int, n_bins: int):
        super().__init__()
        self.loss = MeanMetric()
        self.nll = MeanMetric()
        # inputs are softmax outputs: skip the per-update probability checks
        self.ece = CalibrationError(n_bins=n_bins, validate_args=False)
        self.adaece = AdaptiveCalibrationError(n_bins=n_bins, validate_args=False)
        self.cwece = ClasswiseCalibrationError(num_classes=num_classes, n_bins=n_bins, validate_args=False)
        self.brier = BrierScore(validate_args=False)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor, objective: Optional[torch.Tensor] = None,
               weight: Optional[torch.Tensor] = None) -> None:
        """Accumulate one batch: ``objective`` is the batch's loss per sample (a scalar) and ``weight`` what it
        counts for in the epoch's ``loss`` (:func:`mean_denominator`; default: the number of samples)."""
        logits = logits.float()
        probs = logits.softmax(dim=1)
        if objective is not None:
            self.loss.update(objective.detach(), weight=target.numel() if weight is None else weight)
        self.nll.update(F.cross_entropy(logits, target, reduction="none"))
        for metric in (self.ece, self.adaece, self.cwece, self.brier):
            metric.update(probs, target)

    def compute(self) -> dict[str, float]:
        out = {}
        if self.loss.update_count:
            out["loss"] = self.loss.compute()
        out["nll"] = self.nll.compute()
        out["nll_bits"] = nats_to_bits(out["nll"])
        summary = self.ece.summary()
        for name in ("acc", "ece", "mce"):
            out[name] = summary[name]
        samples = self.adaece.summary()
        out["adaece"] = samples["adaece"]
        out["cwece"] = self.cwece.compute()
        out["brier"] = self.brier.compute()
        out["confidence"] = summary["confidence"]
        out["smece"] = samples["smece"]
        out["ece_debiased"] = samples["ece_debiased"]
        out["ece_signed"] = summary["ece_signed"]
        return {k: float(v) for k, v in out.items()}

    def reset(self) -> None:
        for m in self.children():
            m.reset()


class ClassifierModule(pl.LightningModule):
    """Train ``model`` with ``loss`` and log accuracy, NLL and calibration.

    Args:
        model: maps ``(B, *input_shape)`` to logits ``(B, C)``.
        loss: the training objective, ``loss(logits (B, C), target (B,)) -> scalar``.
        optimizer: a partial optimizer (``optimizer(params=...)``), e.g. from a ``_partial_: true`` config.
        num_classes: C.
        scheduler: optional partial LR scheduler (``scheduler(optimizer=...)``), stepped once per epoch.
        n_bins: bins of the ECE/MCE/AdaECE/classwise ECE metrics.
        seed: the run's seed; each training epoch reseeds torch's global RNG from (seed, epoch).
        hparams: the plain, resolved run config to store in checkpoints (not logged here: see
            ``ceexp.tensorboard.log_hparams``, which logs it once with the final metrics).

    Attributes:
        val_metrics: the validation metrics; they keep the last validation's samples until the next one starts
            (``ceexp.callbacks.ReliabilityDiagrams`` draws from them after the epoch).
        temperature: ``None``, or a fitted temperature T > 0; when set, ``test`` also logs metrics of ``logits / T``.
        test_logits, test_labels: after ``trainer.test``, the whole test split's logits ``(N, C)`` float32 and
            labels ``(N,)`` int64 on the CPU (gathered from every process), in split order.
        test_results: after ``trainer.test``, the logged ``test/*`` values, ``{tag: float}``.
        val_logits, val_labels, val_step: the last validation's logits ``(N, C)`` float32 and labels ``(N,)`` int64 on
            the CPU (this process's part of the split, in its order) and the global step of its weights (-1: none),
            so temperature scaling needs no second pass over the validation split.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        num_classes: int,
        scheduler: Optional[Callable[..., Any]] = None,
        n_bins: int = 15,
        hparams: Optional[dict] = None,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters(hparams or {}, logger=False)
        self.model = model
        self.loss = loss
        self._loss_sums = getattr(loss, "reduction", "mean") == "sum"
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.seed = seed
        self.train_nll = MeanMetric()
        self.train_loss = MeanMetric()
        self.val_metrics = EvalMetrics(num_classes, n_bins)
        self.test_metrics = EvalMetrics(num_classes, n_bins)
        self.test_metrics_ts = EvalMetrics(num_classes, n_bins)
        self.temperature: Optional[float] = None
        # the test split's logits and labels after trainer.test (what predictions.npz holds)
        self.test_logits: Optional[torch.Tensor] = None
        self.test_labels: Optional[torch.Tensor] = None
        self.test_results: dict[str, float] = {}
        self._test_outputs: list = []
        # the last validation's logits and labels (this process's part of the split) and the step it validated
        self.val_logits: Optional[torch.Tensor] = None
        self.val_labels: Optional[torch.Tensor] = None
        self.val_step = -1
        self._val_outputs: list = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.model(x)
        loss = self.loss(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at epoch {self.current_epoch}, step {self.global_step}"
            )
        n = y.numel()
        per_sample = self._per_sample(loss.detach(), n)
        self.train_loss.update(per_sample, weight=self._batch_weight(y))
        self.train_nll.update(F.cross_entropy(class_logits(logits.detach().float()), y, reduction="none"))
        # self.log costs ~1.5 ms a call on CPU: call it only on the steps the logger writes (0: never), which
        # include the step that ends training by max_steps
        every, max_steps = self.trainer.log_every_n_steps, self.trainer.max_steps
        if every and ((self.global_step + 1) % every == 0 or 0 <= max_steps <= self.global_step + 1):
            self.log("train/loss", per_sample, on_step=True, on_epoch=False, batch_size=n)
        return loss

    def _per_sample(self, objective: torch.Tensor, n: int) -> torch.Tensor:
        """The objective per sample: a ``reduction="sum"`` loss (the paper code's protocol) divided by the batch
        size, so that ``*/loss`` does not grow with ``data.batch_size``; a ``"mean"`` loss as it is."""
        return objective / n if self._loss_sums else objective

    def _batch_weight(self, target: torch.Tensor) -> torch.Tensor:
        """What a batch's per-sample objective counts for in the epoch mean: :func:`mean_denominator` for a
        ``"mean"`` loss, the batch size for a ``"sum"`` loss (divided by it in :meth:`_per_sample`)."""
        if self._loss_sums:
            return torch.tensor(float(target.numel()), device=target.device)
        return mean_denominator(self.loss, target)

    def on_train_epoch_end(self) -> None:
        # at the last training step, where Lightning logs a training epoch's values (not one step later)
        self._log_epoch({"train/loss_epoch": float(self.train_loss.compute()), "train/nll": float(self.train_nll.compute()),
                         "step": float(max(self.global_step - 1, 0)), "epoch": float(self.current_epoch)})
        self.train_loss.reset()
        self.train_nll.reset()

    def _log_epoch(self, values: dict[str, float]) -> None:
        """Log one epoch's values: to every logger through Lightning's own logger path (step: the optimizer steps so
        far, and the ``epoch``, as ``self.log`` at an epoch's end would; a ``step`` key sets the step), and into
        ``trainer.callback_metrics``, where checkpoint monitors, early stopping and ``ceexp.callbacks`` read them.

        Not ``self.log_dict``: on the CPU ``self.log`` costs ~1 ms a value (its result collection moves each value's
        state), and a validation epoch has 15 values, already reduced across processes by torchmetrics.
        """
        trainer = self.trainer
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items() if k != "step"})
        trainer._logger_connector.log_metrics(dict(values))

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        raw = self.model(x)
        logits = class_logits(raw)
        self.val_metrics.update(logits, y, self._per_sample(self.loss(raw, y), y.numel()), self._batch_weight(y))
        self._val_outputs.append((logits.detach().float().cpu(), y.cpu()))

    def on_validation_epoch_start(self) -> None:
        # reset here, not at the epoch's end: the reliability diagram is drawn from them after the epoch
        self.val_metrics.reset()
        self._val_outputs = []

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        outputs, self._val_outputs = self._val_outputs, []
        if outputs:
            self.val_logits = torch.cat([o[0] for o in outputs])
            self.val_labels = torch.cat([o[1] for o in outputs])
            self.val_step = self.global_step
        logged = {f"val/{k}": v for k, v in self.val_metrics.compute().items()}
        if self.trainer.state.fn == "validate" and self.global_step > 0:
            # the final weights validated after fit (ceexp.callbacks.validate_final_weights): logged at the last
            # training step and epoch, where the epoch's own validation would have been, not one step later
            logged.update(step=float(self.global_step - 1), epoch=float(max(self.current_epoch - 1, 0)))
        self._log_epoch(logged)

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        raw = self.model(x)
        logits = class_logits(raw)
        self.test_metrics.update(logits, y, self._per_sample(self.loss(raw, y), y.numel()), self._batch_weight(y))
        if self.temperature is not None:
            self.test_metrics_ts.update(logits / self.temperature, y)
        self._test_outputs.append((logits.detach().float().cpu(), y.cpu()))

    def on_test_epoch_start(self) -> None:
        self.test_metrics.reset()
        self.test_metrics_ts.reset()
        self.test_results = {}
        self._test_outputs = []

    def on_test_epoch_end(self) -> None:
        # not reset here: the final figure (ceexp.callbacks.save_test_diagram) reads the reliability bins of both
        values = {f"test/{k}": v for k, v in self.test_metrics.compute().items()}
        if self.temperature is not None:
            values["test/temperature"] = float(self.temperature)
            values.update({f"test/{k}_ts": v for k, v in self.test_metrics_ts.compute().items()})
        self.test_logits, self.test_labels = self._gather_test_outputs()
        self._test_outputs = []
        values.update(selective_metrics(self.test_logits, self.test_labels, self.temperature))
        self.test_results = values
        self._log_epoch(values)

    def _gather_test_outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole test split's logits ``(N, C)`` float32 and labels ``(N,)`` int64, on the CPU, in split order.

        With several processes each holds a contiguous slice of the split (rank order, no padding), so the
        slices gathered from every process and concatenated in rank order are the split.
        """
        logits = torch.cat([o[0] for o in self._test_outputs]) if self._test_outputs else torch.empty(0, 0)
        labels = torch.cat([o[1] for o in self._test_outputs]) if self._test_outputs else torch.empty(0, dtype=torch.int64)
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(parts, (logits, labels))
            parts = [p for p in parts if p[0].numel()]
            logits, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return logits, labels

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        x, y = batch
        return class_logits(self.model(x)), y

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # dropout draws from the global RNG: reseed it from (seed, epoch) at each epoch's first batch, so epoch
        # k draws the same numbers whether the run went straight through or was resumed from a checkpoint
        # (the loader's iterator, built at a different moment on resume, also draws from it)
        if batch_idx == 0:
            torch.manual_seed(self.seed * 1_000_003 + self.current_epoch)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer)}}
