"""Sampling split over several processes (``torchrun`` / ``accelerate launch``), the same images as one (floor 5).

Process r of w draws the consecutive block ``shard_indices(n, r, w)`` of the n requested samples through
``Pipeline.sample(indices=...)``; sample i uses the noise stream (seed, i) and the i-th label or prompt, so it is
the same image whichever process draws it. Each process writes its block to ``shard-RRRRR-of-WWWWW.safetensors``
(``images`` in [0, 1] and their ``indices``) and the main process gathers every block, in order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..io import load_tensors, save_tensors
from ..pipeline import Pipeline

__all__ = ["shard_indices", "shard_name", "sample_shards", "read_shards", "world_size", "end_process_group"]


def world_size() -> int:
    """Number of processes a launcher started (``WORLD_SIZE``, set by torchrun and accelerate); 1 when run alone."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def shard_indices(num_samples: int, rank: int, world: int) -> range:
    """The consecutive block of sample indices process ``rank`` of ``world`` draws (sizes differ by at most 1)."""
    if world <= 0 or not 0 <= rank < world:
        raise ValueError(f"rank={rank} must lie in 0..{world - 1} for {world} processes.")
    return range(rank * num_samples // world, (rank + 1) * num_samples // world)


def shard_name(rank: int, world: int) -> str:
    """File name of process ``rank``'s shard."""
    return f"shard-{rank:05d}-of-{world:05d}.safetensors"


def read_shards(folder: str | os.PathLike[str], world: int) -> tuple[Tensor, Tensor]:
    """All ``world`` shards of a folder as (images in sample order, their indices)."""
    parts = [load_tensors(Path(folder) / shard_name(r, world)) for r in range(world)]
    indices = torch.cat([p["indices"] for p in parts])
    order = torch.argsort(indices)
    return torch.cat([p["images"] for p in parts])[order], indices[order]


def sample_shards(pipe: Pipeline, num_samples: int, shard_dir: str | os.PathLike[str], **kwargs: Any) -> Tensor | None:
    """Draw this process's share of ``num_samples`` (``kwargs`` as ``Pipeline.sample`` takes them), write its shard
    and return all samples, in order, on the main process (None on the others).

    Call it on every process of a launched run; the process group is the launcher's (``accelerate.PartialState``).
    """
    from accelerate import PartialState

    state = PartialState(cpu=not torch.accelerator.is_available())  # a CPU-only machine: join through gloo
    rank, world = state.process_index, state.num_processes
    if world != world_size():
        raise ValueError(f"the launcher started {world_size()} processes but accelerate joined {world}.")
    idx = shard_indices(num_samples, rank, world)
    kwargs["progress"] = kwargs.get("progress", False) and state.is_main_process  # one bar, not one per process
    if len(idx):
        images = pipe.to(state.device).sample(num_samples, indices=idx, **kwargs).cpu()
    else:
        images = torch.empty(0)
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    block = {"images": images.contiguous(), "indices": torch.tensor(list(idx), dtype=torch.long)}
    save_tensors(block, shard_dir / shard_name(rank, world))
    if world == 1:
        return images
    # gather through the process group, so the main process needs no file system shared with the others
    blocks: list[Any] | None = [None] * world if state.is_main_process else None
    dist.gather_object(block, blocks, dst=0)
    if blocks is None:
        return None
    return torch.cat([b["images"] for b in blocks if len(b["indices"])])


def end_process_group() -> None:
    """Wait for every process, then leave the launcher's process group: call it last, before the program exits
    (a process that exits inside the group can abort, and the launcher then kills the others)."""
    from accelerate import PartialState

    state = PartialState()
    state.wait_for_everyone()
    state.destroy_process_group()
