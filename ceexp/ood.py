"""Out-of-distribution (OOD) detection: scores from logits, the metrics that compare two sets of scores, and
the ``noise`` OOD set.

Scores. Every score maps logits ``(N, C)`` to ``(N,)``, **higher = more in-distribution**, and takes an
optional temperature T > 0: the score is that of ``logits / T`` (for ``energy``, Liu et al.'s
``T * logsumexp(logits / T)``). ``entropy`` is therefore the *negative* entropy, in nats.

Metrics. In-distribution (ID) samples are the positive class, the OOD samples the negative one:

- ``auroc``: area under the ROC curve, ``sklearn.metrics.roc_auc_score``; a tied ID/OOD pair counts 1/2 (the
  ROC is drawn through one point per distinct score), so it is the Mann-Whitney probability
  ``P(s_in > s_out) + P(s_in = s_out) / 2``;
- ``aupr``: average precision with ID positive (AUPR-In), ``sklearn.metrics.average_precision_score``:
  ``sum_k (R_k - R_{k-1}) P_k`` over the distinct scores ``t_k`` taken as thresholds (a tied group is accepted
  whole), no interpolation;
- ``fpr95``: the false positive rate at 95% true positive rate: with ``t`` the largest score such that at
  least 95% of the ID scores are ``>= t``, the fraction of OOD scores ``>= t``. Ties are accepted whole on
  both sides: an OOD score equal to ``t`` counts as a false positive. From ``sklearn.metrics.roc_curve``
  (``drop_intermediate=False``): the FPR at the first point whose TPR is ``>= 0.95``.

:func:`ood_metrics` gives every metric of every score, keyed ``<metric>_<score>`` (and ``<metric>_<score>_ts``
after temperature scaling), the tags ``ood/<set>/<metric>_<score>`` of a run.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from torch import Tensor

from ceexp.checks import check_positive_int, working_dtype

__all__ = [
    "METRICS",
    "SCORES",
    "aupr",
    "auroc",
    "energy",
    "entropy",
    "fpr95",
    "maxlogit",
    "msp",
    "noise_set",
    "ood_metrics",
]


# ---------------------------------------------------------------------------------------------------------
# argument checks


def _check_logits(logits: Tensor, name: str = "logits") -> None:
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"Expected `{name}` to have shape (N, C), but got {shape}")
    if not logits.is_floating_point():
        raise ValueError(f"Expected `{name}` to be a floating tensor, but got dtype {logits.dtype}")
    if logits.shape[0] == 0:
        raise ValueError(f"Expected non-empty `{name}`, but got shape {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"Expected `{name}` to have C >= 2 classes, but got shape {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise ValueError(f"Expected `{name}` to be finite, but it contains NaN or inf")


def _check_temperature(temperature: float | None) -> None:
    if temperature is None:
        return
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature) or temperature <= 0):
        raise ValueError(f"Expected argument `temperature` to be None or a finite number > 0, but got {temperature!r}")


def _scaled(logits: Tensor, temperature: float | None) -> Tensor:
    """Checked ``logits / T`` in the working dtype (float32 or wider)."""
    _check_logits(logits)
    _check_temperature(temperature)
    z = logits.to(working_dtype(logits.dtype))
    return z if temperature is None else z / temperature


def _as_scores(values, name: str) -> np.ndarray:
    """A non-empty, finite 1-D float64 numpy copy of a tensor, array or sequence of scores."""
    if isinstance(values, Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"Expected `{name}` to be a non-empty 1-D array of scores (N,), but got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"Expected `{name}` to be finite, but it contains NaN or inf")
    return array


def _labelled(in_scores, out_scores) -> tuple[np.ndarray, np.ndarray]:
    """(labels: 1 for in-distribution, 0 for OOD; scores), float64."""
    s_in, s_out = _as_scores(in_scores, "in_scores"), _as_scores(out_scores, "out_scores")
    labels = np.concatenate([np.ones(s_in.size), np.zeros(s_out.size)])
    return labels, np.concatenate([s_in, s_out])


# ---------------------------------------------------------------------------------------------------------
# scores: logits (N, C) -> (N,), higher = more in-distribution


def msp(logits: Tensor, temperature: float | None = None) -> Tensor:
    r"""Maximum softmax probability :math:`\max_c \mathrm{softmax}(z / T)_c`, in ``[1/C, 1]``.

    Args:
        logits: ``(N, C)`` floating, finite logits.
        temperature: None (T = 1) or T > 0.

    Returns:
        ``(N,)`` probabilities, float32 for 16-bit logits, else the logits' dtype.

    Raises:
        ValueError: on bad ``logits`` (shape, dtype, empty, C < 2, non-finite) or ``temperature``.

    References:
        Hendrycks & Gimpel (2017), "A Baseline for Detecting Misclassified and Out-of-Distribution Examples in
        Neural Networks", ICLR.

    Example:
        >>> msp(torch.tensor([[0.0, 0.0], [math.log(3), 0.0]]))
        tensor([0.5000, 0.7500])
    """
    return _scaled(logits, temperature).softmax(dim=1).max(dim=1).values


def entropy(logits: Tensor, temperature: float | None = None) -> Tensor:
    r"""Negative predictive entropy :math:`\sum_c p_c \ln p_c`, :math:`p = \mathrm{softmax}(z / T)`, in nats.

    The sign is flipped so that higher = more in-distribution (a confident prediction has low entropy): the
    score is in ``[-ln C, 0]``.

    Args:
        logits: ``(N, C)`` floating, finite logits.
        temperature: None (T = 1) or T > 0.

    Returns:
        ``(N,)`` nats (<= 0), float32 for 16-bit logits, else the logits' dtype.

    Raises:
        ValueError: on bad ``logits`` or ``temperature``.

    References:
        Shannon (1948); as an OOD score e.g. Hendrycks et al. (2019), "Deep Anomaly Detection with Outlier
        Exposure", ICLR.

    Example:
        Uniform over two classes: -ln 2; p = (3/4, 1/4): 3/4 ln 3/4 + 1/4 ln 1/4 = -0.5623.

        >>> entropy(torch.tensor([[0.0, 0.0], [math.log(3), 0.0]]))
        tensor([-0.6931, -0.5623])
    """
    log_p = _scaled(logits, temperature).log_softmax(dim=1)
    return (log_p.exp() * log_p).sum(dim=1)


def energy(logits: Tensor, temperature: float | None = None) -> Tensor:
    r"""Negative free energy :math:`T \log \sum_c e^{z_c / T}`, in logit units; higher = more in-distribution.

    Liu et al.'s energy is :math:`E(x; T) = -T \log \sum_c e^{z_c / T}` (their eq. 5) and in-distribution
    inputs have lower energy; the score here is :math:`-E`. The factor T does not change the ranking.

    Args:
        logits: ``(N, C)`` floating, finite logits.
        temperature: None (T = 1) or T > 0.

    Returns:
        ``(N,)`` float32 for 16-bit logits, else the logits' dtype.

    Raises:
        ValueError: on bad ``logits`` or ``temperature``.

    References:
        Liu, Wang, Owens & Li (2020), "Energy-based Out-of-distribution Detection", NeurIPS, eq. (5) and the
        score :math:`-E(x; f)` of Sec. 2.

    Example:
        ``logsumexp(0, 0) = ln 2``; at T = 2: ``2 ln 2``.

        >>> energy(torch.tensor([[0.0, 0.0]])), energy(torch.tensor([[0.0, 0.0]]), temperature=2.0)
        (tensor([0.6931]), tensor([1.3863]))
    """
    z = _scaled(logits, temperature)
    return z.logsumexp(dim=1) * (1.0 if temperature is None else temperature)


def maxlogit(logits: Tensor, temperature: float | None = None) -> Tensor:
    r"""Maximum logit :math:`\max_c z_c / T`, in logit units (T only rescales: the ranking is the same).

    Args:
        logits: ``(N, C)`` floating, finite logits.
        temperature: None (T = 1) or T > 0.

    Returns:
        ``(N,)`` float32 for 16-bit logits, else the logits' dtype.

    Raises:
        ValueError: on bad ``logits`` or ``temperature``.

    References:
        Hendrycks, Basart, Mazeika, Zou, Kwon, Mostajabi, Steinhardt & Song (2022), "Scaling Out-of-Distribution
        Detection for Real-World Settings", ICML (MaxLogit).

    Example:
        >>> maxlogit(torch.tensor([[1.0, 3.0]])), maxlogit(torch.tensor([[1.0, 3.0]]), temperature=2.0)
        (tensor([3.]), tensor([1.5000]))
    """
    return _scaled(logits, temperature).max(dim=1).values


SCORES: dict[str, Callable[..., Tensor]] = {
    "msp": msp,
    "entropy": entropy,
    "energy": energy,
    "maxlogit": maxlogit,
}
"""Score name -> ``f(logits (N, C), temperature=None) -> (N,)``, higher = more in-distribution."""


# ---------------------------------------------------------------------------------------------------------
# metrics: in-distribution positive


def auroc(in_scores, out_scores) -> float:
    """Area under the ROC curve of separating ID (positive) from OOD scores; 0.5 is chance, 1 perfect.

    ``sklearn.metrics.roc_auc_score``: a tied ID/OOD pair counts 1/2 (see the module docstring).

    Args:
        in_scores: ``(N_in,)`` scores of the in-distribution samples (tensor, array or sequence), finite.
        out_scores: ``(N_out,)`` scores of the OOD samples, finite.

    Returns:
        A float in ``[0, 1]``.

    Raises:
        ValueError: if either set is empty, not 1-D or not finite.

    References:
        Hendrycks & Gimpel (2017), ICLR (AUROC for OOD detection); Hanley & McNeil (1982), Radiology (AUC as the
        Mann-Whitney statistic).

    Example:
        Pairs (3, 1), (3, 2), (2, 1) are ordered, (2, 2) is a tie: 3.5 / 4.

        >>> auroc([3.0, 2.0], [1.0, 2.0])
        0.875
    """
    labels, scores = _labelled(in_scores, out_scores)
    return float(roc_auc_score(labels, scores))


def aupr(in_scores, out_scores) -> float:
    r"""Average precision with in-distribution positive (AUPR-In): :math:`\sum_k (R_k - R_{k-1}) P_k`.

    ``sklearn.metrics.average_precision_score``: precision :math:`P_k` and recall :math:`R_k` of ID among the
    samples scored ``>= t_k``, for each distinct score :math:`t_k` (ties accepted whole), no interpolation. Chance
    level is the ID fraction ``N_in / (N_in + N_out)``.

    Args:
        in_scores: ``(N_in,)`` scores of the in-distribution samples, finite.
        out_scores: ``(N_out,)`` scores of the OOD samples, finite.

    Returns:
        A float in ``[0, 1]``.

    Raises:
        ValueError: if either set is empty, not 1-D or not finite.

    References:
        Hendrycks & Gimpel (2017), ICLR (AUPR-In); Davis & Goadrich (2006), ICML (PR curves).

    Example:
        Threshold 3: P = 1, R = 1/2; threshold 2 (one ID, one OOD tied): P = 2/3, R = 1.
        AP = 1/2 * 1 + 1/2 * 2/3 = 0.8333.

        >>> round(aupr([3.0, 2.0], [1.0, 2.0]), 4)
        0.8333
    """
    labels, scores = _labelled(in_scores, out_scores)
    return float(average_precision_score(labels, scores))


def fpr95(in_scores, out_scores, tpr: float = 0.95) -> float:
    """False positive rate at ``tpr`` true positive rate (FPR95): the fraction of OOD scores at or above the
    threshold that keeps ``tpr`` of the ID scores.

    The threshold is the largest score ``t`` with ``|{s_in >= t}| / N_in >= tpr``; the result is
    ``|{s_out >= t}| / N_out``. OOD scores equal to ``t`` count as false positives (a tied group is accepted
    whole), so the TPR actually reached may exceed ``tpr``.

    Args:
        in_scores: ``(N_in,)`` scores of the in-distribution samples, finite.
        out_scores: ``(N_out,)`` scores of the OOD samples, finite.
        tpr: the true positive rate to keep, in ``(0, 1]``.

    Returns:
        A float in ``[0, 1]``; lower is better.

    Raises:
        ValueError: if either set is empty, not 1-D or not finite, or ``tpr`` is not in ``(0, 1]``.

    References:
        Liang, Li & Srikant (2018), "Enhancing the Reliability of Out-of-distribution Image Detection in Neural
        Networks" (ODIN), ICLR (FPR at 95% TPR); computed from ``sklearn.metrics.roc_curve``.

    Example:
        Keeping both ID scores needs t = 2; one OOD score of two is >= 2.

        >>> fpr95([3.0, 2.0], [1.0, 2.0])
        0.5
    """
    if isinstance(tpr, bool) or not isinstance(tpr, (int, float)) or not 0 < tpr <= 1:
        raise ValueError(f"Expected argument `tpr` to be a number in (0, 1], but got {tpr!r}")
    labels, scores = _labelled(in_scores, out_scores)
    fpr, tpr_curve, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(fpr[np.argmax(tpr_curve >= tpr)])  # the last point has TPR 1, so one is found


METRICS: dict[str, Callable[..., float]] = {"auroc": auroc, "aupr": aupr, "fpr95": fpr95}
"""Metric name -> ``f(in_scores, out_scores) -> float`` (in-distribution positive)."""


def ood_metrics(in_logits: Tensor, out_logits: Tensor, temperature: float | None = None) -> dict[str, float]:
    """Every metric of :data:`METRICS` for every score of :data:`SCORES`, ID logits against OOD logits.

    Args:
        in_logits: ``(N_in, C)`` floating, finite logits of in-distribution samples.
        out_logits: ``(N_out, C)`` logits of the OOD samples, same C.
        temperature: None, or the fitted temperature T > 0: the scores of ``logits / T`` are added under keys
            ending in ``_ts``.

    Returns:
        ``{f"{metric}_{score}": float}`` (e.g. ``auroc_msp``, ``fpr95_energy``), 12 keys, and with a
        temperature 12 more (``auroc_msp_ts``, ...). A run logs them as ``ood/<set>/<key>``.

    Raises:
        ValueError: on bad logits (shape, dtype, empty, non-finite), a class count that differs between the
            two, or a bad ``temperature``.

    Example:
        >>> in_logits = torch.tensor([[4.0, 0.0], [0.0, 3.0]])
        >>> out_logits = torch.tensor([[0.5, 0.0], [0.0, 0.2]])
        >>> values = ood_metrics(in_logits, out_logits, temperature=2.0)
        >>> values["auroc_msp"], values["fpr95_energy_ts"], len(values)
        (1.0, 0.0, 24)
    """
    _check_logits(in_logits, "in_logits")
    _check_logits(out_logits, "out_logits")
    if in_logits.shape[1] != out_logits.shape[1]:
        raise ValueError(
            f"Expected `out_logits` to have C={in_logits.shape[1]} classes like `in_logits`, "
            f"but got shape {tuple(out_logits.shape)}"
        )
    _check_temperature(temperature)
    settings = [(None, "")] + ([] if temperature is None else [(temperature, "_ts")])
    out: dict[str, float] = {}
    for t, suffix in settings:
        for score_name, score in SCORES.items():
            s_in, s_out = score(in_logits, t), score(out_logits, t)
            for metric_name, metric in METRICS.items():
                out[f"{metric_name}_{score_name}{suffix}"] = metric(s_in, s_out)
    return out


# ---------------------------------------------------------------------------------------------------------
# the noise OOD set


def _per_channel(name: str, value, input_shape: tuple[int, ...]) -> Tensor:
    """``value`` (a number, or one per entry of ``input_shape[0]``) as float64 of shape ``(k, 1, ..., 1)``."""
    tensor = torch.as_tensor(value, dtype=torch.float64).flatten()
    if tensor.numel() not in (1, input_shape[0]):
        raise ValueError(
            f"Expected argument `{name}` to be a number or {input_shape[0]} values (one per channel, the first "
            f"axis of input_shape {input_shape}), but got {tensor.numel()} values"
        )
    if not torch.isfinite(tensor).all():
        raise ValueError(f"Expected argument `{name}` to be finite, but got {value!r}")
    return tensor.reshape(-1, *([1] * (len(input_shape) - 1)))


def noise_set(
    input_shape: Sequence[int],
    n: int,
    seed: int = 0,
    mean: float | Sequence[float] | Tensor = 0.0,
    std: float | Sequence[float] | Tensor = 1.0,
    pixel_max: float = 1.0,
) -> Tensor:
    r"""Synthetic OOD inputs: half Gaussian, half uniform noise images, normalised like the in-distribution data.

    Each value is drawn independently in units of the pixel range, as a fraction :math:`u \in [0, 1]`:

    - the first :math:`\lceil n/2 \rceil` samples: :math:`u \sim \mathcal N(0.5, 1)` clipped to ``[0, 1]``
      (about 31% of the values land on 0 and 31% on 1);
    - the last :math:`\lfloor n/2 \rfloor`: :math:`u \sim \mathcal U[0, 1)`;

    then put in pixel units and normalised as the data module normalises real inputs:
    :math:`x = (u \cdot \mathrm{pixel\_max} - \mathrm{mean}) / \mathrm{std}`. Pass the in-distribution data's
    ``mean`` and ``std`` in pixel units and its ``pixel_max`` (255 for uint8 images, 16 for sklearn's digits);
    the defaults leave the noise in ``[0, 1]``. Deterministic: the same arguments give the same tensor (a
    ``torch.Generator`` seeded with ``seed``, on the CPU).

    Args:
        input_shape: the shape of one model input, e.g. ``(1, 28, 28)`` or ``(64,)``; channels first.
        n: number of samples (>= 1).
        seed: seed of the draws (an int >= 0).
        mean: the normalisation's mean in pixel units: a number, or one per channel (``input_shape[0]`` values).
        std: the normalisation's spread in pixel units (> 0): a number, or one per channel.
        pixel_max: the pixel value of full intensity (> 0).

    Returns:
        ``(n, *input_shape)`` float32 on the CPU.

    Raises:
        ValueError: if ``input_shape`` is not a non-empty sequence of positive ints, ``n`` is not a positive int,
            ``seed`` is not an int >= 0, ``mean`` / ``std`` have the wrong number of values or are not finite,
            or ``std`` / ``pixel_max`` are not > 0.

    References:
        Hendrycks & Gimpel (2017), ICLR, Sec. 3 (Gaussian noise N(0.5, 1) clipped to [0, 1] and uniform noise
        U[0, 1] as OOD sets); Hendrycks, Mazeika & Dietterich (2019), "Deep Anomaly Detection with Outlier
        Exposure", ICLR, Appendix (the same two sets).

    Example:
        >>> x = noise_set((1, 2, 2), n=3, seed=0, mean=0.5, std=0.25)
        >>> x.shape, x.dtype, bool((x >= -2).all() and (x <= 2).all())
        (torch.Size([3, 1, 2, 2]), torch.float32, True)
        >>> torch.equal(x, noise_set((1, 2, 2), n=3, seed=0, mean=0.5, std=0.25))
        True
    """
    if (isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or not input_shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in input_shape)):
        raise ValueError(f"Expected argument `input_shape` to be a non-empty sequence of positive ints, "
                         f"but got {input_shape!r}")
    input_shape = tuple(input_shape)
    check_positive_int("n", n)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"Expected argument `seed` to be an int >= 0, but got {seed!r}")
    if (isinstance(pixel_max, bool) or not isinstance(pixel_max, (int, float)) or not math.isfinite(pixel_max)
            or pixel_max <= 0):
        raise ValueError(f"Expected argument `pixel_max` to be a finite number > 0, but got {pixel_max!r}")
    mean_t, std_t = _per_channel("mean", mean, input_shape), _per_channel("std", std, input_shape)
    if not (std_t > 0).all():
        raise ValueError(f"Expected argument `std` to be > 0, but got {std!r}")

    generator = torch.Generator(device="cpu").manual_seed(seed)
    n_gauss = n - n // 2
    gauss = (0.5 + torch.randn((n_gauss, *input_shape), generator=generator, dtype=torch.float64)).clamp(0, 1)
    uniform = torch.rand((n // 2, *input_shape), generator=generator, dtype=torch.float64)
    fraction = torch.cat([gauss, uniform])
    return ((fraction * pixel_max - mean_t) / std_t).to(torch.float32)
