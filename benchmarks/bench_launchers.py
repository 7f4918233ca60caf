"""Wall time of a 12-job digits sweep with Hydra's basic launcher (one job after another) against the
joblib launcher (jobs in parallel processes, torch threads shared out among them), side by side.

    python benchmarks/bench_launchers.py [--epochs 10]

Both sweeps are ``loss=ce,smoothed,focal,mse seed=0,1,2`` on the default digits run, without the
progress bar, into a temporary folder. Prints each wall time and the speed-up of joblib.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sweep(launcher: str, epochs: int, root: str) -> float:
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "-m", "loss=ce,smoothed,focal,mse", "seed=0,1,2",
           f"trainer.max_epochs={epochs}", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false",
           f"hydra/launcher={launcher}", f"paths.root_dir={root}/{launcher}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        basic = sweep("basic", args.epochs, root)
        joblib = sweep("joblib", args.epochs, root)
    print(f"12-job digits sweep, {args.epochs} epochs each, {os.cpu_count()} cores")
    print(f"{'basic launcher (sequential)':<34} {basic:8.1f} s")
    print(f"{'joblib launcher (parallel)':<34} {joblib:8.1f} s")
    print(f"joblib speed-up: {basic / joblib:.2f}x")


if __name__ == "__main__":
    main()
