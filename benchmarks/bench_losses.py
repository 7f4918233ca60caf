"""Time forward + backward of the ceexp focal losses against ``F.cross_entropy`` on CPU.

    python benchmarks/bench_losses.py [--n 4096] [--c 100] [--rounds 40] [--number 20] [--threads K]

All three losses run interleaved in every round (same inputs, same threads, same machine state, the order
alternating). The reported time is the median over rounds of the mean per-call time within a round, and the
ratio is the median over rounds of the per-round ratio to cross-entropy, so drift in machine load (other
processes on a shared box) hits both sides of each ratio alike. The ceexp losses are timed as modules, so
their per-call input validation is included; ``F.cross_entropy`` is timed bare.
Targets: FocalLoss(gamma=2) <= 1.3x and FLSD-53 <= 1.4x cross-entropy; exits 1 if one is missed.
A script, not a test: timings are not asserted in CI.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ceexp.losses import FocalLoss, SampleDependentFocalLoss

TARGETS = {"FocalLoss(gamma=2)": 1.3, "SampleDependentFocalLoss": 1.4}


def _step(loss_fn, logits: torch.Tensor, target: torch.Tensor) -> None:
    logits.grad = None
    loss_fn(logits, target).backward()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--c", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds; the median is reported")
    parser.add_argument("--number", type=int, default=20, help="calls per loss per round")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(args.n, args.c, generator=gen)).requires_grad_()
    target = torch.randint(0, args.c, (args.n,), generator=gen)

    losses = {
        "F.cross_entropy": F.cross_entropy,
        "FocalLoss(gamma=2)": FocalLoss(gamma=2.0),
        "SampleDependentFocalLoss": SampleDependentFocalLoss(),
    }
    for fn in losses.values():  # warm-up: allocator, thread pool, lazy init
        for _ in range(20):
            _step(fn, logits, target)

    per_round = {name: [] for name in losses}
    for r in range(args.rounds):
        order = list(losses.items())
        if r % 2:  # alternate the order so no loss always runs right after another
            order.reverse()
        for name, fn in order:
            start = time.perf_counter()
            for _ in range(args.number):
                _step(fn, logits, target)
            per_round[name].append((time.perf_counter() - start) / args.number)

    median = {name: statistics.median(times) for name, times in per_round.items()}
    ratios = {
        name: statistics.median(t / b for t, b in zip(times, per_round["F.cross_entropy"]))
        for name, times in per_round.items()
    }
    print(
        f"forward+backward, logits ({args.n}, {args.c}) float32, CPU, {torch.get_num_threads()} threads, "
        f"median of {args.rounds} rounds x {args.number} calls, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.2f} (other processes on the cores skew the ratios; rerun when idle)"
    )
    print(f"{'loss':<28}{'ms/call':>10}{'vs CE':>9}{'target':>9}  result")
    ok = True
    for name, t in median.items():
        ratio = ratios[name]
        if name in TARGETS:
            passed = ratio <= TARGETS[name]
            ok &= passed
            tail = f"{'<= ' + format(TARGETS[name], '.1f') + 'x':>9}  {'PASS' if passed else 'MISS'}"
        else:
            tail = f"{'':>9}  (baseline)"
        print(f"{name:<28}{t * 1e3:>10.3f}{ratio:>8.2f}x{tail}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
