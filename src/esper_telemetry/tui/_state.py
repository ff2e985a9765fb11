"""What the panel knows: the last update, the recent history, anomalies, level, stats.

``PanelState`` absorbs events one at a time and holds everything the panel shows; it
knows nothing of Textual, so the panel's logic is plain, testable Python and the
widgets only copy it to the screen.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime

from esper_telemetry.analytics import BadLine
from esper_telemetry.contracts import (
    PPO_STATISTICS,
    AnomalyDetectedPayload,
    HealthStatus,
    HealthThresholds,
    HubStats,
    LSTMHealthMetrics,
    PPOUpdatePayload,
    RunFinishedPayload,
    TelemetryEvent,
    TelemetryLevel,
    TelemetryLevelChangedPayload,
    health_status,
)
from esper_telemetry.tui._format import tensor_status

#: PPO statistics shown first, in this order; ``extra`` scalars follow by name.
PPO_FIELDS = PPO_STATISTICS


@dataclass(frozen=True, slots=True)
class AnomalyRow:
    """One line of the anomaly log."""

    seq: int
    update: int
    anomaly_type: str
    severity: str
    observed: float
    threshold: float | None
    message: str


@dataclass(frozen=True, slots=True)
class LevelInfo:
    """The telemetry level and when it last changed (None: not since the panel started)."""

    level: TelemetryLevel
    since_update: int | None = None
    since: datetime | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class HealthView:
    """The health of the last PPO update, with the verdicts of the one rule."""

    update: int
    metrics: LSTMHealthMetrics
    status: HealthStatus
    h_status: HealthStatus
    c_status: HealthStatus


class PanelState:
    """Everything the panel shows, built from the events it has seen.

    Args:
        thresholds: The health rule's thresholds (the detector's own instance).
        history: How many updates the sparklines cover.
        max_anomalies: How many anomalies the log keeps (the count covers them all).
        max_bad_lines: How many skipped lines of a followed log are kept for display.
    """

    def __init__(
        self,
        thresholds: HealthThresholds,
        *,
        history: int = 60,
        max_anomalies: int = 200,
        max_bad_lines: int = 20,
    ) -> None:
        self.thresholds = thresholds
        self.run_id = ""
        self.events_seen = 0
        self.ppo_update: int | None = None
        self.ppo: PPOUpdatePayload | None = None
        self.health: HealthView | None = None
        self.rms_history: deque[tuple[int, float, float]] = deque(maxlen=history)
        self.anomalies: deque[AnomalyRow] = deque(maxlen=max_anomalies)
        self.anomaly_count = 0
        self.level: LevelInfo | None = None
        self.finished: RunFinishedPayload | None = None
        self.hub_stats: HubStats | None = None
        self.hub_stats_live = False
        self.bad_lines: deque[BadLine] = deque(maxlen=max_bad_lines)
        self.bad_line_count = 0

    def apply(self, event: TelemetryEvent) -> None:
        """Absorb one event."""
        self.events_seen += 1
        self.run_id = event.run_id
        if self.level is None:
            self.level = LevelInfo(level=event.level)
        payload = event.payload
        if isinstance(payload, PPOUpdatePayload):
            self._apply_update(event.update, payload)
        elif isinstance(payload, AnomalyDetectedPayload):
            self.anomaly_count += 1
            self.anomalies.appendleft(
                AnomalyRow(
                    seq=event.seq,
                    update=event.update,
                    anomaly_type=payload.anomaly_type.value,
                    severity=payload.severity.value,
                    observed=payload.observed,
                    threshold=payload.threshold,
                    message=payload.message,
                )
            )
        elif isinstance(payload, TelemetryLevelChangedPayload):
            self.level = LevelInfo(
                level=payload.level,
                since_update=event.update,
                since=event.timestamp,
                reason=payload.reason,
            )
        elif isinstance(payload, RunFinishedPayload):
            self.finished = payload
            if payload.hub_stats is not None and not self.hub_stats_live:
                self.hub_stats = payload.hub_stats

    def set_live_stats(self, stats: HubStats) -> None:
        """Show the hub's own counters (the panel runs in the training process)."""
        self.hub_stats = stats
        self.hub_stats_live = True

    def add_bad_line(self, bad: BadLine) -> None:
        """Remember a line of a followed log that could not be read."""
        self.bad_line_count += 1
        self.bad_lines.append(bad)

    def _apply_update(self, update: int, payload: PPOUpdatePayload) -> None:
        self.ppo_update = update
        self.ppo = payload
        metrics = payload.health()
        if metrics is None:
            self.health = None
            return
        t = self.thresholds
        self.health = HealthView(
            update=update,
            metrics=metrics,
            status=health_status(metrics, t),
            h_status=tensor_status(metrics, "h", t),
            c_status=tensor_status(metrics, "c", t),
        )
        self.rms_history.append((update, metrics.h_rms, metrics.c_rms))

    def ppo_rows(self) -> list[tuple[str, float | int]]:
        """The last update's statistics as (name, value) rows: known fields, then extras.

        Fields the trainer did not report (None) are left out.
        """
        p = self.ppo
        if p is None:
            return []
        rows: list[tuple[str, float | int]] = [
            (n, v) for n in PPO_FIELDS if (v := getattr(p, n)) is not None
        ]
        if p.env_steps is not None:
            rows.append(("env_steps", p.env_steps))
        rows.extend(sorted(p.extra.items()))
        return rows
