"""Robustness after testing (ceexp.robustness, issue #12): selective classification, OOD detection and distribution
shift, end to end on digits, every number read back from metrics.json and the event file and recomputed here from
the run's files (float64 numpy, sklearn); and the bad input refused before training."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ceexp.validation import CORRUPTION_NAMES, OOD_SETS, SEVERITY_RANGE, ConfigError, check_command_line
from tests.conftest import FAST, ROOT, make_cfg

SCRIPT = str(ROOT / "scripts" / "train.py")
SELECTIVE = [f"test/{m}{s}" for m in ("aurc", "eaurc", "augrc") for s in ("", "_ts")]
OOD = [f"ood/noise/{m}_{s}{t}" for m in ("auroc", "aupr", "fpr95") for s in ("msp", "entropy", "energy", "maxlogit")
       for t in ("", "_ts")]
SHIFT = [f"shift/gaussian_noise/s{k}/{m}" for k in (1, 5) for m in ("acc", "nll", "ece", "ece_ts")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One real 2-epoch run on digits with ood=[noise] shift=[gaussian_noise] at severities 1 and 5."""
    from ceexp.train import train

    run_dir = tmp_path_factory.mktemp("robust") / "run"
    cfg = make_cfg(run_dir, [*FAST, "ood=[noise]", "shift=[gaussian_noise]", "shift_severities=[1,5]"])
    return train(cfg), run_dir


def _mlp64(run_dir: Path, x: np.ndarray) -> np.ndarray:
    """The checkpoint's MLP (Linear -> ReLU ... -> Linear) applied in float64 numpy to inputs ``x`` ``(N, D)``."""
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    layers = sorted({k.rsplit(".", 1)[0] for k in state if k.startswith("model.net.")}, key=lambda k: int(k[10:]))
    h = x.reshape(len(x), -1).astype(np.float64)
    for i, name in enumerate(layers):
        h = h @ state[f"{name}.weight"].double().numpy().T + state[f"{name}.bias"].double().numpy()
        h = np.maximum(h, 0) if i < len(layers) - 1 else h
    return h


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _selective64(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AURC, E-AURC, AUGRC from their definitions, in float64 numpy, on the run's probabilities (the softmax of the
    float32 logits, as every metric of the run): the curve through one point per distinct confidence (ties accepted
    together), from (0, 0); the error fraction E(c) linear between points; AURC the integral of E(c) / c over
    (0, 1] by the midpoint rule on 2,000,000 cells, AUGRC the trapezoid of E."""
    p = torch.from_numpy(np.asarray(logits, dtype=np.float32)).softmax(dim=1).double().numpy()
    conf, wrong = p.max(1), (p.argmax(1) != labels)
    order = np.argsort(-conf, kind="stable")
    conf, wrong = conf[order], wrong[order]
    last = np.r_[conf[1:] != conf[:-1], True]  # the last sample of each tied group
    n = len(labels)
    coverage = np.r_[0.0, (np.arange(1, n + 1) / n)[last]]
    errors = np.r_[0.0, (np.cumsum(wrong) / n)[last]]
    c = (np.arange(2_000_000) + 0.5) / 2_000_000
    aurc = float(np.mean(np.interp(c, coverage, errors) / c))
    r = wrong.mean()
    oracle = r + (1 - r) * np.log(1 - r) if r < 1 else 1.0
    augrc = float(np.sum((errors[1:] + errors[:-1]) / 2 * np.diff(coverage)))
    return {"aurc": aurc, "eaurc": aurc - oracle, "augrc": augrc}


def _ece64(p: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    conf, correct = p.max(1), (p.argmax(1) == y)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    return float(sum(abs(correct[bins == b].sum() - conf[bins == b].sum()) for b in range(n_bins)) / len(y))


def test_tags_in_metrics_json_and_event_file(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics, run_dir = run
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["status"] == "completed"
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in SELECTIVE + OOD + SHIFT:
        assert isinstance(on_disk[tag], float) and np.isfinite(on_disk[tag]), tag
        assert tag in scalars, tag
        (event,) = events.Scalars(tag)
        assert event.value == pytest.approx(on_disk[tag], rel=1e-6, abs=1e-7), tag
        # logged with the test values, at their step
        assert event.step == events.Scalars("test/acc")[0].step
    assert on_disk == pytest.approx(metrics)


def test_selective_metrics_recomputed_from_predictions(run):
    metrics, run_dir = run
    saved = np.load(run_dir / "predictions.npz")
    logits, labels, t = saved["test_logits"], saved["test_labels"], float(saved["temperature"])
    for suffix, z in (("", logits), ("_ts", logits / np.float32(t))):
        expected = _selective64(z, labels)
        for name, value in expected.items():
            assert metrics[f"test/{name}{suffix}"] == pytest.approx(value, abs=2e-6), (name, suffix)


def test_ood_auroc_recomputed_with_sklearn_from_the_models_logits(run):
    """The noise set rebuilt here (ceexp.ood.noise_set's draws, put in pixel units 0..16 and normalised with the
    digits training split's statistics, recomputed from sklearn's data), the checkpoint's MLP in float64: its
    logits match ood_logits.npz and sklearn's AUROC of the MSP matches ood/noise/auroc_msp."""
    from sklearn.datasets import load_digits

    from ceexp.data.splits import split_indices
    from ceexp.ood import noise_set
    from ceexp.runs import read_ood_logits

    metrics, run_dir = run
    d = load_digits()
    train, _, test = split_indices(d.target, 0.2, 0.2, 0)
    pixels = d.data[train]
    mean, std = pixels.mean(), pixels.std()
    fractions = noise_set((1, 8, 8), len(test), seed=0).double().numpy().reshape(len(test), 64)
    noise = (fractions * 16 - mean) / std
    out_logits = _mlp64(run_dir, noise)
    assert np.allclose(read_ood_logits(run_dir)["noise"], out_logits, atol=1e-3)
    in_logits = _mlp64(run_dir, (d.data[test] - mean) / std)
    saved = np.load(run_dir / "predictions.npz")
    assert np.allclose(saved["test_logits"], in_logits, atol=1e-3)
    s_in, s_out = _softmax(in_logits).max(1), _softmax(out_logits).max(1)
    auroc = roc_auc_score(np.r_[np.ones(len(s_in)), np.zeros(len(s_out))], np.r_[s_in, s_out])
    assert metrics["ood/noise/auroc_msp"] == pytest.approx(auroc, abs=1e-6)
    t = float(saved["temperature"])
    s_in, s_out = _softmax(in_logits / t).max(1), _softmax(out_logits / t).max(1)
    auroc_ts = roc_auc_score(np.r_[np.ones(len(s_in)), np.zeros(len(s_out))], np.r_[s_in, s_out])
    assert metrics["ood/noise/auroc_msp_ts"] == pytest.approx(auroc_ts, abs=1e-6)


