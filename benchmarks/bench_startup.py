"""How fast ``scripts/train.py`` answers ``--help`` and refuses a bad config, against ``python -c "import torch"``.

    python benchmarks/bench_startup.py [--repeats 5]

Fresh processes, alternating. A config error (``loss=focal loss.gamma=-1``) and ``--help`` must answer before the
heavy imports (Lightning, matplotlib, sklearn): target <= 1.5x the torch import each; exits 1 on a miss.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

from _side_by_side import ROOT, print_times, verdict

TARGET = 1.5


def wall_any(cmd: list[str], cwd: str) -> float:
    """Seconds of one process, whatever its exit code (a config error exits 2)."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    py, script = sys.executable, str(ROOT / "scripts" / "train.py")
    jobs = {
        'python -c "import torch"': [py, "-c", "import torch"],
        "train.py --help": [py, script, "--help"],
        "train.py loss=focal loss.gamma=-1 (exit 2)": [py, script, "loss=focal", "loss.gamma=-1"],
    }
    with tempfile.TemporaryDirectory() as cwd:
        for cmd in jobs.values():
            wall_any(cmd, cwd)
        times: dict[str, list[float]] = {name: [] for name in jobs}
        for _ in range(args.repeats):
            for name, cmd in jobs.items():
                times[name].append(wall_any(cmd, cwd))
    med = print_times(times)
    names = list(jobs)
    print()
    ok = verdict("--help / import torch", med[names[1]] / med[names[0]], TARGET)
    ok &= verdict("config error / import torch", med[names[2]] / med[names[0]], TARGET)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
