"""MNIST, Fashion-MNIST, CIFAR-10/100 datamodules on small fixture files written in the exact distribution formats.

The fixture writers follow the published formats (IDX: LeCun et al.; CIFAR python version: Krizhevsky's page),
independently of ceexp's readers; expected values come from numpy on the arrays written.
"""
from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ceexp.augment import crop_flip, random_crop_flip
from ceexp.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    read_cifar,
    read_idx,
)
from ceexp.train import train
from tests.conftest import FAST, ROOT, make_cfg

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


# -- fixture writers ------------------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray) -> None:
    """Gzipped IDX: 0x00 0x00, type 0x08 (unsigned byte), ndim, big-endian uint32 sizes, then the bytes."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def images(n_per_class: int, n_classes: int, shape: tuple, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images, ``n_per_class`` of each class, the class order shuffled."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(n_classes), n_per_class)).astype(np.uint8)
    return rng.integers(0, 256, size=(len(y), *shape), dtype=np.uint8), y


def write_mnist(folder: Path, n_train: int = 6, n_test: int = 2, seed: int = 0) -> dict:
    """The four MNIST files with ``n_train`` / ``n_test`` 28x28 images per class in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    xtr, ytr = images(n_train, 10, (28, 28), seed)
    xte, yte = images(n_test, 10, (28, 28), seed + 1)
    for name, array in zip(MNIST_FILES, (xtr, ytr, xte, yte)):
        write_idx(folder / name, array)
    return {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_cifar(folder: Path, n_classes: int = 10, n_train: int = 6, n_test: int = 2, seed: int = 0) -> dict:
    """``cifar-10-python.tar.gz`` (5 data batches + test batch) or ``cifar-100-python.tar.gz`` (train, test).

    Each member is a pickled dict, ``data`` an ``(N, 3072)`` uint8 array: the 1024 red, then green, then blue
    values of each 32x32 image, row-major; labels a list under ``labels`` (CIFAR-10) or ``fine_labels``.
    Members are in a shuffled order, as in the real archive.
    """
    folder.mkdir(parents=True, exist_ok=True)
    xtr, ytr = images(n_train, n_classes, (32, 32, 3), seed)  # HWC, as a camera gives them
    xte, yte = images(n_test, n_classes, (32, 32, 3), seed + 1)
    rows = lambda x: x.transpose(0, 3, 1, 2).reshape(len(x), 3072)
    if n_classes == 10:
        base, archive, key = "cifar-10-batches-py", "cifar-10-python.tar.gz", "labels"
        parts = np.array_split(np.arange(len(ytr)), 5)
        members = {f"{base}/data_batch_{i + 1}": (rows(xtr[p]), ytr[p]) for i, p in enumerate(parts)}
        members[f"{base}/test_batch"] = (rows(xte), yte)
        extra = {f"{base}/batches.meta": {"label_names": [f"class{k}" for k in range(10)]}}
    else:
        base, archive, key = "cifar-100-python", "cifar-100-python.tar.gz", "fine_labels"
        members = {f"{base}/train": (rows(xtr), ytr), f"{base}/test": (rows(xte), yte)}
        extra = {f"{base}/meta": {"fine_label_names": [f"class{k}" for k in range(100)]}}
    with tarfile.open(folder / archive, "w:gz") as tar:
        names = list(members) + list(extra)
        for name in [names[i] for i in np.random.default_rng(seed).permutation(len(names))]:
            if name in members:
                data, labels = members[name]
                entry = {"batch_label": name, "data": data, key: [int(v) for v in labels],
                         "filenames": [f"img{i}.png" for i in range(len(labels))]}
                if n_classes == 100:
                    entry["coarse_labels"] = [int(v) // 5 for v in labels]
            else:
                entry = extra[name]
            _add(tar, name, pickle.dumps(entry, protocol=2))
        _add(tar, f"{base}/readme.html", b"<html></html>")
    nchw = lambda x: x.transpose(0, 3, 1, 2)
    return {"x_train": nchw(xtr), "y_train": ytr, "x_test": nchw(xte), "y_test": yte}


WRITERS = {
    "mnist": (MNISTDataModule, lambda root: write_mnist(root / "mnist")),
    "fashion_mnist": (FashionMNISTDataModule, lambda root: write_mnist(root / "fashion_mnist", seed=5)),
    "cifar10": (CIFAR10DataModule, lambda root: write_cifar(root / "cifar10")),
    "cifar100": (CIFAR100DataModule, lambda root: write_cifar(root / "cifar100", n_classes=100, n_train=2, n_test=1)),
}


# -- readers ---------------------------------------------------------------------------------------------

def test_read_idx_returns_the_array_written(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    out = read_idx(tmp_path / "a.gz")
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4) and (out == a).all()


def test_read_idx_refuses_a_wrong_magic_number_and_a_short_file(tmp_path):
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(b"\x01\x02\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(ValueError, match="bad.gz is not an IDX file"):
        read_idx(tmp_path / "bad.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + struct.pack(">I", 10) + b"abc")
    with pytest.raises(ValueError, match="short.gz is truncated"):
        read_idx(tmp_path / "short.gz")


def test_read_cifar_puts_channel_planes_in_nchw_order(tmp_path):
    written = write_cifar(tmp_path)
    batches = read_cifar(tmp_path / "cifar-10-python.tar.gz", ["cifar-10-batches-py/test_batch"], "labels")
    x, y = batches["cifar-10-batches-py/test_batch"]
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    assert (x == written["x_test"]).all() and (y == written["y_test"]).all()


def test_read_cifar_names_a_missing_member(tmp_path):
    write_cifar(tmp_path)
    with pytest.raises(ValueError, match="lacks cifar-10-batches-py/data_batch_9"):
        read_cifar(tmp_path / "cifar-10-python.tar.gz", ["cifar-10-batches-py/data_batch_9"], "labels")


# -- datamodules -----------------------------------------------------------------------------------------

def rows_of(x: np.ndarray) -> list[bytes]:
    return sorted(img.tobytes() for img in x)


@pytest.mark.parametrize("name", list(WRITERS))
def test_splits_and_normalisation(tmp_path, name):
    cls, write = WRITERS[name]
    written = write(tmp_path)
    n_classes = cls.num_classes
    dm = cls(root=str(tmp_path), val_fraction=0.5, batch_size=7, checksum=False)
    dm.setup()
    n = len(written["y_train"])
    x_train = written["x_train"].reshape(n, *dm.input_shape)
    x_test = written["x_test"].reshape(-1, *dm.input_shape)
    # sklearn's train_test_split: ceil(fraction * n) held out, stratified (n / C images of each class)
    assert len(dm.y_val) == math.ceil(0.5 * n) and len(dm.y_train) == n - len(dm.y_val)
    assert np.bincount(dm.y_val.numpy(), minlength=n_classes).tolist() == [n // n_classes // 2] * n_classes
    # train + val are the official training images; test is the official test set, in file order
    assert rows_of(np.concatenate([dm.x_train.numpy(), dm.x_val.numpy()])) == rows_of(x_train)
    assert (dm.x_test.numpy() == x_test).all() and (dm.y_test.numpy() == written["y_test"]).all()
    assert dm.input_shape == ((1, 28, 28) if "mnist" in name else (3, 32, 32)) and dm.n_classes == n_classes
    # per-channel statistics of the training part, float64 numpy
    xt = dm.x_train.numpy().astype(np.float64)
    mean, std = xt.mean(axis=(0, 2, 3)), xt.std(axis=(0, 2, 3))
    np.testing.assert_allclose(dm.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(dm.std, std, rtol=1e-12)
    x, y = next(iter(dm.val_dataloader()))
    expected = (x_train.astype(np.float64) - mean[:, None, None]) / std[:, None, None]
    assert x.dtype == torch.float32 and x.shape == (7, *dm.input_shape) and y.dtype == torch.int64
    first = [int(np.flatnonzero([(img == dm.x_val[i].numpy()).all() for img in x_train])[0])
             for i in range(7)]
    np.testing.assert_allclose(x.numpy(), expected[first], rtol=1e-5, atol=1e-5)


def test_missing_files_are_one_line_naming_them_the_folder_and_the_switch(tmp_path):
    (tmp_path / "cifar10").mkdir()
    with pytest.raises(ValueError) as err:
        CIFAR10DataModule(root=str(tmp_path))
    message = str(err.value)
    assert "\n" not in message
    assert "cifar-10-python.tar.gz" in message and str(tmp_path / "cifar10") in message
    assert "data.download=true" in message and message.startswith("data.root=")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        MNISTDataModule(root=str(tmp_path))


@pytest.mark.parametrize("field, value", [("val_fraction", 0.0), ("val_fraction", 1.5), ("imbalance_ratio", 0.5),
                                          ("label_noise", 1.0), ("batch_size", 0), ("augment", "yes"),
                                          ("on_device", "gpu"), ("download", 1), ("checksum", "yes")])
def test_bad_values_name_the_field(tmp_path, field, value):
    write_mnist(tmp_path / "mnist")
    with pytest.raises(ValueError, match=f"^data.{field}="):
        MNISTDataModule(root=str(tmp_path), **{field: value})


def test_too_small_a_validation_split_names_val_fraction(tmp_path):
    write_mnist(tmp_path / "mnist")  # 60 images, 10 classes: 1% is one image, fewer than the classes
    with pytest.raises(ValueError, match="^data.val_fraction=0.01 is invalid for 60 training images of 10 classes"):
        MNISTDataModule(root=str(tmp_path), val_fraction=0.01, checksum=False).setup()


def test_relative_root_resolves_against_the_working_directory(tmp_path, monkeypatch):
    write_mnist(tmp_path / "here" / "mnist")
    monkeypatch.chdir(tmp_path)
    dm = MNISTDataModule(root="here", val_fraction=0.5)
    assert dm.folder == tmp_path / "here" / "mnist"


def test_imbalance_and_noise_touch_the_training_split_only(tmp_path):
    written = write_cifar(tmp_path / "cifar10", n_train=20)
    clean = CIFAR10DataModule(root=str(tmp_path), val_fraction=0.2, checksum=False)
    clean.setup()
    dm = CIFAR10DataModule(root=str(tmp_path), val_fraction=0.2, imbalance_ratio=10.0, label_noise=0.25,
                           checksum=False)
    dm.setup()
    # 16 training images per class; class k keeps round(16 * 10^(-k/9)) (at least 1)
    kept = [max(1, round(16 * 10 ** (-k / 9))) for k in range(10)]
    assert len(dm.y_train) == sum(kept)
    # the noise: round(0.25 * N) labels differ from the true label of the same image
    truth = {img.tobytes(): int(lab) for img, lab in zip(written["x_train"], written["y_train"])}
    flipped = sum(truth[img.tobytes()] != int(lab) for img, lab in zip(dm.x_train.numpy(), dm.y_train.numpy()))
    assert flipped == round(0.25 * sum(kept))
    # true classes of the kept images follow the long-tailed profile
    true_counts = np.bincount([truth[img.tobytes()] for img in dm.x_train.numpy()], minlength=10)
    assert true_counts.tolist() == kept
    # validation and test are untouched
    assert (dm.x_val == clean.x_val).all() and (dm.y_val == clean.y_val).all()
    assert (dm.y_test == clean.y_test).all()


# -- augmentation ----------------------------------------------------------------------------------------

def test_crop_flip_matches_numpy_pad_slice_and_mirror():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 6, 7))
    fill = np.array([-1.0, 0.5, 2.0])
    top, left = np.array([0, 8, 3, 4, 1]), np.array([8, 0, 2, 4, 7])
    flip = np.array([False, True, True, False, True])
    out = crop_flip(torch.tensor(x), 4, torch.tensor(fill), torch.tensor(top), torch.tensor(left), torch.tensor(flip))
    for b in range(5):
        padded = np.stack([np.pad(x[b, c], 4, constant_values=fill[c]) for c in range(3)])
        want = padded[:, top[b]:top[b] + 6, left[b]:left[b] + 7]
        if flip[b]:
            want = want[:, :, ::-1]
        np.testing.assert_array_equal(out[b].numpy(), want)


def test_random_crop_flip_draws_every_offset_and_both_flips():
    x = torch.zeros(4000, 1, 8, 8)
    x[:, :, 0, 0] = 1.0  # a marker pixel: where it lands tells the offset and the flip
    out = random_crop_flip(x, padding=4, generator=torch.Generator().manual_seed(0))
    where = out[:, 0].flatten(1).argmax(1)
    present = out[:, 0].flatten(1).amax(1) == 1
    rows, cols = where // 8, where % 8
    # a marker stays inside when the window starts at rows 0..4 (offset 4 - r); 25 / 81 of the windows, then
    # a flip sends column c to 7 - c: both halves of the columns 0..7 appear
    assert 0.25 < present.float().mean() < 0.37
    assert set(rows[present].tolist()) == set(range(5)) and set(cols[present].tolist()) == set(range(8))


def test_augmentation_only_while_training(tmp_path):
    write_cifar(tmp_path / "cifar10")
    dm = CIFAR10DataModule(root=str(tmp_path), val_fraction=0.5, augment=True, checksum=False)
    dm.setup()
    dm.shuffle_seed = 1
    batch = next(iter(dm.val_dataloader()))
    dm.trainer = SimpleNamespace(training=False, current_epoch=0, world_size=1)
    assert dm.on_after_batch_transfer(batch, 0) is batch
    dm.trainer = SimpleNamespace(training=True, current_epoch=0, world_size=1)
    first = dm.on_after_batch_transfer(batch, 0)[0]
    assert first.shape == batch[0].shape and not torch.equal(first, batch[0])
    dm._generator_key = None  # the same epoch again: the same crops (a resumed run repeats them)
    assert torch.equal(dm.on_after_batch_transfer(batch, 0)[0], first)
    dm.trainer.current_epoch = 1
    assert not torch.equal(dm.on_after_batch_transfer(batch, 0)[0], first)
    dm.augment = False
    assert dm.on_after_batch_transfer(batch, 0) is batch


# -- training on each data set ---------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Temperature scaling")  # random fixture labels: no better than chance
@pytest.mark.parametrize("name, model", [
    ("mnist", "cnn"), ("fashion_mnist", "mlp"), ("cifar10", "cnn"), ("cifar100", "cnn"),
    ("cifar10", "resnet18"),  # two steps of 16 images and 50 evaluated: ~4 s on two CPU cores
])
def test_train_a_few_steps(tmp_path, name, model):
    n_test = len(WRITERS[name][1](tmp_path / "data")["y_test"])
    extra = ["data.batch_size=16", "trainer.max_epochs=1", "+trainer.limit_train_batches=2"]
    cfg = make_cfg(tmp_path / "run", [*FAST, f"data={name}", f"model={model}", f"data.root={tmp_path / 'data'}",
                                      "data.val_fraction=0.5", "data.checksum=false", "logger=none", *extra])
    metrics = train(cfg)
    assert metrics["status"] == "completed"
    for key in ("val/acc", "val/nll", "val/ece", "test/acc", "test/nll", "test/ece", "test/temperature"):
        assert math.isfinite(metrics[key]), key
    # accuracy over the whole official test set: a whole number of the n_test images
    assert round(metrics["test/acc"] * n_test) == pytest.approx(metrics["test/acc"] * n_test, abs=1e-6)


# fixture files are not the published ones: data.checksum=false reads them (tests/test_damaged_files.py checks MD5s)
ENTRY = ["model=cnn", "logger=none", "callbacks.progress_bar=null", "trainer.max_epochs=1", "data.val_fraction=0.5",
         "trainer.enable_progress_bar=false", "data.checksum=false"]


def test_entry_point_refuses_missing_files_in_one_line(tmp_path):
    missing = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "data=fashion_mnist",
                              "data.root=nowhere", *ENTRY], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert missing.returncode == 2
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "nowhere" / "fashion_mnist") in lines[0], missing.stderr
    assert "data.download=true" in lines[0]


@pytest.mark.slow
def test_entry_point_reads_a_relative_root_from_where_it_was_started(tmp_path):
    write_mnist(tmp_path / "rel" / "mnist")
    ok = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "data=mnist", "data.root=rel", *ENTRY],
                        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert len(list((tmp_path / "outputs" / "runs").glob("*/*/metrics.json"))) == 1


# -- the paper protocol ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_mukhoti_experiment_is_the_paper_protocol(tmp_path, dataset):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ceexp.validation import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="train", overrides=[f"experiment=mukhoti_{dataset}"], return_hydra_config=True)
    # Mukhoti et al. 2020, Sec. 5 / appendix: ResNet-50; SGD, lr 0.1, momentum 0.9, weight decay 5e-4; batch 128;
    # 350 epochs, lr 0.1 -> 0.01 at 150 -> 0.001 at 250; 5,000 of the 50,000 training images for validation
    assert cfg.model._target_ == "ceexp.models.resnet50" and cfg.data._target_.endswith(
        "CIFAR10DataModule" if dataset == "cifar10" else "CIFAR100DataModule")
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.1, 0.9, 5e-4)
    assert cfg.data.batch_size == 128 and cfg.data.val_fraction == 0.1 and cfg.data.augment is True
    # the released train.py steps MultiStepLR([150, 250]) at the start of each epoch, Lightning at the end: the
    # same learning rates need [149, 249] here (tests/test_protocol.py compares all 350 epochs)
    assert cfg.trainer.max_epochs == 350 and list(cfg.scheduler.milestones) == [149, 249] and cfg.scheduler.gamma == 0.1
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweeper.params["+loss_preset"] == "ce,brier,ls_0.05,focal_3,flsd_53"
    presets = {}
    for preset in cfg.hydra.sweeper.params["+loss_preset"].split(","):
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            presets[preset] = compose(config_name="train", overrides=[f"experiment=mukhoti_{dataset}",
                                                                      f"+loss_preset={preset}"]).loss
    assert presets["ce"]._target_ == "torch.nn.CrossEntropyLoss" and not presets["ce"].get("label_smoothing")
    assert presets["brier"]._target_ == "ceexp.losses.BrierLoss"
    assert presets["ls_0.05"].label_smoothing == 0.05
    assert presets["focal_3"]._target_ == "ceexp.losses.FocalLoss" and presets["focal_3"].gamma == 3
    assert presets["flsd_53"]._target_ == "ceexp.losses.SampleDependentFocalLoss"