def test_shift_metrics_recomputed_from_the_corrupted_split(run):
    """The corrupted test split rebuilt from its seeds (ceexp.robustness.shift_seed, one generator per chunk), the
    checkpoint's MLP in float64: accuracy, NLL, ECE and ECE of logits / T (the clean validation temperature)."""
    from ceexp.data import DigitsDataModule
    from ceexp.robustness import CHUNK, pixel_space, shift_seed
    from ceexp.shift import corrupt

    metrics, run_dir = run
    dm = DigitsDataModule()
    dm.setup()
    t = float(np.load(run_dir / "predictions.npz")["temperature"])
    y = dm.y_test.numpy()
    for severity in (1, 5):
        parts = [corrupt(dm.x_test[i:i + CHUNK], "gaussian_noise", severity,
                         torch.Generator().manual_seed(shift_seed("gaussian_noise", severity, k)), pixel_space(dm))
                 for k, i in enumerate(range(0, len(y), CHUNK))]
        z = _mlp64(run_dir, torch.cat(parts).double().numpy())
        p = _softmax(z)
        tag = f"shift/gaussian_noise/s{severity}"
        assert metrics[f"{tag}/acc"] == pytest.approx((p.argmax(1) == y).mean(), abs=1e-9)
        assert metrics[f"{tag}/nll"] == pytest.approx(-np.log(p[np.arange(len(y)), y]).mean(), rel=1e-4)
        assert metrics[f"{tag}/ece"] == pytest.approx(_ece64(p, y), abs=1e-4)
        assert metrics[f"{tag}/ece_ts"] == pytest.approx(_ece64(_softmax(z / t), y), abs=1e-4)
    assert metrics["shift/gaussian_noise/s5/acc"] < metrics["shift/gaussian_noise/s1/acc"] <= metrics["test/acc"] + 0.02


def test_digits_pixel_space_gives_back_the_raw_pixels():
    """The embedded sets keep their normalisation: batches mapped to pixels are sklearn's 0..16 values / 16."""
    from sklearn.datasets import load_digits

    from ceexp.data import DigitsDataModule
    from ceexp.data.splits import split_indices
    from ceexp.robustness import pixel_space

    dm = DigitsDataModule()
    dm.setup()
    space = pixel_space(dm)
    assert space.max_value == 16 and space.shape == (1, 8, 8)
    d = load_digits()
    _, _, test = split_indices(d.target, 0.2, 0.2, 0)
    pixels = space.denormalise(dm.x_test.double())
    assert np.allclose(pixels.numpy().reshape(len(test), 64), d.data[test] / 16, atol=1e-6)


