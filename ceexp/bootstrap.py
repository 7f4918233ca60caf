"""Bootstrap over test samples and over seeds: how sure each number of a comparison is.

Resamples are weights. A bootstrap resample of a test split of N samples is N indices drawn with replacement;
every metric here needs only how often each sample was drawn, a row of counts ``w`` (N,) summing to N. R
resamples are an ``(R, N)`` matrix ``W``, and every metric of every resample is a function of weighted sums
``W @ x`` over per-sample quantities ``x`` (:class:`WeightedMetrics`). Replicate ``r`` is the same whatever
the chunking and however many replicates are asked for (:class:`Resampler` draws them in fixed blocks from
``numpy.random.default_rng([seed, stream, block])``), and a test can rebuild its indices
(:meth:`Resampler.indices`). The stream is derived from the test labels (:func:`split_stream`): runs evaluated
on the same test split draw the same resamples, so their replicates pair by test sample and a difference
between two of them is a paired difference.

Metrics of weighted samples, with no Python loop over resamples (top label: confidence ``max_c p_c``,
correct ``argmax_c p_c == y``; ``n = sum_i w_i``):

- ``acc``, ``confidence``, ``nll`` (nats), ``nll_bits``, ``brier``: ``W @ x / n`` with ``x`` the per-sample
  correctness, confidence, ``-log p_y`` and ``sum_c (p_c - [y = c])^2``;
- equal-width bins (``ece``, ``mce``, ``ece_signed``): each sample's bin does not depend on the resample, so the
  per-bin count, confidence sum and hit sum are ``W @ S`` with ``S`` a sparse ``(N, 3 n_bins)`` one-hot;
- equal-mass bins (``adaece``, ``ece_debiased``): the bins depend on the resample and are recomputed for each,
  as the definition does. The confidences are sorted once and grouped into blocks of equal value; per resample
  the block weights ``W @ S_block`` and their cumulative sums give each block's position in the sorted
  resample, and a block goes to the chunk (``numpy.array_split`` sizes over ``n``) of its first position: a tie
  block, which includes every repeat of one sample, is never split (the rule of
  :func:`ceexp.metrics.adaptive_calibration_error`);
- classwise ECE (``cwece``): the per-class hit sums are one scatter (each sample is a hit of one class only);
  the per-class probability sums of bins above the first come from the sparse entries ``p_ic > 1 / n_bins``
  (at most ``n_bins - 1`` per sample), and the first bin's from the class totals ``W @ P`` minus the others.

Metrics with no such form (``smece``, and any other function of ``ceexp.metrics.METRIC_FUNCTIONS``) loop over
resamples, calling the plain function on the explicitly resampled rows; that is slow, so they take fewer
resamples by default (:data:`LOOP_RESAMPLES`). Work is chunked over resamples so that memory stays bounded
(``max_chunk_bytes`` for the weights of a chunk; peak memory is a small multiple of it).

Two levels (:func:`two_level`). The runs of a group differ by seed and are evaluated on a test split. A
replicate of the group's mean draws the runs (seeds) with replacement, :func:`seed_draws`, and evaluates each
drawn run on the replicate's test resample: the group statistic is the mean over the drawn runs. Runs that
share the test split use the same test resample in a replicate (the split is one draw for all of them, so its
noise does not average out over seeds); a run drawn twice counts its one resample twice. Draws are indices
into the runs ordered by their key, taken from a stream of the set of keys: groups with the same seeds draw
the same seeds, so a difference between two groups pairs by seed as well as by test sample.
"""
from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "LOOP_RESAMPLES",
    "VECTORISED_METRICS",
    "Interval",
    "Resampler",
    "WeightedMetrics",
    "available_metrics",
    "basic_interval",
    "bootstrap_run",
    "keys_stream",
    "percentile_interval",
    "plain_metric",
    "replicates",
    "seed_draws",
    "split_stream",
    "tag_metric",
    "two_level",
]

