"""The published corruptions, CIFAR-10-C / CIFAR-100-C, under ``shift_c=[...]`` (ceexp.robustness, issue #12).

A real run on fixture files in the distribution formats: CIFAR-10's python archive (tests/test_image_data.py's
writer, its images made partly learnable) and a ``CIFAR-10-C.tar`` of ``.npy`` arrays (tests/test_ood_files.py's
tar writer), whose severity :data:`IDENTITY` of ``fog`` holds the clean test images themselves, every other cell
random images, and whose labels differ per severity. Expected values come from the checkpoint's MLP applied in
float64 numpy to the images normalised here (per-channel mean and population std of the training part), with
accuracy, NLL and ECE written out from their definitions; the identity cell must give the run's own ``test/``
values. Config refusals: one line, before training, exit code 2, no run folder.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf

from ceexp.validation import (
    CIFAR_C_NAMES,
    CIFAR_C_SETS,
    ConfigError,
    check_command_line,
)
from tests import test_image_data, test_ood_files
from tests.conftest import FAST, ROOT, make_cfg
from tests.test_ood_files import _npy, md5, tar_bytes
from tests.test_robustness import _mlp64  # the checkpoint's MLP in float64 numpy

server = test_ood_files.server  # the loopback mirror fixture (/good serves a fixture CIFAR-10-C.tar)

C10 = "CIFAR-10-C.tar"
CORRUPTIONS = ("fog", "snow")
SEVERITIES = (1, 3, 5)
IDENTITY = 3  # fog at severity 3 holds the clean test images, in order, with the test labels
_random_images = test_image_data.images
TAGS = [f"shift_c/{c}/s{k}/{m}" for c in CORRUPTIONS for k in SEVERITIES for m in ("acc", "nll", "ece", "ece_ts")]


def write_cifar_c(folder: Path, x_test: np.ndarray, y_test: np.ndarray, seed: int = 7) -> dict:
    """``folder/CIFAR-10-C.tar`` for ``CORRUPTIONS``: uint8 ``(5 N, 32, 32, 3)`` per corruption (severity s in rows
    ``(s - 1) N`` to ``s N - 1``), ``labels.npy`` uint8 ``(5 N,)``; fog at :data:`IDENTITY` is ``x_test`` (NCHW here,
    HWC in the file) with ``y_test``, everything else random. Returns ``{(corruption, severity): (NCHW images,
    labels)}``."""
    rng = np.random.default_rng(seed)
    n = len(y_test)
    labels = [y_test if s == IDENTITY else rng.integers(0, 10, n) for s in range(1, 6)]
    cells, members = {}, {}
    for name in CORRUPTIONS:
        rows = []
        for s in range(1, 6):
            nchw = x_test if (name, s) == ("fog", IDENTITY) else rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
            cells[name, s] = (nchw, np.asarray(labels[s - 1], dtype=np.int64))
            rows.append(nchw.transpose(0, 2, 3, 1))
        members[f"CIFAR-10-C/{name}.npy"] = _npy(np.ascontiguousarray(np.concatenate(rows)))
    members["CIFAR-10-C/labels.npy"] = _npy(np.concatenate(labels).astype(np.uint8))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / C10).write_bytes(tar_bytes(members))
    return cells


def _learnable(n_per_class: int, n_classes: int, shape: tuple, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """tests/test_image_data.py's random images, 15 % of each a fixed random template of its class: a few epochs
    learn them partly, so the validation temperature is a finite value that a refit on other data would change."""
    x, y = _random_images(n_per_class, n_classes, shape, seed)
    templates = np.random.default_rng(99).integers(0, 256, (n_classes, *shape))
    return np.round(0.85 * x + 0.15 * templates[y]).astype(np.uint8), y


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One real 4-epoch run: data=cifar10 (fixture, 60 training images, half held out, 20 test), model=mlp,
    shift_c=[fog,snow] at severities 1, 3, 5."""
    from ceexp.train import train

    tmp = tmp_path_factory.mktemp("cifar_c")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(test_image_data, "images", _learnable)
        written = test_image_data.write_cifar(tmp / "data" / "cifar10")
    cells = write_cifar_c(tmp / "data" / "cifar10_c", written["x_test"], written["y_test"].astype(np.int64))
    cfg = make_cfg(tmp / "run", [*FAST, "trainer.max_epochs=4", "data=cifar10", "model=mlp",
                                 f"data.root={tmp / 'data'}", "data.val_fraction=0.5", "data.checksum=false",
                                 "data.batch_size=16", "data.augment=false", f"shift_c=[{','.join(CORRUPTIONS)}]",
                                 "shift_severities=[1,3,5]"])
    return train(cfg), tmp / "run", cfg, cells


