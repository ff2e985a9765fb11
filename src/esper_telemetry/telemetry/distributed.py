"""Ranks that agree: the telemetry level, a halt and a stop, the same on every rank.

In a run of several processes each rank has its own hub and its own anomaly escalator.
When one of them raises the level (DEBUG detail) or asks for a halt, or one rank is
told to stop (Ctrl-C, SIGTERM), the others must follow at the same update, or detail is
collected on some ranks only and, worse, a rank that stops alone leaves the others
waiting forever in their next gradient all-reduce. :func:`sync_ranks`, called once per
update by every rank after the update's event is published, is one small all-reduce
that makes every rank take the highest level, the first halt and any stop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from esper_telemetry.contracts import TelemetryLevel
from esper_telemetry.hub import TelemetryHub

__all__ = ["RankAgreement", "sync_ranks"]


@dataclass(frozen=True)
class RankAgreement:
    """What every rank agreed on at one update."""

    level: TelemetryLevel
    """The highest level of any rank: every hub is now at it."""
    halted_by: int | None
    """The highest rank that asked for a halt (every hub then has one), or None."""
    stop: bool
    """Some rank was asked to stop: every rank should stop before its next update."""


def sync_ranks(
    hub: TelemetryHub,
    *,
    stop: bool = False,
    group: dist.ProcessGroup | None = None,
    device: torch.device | str | None = None,
) -> RankAgreement:
    """Agree with every other rank of ``group`` on the level, a halt and a stop.

    One ``all_reduce`` (MAX) of four integers; every rank of the group must call it at
    the same point of each update. The hub is then at the highest level any rank is at
    (a change says which rank raised it); if any rank asked for a halt, every hub holds
    one, so ``hub.raise_if_halted()`` stops every rank at the same update.

    Args:
        hub: This rank's hub.
        stop: This rank was asked to stop (e.g. a signal).
        group: The process group (default: the whole world).
        device: Where the small tensor lives: ``cuda`` for NCCL; default CPU (gloo).

    Returns:
        What the ranks agreed on. Outside an initialised distributed run, this rank's
        own view, with no communication.
    """
    halted = hub.halted
    mine = [
        int(hub.level),
        hub.rank + 1 if halted is not None else 0,
        (halted.update + 1) if halted is not None and halted.update is not None else 0,
        int(stop),
    ]
    if not (dist.is_available() and dist.is_initialized()):
        return RankAgreement(hub.level, hub.rank if halted is not None else None, stop)
    values = torch.tensor(mine, dtype=torch.int64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX, group=group)
    level, halter, halt_update, any_stop = (int(v) for v in values.tolist())
    agreed = TelemetryLevel(level)
    if agreed > hub.level:
        hub.set_level(agreed, reason="raised on another rank")
    halted_by = halter - 1 if halter else None
    if halted_by is not None and hub.halted is None:
        update = halt_update - 1 if halt_update else None
        hub.request_halt(f"rank {halted_by} halted the run", update=update)
    return RankAgreement(agreed, halted_by, bool(any_stop))
