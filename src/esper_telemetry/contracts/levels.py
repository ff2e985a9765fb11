"""Telemetry levels: how much detail the emitters put into each event."""

from __future__ import annotations

from enum import IntEnum


class TelemetryLevel(IntEnum):
    """Ordered detail levels: ``OFF < MINIMAL < NORMAL < DEBUG``.

    At ``OFF`` the PPO-update emitter builds nothing. ``DEBUG`` adds per-layer and
    per-env detail to each PPO update; the anomaly escalator raises the hub to it for a
    few updates after an anomaly.
    """

    OFF = 0
    MINIMAL = 1
    NORMAL = 2
    DEBUG = 3

    @classmethod
    def parse(cls, value: TelemetryLevel | str | int) -> TelemetryLevel:
        """Return the level named by ``value`` ("debug", "DEBUG", 3 or the member).

        Raises:
            ValueError: ``value`` names no level; the message lists the valid names.
        """
        if isinstance(value, TelemetryLevel):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        names = ", ".join(m.name.lower() for m in cls)
        raise ValueError(f"level: {value!r} is not a telemetry level; use one of {names}")