def _metrics64(z: np.ndarray, y: np.ndarray, t: float, n_bins: int = 15) -> dict[str, float]:
    """Accuracy, NLL (nats, -log softmax of the true class), ECE (equal-width bins (lo, hi], a confidence of 0 in
    the first) and the ECE of z / t, in float64 numpy."""
    def log_softmax(a):
        a = a - a.max(1, keepdims=True)
        return a - np.log(np.exp(a).sum(1, keepdims=True))

    def ece(p):
        conf, correct = p.max(1), p.argmax(1) == y
        bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
        return sum(abs(correct[bins == b].sum() - conf[bins == b].sum()) for b in range(n_bins)) / len(y)

    logp = log_softmax(z)
    return {"acc": float((z.argmax(1) == y).mean()), "nll": float(-logp[np.arange(len(y)), y].mean()),
            "ece": float(ece(np.exp(logp))), "ece_ts": float(ece(np.exp(log_softmax(z / t))))}


def _normalised64(x_train: np.ndarray, images: np.ndarray) -> np.ndarray:
    """uint8 NCHW ``images`` as (x - mean) / std per channel, mean and population std of ``x_train``."""
    pixels = x_train.astype(np.float64)
    mean, std = pixels.mean(axis=(0, 2, 3)), pixels.std(axis=(0, 2, 3))
    return (images.astype(np.float64) - mean[None, :, None, None]) / std[None, :, None, None]


