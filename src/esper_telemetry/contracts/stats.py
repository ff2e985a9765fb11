"""What the hub reports about its subscribers: counts, queue depth, latency."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from esper_telemetry.contracts._base import (
    Bool,
    Contract,
    Level,
    NonNegativeFloat,
    NonNegativeInt,
    SecretText,
    Str,
)


class SubscriberStats(Contract):
    """Counters of one subscriber since it subscribed."""

    name: Str = Field(description="The subscriber's unique name on its hub.")
    mode: Literal["thread", "inline"] = Field(description="Where it runs.")
    when_full: Literal["block", "drop_oldest"] = Field(description="Its full-queue policy.")
    delivered: NonNegativeInt = Field(description="Events it handled without raising.")
    failed: NonNegativeInt = Field(
        description="Events on which it raised (counted, logged, isolated)."
    )
    dropped: NonNegativeInt = Field(
        description="Events discarded by drop_oldest before it saw them."
    )
    abandoned: NonNegativeInt = Field(
        default=0, description="Events still queued when close() gave up on it."
    )
    undelivered: NonNegativeInt = Field(
        default=0,
        description="Events it handled but reported it could not deliver or write (its own "
        "count, e.g. W&B rows refused for a step that went backwards).",
    )
    queue_depth: NonNegativeInt = Field(
        description="Events waiting in its queue now (0 when inline)."
    )
    queue_size: NonNegativeInt = Field(description="Its queue's capacity (0 when inline).")
    latency_p50_ms: NonNegativeFloat = Field(
        description="Median handling time, recent events, in ms."
    )
    latency_p99_ms: NonNegativeFloat = Field(
        description="99th percentile handling time, recent events, ms."
    )
    latency_max_ms: NonNegativeFloat = Field(
        description="Longest handling time since it subscribed, ms."
    )
    last_error: SecretText | None = Field(
        default=None, description="The last exception it raised (secrets redacted)."
    )
    stuck: Bool = Field(
        default=False, description="True when close() or flush() timed out waiting for it."
    )

    @property
    def lost(self) -> int:
        """Events that did not reach their destination: the one definition of a loss.

        Failed, abandoned and undelivered events are lost, and so are the drops of a
        ``block`` subscriber (it was declared stuck). The drops of a ``drop_oldest``
        subscriber are not: a view that asked for recent events only accepted them.
        """
        dropped = self.dropped if self.when_full == "block" else 0
        return self.failed + self.abandoned + self.undelivered + dropped


class HubStats(Contract):
    """A snapshot of a hub and its subscribers."""

    run_id: Str = Field(description="The hub's run id.")
    state: Literal["open", "closing", "closed"] = Field(description="Lifecycle state.")
    level: Level = Field(description="The current telemetry level.")
    emitted: NonNegativeInt = Field(description="Events accepted by emit() so far.")
    subscribers: tuple[SubscriberStats, ...] = Field(description="One entry per subscriber.")

    @property
    def stuck(self) -> tuple[str, ...]:
        """Names of the subscribers that a flush or close had to give up on."""
        return tuple(s.name for s in self.subscribers if s.stuck)

    @property
    def lost(self) -> int:
        """Events lost across every subscriber (see :attr:`SubscriberStats.lost`)."""
        return sum(s.lost for s in self.subscribers)

    @property
    def lossless(self) -> bool:
        """True when no subscriber lost an event and none is stuck."""
        return all(s.lost == 0 and not s.stuck for s in self.subscribers)
