"""Training across processes, GPUs and nodes under ``torchrun``, with DistributedDataParallel.

``torchrun`` starts one process per device and tells each its place through the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); without it a trainer is one process of one, and
nothing here changes what it does. Under it:

- each process joins the group (NCCL on GPUs, gloo on CPUs) and trains the same network wrapped
  in :class:`~torch.nn.parallel.DistributedDataParallel`, which averages the gradients;
- every optimizer step consumes one global batch of ``batch_size`` samples, the one a single
  process would have drawn: a :class:`~torch.utils.data.DistributedSampler` hands each process
  every ``world_size``-th sample of it. A sample's augmentation is seeded by (seed, epoch,
  index), so it is the same whichever process draws it;
- batch norm is synchronised across GPUs (``SyncBatchNorm``); on CPUs PyTorch offers no such
  thing, so each process normalises over its own share of the batch;
- rank 0 alone validates (and shares the metrics, so that every process stops together) and
  writes checkpoints, logs, histories and the run's records; a resumed run reads ``last.pt``
  from the run folder, which every process must see (a shared filesystem across nodes).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from busdx.errors import BusdxError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Process:
    """This process's place in the run: rank ``rank`` of ``world_size`` (``local_rank`` on its
    node). A run without torchrun is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls) -> Process:
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as err:
            raise BusdxError(f"RANK, WORLD_SIZE or LOCAL_RANK is not a number: {err}") from err
        if world < 1 or not 0 <= rank < world:
            raise BusdxError(f"rank {rank} of a world of {world} processes makes no sense")
        return cls(rank=rank, world_size=world, local_rank=local)


def start(requested_device: str = "auto") -> tuple[Process, torch.device]:
    """Join the run's process group if torchrun started this process; the device to train on
    (under torchrun on GPUs, the local rank's GPU)."""
    process = Process.from_environment()
    cuda = torch.cuda.is_available() and requested_device in ("auto", "cuda")
    if requested_device not in ("auto", "cuda", "cpu"):
        device = torch.device(requested_device)
    else:
        device = torch.device("cuda" if cuda else "cpu")
    if not process.distributed:
        return process, device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", process.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    log.info("process %d of %d (%s)", process.rank, process.world_size, device)
    return process, device


def stop(process: Process) -> None:
    if process.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def per_process_batch(batch_size: int, process: Process) -> int:
    """Each process's share of a global batch; the global batch must split evenly, so that a
    run on any number of processes makes the same optimizer steps."""
    if batch_size % process.world_size:
        raise BusdxError(f"a batch of {batch_size} does not split evenly over "
                         f"{process.world_size} processes: choose a multiple of it")
    return batch_size // process.world_size


def shard(order, batch_size: int, process: Process) -> list[int]:
    """The positions of ``order`` (one epoch's samples, batch after batch) that this process
    trains on: every ``world_size``-th of each global batch, by PyTorch's DistributedSampler,
    so that batch k of every process together is batch k of a single process."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(len(order)), num_replicas=process.world_size,
                                 rank=process.rank, shuffle=False, drop_last=True)
    positions = list(sampler)
    per = per_process_batch(batch_size, process)
    steps = len(order) // batch_size
    return positions[: steps * per]


class _Trained(nn.Module):
    """Every module a step trains, as one module whose forward is the task's loss: wrapped in
    DistributedDataParallel, an auxiliary head's gradients are averaged with the network's."""

    def __init__(self, modules: dict[str, nn.Module], loss):
        super().__init__()
        self.parts = nn.ModuleDict(modules)
        self.loss = loss

    def forward(self, batch):
        return self.loss(batch)


def wrap(modules: dict[str, nn.Module], loss, process: Process, device: torch.device):
    """The callable a step computes its loss with: ``loss`` itself for one process; under
    torchrun, ``loss`` inside DistributedDataParallel over ``modules`` (with synchronised batch
    norm on GPUs)."""
    if not process.distributed:
        return loss
    from torch.nn.parallel import DistributedDataParallel

    trained = _Trained(modules, loss)
    if device.type == "cuda":
        # in place: the task's own references to its modules see the synchronised layers
        for module in modules.values():
            for child_name, child in list(module.named_children()):
                module.add_module(child_name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return DistributedDataParallel(trained, device_ids=[device.index] if device.type == "cuda"
                                   else None)


def broadcast(value, process: Process):
    """Rank 0's ``value`` on every process."""
    if not process.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean(value: float, process: Process) -> float:
    """The mean of ``value`` over the processes (each process's mean training loss, say)."""
    if not process.distributed:
        return value
    import torch.distributed as dist

    # NCCL reduces GPU tensors only
    device = (torch.device("cuda", torch.cuda.current_device())
              if dist.get_backend() == "nccl" else torch.device("cpu"))
    total = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total.item()) / process.world_size


def barrier(process: Process) -> None:
    if process.distributed:
        import torch.distributed as dist

        dist.barrier()