def test_tags_in_metrics_json_and_event_file(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics, run_dir, _, _ = run
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["status"] == "completed"
    assert sorted(k for k in on_disk if k.startswith("shift_c/")) == sorted(TAGS)
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    for tag in TAGS:
        assert isinstance(on_disk[tag], float) and np.isfinite(on_disk[tag]), tag
        (event,) = events.Scalars(tag)
        assert event.value == pytest.approx(on_disk[tag], rel=1e-6, abs=1e-7), tag
        assert event.step == events.Scalars("test/acc")[0].step
    assert on_disk == pytest.approx(metrics)


def test_values_recomputed_from_the_checkpoint_with_the_validation_temperature(run):
    """Every cell: the file's images and labels of that severity, normalised with the training part's statistics,
    the checkpoint's MLP in float64; ece_ts with the temperature fitted on the clean validation split."""
    from ceexp.data import CIFAR10DataModule

    metrics, run_dir, cfg, cells = run
    dm = CIFAR10DataModule(root=cfg.data.root, val_fraction=0.5, checksum=False)
    dm.setup()
    t = float(np.load(run_dir / "predictions.npz")["temperature"])
    assert t == pytest.approx(metrics["test/temperature"]) and 0.02 < t < 50  # fitted, not clamped to a bound
    for (corruption, severity), (images, labels) in cells.items():
        if severity not in SEVERITIES:
            continue
        expected = _metrics64(_mlp64(run_dir, _normalised64(dm.x_train.numpy(), images)), labels, t)
        tag = f"shift_c/{corruption}/s{severity}"
        assert metrics[f"{tag}/acc"] == pytest.approx(expected["acc"], abs=1e-9), tag
        assert metrics[f"{tag}/nll"] == pytest.approx(expected["nll"], rel=1e-4), tag
        assert metrics[f"{tag}/ece"] == pytest.approx(expected["ece"], abs=1e-4), tag
        assert metrics[f"{tag}/ece_ts"] == pytest.approx(expected["ece_ts"], abs=1e-4), tag


def test_the_clean_test_images_give_the_clean_test_metrics(run):
    """fog at severity 3 holds the test split itself: its values are test/acc, test/nll, test/ece, test/ece_ts."""
    metrics = run[0]
    tag = f"shift_c/fog/s{IDENTITY}"
    assert metrics[f"{tag}/acc"] == pytest.approx(metrics["test/acc"], abs=1e-9)
    assert metrics[f"{tag}/nll"] == pytest.approx(metrics["test/nll"], rel=1e-5)
    assert metrics[f"{tag}/ece"] == pytest.approx(metrics["test/ece"], abs=1e-5)
    assert metrics[f"{tag}/ece_ts"] == pytest.approx(metrics["test/ece_ts"], abs=1e-5)


def test_compare_draws_the_cifar_c_figure(run):
    from ceexp.compare import compare, write_report

    _, run_dir, _, _ = run
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- data=cifar10\n- shift_c=[fog,snow]\n")
    cmp = compare([run_dir.parent], metrics=["acc", "shift_c/fog/s5/ece"], n_resamples=20)
    written = {p.name for p in write_report(cmp)}
    assert "shift_c_calibration.png" in written and "shift_calibration.png" not in written


# -- names, files, refusals -------------------------------------------------------------------------------

def test_names_match_the_reader_and_the_downloads():
    from ceexp.data.formats import CIFAR_C_CORRUPTIONS
    from ceexp.download import RESOURCES

    assert CIFAR_C_NAMES == CIFAR_C_CORRUPTIONS
    assert CIFAR_C_SETS == {"ceexp.data.CIFAR10DataModule": "cifar10_c", "ceexp.data.CIFAR100DataModule": "cifar100_c"}
    assert [tuple(RESOURCES[s].files) for s in CIFAR_C_SETS.values()] == [(C10,), ("CIFAR-100-C.tar",)]


def _refusal(tmp_path: Path, argv: list[str]) -> str:
    folder = tmp_path / "offline"
    return {
        "digits": ("shift_c=['fog'] is invalid: expected data=cifar10 (CIFAR-10-C) or data=cifar100 (CIFAR-100-C), "
                   "the data with published corrupted copies, not DigitsDataModule"),
        "unknown": ("shift_c=['fog', 'haze'] is invalid: expected a list of CIFAR-C corruptions from gaussian_noise, "
                    "shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, snow, frost, fog, "
                    "brightness, contrast, elastic_transform, pixelate, jpeg_compression, speckle_noise, "
                    "gaussian_blur, spatter, saturate"),
        "missing": (f"shift_c=['fog'] is invalid: expected the file CIFAR-10-C.tar in {folder}/cifar10_c (missing); "
                    f"put it there, or pass data.download=true to fetch it (2.9 GB)"),
        "missing100": (f"shift_c=['snow'] is invalid: expected the file CIFAR-100-C.tar in {folder}/cifar100_c "
                       f"(missing); put it there, or pass data.download=true to fetch it (2.9 GB)"),
        "severity": ("shift_severities=[0, 6] is invalid: expected a non-empty list of severities, integers from 1 "
                     "to 5"),
    }[argv[0]]


REFUSED = {
    "digits": ["shift_c=[fog]"],
    "unknown": ["data=cifar10", "data.download=true", "shift_c=[fog,haze]"],
    "missing": ["data=cifar10", "data.root=offline", "shift_c=[fog]"],
    "missing100": ["data=cifar100", "data.root=offline", "shift_c=[snow]"],
    "severity": ["data=cifar10", "data.download=true", "shift_c=[fog]", "shift_severities=[0,6]"],
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_settings_are_refused_in_one_line(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        check_command_line(REFUSED[case])
    assert str(info.value) == _refusal(tmp_path.resolve(), [case])


def test_cli_refuses_before_training_exit_2_one_line(tmp_path):
    """Through scripts/train.py: not CIFAR, an unknown name, the tar missing offline, a severity out of range."""
    for case in ("digits", "unknown", "missing", "severity"):
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *REFUSED[case]], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.splitlines() == [f"error: {_refusal(tmp_path.resolve(), [case])}"]
    assert not (tmp_path / "outputs").exists()


def _data_cfg(root: Path, **extra) -> DictConfig:
    return OmegaConf.create({"_target_": "ceexp.data.CIFAR10DataModule", "root": str(root), "download": False,
                             "mirrors": None, "checksum": True, **extra})


def test_the_archive_is_checked_against_the_published_md5(tmp_path):
    from ceexp.robustness import cifar_c_archive

    x = np.zeros((2, 3, 32, 32), np.uint8)
    write_cifar_c(tmp_path / "cifar10_c", x, np.array([0, 1]))
    path = tmp_path / "cifar10_c" / C10
    with pytest.raises(ConfigError) as info:
        cifar_c_archive(_data_cfg(tmp_path), ["fog"])
    assert str(info.value) == (f"{path} is not the published file: its MD5 is {md5(path.read_bytes())}, not "
                               f"56bf5dcef84df0e2308c6dcbcbbd8499; delete it and pass data.download=true to fetch a "
                               f"good copy, or pass data.checksum=false to read it as it is")
    assert cifar_c_archive(_data_cfg(tmp_path, checksum=False), ["fog"]) == path


def test_download_fetches_the_archive_into_its_folder(server, tmp_path, monkeypatch):
    """data.download=true: the tar from a loopback mirror into <data.root>/cifar10_c/, MD5-checked."""
    from ceexp import download as dl
    from ceexp.robustness import cifar_c_archive

    url, files = server
    monkeypatch.setitem(dl.RESOURCES, "cifar10_c", dl.Resource({C10: md5(files[C10])}, ("http://unused",)))
    path = cifar_c_archive(_data_cfg(tmp_path / "root", download=True, mirrors=[f"{url}/good"]), ["fog"])
    assert path == tmp_path / "root" / "cifar10_c" / C10 and path.read_bytes() == files[C10]


def test_a_damaged_archive_is_one_line_naming_it(tmp_path):
    from ceexp.robustness import cifar_c_metrics

    x = np.zeros((2, 3, 32, 32), np.uint8)
    write_cifar_c(tmp_path, x, np.array([0, 1]))
    path = tmp_path / C10
    path.write_bytes(path.read_bytes()[:3000])
    dm = SimpleNamespace(n_classes=10, input_shape=(3, 32, 32))
    with pytest.raises(ConfigError) as info:
        cifar_c_metrics(None, None, dm, path, "fog", 1, None, None, 15)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    assert message.endswith("; delete it and pass data.download=true to fetch a good copy")
    # CIFAR-100-C's labels in CIFAR-10's place
    write_cifar_c(tmp_path, x, np.array([0, 1]))
    dm.n_classes = 1
    with pytest.raises(ConfigError, match="is not the CIFAR-C archive of this data: its labels reach"):
        cifar_c_metrics(None, None, dm, path, "fog", 3, None, None, 15)
