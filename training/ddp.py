"""Several processes (torchrun, DDP): who am I, and the few collectives the training loop needs.

A single process is a Dist with world 1: every helper then returns its input unchanged, so the
one-GPU (or CPU) path and the many-GPU path are the same code. NCCL on GPUs, gloo on CPUs (tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from training.errors import TrainingError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device | None = None  # this process's GPU; None: the config decides
    comm: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where collectives' tensors live

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def slices(self, n: int) -> list[slice]:
        """Contiguous, near-equal parts of range(n), one per rank (the first ones one longer)."""
        base, extra = divmod(n, self.world)
        starts = [r * base + min(r, extra) for r in range(self.world + 1)]
        return [slice(starts[r], starts[r + 1]) for r in range(self.world)]

    def mine(self, n: int) -> slice:
        return self.slices(n)[self.rank]

    # -- collectives (identity in a single process) ----------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.comm)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def from_main(self, value: float | int | bool):
        """Rank 0's value on every rank (decisions made from the clock must agree)."""
        if not self.enabled:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.comm)
        dist.broadcast(t, 0)
        return type(value)(t.item())

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's x concatenated on dim 0 in rank order (sizes may differ), without gradients."""
        if not self.enabled:
            return x
        sizes = self._sizes(x.shape[0])
        pad = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=self.comm)
        pad[: x.shape[0]] = x.to(self.comm)
        parts = [torch.empty_like(pad) for _ in range(self.world)]
        dist.all_gather(parts, pad)
        return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]).to(x.device)

    def gather_arrays(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Every rank's list of 1-D int arrays, concatenated in rank order."""
        if not self.enabled:
            return arrays
        lengths = torch.tensor([len(a) for a in arrays], dtype=torch.int64)
        flat = torch.from_numpy(np.concatenate(arrays).astype(np.int64) if arrays else np.zeros(0, np.int64))
        lengths, flat = self.gather_rows(lengths).numpy(), self.gather_rows(flat).numpy()
        return np.split(flat, np.cumsum(lengths)[:-1])

    def _sizes(self, n: int) -> list[int]:
        t = torch.tensor([n], dtype=torch.int64, device=self.comm)
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t)
        return [int(s.item()) for s in out]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends each rank the gradient of its own rows, summed over every
    rank's loss (all_reduce, then this rank's slice): in-batch negatives from the other GPUs train
    the encoders that made them, as in SPRC/LAVIS."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, d: Dist) -> torch.Tensor:
        sizes = d._sizes(x.shape[0])
        ctx.d, ctx.device = d, x.device
        ctx.lo, ctx.hi = sum(sizes[: d.rank]), sum(sizes[: d.rank + 1])
        return d.gather_rows(x.detach())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.to(ctx.d.comm, copy=True).contiguous()  # all_reduce works in place
        dist.all_reduce(grad)
        return grad[ctx.lo: ctx.hi].to(ctx.device), None


def gather_with_grad(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Every rank's rows of x (in rank order), differentiable with respect to this rank's rows."""
    return _GatherWithGrad.apply(x, d) if d.enabled else x


def setup(timeout_minutes: float = 60.0) -> Dist:
    """The process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); a single process
    when WORLD_SIZE is absent or 1. NCCL with one GPU per process when CUDA is there, else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    try:
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except KeyError as e:
        raise TrainingError("WORLD_SIZE is set but RANK is not: launch with torchrun --nproc-per-node N "
                            "-m training train ...") from e
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise TrainingError(f"local rank {local} but only {torch.cuda.device_count()} GPUs: lower --nproc-per-node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timedelta(minutes=timeout_minutes), device_id=device)
        return Dist(rank, world, local, device, device)
    dist.init_process_group("gloo", timeout=timedelta(minutes=timeout_minutes))
    return Dist(rank, world, local, None, torch.device("cpu"))


def cleanup(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
