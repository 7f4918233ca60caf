"""``scripts/compare.py`` on real sweeps: a 2 x 2 grid (loss x seed) and a sweep with one poisoned cell.

The expected numbers are computed here from the jobs' own ``metrics.json`` with float64 numpy
(``np.std(ddof=1)``), not with the pandas code under test.
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
from pathlib import Path

import numpy as np
import pytest
import yaml

from ceexp.compare import DEFAULT_METRICS, _best, best_direction, main, read_curve
from tests.conftest import ROOT

PNG = b"\x89PNG\r\n\x1a\n"
# 2 epochs (so the curves have a line), big batches, no progress bar, no per-epoch diagram: seconds a job
FAST = ["trainer.max_epochs=2", "data.batch_size=256", "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false", "diagram_every_n_epochs=0"]
FIGURES = ["val_nll.png", "ece_vs_acc.png", "ece_temperature_scaling.png",
           "reliability_1_loss=ce.png", "reliability_2_loss=focal.png"]


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

    # the best mean per column is bold: highest accuracy, lowest ECE, temperature closest to 1 (|log T|)
    def bold(tag, pick):
        loss = pick(expected, key=lambda k: pick_key(expected[k][tag][0], tag))
        mean, std, _ = expected[loss][tag]
        return f"**{mean:.4f} ± {std:.4f}**"

    def pick_key(mean, tag):
        return abs(math.log(mean)) if tag == "test/temperature" else mean

    assert bold("test/acc", max) in md
    assert bold("test/ece", min) in md
    assert bold("test/temperature", min) in md

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
                                        "test/confidence")] == ["max", "max", "min", "min", "one", None]
    assert _best([0.90, 0.92, 0.92], "max") == {1, 2}
    assert _best([0.05, float("nan"), 0.03], "min") == {2}
    # temperature: closest to 1 on a log scale (T and 1/T equally far)
    assert _best([0.5, 1.9, 2.1], "one") == {1}  # |log| 0.69, 0.64, 0.74
    assert _best([0.45, 2.1], "one") == {1}  # |log 0.45| = 0.80 > log 2.1 = 0.74
    assert _best([0.5, 2.0], "one") == {0, 1}
    assert _best([float("nan")], "min") == set() and _best([0.2, 0.8], None) == set()
    assert _best([0.0, float("nan")], "one") == set()
