"""What the panel knows: the last update, the recent history, anomalies, level, stats.

``PanelState`` absorbs events one at a time and holds everything the panel shows; it
knows nothing of Textual, so the panel's logic is plain, testable Python and the
widgets only copy it to the screen. Events are kept as they came (the anomaly log holds
the ``AnomalyDetected`` events themselves), never copied into look-alike rows.

An update may carry several named recurrent states (``PPOUpdatePayload.named_health``:
the primary one first, ``"policy"`` for logs written before states had names); each
gets its verdicts and its own RMS history, and one of them, the primary unless the
user picked another (:meth:`PanelState.select_next`), is shown in detail.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from esper_telemetry._returns import LEGACY_RETURN_KEY as LEGACY
from esper_telemetry._returns import EpisodeReturn, episode_return
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
    ReplayConsistency,
    RunFinished,
    RunFinishedPayload,
    TelemetryEvent,
    TelemetryLevel,
    TelemetryLevelChanged,
    health_status,
)

#: PPO statistics shown first, in this order; ``extra`` scalars follow by name.
PPO_FIELDS = PPO_STATISTICS

#: One point of a state's RMS history: (update, h_rms, c_rms or None without a cell).
RMSPoint = tuple[int, float, float | None]


@dataclass(frozen=True, slots=True)
class StateView:
    """One named recurrent state of the last update, with the verdicts of the one rule."""

    name: str
    primary: bool
    metrics: LSTMHealthMetrics
    status: HealthStatus
    """The verdict on the whole state: ``health_status`` (its figures and diagnostics),
    made worse by its replay check's (``replay_status``)."""
    h_status: HealthStatus
    c_status: HealthStatus | None
    """``status_of("c")``: None for a state without a cell (GRU, RNN)."""
    replay: ReplayConsistency | None = None
    """The update's replay check of this state; None when the trainer made none."""
    replay_status: HealthStatus | None = None
    """CRITICAL for a mismatch (``is_replay_mismatch``), WARNING for a drift above the
    threshold (``is_replay_drifting``), else HEALTHY; None without a check."""


@dataclass(frozen=True, slots=True)
class HealthView:
    """The health of the last PPO update: every named state, the primary one first."""

    update: int
    states: tuple[StateView, ...]

    @property
    def status(self) -> HealthStatus:
        """The worst verdict of any state."""
        return max((s.status for s in self.states), key=lambda status: status.rank)

    @property
    def has_nan(self) -> bool:
        """True when any state holds a NaN."""
        return any(s.metrics.has_nan for s in self.states)

    @property
    def has_inf(self) -> bool:
        """True when any state holds an Inf."""
        return any(s.metrics.has_inf for s in self.states)

    def get(self, name: str | None) -> StateView:
        """The state called ``name``; the primary one when there is no such state."""
        return next((s for s in self.states if s.name == name), self.states[0])


class PanelState:
    """Everything the panel shows, built from the events it has seen.

    Args:
        thresholds: The health rule's thresholds (the detector's own instance).
        history: How many updates the sparklines cover.
        max_anomalies: How many anomalies the log keeps (the count covers them all).
        max_bad_lines: How many skipped lines of a followed log are kept for display.

    Attributes:
        health: The states of the last update that carried any (None before one).
        rms_history: Per state name, its last ``history`` points (update, h_rms,
            c_rms); a state's history grows only in the updates that carry it.
        selected: The state the user picked for the detail view (None: the primary).
        episode_return: The last update's mean episode return (None if it had none).
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
        self.history = history
        self.run_id = ""
        self.events_seen = 0
        self.ppo_update: int | None = None
        self.ppo: PPOUpdatePayload | None = None
        self.episode_return: EpisodeReturn | None = None
        self.health: HealthView | None = None
        self.rms_history: dict[str, deque[RMSPoint]] = {}
        self.selected: str | None = None
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
            case PPOUpdateCompleted():
                self._apply_update(event)
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

    def detail(self) -> StateView | None:
        """The state shown in detail: the one selected, else (or once it is gone) the primary."""
        return None if self.health is None else self.health.get(self.selected)

    def select_next(self) -> None:
        """Show the next state of the last update in detail (after the last: the primary)."""
        if self.health is None:
            return
        names = [s.name for s in self.health.states]
        shown = self.health.get(self.selected).name
        self.selected = names[(names.index(shown) + 1) % len(names)]

    def ppo_rows(self) -> list[tuple[str, float | int]]:
        """The last update's statistics as (label, value) rows.

        The known fields, the env steps, the mean episode return labelled with its
        window (``return (last 20)``), then the trainer's extras by name. Fields the
        trainer did not report (None) are left out; in an old log whose return is
        ``extra["return_mean"]``, that extra is the return row (``return``: the log
        does not say over how many episodes).
        """
        p = self.ppo
        if p is None:
            return []
        rows: list[tuple[str, float | int]] = [
            (n, v) for n in PPO_FIELDS if (v := getattr(p, n)) is not None
        ]
        if p.env_steps is not None:
            rows.append(("env_steps", p.env_steps))
        r = self.episode_return
        if r is not None:
            rows.append((r.label, r.mean))
        legacy = r is not None and r.legacy
        rows.extend(sorted((k, v) for k, v in p.extra.items() if not (legacy and k == LEGACY)))
        return rows

    def _apply_update(self, event: PPOUpdateCompleted) -> None:
        update, payload = event.update, event.payload
        self.ppo_update = update
        self.ppo = payload
        self.episode_return = episode_return(event)
        states = payload.named_health()
        if not states:
            self.health = None
            return
        primary = payload.primary_name()
        self.health = HealthView(
            update=update,
            states=tuple(
                self._view(name, m, name == primary, payload.replay.get(name))
                for name, m in states.items()
            ),
        )
        for name, m in states.items():
            points = self.rms_history.setdefault(name, deque(maxlen=self.history))
            points.append((update, m.h_rms, m.c_rms))

    def _view(
        self,
        name: str,
        metrics: LSTMHealthMetrics,
        primary: bool,
        replay: ReplayConsistency | None,
    ) -> StateView:
        t = self.thresholds
        h_status = metrics.status_of("h", t)
        assert h_status is not None  # h is always judged
        status = health_status(metrics, t)
        replay_status = None
        if replay is not None:
            replay_status = HealthStatus.HEALTHY
            if t.is_replay_mismatch(replay):
                replay_status = HealthStatus.CRITICAL
            elif t.is_replay_drifting(replay):
                replay_status = HealthStatus.WARNING
            status = max(status, replay_status, key=lambda v: v.rank)
        return StateView(
            name=name,
            primary=primary,
            metrics=metrics,
            status=status,
            h_status=h_status,
            c_status=metrics.status_of("c", t),
            replay=replay,
            replay_status=replay_status,
        )
