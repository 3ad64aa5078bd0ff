"""Batches: one global index stream, sliced by micro-batch and rank.

Batches come from `StepBatchSampler`, a stream of indices that depends only on (seed, global micro-batch
size): independent of the number of processes, and resumable at any micro-batch. `make_loader` wraps it in
a DataLoader that counts the micro-batches handed out (the position a checkpoint stores).
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader, Sampler

from utils.errors import UserError
from utils.signals import ignore_stop_signals


class StepBatchSampler(Sampler):
    """Micro-batches of indices for one rank, from a global stream that ignores how it is split.

    The global stream is the concatenation of per-epoch permutations of range(num_items), epoch e drawn by
    a torch.Generator seeded with seed + e. Global micro-batch p is stream[p*M : (p+1)*M] with
    M = micro_batch_per_rank * world_size, and rank r takes its r-th slice of length micro_batch_per_rank.
    So one process with micro-batch 2L sees exactly the union of what two processes with L see, and a
    sampler started at `start_micro_batch=p` continues the stream of an uninterrupted run (positions count
    global micro-batches; a resumed run must keep M, but not world_size). Batches may straddle epochs; all
    are full.

    Iterating yields micro-batches p = start, start + 1, ... forever, or `num_micro_batches` of them. The
    position to store in a checkpoint is the number of micro-batches *consumed*, which a DataLoader's
    prefetching hides from the sampler: read it from the loader (`make_loader(...).data_position`).
    """

    def __init__(self, num_items: int, micro_batch_per_rank: int, world_size: int = 1, rank: int = 0,
                 seed: int = 0, start_micro_batch: int = 0, num_micro_batches: Optional[int] = None):
        if num_items <= 0:
            raise UserError("cannot sample batches from an empty dataset")
        if micro_batch_per_rank <= 0 or world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler shape: micro_batch_per_rank={micro_batch_per_rank}, "
                             f"world_size={world_size}, rank={rank}")
        if start_micro_batch < 0:
            raise ValueError(f"start_micro_batch must be >= 0, got {start_micro_batch}")
        self.num_items, self.micro_batch, self.world_size, self.rank = num_items, micro_batch_per_rank, world_size, rank
        self.seed, self.start_micro_batch, self.num_micro_batches = seed, start_micro_batch, num_micro_batches
        self._perms: dict[int, torch.Tensor] = {}

    @property
    def global_micro_batch(self) -> int:
        return self.micro_batch * self.world_size

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of epoch `epoch` (cached: the current and the next epoch)."""
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perms[epoch] = torch.randperm(self.num_items, generator=g)
        return self._perms[epoch]

    def stream(self, start: int, stop: int) -> torch.Tensor:
        """Global stream positions [start, stop) -> dataset indices (int64)."""
        parts = []
        while start < stop:
            epoch, offset = divmod(start, self.num_items)
            take = min(stop - start, self.num_items - offset)
            parts.append(self.permutation(epoch)[offset:offset + take])
            start += take
        return torch.cat(parts)

    def indices(self, position: int) -> list[int]:
        """This rank's indices of global micro-batch `position`."""
        start = position * self.global_micro_batch + self.rank * self.micro_batch
        return self.stream(start, start + self.micro_batch).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        p, stop = self.start_micro_batch, self.num_micro_batches
        end = None if stop is None else self.start_micro_batch + stop
        while end is None or p < end:
            yield self.indices(p)
            p += 1

    def __len__(self) -> int:
        if self.num_micro_batches is None:
            raise TypeError("StepBatchSampler without num_micro_batches is infinite")
        return self.num_micro_batches


class StepLoader(DataLoader):
    """A DataLoader over a StepBatchSampler that counts the micro-batches handed out.

    `data_position` is the global micro-batch the next `next()` returns: after training on a batch, it is
    what a checkpoint stores, and `StepBatchSampler(..., start_micro_batch=data_position)` resumes there.
    The sampler already splits the stream by rank: do not wrap this loader with `accelerator.prepare`.
    """

    def __init__(self, dataset, batch_sampler: StepBatchSampler, **kwargs):
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self.data_position = batch_sampler.start_micro_batch

    def __iter__(self):
        self.data_position = self.batch_sampler.start_micro_batch
        for batch in super().__iter__():
            self.data_position += 1
            yield batch


def make_loader(dataset, sampler: StepBatchSampler, num_workers: int = 0, pin_memory: bool = False) -> StepLoader:
    """A DataLoader yielding collated micro-batches (dicts of tensors); workers persist across iterations."""
    kwargs = dict(num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0)
    if num_workers > 0:       # workers leave SIGTERM/SIGINT to the main process, which saves and ends them
        kwargs.update(prefetch_factor=4, worker_init_fn=ignore_stop_signals)
    return StepLoader(dataset, sampler, **kwargs)

