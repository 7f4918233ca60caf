"""Whole-process wall time of the default ceexp run against a plain PyTorch script doing the same job.

    python benchmarks/bench_default_run.py [--repeats 3]

Both commands run as fresh processes, alternating, from a temporary working directory (so the
pipeline's outputs/ goes there): ``python scripts/train.py`` (digits, MLP, cross-entropy, 30
epochs, with TensorBoard, checkpoint, metrics.json and the reliability diagram) and
``python benchmarks/raw_default_run.py`` (the same data, model, batches, epochs and final
metrics, no framework). Prints the median of each and their ratio; the target is <= 1.5x.
Also prints the import time of each stack alone, the floor under any ratio.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.5


def wall(cmd: list[str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    py = sys.executable
    jobs = {
        "ceexp default run (scripts/train.py)": [py, str(ROOT / "scripts" / "train.py")],
        "plain PyTorch script (raw_default_run.py)": [py, str(ROOT / "benchmarks" / "raw_default_run.py")],
        "import pytorch_lightning + hydra": [py, "-c", "import pytorch_lightning, hydra, torchmetrics"],
        "import torch + sklearn + optimizer": [py, "-c", "import torch, sklearn.model_selection; "
                                               "torch.optim.Adam([torch.zeros(1, requires_grad=True)])"],
    }
    times: dict[str, list[float]] = {name: [] for name in jobs}
    with tempfile.TemporaryDirectory() as cwd:
        for name, cmd in jobs.items():  # warm the file cache once
            wall(cmd, cwd)
        for _ in range(args.repeats):
            for name, cmd in jobs.items():
                times[name].append(wall(cmd, cwd))
    med = {name: statistics.median(t) for name, t in times.items()}
    names = list(jobs)
    print(f"{'command':<45} {'median s':>9}   runs")
    for name in names:
        print(f"{name:<45} {med[name]:>9.2f}   {' '.join(f'{t:.2f}' for t in times[name])}")
    ratio = med[names[0]] / med[names[1]]
    floor = med[names[2]] / med[names[3]]
    print(f"\nwhole run, ceexp / plain PyTorch: {ratio:.2f}x (target <= {TARGET}x: {'PASS' if ratio <= TARGET else 'MISS'})")
    print(f"import alone, Lightning stack / torch stack: {floor:.2f}x")


if __name__ == "__main__":
    main()
