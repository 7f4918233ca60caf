"""Wall time of a 12-job digits sweep (basic launcher, one process) against one plain PyTorch process doing the
same 12 trainings.

    python benchmarks/bench_sweep.py [--repeats 3]

``python scripts/train.py -m loss=ce,focal seed=0,1,2,3,4,5`` (the default run per job: 30 epochs with per-epoch
validation metrics, TensorBoard, checkpoint, temperature scaling, metrics.json, predictions.npz and diagrams)
against ``benchmarks/raw_sweep.py`` (per-epoch validation NLL/accuracy/ECE, temperature scaling and a
metrics.json per job), with torch's fused Adam as ceexp's config uses it (the target is judged on this one) and
with the default Adam. Fresh processes, alternating, each into a new folder. Target <= 1.3x; exits 1 on a miss.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile

from _side_by_side import ROOT, print_times, verdict, wall

TARGET = 1.3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    py = sys.executable
    count = itertools.count()
    with tempfile.TemporaryDirectory() as cwd:
        jobs = {
            "ceexp sweep (basic launcher)": lambda: [py, str(ROOT / "scripts" / "train.py"), "-m", "loss=ce,focal",
                                                     "seed=0,1,2,3,4,5", f"paths.root_dir={cwd}/c{next(count)}"],
            "plain script, fused Adam": lambda: [py, str(ROOT / "benchmarks" / "raw_sweep.py"),
                                                 f"{cwd}/r{next(count)}", "--fused"],
            "plain script, default Adam": lambda: [py, str(ROOT / "benchmarks" / "raw_sweep.py"),
                                                   f"{cwd}/r{next(count)}"],
        }
        times: dict[str, list[float]] = {name: [] for name in jobs}
        for _ in range(args.repeats):
            for name, cmd in jobs.items():
                times[name].append(wall(cmd(), cwd))
    med = print_times(times)
    names = list(jobs)
    print()
    ok = verdict("12-job sweep, ceexp / plain script (fused Adam)", med[names[0]] / med[names[1]], TARGET)
    verdict("12-job sweep, ceexp / plain script (default Adam)", med[names[0]] / med[names[2]], None)
    print(f"per job: ceexp {med[names[0]] / 12:.2f} s, plain script {med[names[1]] / 12:.2f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
