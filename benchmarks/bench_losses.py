"""Time forward + backward of the ceexp focal losses against ``F.cross_entropy`` on CPU.

    python benchmarks/bench_losses.py [--n 4096] [--c 100] [--rounds 40] [--number 20] [--threads 1 2]

All three losses run interleaved in every round (same inputs, same threads, same machine state, the order
alternating). The reported time is the median over rounds of the mean per-call time within a round, and the
ratio is the median over rounds of the per-round ratio to cross-entropy, so drift in machine load (other
processes on a shared box) hits both sides of each ratio alike. The ceexp losses are timed as modules, so
their per-call input validation is included; ``F.cross_entropy`` is timed bare.
Measured at 1 and at 2 threads, on float32 logits and on bfloat16 logits (what a bf16-autocast model hands the
loss). Beside ceexp's losses (a closed-form backward, ``ceexp.losses._Focal``) the same formulas written
plainly for autograd (log_softmax, gather, expm1, pow): the hand-written backward stays only as long as it beats
them. Targets: FocalLoss(gamma=2) and FLSD-53 <= 1.3x cross-entropy (float32); exits 1 if one is missed.
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

TARGETS = {"FocalLoss(gamma=2)": 1.3, "SampleDependentFocalLoss": 1.3}


def autograd_focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """-(1 - p_y)^gamma log p_y, mean over samples, left to autograd (the comparison for ceexp's backward)."""
    log_pt = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
    return (torch.expm1(log_pt).neg().pow(gamma) * log_pt).neg().mean()


def autograd_flsd(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """FLSD-53 (gamma 5 where p_y < 0.2, else 3), mean over samples, left to autograd."""
    log_pt = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
    gamma = torch.where(log_pt.detach().exp() < 0.2, 5.0, 3.0)
    return (torch.expm1(log_pt).neg().pow(gamma) * log_pt).neg().mean()


def _step(loss_fn, logits: torch.Tensor, target: torch.Tensor) -> None:
    logits.grad = None
    loss_fn(logits, target).backward()


def measure(args, threads: int, dtype: torch.dtype) -> bool:
    """One table: every loss at ``threads`` threads on ``dtype`` logits; True when the targets are met."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(args.n, args.c, generator=gen)).to(dtype).requires_grad_()
    target = torch.randint(0, args.c, (args.n,), generator=gen)

    losses = {
        "F.cross_entropy": F.cross_entropy,
        "FocalLoss(gamma=2)": FocalLoss(gamma=2.0),
        "  same, plain autograd": autograd_focal,
        "SampleDependentFocalLoss": SampleDependentFocalLoss(),
        "  same, plain autograd ": autograd_flsd,
    }
    for fn in losses.values():  # warm-up: allocator, thread pool, lazy init
        for _ in range(10):
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
        f"\nforward+backward, logits ({args.n}, {args.c}) {str(dtype).replace('torch.', '')}, CPU, {threads} "
        f"thread(s), median of {args.rounds} rounds x {args.number} calls, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'loss':<28}{'ms/call':>10}{'vs CE':>9}{'target':>9}  result")
    ok = True
    for name, t in median.items():
        ratio = ratios[name]
        if name in TARGETS and dtype == torch.float32:
            passed = ratio <= TARGETS[name]
            ok &= passed
            tail = f"{'<= ' + format(TARGETS[name], '.1f') + 'x':>9}  {'PASS' if passed else 'MISS'}"
        else:
            tail = f"{'':>9}  {'(baseline)' if name == 'F.cross_entropy' else ''}"
        print(f"{name:<28}{t * 1e3:>10.3f}{ratio:>8.2f}x{tail}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--c", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds; the median is reported")
    parser.add_argument("--number", type=int, default=10, help="calls per loss per round")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    ok = True
    for threads in args.threads:
        ok &= measure(args, threads, torch.float32)
    ok &= measure(args, max(args.threads), torch.bfloat16)
    print("(other processes on the cores skew the ratios: rerun on an idle machine)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
