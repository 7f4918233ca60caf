"""The image sets read from their distribution files: MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100.

The files live under ``data.root`` as distributed (names, checksums and mirrors: :mod:`ceexp.download`; formats:
:mod:`ceexp.data.formats`). Before anything is parsed, each file is checked against its published MD5
(:func:`ceexp.download.verify`, cached in a ``<file>.md5ok`` stamp); a damaged or foreign file stops the run in
:meth:`ImageDataModule.setup` with one line (a :class:`~ceexp.validation.ConfigError`) naming the file, what is
wrong with it, and that deleting it and passing ``data.download=true`` fetches a good copy.

The official test set is the test split; the validation split is a stratified ``val_fraction`` of the official
training set. Images stay ``uint8`` in memory (on the GPU when they fit), are normalised per channel with
training-split statistics as each batch is cut, and training batches may be augmented on the device.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ceexp.augment import random_crop_flip
from ceexp.data.formats import DamagedFileError, check_cifar, read_cifar, read_idx
from ceexp.data.loading import TensorDataModule
from ceexp.data.splits import _check_fraction, _check_long_tail_and_noise, degrade_training_split, stratified_split
from ceexp.download import MNIST_FILES, RESOURCES, missing_files, verify
from ceexp.download import download as download_files
from ceexp.validation import ConfigError

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule", "FashionMNISTDataModule", "ImageDataModule", "MNISTDataModule",
           "channel_stats", "data_root"]

_FIX = "delete it and pass data.download=true to fetch a good copy"


def data_root(root: str | Path) -> Path:
    """``data.root`` as an absolute path: a relative one is relative to the folder the command was started in.

    That is the working directory, except in a Hydra job with ``hydra.job.chdir=true``, which runs in its
    output folder: there the start folder is Hydra's ``runtime.cwd`` (as ``hydra.utils.to_absolute_path``
    reads it). DDP processes that Lightning starts for a Hydra job see the same ``runtime.cwd``.
    """
    path = Path(root).expanduser()
    if not path.is_absolute():
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized() and HydraConfig.get().job.get("chdir"):
            path = Path(HydraConfig.get().runtime.cwd) / path
    return path.resolve()


def channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population standard deviation of uint8 images ``(N, C, H, W)``, in pixel units
    (0..255), accumulated in float64 over chunks of images. A constant channel gets std 1 (centred only).

    Returns:
        ``(mean, std)``, each ``(C,)`` float64.
    """
    total = np.zeros(x.shape[1])
    squares = np.zeros(x.shape[1])
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk].astype(np.float64)
        total += part.sum(axis=(0, 2, 3))
        squares += np.square(part).sum(axis=(0, 2, 3))
    n = len(x) * x.shape[2] * x.shape[3]
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
    return mean, np.where(std > 0, std, 1.0)


