"""A resumable, rank-sharded batch iterator, and sharded evaluation batches.

The trainer only needs an iterator with `state_dict()` / `load_state_dict()` for its position; any loader
that offers those (e.g. the packed-sequence loaders of `gensys.data`) plugs in. This one covers the common
case of an indexable dataset: it shuffles with a generator seeded by (seed, epoch) alone, so the order of an
epoch is a pure function of the position and a resumed run sees exactly the batches an uninterrupted run
would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["ResumableIterator", "ResumableLoader", "eval_batches"]


@runtime_checkable
class ResumableIterator(Protocol):
    """What the trainer reads training batches from."""

    def __next__(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ResumableLoader:
    """Endless shuffled batches of `dataset`, split over data-parallel ranks, resumable mid-epoch.

    Epoch e uses the permutation `randperm(len(dataset), seed + e)`; its batches are consecutive slices of
    `batch_size` items and rank r takes batches r, r + world_size, ... So the union of the ranks' i-th batches
    is the i-th global batch of a single process with `batch_size * world_size` (what the parity tests use).
    Incomplete trailing batches are dropped so that every rank takes the same number of steps per epoch.
    """

    def __init__(
        self,
        dataset: Sequence[Any],
        batch_size: int,
        collate_fn: Callable[[list[Any]], Any],
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.batches_per_rank = (len(dataset) // batch_size) // world_size
        if self.batches_per_rank == 0:
            raise ValueError(
                f"dataset of {len(dataset)} items is too small for batch_size={batch_size} "
                f"x {world_size} ranks"
            )
        self.epoch = 0
        self.index = 0  # batches this rank has already taken in the current epoch
        self._order: torch.Tensor | None = None
        self._order_epoch = -1

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self.batches_per_rank

    def __iter__(self) -> Iterator[Any]:
        return self

    def _epoch_order(self) -> torch.Tensor:
        if self._order_epoch != self.epoch:
            n = len(self.dataset)
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + self.epoch)
                self._order = torch.randperm(n, generator=g)
            else:
                self._order = torch.arange(n)
            self._order_epoch = self.epoch
        assert self._order is not None
        return self._order

    def __next__(self) -> Any:
        if self.index >= self.batches_per_rank:
            self.epoch += 1
            self.index = 0
        k = self.index * self.world_size + self.rank  # global batch number of this rank's next batch
        idx = self._epoch_order()[k * self.batch_size : (k + 1) * self.batch_size].tolist()
        self.index += 1
        return self.collate_fn([self.dataset[i] for i in idx])

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"resuming a loader seeded {state['seed']} with seed {self.seed}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def eval_batches(
    dataset: Sequence[Any],
    batch_size: int,
    collate_fn: Callable[[list[Any]], Any],
    *,
    rank: int = 0,
    world_size: int = 1,
    max_batches: int = 0,
) -> Iterator[tuple[Any, bool]]:
    """Yield `(batch, counts)` for this rank's share of the first `max_batches` (0 = all) batches.

    The global set of batches does not depend on the number of ranks, so validation figures don't either.

    Every rank yields the same number of batches, because sharded models (FSDP, TP, PP) run collectives in
    each forward; a rank whose share ran out repeats a batch with `counts=False`, and the caller drops its
    result.
    """
    n_batches = -(-len(dataset) // batch_size)
    if max_batches > 0:
        n_batches = min(n_batches, max_batches)
    per_rank = -(-n_batches // world_size)
    for i in range(per_rank):
        k = i * world_size + rank
        counts = k < n_batches
        k = k if counts else (n_batches - 1)
        items = [dataset[j] for j in range(k * batch_size, min(len(dataset), (k + 1) * batch_size))]
        yield collate_fn(items), counts