@pytest.mark.slow
def test_mukhoti_sweep_runs_end_to_end_on_fixture_files(tmp_path):
    """The whole 5-loss sweep through the entry point on CPU, one batch per stage (ResNet-50: ~1 min)."""
    write_cifar(tmp_path / "data" / "cifar10")
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "experiment=mukhoti_cifar10", "trainer=default",
         "trainer.max_epochs=1", "data.batch_size=4", "data.val_fraction=0.5", "data.checksum=false", "logger=none",
         "callbacks.progress_bar=null", "trainer.enable_progress_bar=false", "+trainer.limit_train_batches=1",
         "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1", "+trainer.limit_predict_batches=1",
         f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra.job.num}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    done = [json.loads((sweep / str(i) / "metrics.json").read_text())["status"] for i in range(5)]
    assert done == ["completed"] * 5


@pytest.mark.filterwarnings("ignore:Temperature scaling")
def test_gpu_trainer_settings_run_end_to_end_with_the_cpu_accelerator(tmp_path):
    """trainer=gpu is bf16 autocast + channels-last weights; the same code path runs on a CPU (CPU autocast)."""
    write_cifar(tmp_path / "data" / "cifar10")
    cfg = make_cfg(tmp_path / "run", [*FAST, "data=cifar10", "model=cnn", f"data.root={tmp_path / 'data'}",
                                      "trainer=gpu", "trainer.accelerator=cpu", "data.val_fraction=0.5", "logger=none",
                                      "data.checksum=false",
                                      "trainer.max_epochs=1", "loss=focal_sd53", "+trainer.limit_train_batches=2"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.model.channels_last is True
    metrics = train(cfg)
    assert metrics["status"] == "completed" and math.isfinite(metrics["test/nll_ts"])
