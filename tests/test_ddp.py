"""Several processes (trainer=ddp): data sharding without padding, and real 2-process CPU runs (gloo).

The fast tests check the sharding arithmetic with stand-in trainers. The slow ones run ``scripts/train.py``
with ``trainer=ddp trainer.accelerator=cpu trainer.devices=2`` and compare it with one process: the validation
metrics of the 2-process run must be those of its final weights evaluated by one process (recomputed here in
float64 numpy), and a 1-process run with the same global batch must train to the same numbers.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ceexp.data import EpochShuffleSampler, SyntheticDataModule, shard_bounds
from tests.conftest import ROOT, mlp_val_metrics64

SCRIPT = str(ROOT / "scripts" / "train.py")


# -- sharding arithmetic (fast) --------------------------------------------------------------------------

@pytest.mark.parametrize("n, world", [(10, 2), (11, 2), (7, 3), (2, 4), (0, 2), (201, 8)])
def test_evaluation_shards_partition_the_split_in_order(n, world):
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    joined = [i for start, stop in bounds for i in range(start, stop)]
    assert joined == list(range(n))  # every sample once, in order: no padding, no repeats
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_training_shares_are_disjoint_equal_and_interleave_the_one_process_batches():
    n, batch = 602, 32
    whole = list(EpochShuffleSampler(n, seed=7))
    shares = [list(EpochShuffleSampler(n, seed=7, rank=r, num_replicas=2)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == n // 2 and not set(shares[0]) & set(shares[1])
    # step k of two processes with batch B sees the samples of step k of one process with batch 2B
    for k in range(math.ceil(n / 2 / batch)):
        together = shares[0][k * batch:(k + 1) * batch] + shares[1][k * batch:(k + 1) * batch]
        assert sorted(together) == sorted(whole[2 * k * batch:2 * (k + 1) * batch])
    odd = [list(EpochShuffleSampler(11, seed=1, rank=r, num_replicas=2)) for r in range(2)]
    assert len(odd[0]) == len(odd[1]) == 5  # equal step counts, or the all-reduce would wait forever


def _stub_trainer(rank: int, world: int, distributed_sampler: bool = False):
    return SimpleNamespace(global_rank=rank, world_size=world, strategy=SimpleNamespace(root_device=torch.device("cpu")),
                           _accelerator_connector=SimpleNamespace(use_distributed_sampler=distributed_sampler))


def _batches(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_evaluation_loaders_of_two_processes_concatenate_to_the_one_process_loader():
    dm = SyntheticDataModule(n_samples=1004, batch_size=16)
    dm.setup()
    assert len(dm.y_val) % 2 == 1  # odd: a DistributedSampler would pad it with a repeated sample
    one = _batches(dm.val_dataloader())
    parts = []
    for rank in range(2):
        dm.trainer = _stub_trainer(rank, 2)
        parts.append(_batches(dm.val_dataloader()))
        # the prediction split (temperature scaling) is the whole validation split in every process
        assert torch.equal(_batches(dm.predict_dataloader())[1], one[1])
    assert torch.equal(torch.cat([p[0] for p in parts]), one[0]) and torch.equal(torch.cat([p[1] for p in parts]), one[1])
    assert [len(p[1]) for p in parts] == [(len(one[1]) + 1) // 2, len(one[1]) // 2]


def test_a_distributed_sampler_on_top_is_refused_by_name():
    dm = SyntheticDataModule(n_samples=200)
    dm.setup()
    dm.trainer = _stub_trainer(0, 2, distributed_sampler=True)
    with pytest.raises(ValueError, match="^trainer.use_distributed_sampler=true is invalid"):
        dm.val_dataloader()


# -- real processes (promise) ----------------------------------------------------------------------------

# 1,004 synthetic samples: 602 train (even: both processes take 301), 201 val and 201 test (odd)
COMMON = ["data=synthetic", "data.n_samples=1004", "model=mlp", "optimizer=sgd", "optimizer.lr=0.05",
          "trainer.max_epochs=2", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false",
          "trainer.deterministic=true"]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true", "data.batch_size=32"]
ONE = ["trainer=default", "data.batch_size=64"]  # the same global batch in one process


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_dirs(cwd: Path) -> list[Path]:
    return sorted(p.parent for p in (cwd / "outputs").rglob("metrics.json"))


def numpy_val_metrics(ckpt: Path, n_bins: int = 15) -> dict[str, float]:
    """Accuracy, NLL (nats) and top-label ECE of the checkpoint's MLP on the validation split, float64 numpy."""
    return mlp_val_metrics64(ckpt, SyntheticDataModule(n_samples=1004), n_bins)


@pytest.fixture(scope="module")
def ddp_and_one(tmp_path_factory):
    """metrics.json and run folder of a 2-process run and of a 1-process run with the same global batch."""
    out = {}
    for name, args in (("ddp", DDP), ("one", ONE)):
        cwd = tmp_path_factory.mktemp(name)
        run(cwd, *COMMON, *args)
        dirs = run_dirs(cwd)
        assert len(dirs) == 1, dirs  # the extra process wrote no folder of its own
        out[name] = (json.loads((dirs[0] / "metrics.json").read_text()), dirs[0])
    return out


@pytest.mark.promise
def test_ddp_val_metrics_are_those_of_one_process_on_the_same_weights(ddp_and_one):
    metrics, run_dir = ddp_and_one["ddp"]
    assert metrics["status"] == "completed"
    expected = numpy_val_metrics(run_dir / "checkpoints" / "last.ckpt")
    # each of the 201 samples counted once (the logged value is a float32)
    assert round(metrics["val/acc"] * 201) == round(expected["val/acc"] * 201)
    assert metrics["val/acc"] == pytest.approx(expected["val/acc"], rel=1e-7)
    assert metrics["val/nll"] == pytest.approx(expected["val/nll"], rel=1e-5)
    assert metrics["val/ece"] == pytest.approx(expected["val/ece"], rel=1e-5, abs=1e-7)


@pytest.mark.promise
def test_ddp_trains_like_one_process_with_the_same_global_batch(ddp_and_one):
    ddp, one = ddp_and_one["ddp"][0], ddp_and_one["one"][0]
    keys = [k for k in one if k.startswith(("val/", "test/")) and k in ddp]
    assert {"val/acc", "val/ece", "val/adaece", "val/cwece", "test/acc", "test/ece", "test/temperature",
            "test/ece_ts"} <= set(keys)
    for key in keys:  # the same updates up to float rounding in the all-reduce
        assert ddp[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    assert ddp["val/acc"] == one["val/acc"] and ddp["test/acc"] == one["test/acc"]


@pytest.mark.promise
def test_ddp_in_a_multirun_makes_one_folder_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    run(tmp_path, "-m", *COMMON, *DDP, "loss=ce,mse", "trainer.max_epochs=1", "logger=none",
        f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra.job.num}_${hydra.runtime.choices.loss}")
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))  # .jobs: the record
    assert jobs == ["0_ce", "1_mse"]
    assert sorted(p.name for p in (sweep / ".jobs").iterdir()) == ["0.json", "1.json"]  # one job each, no extra
    for job in jobs:
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "completed"
        assert (sweep / job / "train_ddp_process_1.log").is_file()  # the extra process ran in the job's folder
    # and started neither a single run nor a sweep of its own anywhere else
    assert not (tmp_path / "outputs" / "runs").exists() and not (tmp_path / "outputs" / "multirun").exists()
    assert run_dirs(tmp_path) == []