def test_compare_draws_the_robustness_figures(run):
    """The run as a folder of runs (its .hydra record written here, as Hydra would): the three figures."""
    from ceexp.compare import compare, write_report

    _, run_dir = run
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- ood=[noise]\n- shift=[gaussian_noise]\n")
    cmp = compare([run_dir.parent], metrics=["aurc", "ood/noise/auroc_msp", "shift/gaussian_noise/s5/ece"],
                  n_resamples=50)
    written = {p.name for p in write_report(cmp)}
    assert {"risk_coverage.png", "ood_scores_noise.png", "shift_calibration.png"} <= written
    from ceexp.compare import best_direction

    assert best_direction("ood/noise/auroc_msp_ts") == "max" and best_direction("ood/svhn/fpr95_energy") == "min"
    assert best_direction("test/aurc") == "min" and best_direction("shift/contrast/s3/acc") == "max"


def test_names_match_the_modules_that_define_them():
    from ceexp.shift import CORRUPTIONS, SEVERITIES

    assert CORRUPTION_NAMES == tuple(CORRUPTIONS)
    assert SEVERITY_RANGE == (min(SEVERITIES), max(SEVERITIES))
    assert set(OOD_SETS) == {"noise", "mnist", "fashion_mnist", "svhn"}


@pytest.mark.parametrize("argv, message", [
    (["ood=[cifar]"], "ood=['cifar'] is invalid: expected a list of OOD sets from noise, mnist, fashion_mnist, svhn"),
    (["shift=[fog]"], "shift=['fog'] is invalid: expected a list of corruptions from gaussian_noise, shot_noise, "
                      "impulse_noise, gaussian_blur, contrast, brightness, pixelate, rotation"),
    (["ood=[fashion_mnist]"], "ood=['fashion_mnist'] is invalid: expected OOD sets of the model's input shape (64,) "
                              "(DigitsDataModule): fashion_mnist has shape (1, 28, 28); noise fits any data"),
    (["data=cifar10", "data.download=true", "ood=[mnist]"],
     "ood=['mnist'] is invalid: expected OOD sets of the model's input shape (3, 32, 32) (CIFAR10DataModule): mnist "
     "has shape (1, 28, 28); noise fits any data"),
    (["data=mnist_5k", "ood=[mnist]"], "ood=['mnist'] is invalid: expected sets other than the training data's own "
                                       "distribution: MNIST5kDataModule is mnist"),
    (["shift_severities=[0,3]"], "shift_severities=[0, 3] is invalid: expected a non-empty list of severities, "
                                 "integers from 1 to 5"),
    (["shift_severities=[]"], "shift_severities=[] is invalid: expected a non-empty list of severities, integers "
                              "from 1 to 5"),
    (["shift=[rotation]"], "shift=['rotation'] is invalid: expected corruptions that apply to the images: rotation "
                           "needs 28x28 grey images (MNIST-like), DigitsDataModule has (1, 8, 8)"),
    (["data=breast_cancer", "shift=[contrast]"], "shift=['contrast'] is invalid: expected image data: "
                                                 "BreastCancerDataModule is tabular (corruptions act on pixels)"),
])
def test_bad_robustness_settings_are_refused_in_one_line(argv, message):
    with pytest.raises(ConfigError) as info:
        check_command_line(argv)
    assert str(info.value) == message


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_refuses_before_training_exit_2_one_line(tmp_path):
    """Through the command line: an unknown corruption, shapes that differ, severities outside 1-5, and OOD files
    missing offline (naming the files, the folder and the switch that fetches them); no run folder."""
    cases = [
        (["shift=[fog,contrast]"], "error: shift=['fog', 'contrast'] is invalid: expected a list of corruptions from "
                                   "gaussian_noise, shot_noise, impulse_noise, gaussian_blur, contrast, brightness, "
                                   "pixelate, rotation"),
        (["data=mnist_5k", "ood=[noise,svhn]"],
         "error: ood=['noise', 'svhn'] is invalid: expected OOD sets of the model's input shape (1, 28, 28) "
         "(MNIST5kDataModule): svhn has shape (3, 32, 32); noise fits any data"),
        (["shift_severities=[1,6]"], "error: shift_severities=[1, 6] is invalid: expected a non-empty list of "
                                     "severities, integers from 1 to 5"),
        (["data=mnist", "data.root=offline", "ood=[fashion_mnist]"],
         f"error: ood=['fashion_mnist'] is invalid: expected the fashion_mnist files t10k-images-idx3-ubyte.gz in "
         f"{tmp_path.resolve()}/offline/fashion_mnist (missing); put them there, or pass data.download=true to fetch "
         f"them"),
    ]
    for args, line in cases:
        proc = _cli(*args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.splitlines() == [line]
    assert not (tmp_path / "outputs").exists()


def test_missing_ood_files_of_embedded_data_name_the_call_that_fetches_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path.resolve() / "data" / "fashion_mnist"
    with pytest.raises(ConfigError) as info:
        check_command_line(["data=mnist_5k", "ood=[fashion_mnist]"])
    assert str(info.value) == (
        f"ood=['fashion_mnist'] is invalid: expected the fashion_mnist files t10k-images-idx3-ubyte.gz in {folder} "
        f"(missing); put them there, or fetch them: python -c \"from ceexp.download import download; "
        f"download('fashion_mnist', '{folder}')\"")
