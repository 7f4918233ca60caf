"""Whole-process wall time of the default ceexp run against a plain PyTorch script doing the same job.

    python benchmarks/bench_default_run.py [--repeats 5]

Fresh processes, alternating, from a temporary working directory (the pipeline's outputs/ goes there):
``python scripts/train.py`` (digits, MLP, cross-entropy, 30 epochs, with TensorBoard, checkpoint, metrics.json,
predictions.npz and the reliability diagrams) against ``benchmarks/raw_default_run.py`` (the same data, model,
batches, epochs and final metrics, no framework), the latter with torch's fused Adam as ceexp's config uses it
(like for like: the target is judged on this one) and with torch's default Adam. Also the imports of each stack
alone: the floor under any ratio. Target <= 1.5x; exits 1 on a miss.
"""
from __future__ import annotations

import argparse
import sys
import tempfile

from _side_by_side import ROOT, alternate, print_times, verdict

TARGET = 1.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    py = sys.executable
    raw = [py, str(ROOT / "benchmarks" / "raw_default_run.py")]
    jobs = {
        "ceexp default run (scripts/train.py)": [py, str(ROOT / "scripts" / "train.py")],
        "plain script, fused Adam": [*raw, "--fused"],
        "plain script, default Adam": raw,
        "import pytorch_lightning + hydra + torchmetrics": [py, "-c", "import pytorch_lightning, hydra, torchmetrics"],
        "import torch + sklearn + optimizer": [py, "-c", "import torch, sklearn.model_selection; "
                                               "torch.optim.Adam([torch.zeros(1, requires_grad=True)])"],
    }
    with tempfile.TemporaryDirectory() as cwd:
        med = print_times(alternate(jobs, args.repeats, cwd))
    names = list(jobs)
    print()
    ok = verdict("default run, ceexp / plain script (fused Adam)", med[names[0]] / med[names[1]], TARGET)
    verdict("default run, ceexp / plain script (default Adam)", med[names[0]] / med[names[2]], None)
    verdict("imports alone, Lightning stack / torch stack (the floor)", med[names[3]] / med[names[4]], None)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
