"""What the panel knows: the last update, the recent history, anomalies, level, stats.

``PanelState`` absorbs events one at a time and holds everything the panel shows; it
knows nothing of Textual, so the panel's logic is plain, testable Python and the
widgets only copy it to the screen. Events are kept as they came (the anomaly log holds
the ``AnomalyDetected`` events themselves), never copied into look-alike rows.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from esper_telemetry.analytics import BadLine
from esper_telemetry.contracts import (
    PPO_STATISTICS,
    AnomalyDetected,
    HealthStatus,
    HealthThresholds,
    HubStats,
    LSTMHealthMetrics,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    RunFinished,
    RunFinishedPayload,
    TelemetryEvent,
    TelemetryLevel,
    TelemetryLevelChanged,
    health_status,
)

#: PPO statistics shown first, in this order; ``extra`` scalars follow by name.
PPO_FIELDS = PPO_STATISTICS


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

    Attributes:
        anomalies: The last ``max_anomalies`` anomaly events, newest first.
        level: The telemetry level: the first event's, then each change's new level
            (None before the first event).
        level_change: The last level change seen (None: none since the panel started).
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
        self.anomalies: deque[AnomalyDetected] = deque(maxlen=max_anomalies)
        self.anomaly_count = 0
        self.level: TelemetryLevel | None = None
        self.level_change: TelemetryLevelChanged | None = None
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
            self.level = event.level
        match event:
            case PPOUpdateCompleted(update=update, payload=payload):
                self._apply_update(update, payload)
            case AnomalyDetected():
                self.anomaly_count += 1
                self.anomalies.appendleft(event)
            case TelemetryLevelChanged(payload=payload):
                self.level = payload.level
                self.level_change = event
            case RunFinished(payload=payload):
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
            h_status=metrics.status_of("h", t),
            c_status=metrics.status_of("c", t),
        )
        self.rms_history.append((update, metrics.h_rms, metrics.c_rms))
