"""Time the bootstrap of compare.py's intervals against one plain ECE computation, on CPU.

    python benchmarks/bench_bootstrap.py [--n 10000] [--c 100] [--resamples 1000] [--rounds 5] [--threads K]

One round times, on the same (n, c) float32 predictions: one plain ``ceexp.metrics.expected_calibration_error``
(the mean of ``--number`` calls), the bootstrap of ECE alone (``ceexp.bootstrap``: drawing the resamples and
computing ECE for all of them, per-sample tables included) and the bootstrap of every binned metric at once (acc,
confidence, nll, brier, ece, mce, ece_signed, adaece, ece_debiased, cwece). The ratio is the median over rounds of
the per-round ratio to the plain ECE, so drift in machine load hits both sides of each ratio alike. The peak
memory that the bootstrap allocates (tracemalloc, which sees numpy's and scipy's arrays; one extra round) is
printed beside it, and the cost of one smECE call (computed one resample at a time). A script, not a test.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc

import numpy as np
import torch

from ceexp import bootstrap as bs
from ceexp.metrics import expected_calibration_error, smooth_ece


def _predictions(n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax outputs of a moderately over-confident classifier: about 70 % accurate, confidences spread."""
    rng = np.random.default_rng(0)
    target = rng.integers(0, c, n)
    logits = 2.5 * rng.normal(size=(n, c))
    right = rng.random(n) < 0.7
    logits[right, target[right]] += 6.0
    probs = torch.from_numpy(logits.astype(np.float32)).softmax(dim=1).numpy()
    return probs, target


def _bootstrap(probs: np.ndarray, target: np.ndarray, names, resamples: int) -> dict:
    table = bs.WeightedMetrics(probs, target, 15)
    return bs.replicates(table, names, bs.Resampler(len(target), seed=0, stream=bs.split_stream(target)), resamples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--c", type=int, default=100)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported")
    parser.add_argument("--number", type=int, default=5, help="plain ECE calls per round")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    probs, target = _predictions(args.n, args.c)
    probs_t, target_t = torch.from_numpy(probs), torch.from_numpy(target)
    binned = list(bs.VECTORISED_METRICS)
    cases = {"bootstrap ECE": ["ece"], "bootstrap, all binned metrics": binned}

    for _ in range(3):  # warm-up: imports, allocator, thread pool
        expected_calibration_error(probs_t, target_t)
    _bootstrap(probs, target, binned, 64)

    per_round: dict[str, list[float]] = {"plain ECE": [], **{name: [] for name in cases}}
    for r in range(args.rounds):
        order = list(cases.items())
        if r % 2:
            order.reverse()
        start = time.perf_counter()
        for _ in range(args.number):
            expected_calibration_error(probs_t, target_t)
        per_round["plain ECE"].append((time.perf_counter() - start) / args.number)
        for name, names in order:
            start = time.perf_counter()
            _bootstrap(probs, target, names, args.resamples)
            per_round[name].append(time.perf_counter() - start)

    peaks = {}
    for name, names in cases.items():
        tracemalloc.start()
        _bootstrap(probs, target, names, args.resamples)
        peaks[name] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    start = time.perf_counter()
    smooth_ece(probs_t, target_t)
    smece = time.perf_counter() - start

    baseline = per_round["plain ECE"]
    print(f"predictions ({args.n}, {args.c}) float32, {args.resamples} resamples, 15 bins, CPU, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} rounds, load average {os.getloadavg()[0]:.2f} "
          f"(other processes on the cores skew the ratios; rerun when idle)")
    print(f"{'':<32}{'s':>9}{'vs one ECE':>12}{'peak MiB':>10}")
    for name, times in per_round.items():
        ratio = statistics.median(t / b for t, b in zip(times, baseline))
        peak = f"{peaks[name]:>10.0f}" if name in peaks else f"{'':>10}"
        print(f"{name:<32}{statistics.median(times):>9.3f}{ratio:>11.1f}x{peak}")
    print(f"one smECE call (looped per resample: x{bs.LOOP_RESAMPLES} by default): {smece:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
