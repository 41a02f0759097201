"""Processes and devices: torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) -> process group and device.

One process per device. Launch several with torchrun (`torchrun --nproc_per_node N -m bnnkit train ...`);
without torchrun the run is a single process. CPU processes use gloo, GPUs nccl.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup(device: str = "auto") -> Dist:
    """Join torchrun's process group if there is one; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        from ._config import ConfigError
        raise ConfigError("--device cuda but no CUDA device is visible: use --device cpu")
    dev = torch.device("cuda", local % max(torch.cuda.device_count(), 1)) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        _state["created"] = True
    return Dist(rank, world, local, dev)


_state = {"created": False}  # whether setup() created the process group (a caller's own is left alone)


def teardown(clean: bool) -> None:
    """Leave the process group setup() created. After a clean run, behind a barrier: a process that
    tears gloo down while its peer still talks to it aborts the peer. After an error, at once (the
    peers may never reach a barrier)."""
    if _state["created"] and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
        _state["created"] = False


def any_flag(flag: bool, device: torch.device) -> bool:
    """True if `flag` is True in any process (so that all stop together)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def max_all(values: list[float], device: torch.device) -> list[float]:
    """Each value's maximum over all processes (one all-reduce for all of them)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()
