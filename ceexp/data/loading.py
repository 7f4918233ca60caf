"""Loading and sharding: every sample in memory as tensors, batches cut from them by index.

A :class:`torch.utils.data.BatchSampler` hands the dataset whole index lists, so there is no per-sample
collation. The training order is :class:`EpochShuffleSampler` (a function of seed and epoch, so a resumed run
sees the same order). With several processes (``trainer=ddp``) every process takes its own part of the data:
training, a disjoint equal-sized slice of each epoch's permutation; evaluation, a contiguous slice of the split
(:func:`shard_bounds`), without the padding or duplication of ``DistributedSampler``, so the metrics summed
over processes are those of one process (``trainer.use_distributed_sampler`` must be false).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

__all__ = ["EpochShuffleSampler", "TensorDataModule", "shard_bounds", "shuffle_seed_of"]


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A random permutation of ``range(n)`` drawn from ``(seed, epoch)`` alone, optionally one process's share.

    Lightning calls :meth:`set_epoch` before every epoch, so epoch k sees the same order whether the run
    went straight through or was resumed from a checkpoint (the global RNG state would differ).
    ``seed`` defaults to a draw from torch's global RNG, which ``seed_everything`` has seeded.

    With ``num_replicas`` processes, process ``rank`` takes ``perm[rank::num_replicas]`` cut to
    ``n // num_replicas`` indices: disjoint shares of equal length (so every process runs the same number
    of steps), together the whole permutation less at most ``num_replicas - 1`` indices that change each epoch.
    """

    def __init__(self, n: int, seed: int | None = None, rank: int = 0, num_replicas: int = 1):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"Expected `rank` in [0, {num_replicas}), but got {rank}")
        self.n = n
        self.seed = int(torch.randint(0, 2**62, ()).item()) if seed is None else seed
        self.rank, self.num_replicas = rank, num_replicas
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.num_replicas

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        if self.num_replicas > 1:
            perm = perm[self.rank::self.num_replicas][: len(self)]
        return iter(perm.tolist())


class _IndexBatches(BatchSampler):
    """A BatchSampler that passes Lightning's ``set_epoch`` on to its sampler."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class _TensorBatches(torch.utils.data.Dataset):
    """Indexed by a *list* of sample indices; returns the whole batch ``(transform(X[idx]), y[idx])``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable | None = None):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx):
        idx = torch.as_tensor(idx, device=self.x.device)
        x = self.x[idx]
        return (self.transform(x) if self.transform is not None else x), self.y[idx]


class _FixedBatches(torch.utils.data.Dataset):
    """Batch ``i`` of a split cut in order: samples ``[i * batch_size, (i + 1) * batch_size)``.

    A loader over it with a ``SequentialSampler`` yields the split's batches in order. Lightning's
    ``overfit_batches`` keeps such a loader as it is (it swaps any other sampler for a per-sample
    ``SequentialSampler``, which would turn the index-list batches into single samples).
    """

    def __init__(self, batches: _TensorBatches, batch_size: int):
        self.batches, self.batch_size = batches, batch_size

    def __len__(self) -> int:
        return -(-len(self.batches) // self.batch_size)

    def __getitem__(self, i: int):
        return self.batches[range(i * self.batch_size, min((i + 1) * self.batch_size, len(self.batches)))]


def _in_order(ds: _TensorBatches, batch_size: int) -> DataLoader:
    fixed = _FixedBatches(ds, batch_size)
    return DataLoader(fixed, sampler=SequentialSampler(fixed), batch_size=None)


def shard_bounds(n: int, rank: int, num_replicas: int) -> tuple[int, int]:
    """``(start, stop)`` of process ``rank``'s contiguous slice of ``n`` evaluation samples.

    The slices partition ``range(n)`` in rank order (the first ``n % num_replicas`` are one longer), so the
    concatenation of per-process results in rank order is the one-process order: nothing padded, nothing twice.
    """
    base, extra = divmod(n, num_replicas)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shuffle_seed_of(seed: int) -> int:
    """The training-order seed of a run whose torch seed is ``seed`` (``seed_everything``'s, read back with
    ``torch.initial_seed()``): a function of the seed alone, so it is the same in a resumed run and in every
    DDP process, and spread by ``SeedSequence`` so that runs with seeds s and s + 1 do not share orders
    shifted by an epoch (the sampler adds the epoch)."""
    return int(np.random.SeedSequence(seed).generate_state(1, dtype=np.uint64)[0] >> 2)


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"data.batch_size={batch_size!r} is invalid: expected an integer >= 1")