# metrics with a weighted (vectorised) form here; each is offered only where ceexp.metrics defines it
VECTORISED_METRICS = (
    "acc", "confidence", "nll", "nll_bits", "brier", "ece", "mce", "ece_signed", "adaece", "ece_debiased", "cwece",
)
# default number of resamples for metrics computed one resample at a time (smece)
LOOP_RESAMPLES = 200
_SPLITS = ("test", "val")
_SCALED = "_ts"


class Interval(NamedTuple):
    """A point estimate and its interval (same units as the metric)."""

    value: float
    low: float
    high: float


# ---------------------------------------------------------------------------------------------------------
# which metrics exist


@functools.lru_cache(maxsize=None)
def _plain_functions() -> dict[str, Callable]:
    """name -> ``f(probs (N, C) tensor, target (N,) tensor, n_bins) -> float``: the definitions of
    ``ceexp.metrics.METRIC_FUNCTIONS`` and ``SELECTIVE_FUNCTIONS`` (aurc, eaurc, augrc), and NLL (nats, bits) from
    the probabilities."""
    import torch

    from ceexp.metrics import METRIC_FUNCTIONS, SELECTIVE_FUNCTIONS

    out: dict[str, Callable] = {
        name: (lambda probs, target, n_bins, fn=fn: float(fn(probs, target, n_bins)))
        for name, fn in {**METRIC_FUNCTIONS, **SELECTIVE_FUNCTIONS}.items()
    }

    def nll(probs, target, n_bins):  # from probabilities; from logits see WeightedMetrics
        return float(-torch.log(probs.double().gather(1, target[:, None])).mean())

    out["nll"] = nll
    out["nll_bits"] = lambda probs, target, n_bins: nll(probs, target, n_bins) / math.log(2)
    return out


def available_metrics() -> tuple[str, ...]:
    """The metric names computable from predictions: the vectorised ones defined in ``ceexp.metrics``, then the
    ones computed resample by resample (``smece`` where ``ceexp.metrics.smooth_ece`` exists)."""
    plain = _plain_functions()
    return tuple([m for m in VECTORISED_METRICS if m in plain] + [m for m in plain if m not in VECTORISED_METRICS])


def tag_metric(tag: str) -> tuple[str, str, bool] | None:
    """``test/ece_ts`` -> ``("test", "ece", True)``: the split of ``predictions.npz``, the metric, and whether
    it is computed on ``logits / T``; ``None`` for a tag not computable from predictions (``test/temperature``,
    ``time/...``)."""
    split, _, name = tag.partition("/")
    if split not in _SPLITS or not name:
        return None
    scaled = name.endswith(_SCALED)
    base = name[: -len(_SCALED)] if scaled else name
    return (split, base, scaled) if base in available_metrics() else None


def plain_metric(name: str) -> Callable:
    """The plain (one-sample-set) definition of ``name``: ``f(probs tensor (N, C), target tensor (N,), n_bins)
    -> float``, from ``ceexp.metrics``.

    Raises:
        KeyError: ``name`` is not computable from predictions (see :func:`available_metrics`).
    """
    return _plain_functions()[name]


# ---------------------------------------------------------------------------------------------------------
# resamples


