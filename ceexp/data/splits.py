"""Splits and degradation: stratified splits from a seed of their own, and a long-tailed or noisy training part.

Every datamodule splits with :func:`stratified_split` (sklearn's ``train_test_split``, stratified): the embedded
sets twice (:func:`split_indices`: test, then validation), the image sets once (validation from the official
training set). Splits depend on ``data.split_seed`` only, so the seeds of a sweep share one split. Then
:func:`degrade_training_split` may make the *training* part long-tailed (:func:`make_long_tailed`) and noisy
(:func:`flip_labels`); validation and test stay clean.
"""
from __future__ import annotations

import math

import numpy as np

from ceexp.validation import ConfigError

__all__ = ["degrade_training_split", "flip_labels", "make_long_tailed", "split_indices", "stratified_split"]


def _check_fraction(name: str, value: float) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
    if not ok:
        raise ValueError(f"data.{name}={value!r} is invalid: expected a number in (0, 1)")


def _check_long_tail_and_noise(imbalance_ratio, label_noise) -> None:
    ok = isinstance(imbalance_ratio, (int, float)) and not isinstance(imbalance_ratio, bool)
    if not ok or not math.isfinite(imbalance_ratio) or imbalance_ratio < 1:
        raise ValueError(f"data.imbalance_ratio={imbalance_ratio!r} is invalid: expected a number >= 1")
    if isinstance(label_noise, bool) or not isinstance(label_noise, (int, float)) or not 0 <= label_noise < 1:
        raise ValueError(f"data.label_noise={label_noise!r} is invalid: expected a number in [0, 1)")


def stratified_split(
    y: np.ndarray, fraction: float, seed: int, field: str = "val_fraction", value: float | None = None,
    what: str = "samples",
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a stratified ``fraction`` of the samples with labels ``y`` (sklearn ``train_test_split``).

    Args:
        y: int labels, ``(N,)``.
        fraction: share held out, in (0, 1); ``ceil(fraction * N)`` samples, each class in proportion.
        seed: ``random_state`` of the split.
        field, value, what: for the error message: the ``data.`` field and the value the user set (default
            ``fraction``), and what the N samples are (``"training images"``).

    Returns:
        ``(kept, held_out)``: int64 positions into ``y`` that partition ``range(N)``, in the splitter's (shuffled)
        order; sort them for file order.

    Raises:
        ConfigError: ``data.<field>=<value> is invalid for N <what> of C classes: ...``, when a stratified split
            is impossible (a class with one sample, or a part smaller than the number of classes).
    """
    from sklearn.model_selection import train_test_split

    positions = np.arange(len(y))
    try:
        kept, held = train_test_split(positions, test_size=fraction, stratify=y, random_state=seed)
    except ValueError as e:
        raise ConfigError(
            f"data.{field}={fraction if value is None else value} is invalid for {len(y)} {what} of "
            f"{len(np.unique(y))} classes: a stratified split needs each class twice and both parts at least one "
            f"sample per class ({str(e).splitlines()[0]})"
        ) from None
    return kept, held


def split_indices(
    y: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train/val/test index split: :func:`stratified_split` for the test part, then for the
    validation part of the rest.

    Args:
        y: labels, shape ``(N,)``.
        val_fraction, test_fraction: fractions of all N samples, each in (0, 1), summing to < 1.
        seed: ``random_state`` of both splits.

    Returns:
        Sorted int64 index arrays ``(train, val, test)`` that partition ``range(N)``.

    Raises:
        ConfigError: naming ``data.test_fraction`` or ``data.val_fraction``, when a stratified split is impossible.
    """
    y = np.asarray(y)
    rest, test = stratified_split(y, test_fraction, seed, field="test_fraction")
    train, val = stratified_split(y[rest], val_fraction / (1.0 - test_fraction), seed, field="val_fraction",
                                  value=val_fraction, what="samples left after the test split")
    return np.sort(rest[train]), np.sort(rest[val]), np.sort(test)


def make_long_tailed(y: np.ndarray, n_classes: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a long-tailed subset: class k keeps a fraction ``ratio ** (-k / (C - 1))``.

    Class 0 keeps all its samples and class C-1 keeps ``1/ratio`` of them (at least one), the
    exponential profile of long-tailed CIFAR (Cui et al. 2019). ``ratio=1`` keeps everything.

    Args:
        y: int labels in ``[0, n_classes)``, ``(N,)``.
        n_classes: C.
        ratio: >= 1, the size of the largest class over the smallest.
        rng: the generator that draws which samples of each class stay.

    Returns:
        Sorted int64 positions into ``y`` of the samples kept.
    """
    keep = []
    for k in range(n_classes):
        members = np.flatnonzero(y == k)
        frac = ratio ** (-k / max(n_classes - 1, 1))
        n_keep = max(1, int(round(len(members) * frac))) if len(members) else 0
        keep.append(rng.choice(members, size=n_keep, replace=False))
    return np.sort(np.concatenate(keep))


def flip_labels(y: np.ndarray, n_classes: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Copy of ``y`` (int, ``(N,)``) where ``round(rate * N)`` labels, drawn without replacement, move to a
    uniformly drawn *other* class of ``[0, n_classes)``."""
    y = y.copy()
    n_flip = int(round(rate * len(y)))
    which = rng.choice(len(y), size=n_flip, replace=False)
    shift = rng.integers(1, n_classes, size=n_flip)  # 1..C-1, so the new label always differs
    y[which] = (y[which] + shift) % n_classes
    return y


def degrade_training_split(
    train: np.ndarray, y_train: np.ndarray, n_classes: int, imbalance_ratio: float, label_noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The training indices and labels after :func:`make_long_tailed` and :func:`flip_labels` (both drawn
    from one ``default_rng(seed)``, imbalance first); unchanged for ratio 1 and noise 0.

    Args:
        train: indices of the training samples, ``(N,)``; y_train: their labels, ``(N,)`` int.

    Returns:
        ``(indices, labels)`` of the training part: a subset of ``train`` and its (partly flipped) labels.
    """
    rng = np.random.default_rng(seed)
    if imbalance_ratio > 1:
        keep = make_long_tailed(y_train, n_classes, imbalance_ratio, rng)
        train, y_train = train[keep], y_train[keep]
    if label_noise > 0:
        y_train = flip_labels(y_train, n_classes, label_noise, rng)
    return train, y_train
