"""Time forward + backward of the second-round losses (issue #11) against ``F.cross_entropy`` on CPU.

    python benchmarks/bench_loss_zoo.py [--n 4096] [--c 100] [--mmce-n 128] [--rounds 15] [--number 10] [--threads K]

Every loss runs interleaved with cross-entropy in every round (same inputs, same threads, the order alternating
from round to round), and its ratio is the median over rounds of the per-round ratio of mean per-call times, so
drift in machine load hits both sides of each ratio alike. MMCE builds an ``(N, N)`` kernel, so it is timed at its
own batch size (``--mmce-n``, 128 by default, a training batch) against cross-entropy on that batch; the table
says so. The ceexp losses are timed as modules (their per-call input validation included), ``F.cross_entropy``
bare. A script, not a test: no ratio is asserted, and none is a target.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ceexp.losses import (
    AdaFocalLoss,
    ConfidencePenaltyLoss,
    DCALoss,
    DualFocalLoss,
    MarginBasedLabelSmoothingLoss,
    MMCELoss,
    Poly1Loss,
    ScheduledFocalLoss,
)


def _step(loss_fn, logits: torch.Tensor, target: torch.Tensor) -> None:
    logits.grad = None
    loss_fn(logits, target).backward()


def _inputs(n: int, c: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(n, c, generator=gen)).requires_grad_(), torch.randint(0, c, (n,), generator=gen)


def _adafocal(c: int) -> AdaFocalLoss:
    """AdaFocal after one update from a validation set, so its bins and gammas are not the initial ones."""
    loss = AdaFocalLoss()
    logits, target = _inputs(2000, c, seed=1)
    loss.update_from_validation(logits.detach().softmax(dim=1), target)
    return loss


def _ratio(loss_fn, logits, target, rounds: int, number: int) -> tuple[float, float]:
    """(median ms per call of ``loss_fn``, median per-round ratio to F.cross_entropy)."""
    for fn in (F.cross_entropy, loss_fn):  # warm-up: allocator, thread pool, lazy init
        for _ in range(5):
            _step(fn, logits, target)
    times, ratios = [], []
    for r in range(rounds):
        pair = [("ce", F.cross_entropy), ("loss", loss_fn)]
        if r % 2:
            pair.reverse()
        took = {}
        for name, fn in pair:
            start = time.perf_counter()
            for _ in range(number):
                _step(fn, logits, target)
            took[name] = (time.perf_counter() - start) / number
        times.append(took["loss"])
        ratios.append(took["loss"] / took["ce"])
    return statistics.median(times) * 1e3, statistics.median(ratios)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--c", type=int, default=100)
    parser.add_argument("--mmce-n", type=int, default=128, help="MMCE's batch size (its cost is quadratic in it)")
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds (>= 5); the median is reported")
    parser.add_argument("--number", type=int, default=10, help="calls per loss per round")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error("--rounds must be >= 5")

    torch.set_num_threads(args.threads)
    logits, target = _inputs(args.n, args.c)
    small_logits, small_target = _inputs(args.mmce_n, args.c)
    cases = [
        ("mbls", "MarginBasedLabelSmoothingLoss()", MarginBasedLabelSmoothingLoss(), args.n),
        ("mmce", f"MMCELoss()  [batch {args.mmce_n}]", MMCELoss(), args.mmce_n),
        ("dca", "DCALoss()", DCALoss(), args.n),
        ("confidence_penalty", "ConfidencePenaltyLoss()", ConfidencePenaltyLoss(), args.n),
        ("poly1", "Poly1Loss()", Poly1Loss(), args.n),
        ("dual_focal", "DualFocalLoss()", DualFocalLoss(), args.n),
        ("focal_scheduled", "ScheduledFocalLoss()", ScheduledFocalLoss(), args.n),
        ("adafocal", "AdaFocalLoss() (updated once)", _adafocal(args.c), args.n),
    ]
    print(
        f"forward+backward vs F.cross_entropy on the same batch, logits ({args.n}, {args.c}) float32 (MMCE: "
        f"({args.mmce_n}, {args.c})), CPU, {torch.get_num_threads()} threads, median of {args.rounds} alternating "
        f"rounds x {args.number} calls, torch {torch.__version__}, load average {os.getloadavg()[0]:.2f} (other "
        "processes on the cores skew the ratios; rerun when idle)"
    )
    print(f"{'loss':<20}{'object':<36}{'batch':>7}{'ms/call':>10}{'vs CE':>9}")
    for name, label, loss_fn, n in cases:
        x, y = (logits, target) if n == args.n else (small_logits, small_target)
        ms, ratio = _ratio(loss_fn, x, y, args.rounds, args.number)
        print(f"{name:<20}{label:<36}{n:>7}{ms:>10.3f}{ratio:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
