"""Whole-process wall time of one ``loss_comparison`` run on mnist_5k against a plain PyTorch script doing it.

    python benchmarks/bench_mnist_run.py [--repeats 3]

``python scripts/train.py experiment=loss_comparison hydra.mode=RUN +loss_preset=ce`` (5,000 MNIST images, MLP
784-512-512-10, SGD with momentum, batches of 128, 30 epochs, cross-entropy) against
``benchmarks/raw_default_run.py --data mnist_5k --hidden 512 512 --optimizer sgd --lr 0.1 --batch 128`` with
torch's fused SGD as ceexp's config uses it (the target is judged on this one) and with the default SGD.
Fresh processes, alternating. Target <= 1.15x; exits 1 on a miss.
"""
from __future__ import annotations

import argparse
import sys
import tempfile

from _side_by_side import ROOT, alternate, print_times, verdict

TARGET = 1.15


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    py = sys.executable
    raw = [py, str(ROOT / "benchmarks" / "raw_default_run.py"), "--data", "mnist_5k", "--hidden", "512", "512",
           "--optimizer", "sgd", "--lr", "0.1", "--batch", "128"]
    jobs = {
        "ceexp loss_comparison run (ce, mnist_5k)": [py, str(ROOT / "scripts" / "train.py"),
                                                     "experiment=loss_comparison", "hydra.mode=RUN",
                                                     "+loss_preset=ce"],
        "plain script, fused SGD": [*raw, "--fused"],
        "plain script, default SGD": raw,
    }
    with tempfile.TemporaryDirectory() as cwd:
        med = print_times(alternate(jobs, args.repeats, cwd))
    names = list(jobs)
    print()
    ok = verdict("mnist_5k run, ceexp / plain script (fused SGD)", med[names[0]] / med[names[1]], TARGET)
    verdict("mnist_5k run, ceexp / plain script (default SGD)", med[names[0]] / med[names[2]], None)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