class _Normalize:
    """``(x.float() - mean) / std`` per channel for uint8 batches ``(B, C, H, W)``, on the batch's device."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.inv_std = torch.tensor(1.0 / std, dtype=torch.float32).reshape(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.device != x.device:
            self.mean, self.inv_std = self.mean.to(x.device), self.inv_std.to(x.device)
        return (x.float() - self.mean) * self.inv_std


class ImageDataModule(TensorDataModule):
    """Base of the image data sets read from their distribution files (see :mod:`ceexp.download`).

    Subclasses set ``name`` (a key of :data:`ceexp.download.RESOURCES`) and ``num_classes``, and implement
    :meth:`read` and :meth:`probe`. :meth:`setup` checks the files' MD5s, reads them, splits a stratified
    ``val_fraction`` off the official training set (from ``split_seed``; the official test set is the test
    split), makes the training part long-tailed / noisy if asked, and computes per-channel mean and std on the
    training part.

    Args:
        root: folder holding one subfolder per data set (``<root>/cifar10/cifar-10-python.tar.gz``, ...). A
            relative path is relative to the folder the command was started in, also with
            ``hydra.job.chdir=true`` (see :func:`data_root`).
        download: fetch missing files from the data set's mirrors (MD5-verified) in :meth:`prepare_data`.
        batch_size, on_device: see :class:`~ceexp.data.loading.TensorDataModule`.
        split_seed: seed of the validation split and of the imbalance / noise draws.
        val_fraction: fraction of the official training set held out for validation, in (0, 1).
        imbalance_ratio, label_noise: see :func:`~ceexp.data.splits.make_long_tailed` and
            :func:`~ceexp.data.splits.flip_labels` (training part only).
        augment: random 4-pixel-padded crops and horizontal flips of training batches, drawn on the device
            in :meth:`on_after_batch_transfer` from a generator seeded by (shuffle seed, epoch, process rank).
        mirrors: base URLs to download from instead of the data set's own (e.g. a local copy).
        checksum: check every file against its published MD5 before reading it (cached, see
            :func:`ceexp.download.verify`); ``False`` reads files of your own in the same format (a subset, a
            re-compressed copy), still checking their structure.

    Attributes (after :meth:`setup`): ``n_classes``, ``input_shape`` ``(C, H, W)``, ``train_labels`` (CPU
    int64), ``mean`` and ``std`` (``(C,)`` float64, pixel units 0..255, training part), and the uint8 image
    tensors ``x_train, x_val, x_test`` ``(N, C, H, W)`` with int64 ``y_train, y_val, y_test``. Batches are
    float32 ``(B, C, H, W)``, normalised as ``(x - mean) / std``, and int64 ``(B,)`` labels.

    Raises:
        ValueError: naming the ``data.`` field, for a value outside its range, and (``data.root``) when files
            are missing and ``download`` is false: one line naming the files, the folder and ``data.download=true``.
        ConfigError (in :meth:`setup`, before any training): one line naming a file that fails its MD5 or is
            damaged (cut off, an error page, a wrong header, ...: see :mod:`ceexp.data.formats`) and the remedy;
            or naming ``data.val_fraction`` when the training set cannot be split so.
        DownloadError (in :meth:`prepare_data`): see :func:`ceexp.download.fetch`.
    """

    name: str = ""
    num_classes: int = 0
    PADDING = 4  # pixels of the random-crop augmentation (He et al. 2016, Sec. 4.2)

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        batch_size: int = 128,
        split_seed: int = 0,
        val_fraction: float = 0.1,
        imbalance_ratio: float = 1.0,
        label_noise: float = 0.0,
        augment: bool = False,
        on_device: bool | str = "auto",
        mirrors: Sequence[str] | None = None,
        checksum: bool = True,
    ):
        super().__init__(batch_size, on_device)
        if not isinstance(root, (str, Path)) or not str(root).strip():
            raise ValueError(f"data.root={root!r} is invalid: expected a folder path")
        for field, value in (("download", download), ("augment", augment), ("checksum", checksum)):
            if not isinstance(value, bool):
                raise ValueError(f"data.{field}={value!r} is invalid: expected true or false")
        _check_fraction("val_fraction", val_fraction)
        _check_long_tail_and_noise(imbalance_ratio, label_noise)
        if mirrors is not None and (isinstance(mirrors, str) or not all(isinstance(m, str) for m in mirrors)):
            raise ValueError(f"data.mirrors={mirrors!r} is invalid: expected null or a list of base URLs")
        self.root = data_root(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"data.root={str(root)!r} is invalid: {self.root} is a file, expected a folder")
        self.folder = self.root / self.name
        self.download = download
        self.split_seed = split_seed
        self.val_fraction = val_fraction
        self.imbalance_ratio = float(imbalance_ratio)
        self.label_noise = float(label_noise)
        self.augment = augment
        self.mirrors = list(mirrors) if mirrors else None
        self.checksum = checksum
        self._generator: torch.Generator | None = None
        self._generator_key: tuple | None = None
        missing = missing_files(self.name, self.folder)
        if missing and not download:
            raise ValueError(
                f"data.root={str(root)!r}: {self.name} files missing: {', '.join(missing)} (expected in "
                f"{self.folder}); put them there, or pass data.download=true to fetch them"
            )

    def read(self, folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(x_train, y_train, x_test, y_test)``: uint8 images ``(N, C, H, W)`` and int64 labels.

        Raises:
            DamagedFileError: a file that cannot be read as its format says.
        """
        raise NotImplementedError

    def probe(self, path: Path) -> None:
        """Check the structure of the file ``path`` without executing anything it holds (no unpickling).

        Raises:
            DamagedFileError: what is wrong with it.
        """
        raise NotImplementedError

    def prepare_data(self) -> None:
        """Download the missing files when ``download`` is true (see :func:`ceexp.download.download`)."""
        if self.download and missing_files(self.name, self.folder):
            download_files(self.name, self.folder, self.mirrors)

    def check_files(self) -> None:
        """With ``checksum``: compare each file's MD5 with the published one, before anything is parsed.

        A file that fails is then probed (:meth:`probe`, nothing executed) to say what is wrong with it.

        Raises:
            ConfigError: ``<file> <what is wrong>; its MD5 is <found>, not the published <md5>; delete it and pass
                data.download=true to fetch a good copy`` (one line).
        """
        if not self.checksum:
            return
        for filename, md5 in RESOURCES[self.name].files.items():
            path = self.folder / filename
            try:
                found = verify(path, md5)
            except OSError as e:
                raise ConfigError(f"{path} cannot be read ({e.strerror or e}); {_FIX}") from None
            if found is None:
                continue
            try:
                self.probe(path)
            except DamagedFileError as e:
                raise ConfigError(f"{e}; its MD5 is {found}, not the published {md5}; {_FIX}") from None
            raise ConfigError(
                f"{path} is not the published file: its MD5 is {found}, not {md5}, though it reads as an intact "
                f"{self.name} file (another release, or a file of your own?); {_FIX}, or pass data.checksum=false "
                "to read it as it is"
            )

    def setup(self, stage: str | None = None) -> None:
        """Download (if asked), check, read and split the files once; later calls return at once.

        Raises:
            ConfigError: one line naming a damaged or foreign file (see :meth:`check_files` and
                :mod:`ceexp.data.formats`) or ``data.val_fraction``; raised before any training.
        """
        if self._ready:
            return
        self.prepare_data()
        self.check_files()
        try:
            x_train, y_train, x_test, y_test = self.read(self.folder)
        except DamagedFileError as e:
            raise ConfigError(f"{e}; {_FIX}") from None
        except OSError as e:
            raise ConfigError(f"{e.filename or self.folder} cannot be read ({e.strerror or e}); {_FIX}") from None
        for split, y in (("training", y_train), ("test", y_test)):
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise ConfigError(f"{self.folder}: {split} labels outside [0, {self.num_classes}) in the {self.name} "
                                  "files; delete them and pass data.download=true to fetch good copies")
        self.n_classes = self.num_classes
        self.input_shape = tuple(int(s) for s in x_train.shape[1:])
        train, val = stratified_split(y_train, self.val_fraction, self.split_seed, field="val_fraction",
                                      what="training images")
        train, val = np.sort(train), np.sort(val)
        train, y_fit = degrade_training_split(train, y_train[train], self.n_classes, self.imbalance_ratio,
                                              self.label_noise, self.split_seed)
        self.mean, self.std = channel_stats(x_train[train])
        self.batch_transform = _Normalize(self.mean, self.std)
        as_tensor = lambda a: torch.from_numpy(np.require(a, requirements=["C", "W"]))
        self.x_train, self.y_train = as_tensor(x_train[train]), as_tensor(y_fit)
        self.x_val, self.y_val = as_tensor(x_train[val]), as_tensor(y_train[val])
        self.x_test, self.y_test = as_tensor(x_test), as_tensor(y_test.astype(np.int64))
        self.train_labels = self.y_train
        self._ready = True

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Augment training batches on their device (only while fitting, only with ``augment``)."""
        trainer = self.trainer
        if not self.augment or trainer is None or not trainer.training:
            return batch
        x, y = batch
        rank, _ = self._process()
        key = (self.shuffle_seed, trainer.current_epoch, rank, x.device)
        if self._generator_key != key:  # a fresh stream each epoch: a resumed run draws the same crops
            self._generator = torch.Generator(device=x.device)
            self._generator.manual_seed(hash(key[:3]) % 2**63)
            self._generator_key = key
        fill = torch.as_tensor(-self.mean / self.std, dtype=x.dtype, device=x.device)
        return random_crop_flip(x, self.PADDING, fill, self._generator), y


class MNISTDataModule(ImageDataModule):
    """MNIST (LeCun et al. 1998): 60,000 training and 10,000 test images, 28x28 grey, 10 classes.

    Files: the four gzipped IDX files in ``<data.root>/mnist/`` (:data:`ceexp.download.MNIST_FILES`).
    ``input_shape`` is ``(1, 28, 28)``. Arguments: see :class:`ImageDataModule` (no augmentation by default).
    """

    name = "mnist"
    num_classes = 10

    def probe(self, path: Path) -> None:
        read_idx(path)

    def read(self, folder: Path):
        xtr, ytr, xte, yte = (read_idx(folder / f) for f in MNIST_FILES)
        for images, labels, (image_file, label_file) in ((xtr, ytr, MNIST_FILES[:2]), (xte, yte, MNIST_FILES[2:])):
            if images.ndim != 3 or images.dtype != np.uint8:
                raise DamagedFileError(folder / image_file, f"holds {images.dtype} data of shape {images.shape}, "
                                                            "expected uint8 images (N, H, W)")
            if labels.ndim != 1 or len(labels) != len(images):
                raise DamagedFileError(folder / label_file, f"holds labels of shape {labels.shape}, expected "
                                                            f"({len(images)},), one per image of {image_file}")
        return xtr[:, None], ytr.astype(np.int64), xte[:, None], yte.astype(np.int64)


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (Xiao et al. 2017): MNIST's format and sizes, 10 classes of clothing.

    Files: the four gzipped IDX files in ``<data.root>/fashion_mnist/``.
    """

    name = "fashion_mnist"


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (Krizhevsky 2009): 50,000 training and 10,000 test images, 32x32 colour, 10 classes.

    File: ``<data.root>/cifar10/cifar-10-python.tar.gz``. ``input_shape`` is ``(3, 32, 32)``.
    Arguments: see :class:`ImageDataModule`; the config turns ``augment`` on (crop + flip).
    """

    name = "cifar10"
    num_classes = 10
    train_members = tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6))
    test_members = ("cifar-10-batches-py/test_batch",)
    label_key = "labels"

    @property
    def archive(self) -> str:
        """The archive's file name, the one file of this data set in :data:`ceexp.download.RESOURCES`."""
        (name,) = RESOURCES[self.name].files
        return name

    def probe(self, path: Path) -> None:
        check_cifar(path, self.train_members + self.test_members)

    def read(self, folder: Path):
        batches = read_cifar(folder / self.archive, self.train_members + self.test_members, self.label_key)

        def cat(members):
            return (np.concatenate([batches[m][0] for m in members]),
                    np.concatenate([batches[m][1] for m in members]))

        return (*cat(self.train_members), *cat(self.test_members))


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (Krizhevsky 2009): CIFAR-10's sizes with 100 classes (the "fine" labels).

    File: ``<data.root>/cifar100/cifar-100-python.tar.gz``.
    """

    name = "cifar100"
    num_classes = 100
    train_members = ("cifar-100-python/train",)
    test_members = ("cifar-100-python/test",)
    label_key = "fine_labels"