class TensorDataModule(pl.LightningDataModule):
    """Base of every ceexp datamodule: split tensors in memory, served in index batches (see the module docstring).

    Subclasses fill, in :meth:`setup`, the tensors ``x_train, y_train, x_val, y_val, x_test, y_test``
    (``y_*`` int64 ``(N,)``) and ``n_classes``, ``input_shape`` and ``train_labels`` (CPU int64), and may set
    ``batch_transform`` (applied to each ``X[idx]`` batch where the data lives).

    Args:
        batch_size: batch size of every loader, per process (>= 1).
        on_device: ``"auto"``: when training on a GPU, move the tensors there once if they take under a
            quarter of its free memory (then batches are cut on the GPU and nothing is copied per step);
            ``true``: always move them; ``false``: keep them in host memory.

    Raises:
        ValueError: naming the ``data.`` field, for a value outside its range.
    """

    MEMORY_SHARE = 0.25  # on_device="auto": the most of the free GPU memory the data may take

    def __init__(self, batch_size: int = 64, on_device: bool | str = "auto"):
        super().__init__()
        _check_batch_size(batch_size)
        if on_device not in ("auto", True, False):
            raise ValueError(f"data.on_device={on_device!r} is invalid: expected auto, true or false")
        self.batch_size = batch_size
        self.on_device = on_device
        self.batch_transform: Callable | None = None
        self.shuffle_seed: int | None = None
        self._ready = False

    # -- processes and devices ------------------------------------------------------------------------
    def _process(self) -> tuple[int, int]:
        """``(rank, world_size)`` of this process in the attached trainer (``(0, 1)`` without one)."""
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return 0, 1
        if getattr(getattr(trainer, "_accelerator_connector", None), "use_distributed_sampler", False):
            raise ValueError(
                "trainer.use_distributed_sampler=true is invalid with several processes: expected false "
                "(ceexp's datamodules shard the data themselves; trainer=ddp sets it)"
            )
        return trainer.global_rank, trainer.world_size

    def _tensors(self) -> list[str]:
        return [f"{kind}_{split}" for split in ("train", "val", "test") for kind in ("x", "y")]

    def _maybe_to_device(self) -> None:
        trainer = self.trainer
        device = getattr(getattr(trainer, "strategy", None), "root_device", None)
        if device is None or self.on_device is False or self.x_train.device == device:
            return
        if device.type != "cuda" and self.on_device == "auto":
            return
        size = sum(getattr(self, name).nbytes for name in self._tensors())
        if self.on_device == "auto":
            free, _ = torch.cuda.mem_get_info(device)
            if size > self.MEMORY_SHARE * free:
                return
        for name in self._tensors():
            setattr(self, name, getattr(self, name).to(device))

    # -- loaders --------------------------------------------------------------------------------------
    def _eval_loader(self, x: torch.Tensor, y: torch.Tensor, shard: bool = True) -> DataLoader:
        self._maybe_to_device()
        rank, world = self._process() if shard else (0, 1)
        start, stop = shard_bounds(len(y), rank, world)
        return _in_order(_TensorBatches(x[start:stop], y[start:stop], self.batch_transform), self.batch_size)

    def train_dataloader(self) -> DataLoader:
        self._maybe_to_device()
        rank, world = self._process()
        if self.shuffle_seed is None:
            self.shuffle_seed = shuffle_seed_of(torch.initial_seed())
            if world > 1:  # every process must walk the same permutation, even in an unseeded run
                self.shuffle_seed = int(self.trainer.strategy.broadcast(self.shuffle_seed, src=0))
        ds = _TensorBatches(self.x_train, self.y_train, self.batch_transform)
        if self.trainer is not None and self.trainer.overfit_batches:  # the same first batches every epoch
            return _in_order(ds, self.batch_size)
        sampler = EpochShuffleSampler(len(ds), self.shuffle_seed, rank, world)
        return DataLoader(ds, sampler=_IndexBatches(sampler, self.batch_size, drop_last=False), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.x_val, self.y_val)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.x_test, self.y_test)

    def predict_dataloader(self) -> DataLoader:
        """The whole validation split, in every process (temperature scaling fits on all of it)."""
        return self._eval_loader(self.x_val, self.y_val, shard=False)
