"""``scripts/compare.py`` on real sweeps (a 2 x 2 grid, loss x seed, and a sweep with one poisoned cell) and on
fake sweeps built here (job folders with ``.hydra/``, ``metrics.json`` and ``predictions.npz``, no training).

The expected numbers are computed here from the jobs' own ``metrics.json`` with float64 numpy
(``np.std(ddof=1)``), scipy and statsmodels, and from the predictions with the plain ``ceexp.metrics`` functions
on explicitly resampled rows, not with the code under test.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml

from ceexp.compare import DEFAULT_METRICS, best_direction, main, read_curve
from ceexp.stats import best_of
from tests.conftest import ROOT

PNG = b"\x89PNG\r\n\x1a\n"
# 2 epochs (so the curves have a line), big batches, no progress bar, no per-epoch diagram: seconds a job
FAST = ["trainer.max_epochs=2", "data.batch_size=256", "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false", "diagram_every_n_epochs=0"]
FIGURES = ["intervals.png", "val_nll.png", "ece_vs_acc.png", "ece_temperature_scaling.png",
           "reliability_1_loss=ce.png", "reliability_2_loss=focal.png",
           "calibration_ranks.png", "risk_coverage.png"]  # predictions.npz; no ood_logits.npz, no shift/ tags


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Two real multiruns, launched side by side: ``grid`` (loss=ce,focal x seed=0,1) and ``poisoned``
    (loss=focal, loss.gamma=-1,1: gamma=-1 fails validation). Returns (grid, poisoned, poisoned's output)."""
    root = tmp_path_factory.mktemp("sweeps")
    grid, poisoned = root / "grid", root / "poisoned"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}  # two processes on two cores
    commands = [
        ["loss=ce,focal", "seed=0,1", f"hydra.sweep.dir={grid}"],
        ["loss=focal", "loss.gamma=-1,1", f"hydra.sweep.dir={poisoned}"],  # the failure first: the sweep goes on
    ]
    procs = [subprocess.Popen([sys.executable, "scripts/train.py", "-m", *FAST, *c], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for c in commands]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert procs[0].returncode == 0, outputs[0][-3000:]
    assert procs[1].returncode == 1, outputs[1][-3000:]  # the sweep went on, and reports its failed job
    return grid, poisoned, outputs[1]


def _copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints")))


@pytest.fixture
def grid(sweeps, tmp_path) -> Path:
    """A private copy of the 2 x 2 sweep (compare writes into it)."""
    return _copy(sweeps[0], tmp_path / "grid")


def _jobs(folder: Path) -> list[tuple[dict, dict]]:
    """(overrides as a dict, metrics.json) of every job folder under ``folder``."""
    out = []
    for hydra_dir in sorted(folder.rglob(".hydra")):
        lines = yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or []
        overrides = dict(line.split("=", 1) for line in lines)
        metrics = json.loads((hydra_dir.parent / "metrics.json").read_text())
        out.append((overrides, metrics))
    return out


def _expected(jobs: list[tuple[dict, dict]], key: str, tags) -> dict[str, dict[str, tuple[float, float, int]]]:
    """value of ``key`` -> tag -> (mean, sample std, n), float64 numpy."""
    out: dict[str, dict] = {}
    for value in sorted({o[key] for o, _ in jobs}):
        runs = [m for o, m in jobs if o[key] == value and m["status"] == "completed"]
        out[value] = {}
        for tag in tags:
            x = np.array([m[tag] for m in runs], dtype=np.float64)
            out[value][tag] = (x.mean(), x.std(ddof=1), len(x))
    return out


def _read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_cli_table_matches_metrics_json(grid):
    expected = _expected(_jobs(grid), "loss", DEFAULT_METRICS)
    result = subprocess.run([sys.executable, "scripts/compare.py", str(grid)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]

    rows = {r["loss"]: r for r in _read_csv(grid / "comparison.csv")}
    assert set(rows) == {"ce", "focal"}
    md = (grid / "comparison.md").read_text()
    for loss, stats in expected.items():
        assert rows[loss]["group"] == f"loss={loss}" and rows[loss]["n"] == "2"
        for tag, (mean, std, n) in stats.items():
            assert float(rows[loss][f"{tag}_mean"]) == pytest.approx(mean, rel=1e-12, abs=1e-15), tag
            assert float(rows[loss][f"{tag}_std"]) == pytest.approx(std, rel=1e-9, abs=1e-15), tag
            assert int(rows[loss][f"{tag}_n"]) == n == 2
            cell = f"{mean:.4f} ± {std:.4f}"
            assert cell in result.stdout and cell in md, (tag, cell)

    # marks (changed by design: a mark now needs a test). Per column the best-mean group by the per-run score
    # (accuracy: highest; temperature: smallest |log T|; others: lowest) is tested against the other group,
    # paired by seed (ttest_rel on the scores; Holm over a family of one is the p-value itself): bold and * when
    # p < 0.05, else both groups tied (≈, not bold)
    def score(tag, x):
        x = np.asarray(x, dtype=np.float64)
        return -x if tag == "test/acc" else np.abs(np.log(x)) if tag == "test/temperature" else x

    runs = {loss: {o["seed"]: m for o, m in _jobs(grid) if o["loss"] == loss} for loss in ("ce", "focal")}
    for tag in ("test/acc", "test/ece", "test/temperature"):
        scores = {loss: score(tag, [runs[loss][s][tag] for s in ("0", "1")]) for loss in runs}
        best = min(scores, key=lambda loss: scores[loss].mean())
        other = next(loss for loss in scores if loss != best)
        from scipy.stats import ttest_rel

        p = ttest_rel(scores[best], scores[other]).pvalue
        mean, std, _ = expected[best][tag]
        if p < 0.05:
            assert f"**{mean:.4f} ± {std:.4f}**" in md and rows[best][f"{tag}_mark"] == "best", tag
            assert rows[other][f"{tag}_mark"] == ""
        else:
            assert f"**{mean:.4f} ± {std:.4f}**" not in md, tag
            assert rows[best][f"{tag}_mark"] == rows[other][f"{tag}_mark"] == "tied", tag

    figures = grid / "comparison"
    assert sorted(p.name for p in figures.iterdir()) == sorted(FIGURES)
    from matplotlib.image import imread

    for name in FIGURES:
        assert (figures / name).read_bytes()[:8] == PNG, name
        height, width, _ = imread(str(figures / name)).shape
        assert height > 300 and width > 500, name
        assert f"(comparison/{name})" in md


def test_curves_are_read_per_epoch(grid):
    for hydra_dir in grid.glob("*/.hydra"):
        job = hydra_dir.parent
        curve = read_curve(job, "val/nll")
        assert list(curve.index) == [1, 2]  # epochs, counted from 1
        # the last epoch's value is the final val/nll of metrics.json (both float32 from the same tensor)
        final = json.loads((job / "metrics.json").read_text())["val/nll"]
        assert curve.iloc[-1] == pytest.approx(final, rel=1e-6)


def test_failed_job_is_listed(sweeps, tmp_path, capsys):
    poisoned = _copy(sweeps[1], tmp_path / "poisoned")
    records = {o["loss.gamma"]: m for o, m in _jobs(poisoned)}
    assert records["-1"]["status"] == "failed", sweeps[2][-3000:]
    assert records["1"]["status"] == "completed"

    assert main([str(poisoned)]) == 0
    out = capsys.readouterr().out
    assert "1 jobs left out" in out and "loss.gamma=-1 is invalid" in out
    md = (poisoned / "comparison.md").read_text()
    assert "## Jobs left out" in md and "| failed | ConfigError: loss.gamma=-1 is invalid" in md
    rows = {r["loss.gamma"]: r for r in _read_csv(poisoned / "comparison.csv")}
    assert (rows["-1"]["n"], rows["-1"]["left_out"], rows["-1"]["test/acc_n"]) == ("0", "1", "0")
    assert rows["1"]["n"] == "1"
    assert float(rows["1"]["test/acc_mean"]) == pytest.approx(records["1"]["test/acc"], rel=1e-12)
    # one group has a drawing: its reliability diagrams; the failed group has none
    assert sorted(p.name for p in (poisoned / "comparison").glob("reliability_*")) == ["reliability_1_loss.gamma=1.png"]


def test_folder_of_single_runs(sweeps, tmp_path, capsys):
    """outputs/runs/<date>/<time>_<loss>/ layout; one run made a default run (no overrides at all): its
    loss, seed and trainer settings come from its own .hydra record, so it groups with loss=ce."""
    day = tmp_path / "runs" / "2026-01-01"
    jobs = sorted(sweeps[0].glob("*/.hydra"))
    for i, hydra_dir in enumerate(jobs):
        loss = "ce" if "loss=ce" in hydra_dir.parent.name else "focal"
        run = _copy(hydra_dir.parent, day / f"10-00-0{i}.000000_{loss}")
        if i == 0:
            (run / ".hydra" / "overrides.yaml").write_text("[]\n")
    expected = _expected(_jobs(sweeps[0]), "loss", ["test/ece"])

    assert main([str(day.parent), "--metrics", "ece"]) == 0
    rows = {r["loss"]: r for r in _read_csv(day.parent / "comparison.csv")}
    assert set(rows) == {"ce", "focal"}
    for loss, stats in expected.items():
        mean, std, n = stats["test/ece"]
        assert int(rows[loss]["n"]) == n
        assert float(rows[loss]["test/ece_mean"]) == pytest.approx(mean, rel=1e-12)
        assert float(rows[loss]["test/ece_std"]) == pytest.approx(std, rel=1e-9)
    assert "trainer.max_epochs=2" in capsys.readouterr().out  # a common setting, the default run included


def test_metrics_and_by_options(grid):
    assert main([str(grid), "--metrics", "ece,val/nll", "acc", "--by", "seed"]) == 0
    rows = {r["seed"]: r for r in _read_csv(grid / "comparison.csv")}
    tags = ["test/ece", "val/nll", "test/acc"]
    assert [c for c in rows["0"] if c.endswith("_mean")] == [f"{t}_mean" for t in tags]
    for seed, stats in _expected(_jobs(grid), "seed", tags).items():
        for tag, (mean, std, n) in stats.items():
            assert float(rows[seed][f"{tag}_mean"]) == pytest.approx(mean, rel=1e-12)
            assert float(rows[seed][f"{tag}_std"]) == pytest.approx(std, rel=1e-9)
            assert int(rows[seed][f"{tag}_n"]) == n == 2


@pytest.mark.parametrize("case", ["missing", "empty", "not a sweep", "only failed", "unknown metric", "unknown key"])
def test_bad_input_one_line_exit_2_nothing_written(case, sweeps, tmp_path, capsys):
    folder = tmp_path / "input"
    args: list[str] = []
    if case == "missing":
        folder = tmp_path / "nowhere"
    elif case == "empty":
        folder.mkdir()
    elif case == "not a sweep":
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "notes.txt").write_text("no runs here\n")
    elif case == "only failed":
        failed = next(p.parent for p in sweeps[1].glob("*/.hydra") if "loss.gamma=-1" in p.parent.name)
        _copy(failed, folder / failed.name)
    else:
        _copy(sweeps[0], folder)
        args = ["--metrics", "acc", "not_a_metric"] if case == "unknown metric" else ["--by", "loss,optimizer.nope"]
    before = _files(folder) if folder.exists() else None

    assert main([str(folder), *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert {"missing": "does not exist", "empty": "no job folders", "not a sweep": "no job folders",
            "only failed": "no completed job", "unknown metric": "--metrics not_a_metric is not a known metric",
            "unknown key": "--by optimizer.nope is not a setting of any job"}[case] in lines[0]
    assert captured.out == ""
    assert (_files(folder) if folder.exists() else None) == before


def test_cli_bad_input_exit_code(tmp_path):
    result = subprocess.run([sys.executable, "scripts/compare.py", str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no job folders") and result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_best_rules():
    assert [best_direction(t) for t in ("test/acc", "test/acc_ts", "test/ece_ts", "val/nll", "test/temperature",
                                        "test/confidence", "test/ece_signed", "test/ece_signed_ts")] == \
        ["max", "max", "min", "min", "one", None, "zero", "zero"]
    assert best_of([0.90, 0.92, 0.92], "max") == {1, 2}
    assert best_of([0.05, float("nan"), 0.03], "min") == {2}
    # temperature: closest to 1 on a log scale (T and 1/T equally far)
    assert best_of([0.5, 1.9, 2.1], "one") == {1}  # |log| 0.69, 0.64, 0.74
    assert best_of([0.45, 2.1], "one") == {1}  # |log 0.45| = 0.80 > log 2.1 = 0.74
    assert best_of([0.5, 2.0], "one") == {0, 1}
    assert best_of([float("nan")], "min") == set() and best_of([0.2, 0.8], None) == set()
    assert best_of([0.0, float("nan")], "one") == set()
    # signed ECE: closest to 0
    assert best_of([-0.01, 0.02, 0.015], "zero") == {0}


# ---------------------------------------------------------------------------------------------------------
# fake sweeps: job folders written here (no training), with predictions.npz

N_TEST, N_CLASSES = 240, 4
# per loss: (logit noise, boost of the true class): mse is clearly better calibrated and more accurate
QUALITY = {"ce": (1.0, 1.0), "focal": (1.0, 1.0), "mse": (0.6, 2.5)}


def _logits(loss: str, seed: int, labels: np.ndarray) -> np.ndarray:
    noise, boost = QUALITY[loss]
    rng = np.random.default_rng([sorted(QUALITY).index(loss), seed])
    z = (noise * 2 * rng.normal(size=(len(labels), N_CLASSES))).astype(np.float32)
    z[np.arange(len(labels)), labels] += boost
    return z


def _record(z: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """metrics.json as the run writes it: float32 probabilities, ceexp.metrics."""
    import torch

    from ceexp import metrics as M

    logits, y = torch.from_numpy(z), torch.from_numpy(labels)
    probs, probs_ts = logits.softmax(dim=1), (logits / temperature).softmax(dim=1)
    return {"status": "completed", "test/acc": float((probs.argmax(1) == y).double().mean()),
            "test/nll": float(M.negative_log_likelihood(logits, y)),
            "test/ece": float(M.expected_calibration_error(probs, y)),
            "test/ece_ts": float(M.expected_calibration_error(probs_ts, y)), "test/temperature": temperature}


def _fake_job(folder: Path, overrides: dict, record: dict | None, predictions: tuple | None = None,
              config: dict | None = None) -> None:
    from ceexp.files import write_json
    from ceexp.runs import write_predictions

    hydra = folder / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "overrides.yaml").write_text(yaml.safe_dump([f"{k}={v}" for k, v in overrides.items()]))
    (hydra / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "n_bins": 15, **(config or {})}))
    choices = {"loss": overrides.get("loss", "ce")}
    (hydra / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    if record is not None:
        write_json(folder / "metrics.json", record)
    if predictions is not None:
        write_predictions(folder, *predictions)


def _fake_sweep(root: Path, losses=("focal", "ce", "mse"), seeds=(0, 1, 2), predictions: bool = True,
                drop: Sequence[str] = (), config: dict | None = None) -> dict:
    """A sweep folder of loss x seed jobs on one shared test split; returns {(loss, seed): (logits, record)}."""
    labels = np.random.default_rng(0).integers(0, N_CLASSES, N_TEST)
    out = {}
    for i, (loss, seed) in enumerate((loss, seed) for loss in losses for seed in seeds):
        z = _logits(loss, seed, labels)
        temperature = 1.2 + 0.3 * sorted(QUALITY).index(loss) + 0.02 * seed * (1 + sorted(QUALITY).index(loss))
        record = {k: v for k, v in _record(z, labels, temperature).items() if k not in drop}
        preds = (z[:20], labels[:20], z, labels, temperature) if predictions else None
        _fake_job(root / f"{i}_loss={loss},seed={seed}", {"loss": loss, "seed": seed}, record, preds, config)
        out[(loss, seed)] = (z, record)
    out["labels"] = labels
    return out


def _plain_ece(z: np.ndarray, labels: np.ndarray, temperature: float | None = None) -> float:
    import torch

    from ceexp import metrics as M

    logits = torch.from_numpy(z) if temperature is None else torch.from_numpy(z) / temperature
    return float(M.expected_calibration_error(logits.softmax(dim=1), torch.from_numpy(labels)))


def test_fake_sweep_intervals_differences_p_values_and_marks(tmp_path, capsys):
    from scipy import stats as sps
    from statsmodels.stats.multitest import multipletests

    from ceexp import bootstrap as bs

    root = tmp_path / "sweep"
    jobs = _fake_sweep(root)
    labels = jobs["labels"]
    resamples = 80
    assert main([str(root), "--metrics", "acc", "ece", "temperature", "--resamples", str(resamples)]) == 0
    out = capsys.readouterr().out
    rows = {r["loss"]: r for r in _read_csv(root / "comparison.csv")}
    assert list(rows) == ["focal", "ce", "mse"]
    seeds = (0, 1, 2)
    values = {(loss, tag): np.array([jobs[(loss, s)][1][tag] for s in seeds]) for loss in rows
              for tag in ("test/acc", "test/ece", "test/temperature")}

    # the columns of the contract, in order
    stats_columns = ["mean", "std", "n", "ci_low", "ci_high", "diff", "diff_ci_low", "diff_ci_high", "p", "mark"]
    assert list(rows["ce"])[:4] == ["group", "loss", "n", "left_out"]
    assert list(rows["ce"])[4:14] == [f"test/acc_{c}" for c in stats_columns]

    # means and std from metrics.json
    for (loss, tag), x in values.items():
        assert float(rows[loss][f"{tag}_mean"]) == pytest.approx(x.mean(), rel=1e-12)
        assert float(rows[loss][f"{tag}_std"]) == pytest.approx(x.std(ddof=1), rel=1e-9)

    # ECE intervals: the two-level bootstrap rebuilt by hand: the plain metric on explicitly resampled test rows
    # (the resamples of the shared split, replicate r for every run), the seeds drawn with replacement
    resampler = bs.Resampler(N_TEST, 0, bs.split_stream(labels))
    draws = bs.seed_draws(3, resamples, 0, bs.keys_stream([f"seed={s}" for s in seeds]))
    group_reps = {}
    for loss in rows:
        per_run = np.array([[_plain_ece(jobs[(loss, s)][0][idx], labels[idx]) for idx in
                             (resampler.indices(r) for r in range(resamples))] for s in seeds])
        group_reps[loss] = per_run[draws, np.arange(resamples)[:, None]].mean(axis=1)
        # the basic interval: the quantiles reflected about the group's mean, (2 m - q97.5, 2 m - q2.5), >= 0
        q_low, q_high = np.percentile(group_reps[loss], [2.5, 97.5])
        m = values[(loss, "test/ece")].mean()
        low, high = max(2 * m - q_high, 0.0), max(2 * m - q_low, 0.0)
        # the plain function returns float32 for float32 probabilities: agreement to its precision
        assert float(rows[loss]["test/ece_ci_low"]) == pytest.approx(low, rel=1e-6)
        assert float(rows[loss]["test/ece_ci_high"]) == pytest.approx(high, rel=1e-6)
    # the reference is the cross-entropy group although it is not the first; differences paired (same draws)
    assert float(rows["ce"]["test/ece_diff"]) == 0.0 and rows["ce"]["test/ece_p"] == ""
    for loss in ("focal", "mse"):
        q_low, q_high = np.percentile(group_reps[loss] - group_reps["ce"], [2.5, 97.5])
        d = values[(loss, "test/ece")].mean() - values[("ce", "test/ece")].mean()
        low, high = 2 * d - q_high, 2 * d - q_low
        assert float(rows[loss]["test/ece_diff_ci_low"]) == pytest.approx(low, rel=1e-5, abs=1e-7)
        assert float(rows[loss]["test/ece_diff_ci_high"]) == pytest.approx(high, rel=1e-5, abs=1e-7)
        assert float(rows[loss]["test/ece_diff"]) == pytest.approx(
            values[(loss, "test/ece")].mean() - values[("ce", "test/ece")].mean(), rel=1e-12)

    # p-values: paired t-tests over the seeds against ce, Holm across the two groups (scipy, statsmodels)
    for tag in ("test/acc", "test/ece", "test/temperature"):
        raw = [sps.ttest_rel(values[(loss, tag)], values[("ce", tag)]).pvalue for loss in ("focal", "mse")]
        holm = multipletests(raw, method="holm")[1]
        assert [float(rows[loss][f"{tag}_p"]) for loss in ("focal", "mse")] == pytest.approx(holm, rel=1e-12)

    # marks: mse is clearly best in acc and ECE (tested against both others, Holm); temperature: ce is closest to 1
    for tag, score in (("test/acc", lambda x: -x), ("test/ece", lambda x: x),
                       ("test/temperature", lambda x: np.abs(np.log(x)))):
        means = {loss: score(values[(loss, tag)]).mean() for loss in rows}
        best = min(means, key=means.get)
        others = [loss for loss in rows if loss != best]
        adjusted = multipletests([sps.ttest_rel(score(values[(best, tag)]), score(values[(o, tag)])).pvalue
                                  for o in others], method="holm")[1]
        if all(adjusted < 0.05):
            expected_marks = {best: "best", **{o: "" for o in others}}
        else:
            expected_marks = {best: "tied", **{o: "tied" if a >= 0.05 else "" for o, a in zip(others, adjusted)}}
        assert {loss: rows[loss][f"{tag}_mark"] for loss in rows} == expected_marks, tag
    assert rows["mse"]["test/ece_mark"] == "best" and rows["mse"]["test/acc_mark"] == "best"

    # temperature: fitted on validation data, so a t-interval over the seeds
    for loss in rows:
        x = values[(loss, "test/temperature")]
        low, high = sps.t.interval(0.95, df=2, loc=x.mean(), scale=x.std(ddof=1) / math.sqrt(3))
        assert float(rows[loss]["test/temperature_ci_low"]) == pytest.approx(low, rel=1e-9)
        assert float(rows[loss]["test/temperature_ci_high"]) == pytest.approx(high, rel=1e-9)

    md = (root / "comparison.md").read_text()
    mean, std = values[("mse", "test/ece")].mean(), values[("mse", "test/ece")].std(ddof=1)
    q_low, q_high = np.percentile(group_reps["mse"], [2.5, 97.5])
    low, high = max(2 * mean - q_high, 0.0), max(2 * mean - q_low, 0.0)
    assert f"**{mean:.4f} ± {std:.4f}** [{low:.4f}, {high:.4f}] *" in md
    assert f"{mean:.4f} ± {std:.4f} *" in out and f"[{low:.4f}, {high:.4f}]" in out
    assert "## Difference to loss=ce" in md and "Difference to loss=ce (the reference)" in out
    assert "temperature (not computable from test predictions): seed-level statistics only" in md
    assert "paired t-test (ttest_rel): loss=focal, loss=mse" in md
    assert (root / "comparison" / "intervals.png").read_bytes()[:8] == PNG


def test_metric_added_after_the_sweep_is_recomputed(tmp_path, capsys):
    """metrics.json without ece_debiased and smece (a sweep older than them): recomputed from predictions.npz,
    with the run's own n_bins."""
    import torch

    from ceexp import metrics as M

    root = tmp_path / "old"
    jobs = _fake_sweep(root, losses=("ce", "mse"), seeds=(0, 1), config={"n_bins": 10})
    labels = torch.from_numpy(jobs["labels"])
    assert main([str(root), "--metrics", "ece_debiased,smece", "--resamples", "8"]) == 0
    rows = {r["loss"]: r for r in _read_csv(root / "comparison.csv")}
    for loss in ("ce", "mse"):
        probs = [torch.from_numpy(jobs[(loss, s)][0]).softmax(dim=1) for s in (0, 1)]
        debiased = [float(M.debiased_ece(p, labels, n_bins=10)) for p in probs]
        smooth = [float(M.smooth_ece(p, labels)) for p in probs]
        assert float(rows[loss]["test/ece_debiased_mean"]) == pytest.approx(np.mean(debiased), rel=1e-6)
        assert float(rows[loss]["test/smece_mean"]) == pytest.approx(np.mean(smooth), rel=1e-6)
        assert float(rows[loss]["test/smece_ci_low"]) <= float(rows[loss]["test/smece_ci_high"])
    md = (root / "comparison.md").read_text()
    assert "recomputed from predictions.npz (not in every run's metrics.json): ece_debiased, smece" in md
    assert "smece: computed one resample at a time, 8 resamples" in md


def test_without_predictions_seed_level_statistics_only(tmp_path):
    from scipy import stats as sps

    root = tmp_path / "bare"
    jobs = _fake_sweep(root, losses=("ce", "mse"), predictions=False)
    assert main([str(root), "--metrics", "ece"]) == 0
    rows = {r["loss"]: r for r in _read_csv(root / "comparison.csv")}
    x = {loss: np.array([jobs[(loss, s)][1]["test/ece"] for s in (0, 1, 2)]) for loss in ("ce", "mse")}
    low, high = sps.t.interval(0.95, df=2, loc=x["mse"].mean(), scale=sps.sem(x["mse"]))
    assert float(rows["mse"]["test/ece_ci_low"]) == pytest.approx(low, rel=1e-9)
    assert float(rows["mse"]["test/ece_ci_high"]) == pytest.approx(high, rel=1e-9)
    result = sps.ttest_rel(x["mse"], x["ce"])
    assert float(rows["mse"]["test/ece_p"]) == pytest.approx(result.pvalue, rel=1e-12)
    ci = result.confidence_interval(0.95)
    assert float(rows["mse"]["test/ece_diff_ci_low"]) == pytest.approx(ci.low, rel=1e-9)
    md = (root / "comparison.md").read_text()
    assert "ece (no predictions.npz): seed-level statistics only, a t-interval over seeds (scipy.stats.t)" in md


def test_one_run_per_group(tmp_path):
    """n = 1: the intervals come from the test-sample bootstrap alone (said in the footer); the p-value is the
    paired permutation test over test samples."""
    root = tmp_path / "single"
    _fake_sweep(root, losses=("ce", "mse"), seeds=(0,))
    assert main([str(root), "--metrics", "ece", "--resamples", "100"]) == 0
    rows = {r["loss"]: r for r in _read_csv(root / "comparison.csv")}
    assert rows["ce"]["test/ece_std"] == ""
    low, mean, high = (float(rows["ce"][f"test/ece_{s}"]) for s in ("ci_low", "mean", "ci_high"))
    assert low < mean < high
    assert 0 < float(rows["mse"]["test/ece_p"]) < 0.01 and rows["mse"]["test/ece_mark"] == "best"
    md = (root / "comparison.md").read_text()
    assert "one run in loss=ce, loss=mse: the interval is the test-sample bootstrap alone" in md
    assert "paired permutation test over test samples" in md


def test_published_numbers_table(tmp_path, capsys):
    expected = {"source": "Made-up et al. 2020, Table 1", "key": "loss",
                "values": {"ce": {"test/ece": 0.05, "test/acc": 0.5}, "mse": {"test/nll": 9.0}}}
    root = tmp_path / "paper"
    jobs = _fake_sweep(root, losses=("ce", "mse"), config={"expected": expected})
    assert main([str(root), "--metrics", "ece", "--resamples", "50"]) == 0
    out = capsys.readouterr().out
    md = (root / "comparison.md").read_text()
    assert "## Published numbers: Made-up et al. 2020, Table 1" in md and "Published numbers: Made-up" in out
    rows = {r["loss"]: r for r in _read_csv(root / "comparison.csv")}
    ece = np.mean([jobs[("ce", s)][1]["test/ece"] for s in (0, 1, 2)])
    low, high = float(rows["ce"]["test/ece_ci_low"]), float(rows["ce"]["test/ece_ci_high"])
    inside = "yes" if low <= 0.05 <= high else "no"
    assert f"| loss=ce | ece | {ece:.4f} [{low:.4f}, {high:.4f}] | 0.0500 | {ece - 0.05:+.4f} | {inside} |" in md
    # acc and nll are not in --metrics but are published: measured anyway, with t-free bootstrap intervals
    acc = np.mean([jobs[("ce", s)][1]["test/acc"] for s in (0, 1, 2)])
    assert f"| loss=ce | acc | {acc:.4f} [" in md and "| 0.5000 | " in md
    nll = np.mean([jobs[("mse", s)][1]["test/nll"] for s in (0, 1, 2)])
    assert f"| loss=mse | nll | {nll:.4f} [" in md and f"| 9.0000 | {nll - 9:+.4f} | no |" in md


def test_reference_option(tmp_path):
    root = tmp_path / "refs"
    _fake_sweep(root, losses=("focal", "mse"), seeds=(0, 1))
    assert main([str(root), "--metrics", "ece", "--resamples", "20"]) == 0  # no ce group: the first
    rows = {r["loss"]: r for r in _read_csv(root / "comparison.csv")}
    assert float(rows["focal"]["test/ece_diff"]) == 0.0 and rows["focal"]["test/ece_p"] == ""
    for ref in ("mse", "loss=mse"):
        assert main([str(root), "--metrics", "ece", "--resamples", "20", "--ref", ref]) == 0
        rows = {r["loss"]: r for r in _read_csv(root / "comparison.csv")}
        assert float(rows["mse"]["test/ece_diff"]) == 0.0 and rows["focal"]["test/ece_p"] != ""


@pytest.mark.parametrize("case", ["unknown metric", "unknown ref", "needs predictions", "bad resamples"])
def test_bad_input_on_fake_sweeps(case, tmp_path, capsys):
    root = tmp_path / "sweep"
    if case == "needs predictions":
        _fake_sweep(root, losses=("ce", "mse"), seeds=(0, 1))
        for job in ("1_loss=ce,seed=1", "3_loss=mse,seed=1"):
            (root / job / "predictions.npz").unlink()
        args = ["--metrics", "ece", "smece"]
    else:
        _fake_sweep(root, losses=("ce", "mse"), seeds=(0,))
        args = {"unknown metric": ["--metrics", "ece", "eec"], "unknown ref": ["--ref", "focal"],
                "bad resamples": ["--resamples", "0"]}[case]
    before = _files(root)
    assert main([str(root), *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert captured.out == "" and _files(root) == before
    expected = {
        "unknown metric": ["--metrics eec is not a known metric", "acc, nll, ece, ece_ts", "smece", "ece_debiased"],
        "unknown ref": ["--ref focal is not a group: expected one of loss=ce, loss=mse"],
        "needs predictions": ["--metrics smece is not in the metrics.json of 2 runs",
                              "1_loss=ce,seed=1, 3_loss=mse,seed=1"],
        "bad resamples": ["--resamples 0 is invalid"],
    }[case]
    for text in expected:
        assert text in lines[0], (text, lines[0])


def test_published_numbers_of_the_mukhoti_experiment(tmp_path):
    """The expected: block of configs/experiment/mukhoti_cifar10.yaml, on jobs that set +loss_preset=...: the
    cross-entropy preset is the reference although it comes second."""
    block = yaml.safe_load((ROOT / "configs" / "experiment" / "mukhoti_cifar10.yaml").read_text())["expected"]
    labels = np.random.default_rng(0).integers(0, N_CLASSES, N_TEST)
    records = {}
    for i, (preset, loss) in enumerate((p, l) for p, l in (("focal_3", "focal"), ("ce", "ce")) for _ in (0, 1)):
        seed = i % 2
        z = _logits(loss, seed, labels)
        records[(preset, seed)] = _record(z, labels, 1.5 + 0.1 * i)
        _fake_job(tmp_path / "sweep" / f"{i}_+loss_preset={preset},seed={seed}", {"+loss_preset": preset, "seed": seed},
                  records[(preset, seed)], (z[:20], labels[:20], z, labels, 1.5 + 0.1 * i), {"expected": block})
    assert main([str(tmp_path / "sweep"), "--resamples", "50"]) == 0
    md = (tmp_path / "sweep" / "comparison.md").read_text()
    assert f"## Published numbers: {block['source']}" in md and "## Difference to loss_preset=ce" in md
    for preset in ("ce", "focal_3"):
        for tag, published in block["values"][preset].items():
            mean = np.mean([records[(preset, s)][tag] for s in (0, 1)])
            assert f"| loss_preset={preset} | {tag.removeprefix('test/')} | {mean:.4f} " in md, (preset, tag)
            assert f"| {published:.4f} | {mean - published:+.4f} |" in md, (preset, tag)


# ---------------------------------------------------------------------------------------------------------
# reading run folders (ceexp.runs), symbolic links, incomparable groups


def test_compare_reads_run_folders_through_ceexp_runs(tmp_path, monkeypatch):
    """One owner of the run folder: compare reads metrics.json through ceexp.runs.read_metrics."""
    import ceexp.runs

    root = tmp_path / "sweep"
    jobs = _fake_sweep(root, losses=("ce", "mse"), seeds=(0, 1), predictions=False)
    read = ceexp.runs.read_metrics
    monkeypatch.setattr(ceexp.runs, "read_metrics", lambda path: {**read(path), "test/acc": 0.5 + 0.125 *
                                                                  ("loss=mse" in Path(path).name)})
    assert main([str(root), "--metrics", "acc,ece"]) == 0
    rows = {r["loss"]: r for r in _read_csv(root / "comparison.csv")}
    assert (float(rows["ce"]["test/acc_mean"]), float(rows["mse"]["test/acc_mean"])) == (0.5, 0.625)
    ece = np.mean([jobs[("mse", s)][1]["test/ece"] for s in (0, 1)])
    assert float(rows["mse"]["test/ece_mean"]) == pytest.approx(ece, rel=1e-12)


def test_run_folder_readers(tmp_path):
    from ceexp import runs

    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError):
        runs.read_metrics(run)
    assert (runs.read_overrides(run), runs.read_choices(run), runs.read_config(run), runs.read_hparams(run)) == \
        ([], {}, None, {})
    assert not runs.is_run(run) and not runs.has_predictions(run)
    _fake_job(run, {"loss": "focal", "seed": 3}, {"status": "completed", "test/acc": float("nan")})
    assert runs.is_run(run)
    assert runs.read_metrics(run) == {"status": "completed", "test/acc": None}  # NaN is written as null
    assert runs.read_overrides(run) == ["loss=focal", "seed=3"]
    assert runs.read_choices(run) == {"loss": "focal"} and runs.read_config(run).n_bins == 15
    (run / "metrics.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        runs.read_metrics(run)
    (run / "metrics.json").write_text('{"status": ')
    with pytest.raises(ValueError, match="metrics.json unreadable"):
        runs.read_metrics(run)
    (run / "hparams.yaml").write_text("loss: focal\nloss.gamma: 2.0\n")
    assert runs.read_hparams(run) == {"loss": "focal", "loss.gamma": 2.0}


def test_symbolic_links_are_followed(tmp_path, capsys):
    """A folder of links to runs is a folder of runs; a mix keeps every run; a link loop is searched once."""
    root = tmp_path / "sweep"
    jobs = _fake_sweep(root, losses=("ce", "mse"), seeds=(0, 1), predictions=False)
    names = sorted(p.name for p in root.iterdir())
    expected = {loss: np.mean([jobs[(loss, s)][1]["test/ece"] for s in (0, 1)]) for loss in ("ce", "mse")}

    links = tmp_path / "links"  # links only
    links.mkdir()
    for name in names:
        (links / name).symlink_to(root / name, target_is_directory=True)
    mixed = tmp_path / "mixed"  # two copies, two links, a link to a folder of links, and a loop
    mixed.mkdir()
    for name in names[:2]:
        shutil.copytree(root / name, mixed / name)
    (mixed / "more").mkdir()
    for name in names[2:]:
        (mixed / "more" / name).symlink_to(root / name, target_is_directory=True)
    (mixed / "more" / "loop").symlink_to(mixed, target_is_directory=True)
    (mixed / "again").symlink_to(links, target_is_directory=True)  # the same runs a second time: read once

    for folder, n in ((links, 4), (mixed, 6)):
        assert main([str(folder), "--metrics", "ece"]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert f"{n} completed runs of {n}" in out
        rows = {r["loss"]: r for r in _read_csv(folder / "comparison.csv")}
        for loss, mean in expected.items():
            if folder is links:
                assert rows[loss]["n"] == "2" and float(rows[loss]["test/ece_mean"]) == pytest.approx(mean, rel=1e-12)
    # in the mix, the two linked runs of `more/` and the four of `again/` resolve to the sweep's four folders,
    # the two copies are folders of their own: 6 runs, none twice


def _bins_sweep(root: Path, n_bins: dict[str, int], labels_of: dict[str, int] | None = None) -> dict:
    """Fake jobs of three groups ``<loss>_<bins>``, 3 seeds each, whose metrics.json ECE is computed with the
    group's own n_bins (float64 numpy here); ``labels_of``: group -> which test split its runs were tested on."""
    rng = np.random.default_rng(5)
    splits = {k: rng.integers(0, N_CLASSES, N_TEST) for k in (0, 1)}
    out = {}
    for i, (group, bins) in enumerate((g, b) for g, b in n_bins.items() for _ in (0, 1, 2)):
        loss, seed = group.split("_")[0], i % 3
        labels = splits[(labels_of or {}).get(group, 0)]
        z = _logits(loss, seed, labels)
        probs = np.exp(z - z.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        record = {"status": "completed", "test/acc": float((probs.argmax(1) == labels).mean()),
                  "test/ece": _numpy_ece(probs, labels, bins), "test/ece_signed": float(probs.max(1).mean() -
                                                                                    (probs.argmax(1) == labels).mean())}
        _fake_job(root / f"{i}_loss={loss},n_bins={bins},seed={seed}", {"loss": loss, "n_bins": bins, "seed": seed},
                  record, (z[:20], labels[:20], z, labels, 1.0), {"n_bins": bins})
        out.setdefault(group, []).append(record)
    return out


def _numpy_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """Top-label ECE over equal-width bins (lower, upper], 0 in the first bin: float64 numpy."""
    conf, hit = probs.max(1), (probs.argmax(1) == labels)
    b = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    return float(sum(abs(hit[b == k].mean() - conf[b == k].mean()) * (b == k).mean() for k in range(n_bins)
                     if (b == k).any()))


def test_groups_measured_with_different_bins_are_not_ranked_against_each_other(tmp_path, capsys, monkeypatch):
    from scipy.stats import ttest_rel

    import ceexp.plots

    labels_drawn = []
    for name in ("save_scatter", "save_paired_bars"):
        original = getattr(ceexp.plots, name)
        monkeypatch.setattr(ceexp.plots, name, lambda *a, _f=original, **k: labels_drawn.append(a[4]) or _f(*a, **k))
    root = tmp_path / "bins"
    records = _bins_sweep(root, {"ce_15": 15, "mse_15": 15, "mse_5": 5})
    assert main([str(root), "--metrics", "acc,ece,ece_signed", "--resamples", "40"]) == 0
    out = capsys.readouterr().out
    rows = {r["group"]: r for r in _read_csv(root / "comparison.csv")}
    g15c, g15m, g5m = "loss=ce, n_bins=15", "loss=mse, n_bins=15", "loss=mse, n_bins=5"
    assert list(rows) == [g15c, g15m, g5m]
    x = {g: {t: np.array([r[t] for r in records[k]]) for t in ("test/acc", "test/ece", "test/ece_signed")}
         for g, k in ((g15c, "ce_15"), (g15m, "mse_15"), (g5m, "mse_5"))}
    for g in rows:
        assert float(rows[g]["test/ece_mean"]) == pytest.approx(x[g]["test/ece"].mean(), rel=1e-5)
    # ece: within n_bins=15, mse against ce (paired by seed); n_bins=5 alone: no mark, no difference
    p = ttest_rel(x[g15m]["test/ece"], x[g15c]["test/ece"]).pvalue
    assert float(rows[g15m]["test/ece_p"]) == pytest.approx(p, rel=1e-6)
    assert rows[g15m]["test/ece_mark"] == ("best" if p < 0.05 else "tied") and p < 0.05
    assert rows[g5m]["test/ece_mark"] == "" and rows[g5m]["test/ece_diff"] == rows[g5m]["test/ece_p"] == ""
    # accuracy and signed ECE do not depend on the bins: all three ranked, differences to ce for both
    for tag in ("test/acc", "test/ece_signed"):
        assert all(rows[g][f"{tag}_diff"] != "" for g in (g15m, g5m))
        assert float(rows[g5m][f"{tag}_diff"]) == pytest.approx(x[g5m][tag].mean() - x[g15c][tag].mean(), rel=1e-9)
    assert sum(rows[g]["test/acc_mark"] != "" for g in rows) >= 1
    line = ("not ranked against each other, measured with different settings: ece: n_bins 5 (loss=mse, n_bins=5) "
            "vs n_bins 15 (loss=ce, n_bins=15, loss=mse, n_bins=15); marks and differences are within groups "
            "measured alike")
    assert line in out and line in (root / "comparison.md").read_text()
    # figure labels read the bins from the runs
    assert labels_drawn and all("n_bins 5 or 15" in label and "15 equal-width" not in label for label in labels_drawn)

    labels_drawn.clear()
    alike = tmp_path / "alike"
    _bins_sweep(alike, {"ce_10": 10, "mse_10": 10})
    assert main([str(alike), "--metrics", "ece", "--resamples", "20"]) == 0
    assert "not ranked" not in capsys.readouterr().out
    assert labels_drawn and all("10 equal-width bins" in label for label in labels_drawn)


def test_groups_tested_on_different_splits_are_not_ranked_against_each_other(tmp_path, capsys):
    root = tmp_path / "splits"
    _bins_sweep(root, {"ce_15": 15, "mse_15": 15}, labels_of={"mse_15": 1})
    assert main([str(root), "--metrics", "acc,ece", "--resamples", "20"]) == 0
    out = capsys.readouterr().out
    rows = {r["loss"]: r for r in _read_csv(root / "comparison.csv")}
    for tag in ("test/acc", "test/ece"):  # every metric: no mark, no difference
        assert (rows["mse"][f"{tag}_mark"], rows["mse"][f"{tag}_diff"], rows["ce"][f"{tag}_mark"]) == ("", "", "")
    assert ("not ranked against each other, measured with different settings: every metric: test split 1 "
            "(loss=ce) vs test split 2 (loss=mse); marks and differences are within groups measured alike") in out


def test_without_predictions_the_data_settings_say_which_split(tmp_path, capsys):
    """No predictions.npz: runs on another data.split_seed are not ranked against the others; a training-only
    setting (data.imbalance_ratio) does not change the test split."""
    root = tmp_path / "data"
    labels = np.random.default_rng(0).integers(0, N_CLASSES, N_TEST)
    data = {"_target_": "ceexp.data.DigitsDataModule", "batch_size": 64, "split_seed": 0, "imbalance_ratio": 1.0}
    settings = {"a": {}, "b": {"imbalance_ratio": 10.0, "batch_size": 32}, "c": {"split_seed": 1}}
    for i, (group, seed) in enumerate((g, s) for g in settings for s in (0, 1)):
        loss = {"a": "ce", "b": "mse", "c": "mse"}[group]
        _fake_job(root / f"{i}_{group}_{seed}", {"+setting": group, "seed": seed},
                  _record(_logits(loss, seed, labels), labels, 1.5), None, {"data": {**data, **settings[group]}})
    assert main([str(root), "--metrics", "acc"]) == 0
    out = capsys.readouterr().out
    rows = {r["setting"]: r for r in _read_csv(root / "comparison.csv")}
    assert rows["b"]["test/acc_diff"] != "" and rows["c"]["test/acc_diff"] == ""
    assert "every metric: test split 1 (setting=a, setting=b) vs test split 2 (setting=c)" in out


def test_calibration_ranks_table_and_figure(tmp_path):
    """Groups ranked by test ECE before and after each calibrator: means and ranks by hand, ties sharing a rank;
    the table in comparison.md and the bump chart are written."""
    from ceexp.compare import calibration_ranks, compare, write_report

    ece = {  # loss -> per seed: (none, temperature, isotonic)
        "ce": [(0.10, 0.03, 0.03), (0.12, 0.03, 0.03)],
        "focal": [(0.04, 0.03, 0.05), (0.06, 0.03, 0.05)],
        "mse": [(0.05, 0.05, 0.01), (0.07, 0.03, 0.01)],
    }
    for loss, runs in ece.items():
        for seed, (e, e_ts, e_iso) in enumerate(runs):
            record = {"status": "completed", "test/ece": e, "test/ece_ts": e_ts, "test/ece_isotonic": e_iso,
                      "test/acc": 0.9, "test/acc_ts": 0.9, "test/acc_isotonic": 0.9 + 0.01 * seed}
            _fake_job(tmp_path / "sweep" / f"{loss}_{seed}", {"loss": loss, "seed": seed}, record)
    cmp = compare([tmp_path / "sweep"], metrics=["ece", "acc"], n_resamples=50)
    names, means, ranks = calibration_ranks(cmp, "ece")
    assert names == ["none", "temperature", "isotonic"]  # vector etc. were not recorded
    order = [g.label for g in cmp.groups]
    by = dict(zip(order, zip(means, ranks)))
    assert by["loss=ce"][0] == pytest.approx([0.11, 0.03, 0.03])
    # none: focal 0.05 < mse 0.06 < ce 0.11; temperature: focal 0.03 = ce 0.03 < mse 0.04; isotonic: mse first
    assert by["loss=ce"][1] == [3, 1, 2] and by["loss=focal"][1] == [1, 1, 3] and by["loss=mse"][1] == [2, 3, 1]
    # accuracy: higher is better, so the isotonic column ranks the groups' mean 0.905 alike (a tie: all 1)
    _, _, acc_ranks = calibration_ranks(cmp, "acc")
    assert all(r == [1, 1, 1] for r in acc_ranks)
    (tmp_path / "out").mkdir()
    write_report(cmp, tmp_path / "out")
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "## Does the ranking survive post-hoc calibration?" in md
    assert "| loss | n | none | temperature | isotonic |" in md and "| ce | 2 | 0.11 (3) | 0.03 (1) | 0.03 (2) |" in md
    assert (tmp_path / "out" / "comparison" / "calibration_ranks.png").is_file()
