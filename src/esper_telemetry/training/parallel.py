"""Data parallelism for the reference trainer: several processes train one policy.

Each process (a rank of an initialised ``torch.distributed`` run) plays its own
environments with its own replica of the model. The replicas start from rank 0's weights
(:meth:`DataParallel.broadcast_parameters`), and after every backward pass the gradients
are averaged over the ranks (:meth:`DataParallel.average_gradients`, one all-reduce of
all gradients together), so every replica takes the same optimiser step and the weights
stay identical; :func:`weights_checksum` lets a run show that they did.

An explicit all-reduce rather than ``DistributedDataParallel``: the trainer unrolls its
LSTMs step by step through ``unroll`` (not ``forward``) and runs the rollout under
``no_grad``, which DDP's hooks do not expect; one all-reduce per optimiser step is all
the trainer needs, and reads plainly.

Once per update every rank also agrees on the telemetry level, a halt and a stop
(:meth:`DataParallel.agree`, one more small all-reduce), so no rank is left alone in a
collective. What stays per rank: the environments (seeded ``seed + rank``), the action
sampler, and the observation and reward statistics.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from esper_telemetry.hub import TelemetryHub
from esper_telemetry.telemetry.distributed import RankAgreement, sync_ranks

__all__ = ["DataParallel", "weights_checksum"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class DataParallel:
    """This process trains as one rank of a group; pass it as ``train(..., parallel=)``.

    ``torch.distributed`` must be initialised first (gloo on CPU; the trainer keeps its
    tensors on the CPU). Every rank of the group must train with the same settings.

    Args:
        group: The ranks that train together; default: the whole world.
    """

    group: dist.ProcessGroup | None = None

    def __post_init__(self) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "DataParallel needs an initialised torch.distributed run: call "
                "torch.distributed.init_process_group('gloo', ...) on every rank first"
            )

    @property
    def rank(self) -> int:
        """This process's rank in the group."""
        return int(dist.get_rank(self.group))

    @property
    def world_size(self) -> int:
        """How many ranks train together."""
        return int(dist.get_world_size(self.group))

    @property
    def health_group(self) -> dist.ProcessGroup:
        """The group over which the LSTM health is measured: the training group."""
        if self.group is not None:
            return self.group
        world = dist.group.WORLD
        assert world is not None  # __post_init__ checked the run is initialised
        return world

    def broadcast_parameters(self, model: nn.Module) -> None:
        """Give every rank the weights of the group's first rank (one broadcast)."""
        params = [p.data for p in model.parameters()]
        flat = torch.cat([p.reshape(-1) for p in params])
        dist.broadcast(flat, src=self._first_rank(), group=self.group)
        _scatter(flat, params)

    def average_gradients(self, model: nn.Module) -> None:
        """Replace every gradient by its mean over the ranks (one all-reduce).

        Call it on every rank after ``backward()`` and before clipping and the optimiser
        step. A parameter without a gradient counts as a zero gradient, so every rank
        sends the same layout.
        """
        params = list(model.parameters())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        flat.div_(self.world_size)
        for p, g in zip(params, grads, strict=True):
            if p.grad is None:
                p.grad = g
        _scatter(flat, [p.grad for p in params if p.grad is not None])

    def agree(self, hub: TelemetryHub, *, stop: bool) -> RankAgreement:
        """Agree with the other ranks on the level, a halt and a stop (see ``sync_ranks``)."""
        return sync_ranks(hub, stop=stop, group=self.group)

    def gather(self, value: _T) -> list[_T]:
        """Every rank's ``value`` (picklable, of one type on every rank), in rank order,
        on every rank (one collective)."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value, group=self.group)
        return out

    def _first_rank(self) -> int:
        """The global rank of the group's rank 0."""
        if self.group is None:
            return 0
        return int(dist.get_global_rank(self.group, 0))


def weights_checksum(model: nn.Module) -> int:
    """A CRC-32 of every parameter's bytes: equal on two replicas exactly when their
    weights are equal (up to a collision)."""
    crc = 0
    for p in model.parameters():
        crc = zlib.crc32(p.detach().contiguous().cpu().numpy().tobytes(), crc)
    return crc


def _scatter(flat: torch.Tensor, into: list[torch.Tensor]) -> None:
    """Copy consecutive slices of ``flat`` into the tensors of ``into``."""
    offset = 0
    for t in into:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n
