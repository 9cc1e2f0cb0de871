"""Running one job on several processes (``torchrun``): who am I, how many are we, which inputs are mine,
and the collectives that keep the ranks in step.

Shared by ``features``, fine-tuning and FVD so that every command shards work the same way; the
synchronised BatchNorm of I3D (:class:`SyncBatchNorm3dNoScale`) and the object gathering that fine-tuning
uses live here too, beside the process group they talk over. Without ``torchrun`` (no ``WORLD_SIZE`` in
the environment) everything here degrades to a single process: rank 0 of 1, :func:`barrier` is a no-op,
:func:`shard` returns the whole list, :func:`gather_objects` a one-item list.

Launch::

    torchrun --nproc-per-node 4 -m i3d_torch features videos/ --out feats/

Each rank takes one GPU (``cuda:LOCAL_RANK``) when CUDA is asked for, and talks over NCCL; on CPU the
ranks talk over Gloo.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Iterator, List, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from i3d_torch.core.model import BatchNorm3dNoScale
from i3d_torch.weights.registry import resolve_device

T = TypeVar("T")

#: How long a rank waits at a barrier for the others. Feature extraction of a slow shard can take long
#: (TV-L1 flow on CPU especially), so this is generous; the default of 30 minutes would kill long jobs.
BARRIER_TIMEOUT = datetime.timedelta(hours=12)


def world_size() -> int:
    """Number of processes in the job (1 when not launched by torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank, 0-based (0 when not launched by torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank on its own machine: the index of the GPU it should use."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    """True when launched with more than one process."""
    return world_size() > 1


def is_main_process() -> bool:
    """True on rank 0, the one that merges results and prints summaries."""
    return rank() == 0


def device_for_rank(device: str) -> torch.device:
    """The device this rank should use: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a multi-process job. A device
    this machine does not have (``tpu``, ``cuda`` without CUDA) is a one-line :class:`InputError`, as in
    :func:`~i3d_torch.weights.registry.load_model`."""
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None and is_distributed():
        return torch.device("cuda", local_rank())
    return dev


def init_process_group(device: str = "cpu") -> bool:
    """Join the torchrun job's process group, if there is one; returns whether one is now initialised.

    NCCL for CUDA devices (one GPU per rank, selected by ``LOCAL_RANK``), Gloo otherwise. Safe to call
    twice and in a single process (then it does nothing).
    """
    if not is_distributed() or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    dev = device_for_rank(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, timeout=BARRIER_TIMEOUT)
    return True


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str = "cpu") -> Iterator[bool]:
    """``with process_group(device):`` joins the job's group for the block and leaves it afterwards.

    Leaves only a group it created, so nesting inside a caller's own group is harmless.
    """
    created = is_distributed() and dist.is_available() and not dist.is_initialized()
    active = init_process_group(device)
    try:
        yield active
    finally:
        if created:
            destroy_process_group()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks: a first-use download or conversion of the
    weights then happens once, not on every rank at the same time. A no-op without a process group."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def barrier() -> None:
    """Wait until every rank reaches this point (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shard(items: Sequence[T], rank_: Optional[int] = None, world: Optional[int] = None) -> List[T]:
    """The items this rank processes: ``items[rank::world]``, i.e. items r, r+K, r+2K, ...

    Every item goes to exactly one rank. Callers must pass the same, deterministically ordered list on
    every rank (sort it), or ranks would disagree about who does what.
    """
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    if world < 1 or not 0 <= rank_ < world:
        raise ValueError(f"rank {rank_} is not in a world of {world} process(es)")
    return list(items[rank_::world])


def all_ranks_ok(ok: bool) -> bool:
    """True only if ``ok`` is true on every rank (a collective: every rank must call it)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return ok
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.SUM)
    return int(flag.item()) == 0


def gather_objects(obj) -> list:
    """``obj`` from every rank, in rank order (a collective; a one-item list in a single process)."""
    if not is_distributed() or not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------------------------------
# Synchronised BatchNorm
# ---------------------------------------------------------------------------------------------------


class _AllReduceSum(torch.autograd.Function):
    """Sum over all ranks, differentiable: the gradient of a sum shared by every rank is the sum of the
    ranks' gradients, so the backward pass all-reduces too."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks, with gradients that flow back to every rank."""
    return _AllReduceSum.apply(tensor)


class SyncBatchNorm3dNoScale(BatchNorm3dNoScale):
    """I3D's BatchNorm (no scale, learned offset ``bias``) with batch statistics over all processes.

    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` would rebuild these layers without their offset
    (they are ``affine=False`` with a separate ``bias``), and PyTorch's SyncBatchNorm runs on GPUs only.
    This one reduces sums across the process group with autograd-aware collectives, so it works on Gloo
    (CPU) and NCCL (GPU) alike and its gradients flow through the shared statistics. In eval mode, or in a
    single process, it is exactly :class:`BatchNorm3dNoScale`. State-dict keys are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        shape = (1, channels, 1, 1, 1)
        # Statistics in at least float32 (autocast may hand us half precision), as F.batch_norm does.
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        local = torch.cat([xf.sum(dim=(0, 2, 3, 4)), xf.new_tensor([x.numel() / channels])])
        total = all_reduce(local)  # sum over ranks of [per-channel sums, count]
        count = total[-1]
        mean = total[:channels] / count
        centred = xf - mean.view(shape)
        var = all_reduce((centred * centred).sum(dim=(0, 2, 3, 4))) / count  # biased, as in normalisation
        out = centred * torch.rsqrt(var + self.eps).view(shape) + self.bias.view(shape)
        with torch.no_grad():
            unbiased = var * (count / (count - 1).clamp(min=1))
            self.running_mean.mul_(1 - self.momentum).add_(mean.detach(), alpha=self.momentum)
            self.running_var.mul_(1 - self.momentum).add_(unbiased.detach(), alpha=self.momentum)
            self.num_batches_tracked.add_(1)
        return out.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every :class:`BatchNorm3dNoScale` by :class:`SyncBatchNorm3dNoScale`, keeping offsets and stats."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is BatchNorm3dNoScale:
                synced = SyncBatchNorm3dNoScale(child.num_features).to(child.bias.device, child.bias.dtype)
                synced.load_state_dict(child.state_dict())
                synced.bias.requires_grad_(child.bias.requires_grad)
                synced.train(child.training)
                setattr(parent, child_name, synced)
    return model
