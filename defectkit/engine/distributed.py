"""Training on several processes through torchrun (DistributedDataParallel), the torchvision
references' way: the process group from the RANK / WORLD_SIZE / LOCAL_RANK that torchrun
sets, NCCL on GPUs and gloo on CPUs, each rank on its shard of every epoch, gradients
averaged by DDP, logged values averaged across ranks, and only rank 0 writing the run
folder. Without torchrun every function here is a no-op for one process.

    torchrun --nproc_per_node 4 -m defectkit train --config mt_segment
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 -m defectkit train --config mt_segment

Fits that are one pass over the images (PatchCore, PaDiM) are sharded too: each rank
extracts the features of its contiguous share (`contiguous_share`), and `gather_rows` puts
them back together in image order on every rank, so the memory bank or the Gaussians are
those of one process on all the images.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Sampler


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_name: str = "auto") -> torch.device:
    """Join the process group torchrun describes (once) and return this rank's device."""
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if launched() and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda and launched():
        return torch.device("cuda", local_rank)
    return torch.device("cuda" if use_cuda else "cpu")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0, the one process that writes files (every process when not distributed)."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def close() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def share_from_main(value: Any) -> Any:
    """Rank 0's value on every rank (the run folder's name, which holds a timestamp)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (equal shards, so the global mean)."""
    if not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return {k: float(v) / world_size() for k, v in zip(keys, tensor.tolist(), strict=True)}


def contiguous_share(items: Sequence[Any]) -> Sequence[Any]:
    """This rank's contiguous slice of items (sizes differ by at most one, nothing padded or
    repeated): concatenated in rank order the slices are the items again."""
    if not dist.is_initialized():
        return items
    size, here = divmod(len(items), world_size()), rank()
    start = here * size[0] + min(here, size[1])
    return items[start : start + size[0] + (here < size[1])]


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows (dim 0; the counts may differ), concatenated in rank order, on every
    rank, on the tensor's own device. Itself when not distributed."""
    if not dist.is_initialized():
        return tensor
    wire = (
        torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    )
    local = tensor.contiguous().to(wire)
    count = torch.tensor([len(local)], device=wire)
    counts = [torch.zeros_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    most = int(max(counts))
    padded = local.new_zeros((most, *local.shape[1:]))
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    rows = [part[: int(n)] for part, n in zip(parts, counts, strict=True)]
    return torch.cat(rows).to(tensor.device)


def sync_batchnorm(model: nn.Module, enabled: bool, device: torch.device) -> nn.Module:
    """train.sync_batchnorm: the model's batch norms as SyncBatchNorm, so their statistics
    are those of the global batch, not of each rank's share (small per-GPU batches). Done
    once, before the optimiser is made (the parameters stay the same objects); one process
    keeps its batch norms. torch's SyncBatchNorm trains on CUDA only."""
    if not enabled or not dist.is_initialized():
        return model
    if device.type != "cuda":
        raise ValueError(
            "train.sync_batchnorm needs CUDA GPUs (torch's SyncBatchNorm does not train on "
            "the CPU): leave it off for gloo / CPU runs"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The model DDP-wrapped for this epoch's training (the trainable parameters are those of
    now: freezing schedules wrap again after a change); itself when not distributed. Unused
    parameters (a gate without its loss) are allowed."""
    if not dist.is_initialized():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


class ShardedSampler(Sampler[int]):
    """Every rank's share of a sampler that draws the same sequence on all ranks (the class
    balancing samplers, seeded alike): the sequence padded to a multiple of the ranks, then
    every world-th index from this rank's offset."""

    def __init__(self, base: Sampler[int]):
        self.base = base
        self.generator = getattr(base, "generator", None)  # saved in checkpoints

    def __len__(self) -> int:
        return math.ceil(len(self.base) / world_size())

    def __iter__(self) -> Iterator[int]:
        indices = list(self.base)
        total = len(self) * world_size()
        indices += indices[: total - len(indices)]
        return iter(indices[rank() :: world_size()])


def shard(
    sampler: Sampler[int] | None, dataset: Dataset, seed: int
) -> tuple[Sampler[int] | None, Any]:
    """(the sampler this rank uses, what to call set_epoch on or None). Not distributed:
    the sampler unchanged (None: the loader shuffles)."""
    if not dist.is_initialized():
        return sampler, None
    if sampler is None:
        distributed = DistributedSampler(dataset, shuffle=True, seed=seed)
        return distributed, distributed
    return ShardedSampler(sampler), None
