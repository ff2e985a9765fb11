"""The episode return an update reports: declared, or in an old log, the trainer's extra.

Since ``schema_version`` 3 a trainer declares its mean episode return and the number of
episodes it averages (``PPOUpdatePayload.episode_return_mean`` and
``episode_return_window``). Before that, ``esper ppo`` logged it as
``extra["return_mean"]``, without saying over how many episodes. The panel and the
report read both through :func:`episode_return`, so they name the return alike.

>>> from esper_telemetry.contracts import PPOUpdateCompleted, PPOUpdatePayload
>>> e = PPOUpdateCompleted(update=0, payload=PPOUpdatePayload(policy_loss=0.1,
...     value_loss=0.2, entropy=0.6, episode_return_mean=21.5, episode_return_window=20))
>>> r = episode_return(e)
>>> r.mean, r.label
(21.5, 'return (last 20)')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from esper_telemetry.contracts import PPOUpdateCompleted

#: The ``extra`` key under which logs written before the declared fields carry the return.
LEGACY_RETURN_KEY: Final = "return_mean"

# The schema version that declared episode_return_mean: newer events are not read from
# extra, where "return_mean" is then just one of the trainer's own scalars.
_DECLARED_SINCE: Final = 3


@dataclass(frozen=True, slots=True)
class EpisodeReturn:
    """The mean episode return of one update, and over how many episodes at most."""

    mean: float
    """The mean undiscounted return (NaN before the first episode ended)."""
    window: int | None
    """How many of the latest episodes it averages at most; None when the log does not
    say (``extra["return_mean"]`` of a log written before the declared fields)."""

    @property
    def label(self) -> str:
        """``"return (last 20)"``, or ``"return"`` when the window is not recorded."""
        return "return" if self.window is None else f"return (last {self.window})"

    @property
    def legacy(self) -> bool:
        """True when read from ``extra["return_mean"]`` of an old log."""
        return self.window is None


def episode_return(event: PPOUpdateCompleted) -> EpisodeReturn | None:
    """The mean episode return ``event`` reports, or None when it reports none.

    The declared ``episode_return_mean`` when the event has it; for an event written
    before that field existed (``schema_version`` < 3), ``extra["return_mean"]``, with
    no window.
    """
    p = event.payload
    if p.episode_return_mean is not None:
        assert p.episode_return_window is not None  # the contract requires it
        return EpisodeReturn(p.episode_return_mean, p.episode_return_window)
    if event.schema_version < _DECLARED_SINCE and LEGACY_RETURN_KEY in p.extra:
        return EpisodeReturn(p.extra[LEGACY_RETURN_KEY], None)
    return None
