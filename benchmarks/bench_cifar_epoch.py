"""One CIFAR-shaped epoch of ResNet-18 on the CPU: ceexp against a plain PyTorch loop on the same model and data.

    python benchmarks/bench_cifar_epoch.py [--images 512] [--repeats 1]

Writes ``--images`` random training images and a quarter as many test images as a real
``cifar-10-python.tar.gz`` (five pickled data batches and a test batch) into a temporary folder, then runs,
as fresh processes from that folder:

* ``scripts/train.py data=cifar10 model=resnet18 optimizer=sgd trainer.max_epochs=1`` (the default trainer:
  TensorBoard, checkpoint, metrics.json, reliability diagrams, temperature scaling), and
* the same with ``trainer.deterministic=false`` (the default CPU trainer is deterministic, for exact
  resumption; the plain loop below is not), and
* ``benchmarks/raw_cifar_epoch.py`` (the same reading, split, normalisation, augmentation, epoch, evaluation
  and temperature scaling without the framework).

Prints each command's median wall time, the time each spent in its own work (``time/seconds``), the ratios,
and images per second of the whole command. ResNet-18 takes ~0.1 s per training image on two CPU cores, so
the default (460 training images after the 10% validation split) takes about 1.5 minutes for all three.
Recorded on two CPU cores (median of 3): whole command 1.15x (1.05x with deterministic=false); own work 0.99x.
"""
from __future__ import annotations

import argparse
import io
import json
import pickle
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def write_cifar10(folder: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """Random images in the CIFAR-10 python format: pickled dicts with ``data`` (N, 3072) uint8 and ``labels``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ytr = rng.permutation(np.arange(n_train) % 10)
    members = {f"cifar-10-batches-py/data_batch_{i + 1}": part
               for i, part in enumerate(np.array_split(np.arange(n_train), 5))}
    with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, idx in [*members.items(), ("cifar-10-batches-py/test_batch", None)]:
            n = n_test if idx is None else len(idx)
            labels = rng.integers(0, 10, n) if idx is None else ytr[idx]
            entry = {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     "labels": [int(v) for v in labels]}
            payload = pickle.dumps(entry, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def timed(cmd: list[str], cwd: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    found = sorted(cwd.glob("outputs/runs/*/*/metrics.json"))
    inner = json.loads(found[-1].read_text()) if "scripts/train.py" in cmd[1] else json.loads(proc.stdout)
    return wall, inner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="training images written (10%% become validation)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        write_cifar10(cwd / "data" / "cifar10", args.images, max(args.images // 4, 10))
        ceexp = [py, str(ROOT / "scripts" / "train.py"), "data=cifar10", "data.root=data", "model=resnet18",
                 "optimizer=sgd", "trainer.max_epochs=1", "callbacks.progress_bar=null",
                 "trainer.enable_progress_bar=false", "data.checksum=false"]  # written here, not the published file
        jobs = {
            "ceexp (scripts/train.py)": ceexp,
            "ceexp, trainer.deterministic=false": [*ceexp, "trainer.deterministic=false"],
            "plain PyTorch (raw_cifar_epoch.py)": [py, str(ROOT / "benchmarks" / "raw_cifar_epoch.py"), "data"],
        }
        walls: dict[str, list[float]] = {k: [] for k in jobs}
        inner: dict[str, list[float]] = {k: [] for k in jobs}
        for _ in range(args.repeats):
            for name, cmd in jobs.items():
                wall, result = timed(cmd, cwd)
                walls[name].append(wall)
                inner[name].append(result["time/seconds"])
    names = list(jobs)
    med = {k: statistics.median(v) for k, v in walls.items()}
    med_inner = {k: statistics.median(v) for k, v in inner.items()}
    n_train = args.images - int(np.ceil(0.1 * args.images))
    print(f"ResNet-18, {n_train} training images (one epoch), batch 128, CPU threads: "
          f"{__import__('torch').get_num_threads()}")
    print(f"{'command':<38} {'wall s':>8} {'own work s':>11} {'train img/s':>12}")
    for name in names:
        print(f"{name:<38} {med[name]:>8.1f} {med_inner[name]:>11.1f} {n_train / med[name]:>12.2f}")
    raw = names[-1]
    for name in names[:-1]:
        print(f"\n{name} / plain PyTorch: whole command {med[name] / med[raw]:.2f}x, "
              f"own work (train() vs the script's main()) {med_inner[name] / med_inner[raw]:.2f}x")


if __name__ == "__main__":
    main()