def split_stream(labels: np.ndarray) -> int:
    """A 63-bit stream number for a test split, from its labels: equal labels, equal resamples."""
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    digest = hashlib.sha256(len(labels).to_bytes(8, "little") + labels.tobytes()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Resampler:
    """Bootstrap resamples of ``n`` samples, each ``n`` indices drawn with replacement.

    Replicates come in blocks of :attr:`BLOCK`: block ``k`` (replicates ``64 k .. 64 k + 63``) is drawn at once
    from ``numpy.random.default_rng([seed, stream, k])``, so replicate ``r`` is the same whichever replicates
    are asked for and in what chunks (one generator per replicate would cost more than the metrics).

    Args:
        n: number of samples (the test split's size).
        seed: the bootstrap seed.
        stream: separates independent sets of resamples (one per test split: :func:`split_stream`).
    """

    BLOCK = 64

    def __init__(self, n: int, seed: int = 0, stream: int = 0):
        if n < 1:
            raise ValueError(f"Expected argument `n` to be a positive integer, but got {n!r}")
        self.n, self.seed, self.stream = int(n), int(seed), int(stream)
        self._block: tuple[int, np.ndarray] | None = None

    def _indices_block(self, k: int) -> np.ndarray:
        if self._block is None or self._block[0] != k:
            rng = np.random.default_rng([self.seed, self.stream, k])
            self._block = (k, rng.integers(0, self.n, (self.BLOCK, self.n)))
        return self._block[1]

    def indices(self, r: int) -> np.ndarray:
        """The ``(n,)`` int64 indices of replicate ``r``."""
        return self._indices_block(int(r) // self.BLOCK)[int(r) % self.BLOCK].copy()

    def counts(self, rows: Sequence[int] | range) -> np.ndarray:
        """``(len(rows), n)`` float64: how often each sample is drawn in each of the replicates ``rows``."""
        rows = np.asarray(list(rows), dtype=np.int64)
        out = np.empty((len(rows), self.n), dtype=np.float64)
        for k in np.unique(rows // self.BLOCK):
            mine = np.flatnonzero(rows // self.BLOCK == k)
            idx = self._indices_block(int(k))[rows[mine] % self.BLOCK]
            flat = (idx + self.n * np.arange(len(mine))[:, None]).ravel()
            out[mine] = np.bincount(flat, minlength=len(mine) * self.n).reshape(len(mine), self.n)
        return out


def seed_draws(n: int, n_resamples: int, seed: int = 0, stream: int = 0) -> np.ndarray:
    """``(n_resamples, n)`` int64 indices into ``n`` runs drawn with replacement (the outer level of
    :func:`two_level`); all zeros when ``n == 1``."""
    if n == 1:
        return np.zeros((n_resamples, 1), dtype=np.int64)
    return np.random.default_rng([int(seed), int(stream), 1]).integers(0, n, (n_resamples, n))


def keys_stream(keys: Sequence[str]) -> int:
    """A stream number for a set of run keys (the seeds), so that groups with the same seeds draw alike."""
    digest = hashlib.sha256("\0".join(sorted(map(str, keys))).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def two_level(per_run: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Replicates of a group's mean: replicate ``r`` averages ``per_run[draws[r, k], r]`` over the drawn runs ``k``.

    Args:
        per_run: ``(n_runs, R)`` each run's replicates over test samples (column ``r``: test resample ``r``).
        draws: ``(R, n)`` indices into the runs (:func:`seed_draws`).

    Returns:
        ``(R,)`` float64.
    """
    per_run = np.asarray(per_run, dtype=np.float64)
    return per_run[draws, np.arange(per_run.shape[1])[:, None]].mean(axis=1)


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the
    replicates (``numpy.percentile``, linear interpolation); NaN when there are none."""
    replicates = np.asarray(replicates, dtype=np.float64)
    if replicates.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(replicates, [50 - 50 * level, 50 + 50 * level])
    return float(low), float(high)


def basic_interval(replicates: np.ndarray, estimate: float, level: float = 0.95,
                   lower: float | None = None) -> tuple[float, float]:
    """The basic (reverse percentile) bootstrap interval ``(2 θ - q_high, 2 θ - q_low)`` around ``estimate`` θ,
    with ``q`` the quantiles of :func:`percentile_interval`; the low end raised to ``lower`` when given (a
    metric that cannot be negative). NaN when there are no replicates.

    Why not the percentile interval: a binned calibration error is biased upward, and more so on a resample
    (which repeats samples, so its bins are noisier), so the replicates sit above the estimate, which sits above
    the true value. The percentile interval then keeps the estimate at or below its low end and misses the true
    value of a well-calibrated model nearly always: on a synthetic model whose ECE is known (15 bins, 1,000
    test samples; tests/test_bootstrap.py) it covered a true ECE of 2.2 % in 33 % of draws and of 0.75 % in none,
    where the basic interval, which subtracts the resampling bias, covered 90 % and 86 % (Davison & Hinkley
    1997, eq. 5.6; Efron & Tibshirani 1993, Sec. 13.4). On a badly calibrated model (ECE 7.5 %) both are near 95 %.
    """
    low, high = percentile_interval(replicates, level)
    if math.isnan(low):
        return low, high
    low, high = 2 * estimate - high, 2 * estimate - low
    if lower is not None:
        low, high = max(low, lower), max(high, lower)
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------------------
# metrics of weighted samples


def _sparse(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]):
    from scipy.sparse import csr_array

    return csr_array((np.asarray(values, dtype=np.float64), (rows, cols)), shape=shape)


def _chunk_starts(n: np.ndarray, n_bins: int) -> np.ndarray:
    """``(R, n_bins + 1)``: the first sorted position of each chunk when ``n`` (``(R,)``, integer-valued)
    samples are cut into ``n_bins`` chunks of ``numpy.array_split``'s sizes (the first ``n % n_bins`` chunks
    hold one more), and ``n`` last. Empty chunks (``n < n_bins``) start where the next does."""
    n = np.asarray(n, dtype=np.float64)[:, None]
    base = np.floor(n / n_bins)
    extra = n - base * n_bins
    b = np.arange(n_bins + 1, dtype=np.float64)
    return np.where(b <= extra, b * (base + 1), extra * (base + 1) + (b - extra) * base)


class WeightedMetrics:
    """The per-sample quantities of one set of predictions, from which :meth:`evaluate` computes metrics for
    many weightings of the samples at once (bootstrap resamples, permutations).

    Args:
        probs: ``(M, C)`` float32 or float64 class probabilities. Bins are found in this dtype (as the
            ``ceexp.metrics`` functions do: a float32 confidence is compared with a float32 edge); sums are float64.
        target: ``(M,)`` int64 class indices.
        n_bins: bins of the binned metrics.
        nll: ``(M,)`` per-sample ``-log p_y`` in nats (from the logits, see :meth:`from_logits`); default:
            ``-log`` of ``probs``.
    """

    def __init__(self, probs: np.ndarray, target: np.ndarray, n_bins: int = 15, nll: np.ndarray | None = None):
        self.probs = np.asarray(probs)
        if self.probs.dtype not in (np.float32, np.float64):
            self.probs = self.probs.astype(np.float64)
        self.target = np.asarray(target, dtype=np.int64)
        self.m, self.c = self.probs.shape
        self.n_bins = int(n_bins)
        self.p64 = self.probs.astype(np.float64)
        self.pred = self.probs.argmax(axis=1)  # the first of tied maxima, as torch.max
        self.conf = self.probs[np.arange(self.m), self.pred]
        self.correct = (self.pred == self.target).astype(np.float64)
        py = self.p64[np.arange(self.m), self.target]
        self.nll = np.asarray(nll, dtype=np.float64) if nll is not None else -np.log(py)
        self._cache: dict = {}

    @classmethod
    def from_logits(cls, logits: np.ndarray, target: np.ndarray, n_bins: int = 15,
                    temperature: float | None = None) -> WeightedMetrics:
        """From ``(M, C)`` logits, as the run computed its metrics: ``softmax(logits / T)`` in the logits' dtype
        (float32 for ``predictions.npz``), NLL by ``F.cross_entropy``."""
        import torch
        import torch.nn.functional as F

        z = torch.from_numpy(np.ascontiguousarray(logits))
        if temperature is not None:
            z = z / temperature
        y = torch.from_numpy(np.ascontiguousarray(target, dtype=np.int64))
        probs = z.softmax(dim=1)
        nll = F.cross_entropy(z, y, reduction="none")
        return cls(probs.numpy(), target, n_bins, nll=nll.double().numpy())

    # -- per-sample features, built on first use ------------------------------------------------------------

    def _dense(self) -> np.ndarray:
        """``(M, 4)``: correct, confidence, nll, brier per sample."""
        if "dense" not in self._cache:
            py = self.p64[np.arange(self.m), self.target]
            brier = np.einsum("ij,ij->i", self.p64, self.p64) - 2 * py + 1
            self._cache["dense"] = np.stack([self.correct, self.conf.astype(np.float64), self.nll, brier], axis=1)
        return self._cache["dense"]

    def _bins(self, values: np.ndarray) -> np.ndarray:
        """Equal-width bin of each value: ``(lower, upper]``, 0 in the first bin and 1 in the last
        (``torch.bucketize(right=False)`` against the inner edges, as ``ceexp.metrics``)."""
        from ceexp.metrics import bin_edges

        inner = bin_edges(self.n_bins).numpy().astype(values.dtype)[1:-1]
        return np.searchsorted(inner, values, side="left")

    def _equal_width(self):
        """Sparse ``(M, 3 n_bins)``: columns [count | confidence sum | hit sum] of each sample's bin."""
        if "ew" not in self._cache:
            b, k = self._bins(self.conf), self.n_bins
            rows = np.tile(np.arange(self.m), 3)
            cols = np.concatenate([b, b + k, b + 2 * k])
            values = np.concatenate([np.ones(self.m), self.conf.astype(np.float64), self.correct])
            self._cache["ew"] = _sparse(rows, cols, values, (self.m, 3 * k))
        return self._cache["ew"]

    def _equal_mass(self):
        """The tie blocks of the sorted confidences: sparse ``(M, 2K)`` [weight | hits] per block, and the
        ``(K,)`` float64 confidence of each block."""
        if "em" not in self._cache:
            order = np.argsort(self.conf, kind="stable")
            sorted_conf = self.conf[order]
            new_block = np.concatenate([[True], sorted_conf[1:] != sorted_conf[:-1]])
            block = np.empty(self.m, dtype=np.int64)
            block[order] = np.cumsum(new_block) - 1
            k = int(new_block.sum())
            rows = np.tile(np.arange(self.m), 2)
            cols = np.concatenate([block, block + k])
            matrix = _sparse(rows, cols, np.concatenate([np.ones(self.m), self.correct]), (self.m, 2 * k))
            self._cache["em"] = (matrix, sorted_conf[new_block].astype(np.float64))
        return self._cache["em"]

    def _classwise(self):
        """Sparse hit sums per (class, bin) and per-(class, bin > 0) probability sums, and ``P`` for the totals."""
        if "cw" not in self._cache:
            k, rows = self.n_bins, np.arange(self.m)
            bins = self._bins(self.probs)  # (M, C)
            hits = _sparse(rows, self.target * k + bins[rows, self.target], np.ones(self.m), (self.m, self.c * k))
            i, c = np.nonzero(bins > 0)
            upper = _sparse(i, c * k + bins[i, c], self.p64[i, c], (self.m, self.c * k))
            self._cache["cw"] = (hits, upper)
        return self._cache["cw"]

    # -- evaluation ----------------------------------------------------------------------------------------

    def evaluate(self, names: Sequence[str], weights: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric of ``names`` for every row of ``weights``.

        Args:
            names: metric names (:data:`VECTORISED_METRICS`, or a name of :func:`available_metrics`, computed
                row by row on the rows ``np.repeat(arange(M), w)``).
            weights: ``(R, M)`` non-negative integer-valued weights (counts), float64; a row's sum is its N.

        Returns:
            name -> ``(R,)`` float64 (probabilities, nats for ``nll``, bits for ``nll_bits``).
        """
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        n = w.sum(axis=1)
        out: dict[str, np.ndarray] = {}
        names = list(dict.fromkeys(names))
        with np.errstate(divide="ignore", invalid="ignore"):
            if {"acc", "confidence", "nll", "nll_bits", "brier"} & set(names):
                sums = w @ self._dense() / n[:, None]
                for j, name in enumerate(("acc", "confidence", "nll", "brier")):
                    out[name] = sums[:, j]
                out["nll_bits"] = sums[:, 2] / math.log(2)
            if {"ece", "mce", "ece_signed"} & set(names):
                k = self.n_bins
                s = w @ self._equal_width()
                count, conf, hit = s[:, :k], s[:, k:2 * k], s[:, 2 * k:]
                out["ece"] = np.abs(hit - conf).sum(axis=1) / n
                out["ece_signed"] = (conf - hit).sum(axis=1) / n
                gap = np.where(count > 0, np.abs(hit - conf) / np.where(count > 0, count, 1), -np.inf)
                out["mce"] = gap.max(axis=1)
            if {"adaece", "ece_debiased"} & set(names):
                count, conf, hit = self._equal_mass_sums(w, n)
                out["adaece"] = np.abs(hit - conf).sum(axis=1) / n
                acc_b, conf_b = hit / count, conf / count
                term = (acc_b - conf_b) ** 2 - acc_b * (1 - acc_b) / (count - 1)
                term = np.where(count >= 2, count / n[:, None] * term, 0.0)
                out["ece_debiased"] = np.sqrt(np.maximum(term.sum(axis=1), 0.0))
            if "cwece" in names:
                out["cwece"] = self._classwise_error(w, n)
        looped = [name for name in names if name not in out]
        if looped:
            out.update(self._looped(looped, w))
        return {name: out[name] for name in names}

    def _equal_mass_sums(self, w: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-resample (count, confidence sum, hit sum) of the equal-mass bins, each ``(R, n_bins)``.

        In resample r, block k (equal confidences, sorted) covers the sorted positions ``[start_rk, end_rk)``
        with ``end = cumsum(block weights)``; it belongs to the chunk holding ``start_rk``. Chunk b therefore
        holds the blocks with ``first_b <= start < first_{b + 1}`` (:func:`_chunk_starts`), a contiguous run of
        blocks, since ``start`` does not decrease along a row: one ``searchsorted`` finds every run's end,
        and the sums over a run are differences of cumulative sums.
        """
        matrix, value = self._equal_mass()
        k, rows = len(value), len(w)
        s = w @ matrix
        block_w = s[:, :k]
        cumulative = np.stack([np.cumsum(block_w, axis=1), np.cumsum(block_w * value, axis=1),
                               np.cumsum(s[:, k:], axis=1)])
        start = cumulative[0] - block_w  # exact: sums of integer counts
        first = _chunk_starts(n, self.n_bins)
        # one search over all rows: shift row r by r * span, past every position of the rows before it
        shift = (n.max() + 1) * np.arange(rows)[:, None]
        flat = np.searchsorted((start + shift).ravel(), (first + shift).ravel(), side="left")
        ends = flat.reshape(rows, -1) - k * np.arange(rows)[:, None]  # blocks before each chunk's first position
        # the cumulative sums over the first `ends` blocks (0 for none)
        at = np.take_along_axis(cumulative, np.broadcast_to(np.maximum(ends, 1) - 1, (3, *ends.shape)), axis=2)
        at = np.where(ends > 0, at, 0.0)
        count, conf, hit = np.diff(at, axis=2)
        return count, conf, hit

    def _classwise_error(self, w: np.ndarray, n: np.ndarray) -> np.ndarray:
        hits, upper = self._classwise()
        k = self.n_bins
        hit = (w @ hits).reshape(len(w), self.c, k)
        p = (w @ upper).reshape(len(w), self.c, k)
        p[:, :, 0] = w @ self.p64 - p[:, :, 1:].sum(axis=2)  # the first bin: the class total less the others
        return np.abs(hit - p).sum(axis=(1, 2)) / self.c / n

    def _looped(self, names: Sequence[str], w: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        functions = _plain_functions()
        unknown = [name for name in names if name not in functions]
        if unknown:
            raise KeyError(f"not computable from predictions: {', '.join(unknown)}; "
                           f"expected one of {', '.join(available_metrics())}")
        out = {name: np.empty(len(w)) for name in names}
        probs, target = torch.from_numpy(self.probs), torch.from_numpy(self.target)
        for r, row in enumerate(w):
            idx = torch.from_numpy(np.repeat(np.arange(self.m), np.rint(row).astype(np.int64)))
            for name in names:
                out[name][r] = functions[name](probs[idx], target[idx], self.n_bins)
        return out

    def point(self, name: str, logits: np.ndarray | None = None) -> float:
        """``name`` on all samples by its plain definition in ``ceexp.metrics`` (NLL from ``logits`` when given,
        by ``ceexp.metrics.negative_log_likelihood``)."""
        import torch

        if name in ("nll", "nll_bits"):
            value = float(np.mean(self.nll))
            return value / math.log(2) if name == "nll_bits" else value
        return plain_metric(name)(torch.from_numpy(self.probs), torch.from_numpy(self.target), self.n_bins)


# ---------------------------------------------------------------------------------------------------------
# replicates


def replicates(
    table: WeightedMetrics,
    names: Sequence[str],
    resampler: Resampler,
    n_resamples: int = 1000,
    loop_resamples: int | None = None,
    max_chunk_bytes: int = 1 << 24,
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of every metric of ``names`` on the samples of ``table``.

    Vectorised metrics take ``n_resamples`` replicates, computed in chunks of resamples whose weights fill at
    most ``max_chunk_bytes``; the others (``smece``) take the first ``loop_resamples`` (default
    ``min(n_resamples, LOOP_RESAMPLES)``), computed one at a time on ``resampler.indices(r)``.

    Returns:
        name -> ``(R,)`` float64, replicate ``r`` from ``resampler``'s replicate ``r``.
    """
    import torch

    vectorised = [m for m in dict.fromkeys(names) if m in VECTORISED_METRICS]
    looped = [m for m in dict.fromkeys(names) if m not in VECTORISED_METRICS]
    out = {m: np.empty(n_resamples) for m in vectorised}
    rows = max(1, min(n_resamples, max_chunk_bytes // (8 * table.m)))
    for start in range(0, n_resamples if vectorised else 0, rows):
        chunk = range(start, min(start + rows, n_resamples))
        values = table.evaluate(vectorised, resampler.counts(chunk))
        for m in vectorised:
            out[m][chunk.start:chunk.stop] = values[m]
    if looped:
        functions = _plain_functions()
        count = loop_resamples if loop_resamples is not None else min(n_resamples, LOOP_RESAMPLES)
        probs, target = torch.from_numpy(table.probs), torch.from_numpy(table.target)
        for m in looped:
            out[m] = np.empty(count)
        for r in range(count):
            idx = torch.from_numpy(resampler.indices(r))
            for m in looped:
                out[m][r] = functions[m](probs[idx], target[idx], table.n_bins)
    return out


def bootstrap_run(
    logits: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    n_bins: int = 15,
    temperature: float | None = None,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """Bootstrap intervals over the test samples of one run (basic intervals: see :func:`basic_interval`).

    Args:
        logits: ``(N, C)`` test logits (float32 as in ``predictions.npz``).
        labels: ``(N,)`` int64 test labels.
        names: metric names (:func:`available_metrics`).
        n_bins: the run's bins.
        temperature: compute on ``logits / T`` (the ``_ts`` metrics).
        n_resamples: bootstrap resamples (looped metrics take at most :data:`LOOP_RESAMPLES`).
        level: coverage of the interval.
        seed: the bootstrap seed (the stream comes from the labels: runs on one split share resamples).

    Returns:
        name -> :class:`Interval` (the plain metric on all samples, and the interval).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> logits = rng.normal(size=(500, 3)).astype(np.float32)
        >>> labels = rng.integers(0, 3, 500)
        >>> iv = bootstrap_run(logits, labels, ["acc"], n_resamples=200)["acc"]
        >>> iv.low < iv.value < iv.high
        True
    """
    table = WeightedMetrics.from_logits(logits, labels, n_bins, temperature)
    reps = replicates(table, names, Resampler(len(labels), seed, split_stream(labels)), n_resamples)
    out = {}
    for m in names:
        value = table.point(m)
        out[m] = Interval(value, *basic_interval(reps[m], value, level, lower=None if m == "ece_signed" else 0.0))
    return out
