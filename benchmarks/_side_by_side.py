"""Shared by the whole-process benchmarks: run commands as fresh processes, alternating, and report medians and
ratios against their targets (PASS / MISS)."""
from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wall(cmd: list[str], cwd: str) -> float:
    """Seconds one fresh process of ``cmd`` takes, output discarded; raises if it fails."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def alternate(jobs: dict[str, list[str]], repeats: int, cwd: str, warm: bool = True) -> dict[str, list[float]]:
    """Each command ``repeats`` times, the commands alternating in every round (drift in machine load hits them
    alike), after one unmeasured round that warms the file cache when ``warm``."""
    if warm:
        for cmd in jobs.values():
            wall(cmd, cwd)
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, cmd in jobs.items():
            times[name].append(wall(cmd, cwd))
    return times


def print_times(times: dict[str, list[float]]) -> dict[str, float]:
    """Print each command's median and runs; return the medians."""
    med = {name: statistics.median(t) for name, t in times.items()}
    width = max(len(n) for n in times) + 2
    print(f"{'command':<{width}} {'median s':>9}   runs")
    for name, t in times.items():
        print(f"{name:<{width}} {med[name]:>9.2f}   {' '.join(f'{x:.2f}' for x in t)}")
    return med


def verdict(label: str, ratio: float, target: float | None) -> bool:
    """Print ``label: ratio (target <= x: PASS|MISS)``; True when met (or no target)."""
    if target is None:
        print(f"{label}: {ratio:.2f}x")
        return True
    ok = ratio <= target
    print(f"{label}: {ratio:.2f}x (target <= {target}x: {'PASS' if ok else 'MISS'})")
    return ok
