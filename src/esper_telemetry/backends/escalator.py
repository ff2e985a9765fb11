"""AnomalyEscalator: turns unhealthy LSTM states into anomaly events, DEBUG detail and halts.

Subscribed inline, it checks every :class:`PPOUpdateCompleted` with an
:class:`~esper_telemetry.telemetry.AnomalyDetector`. For each anomaly it emits one
:class:`AnomalyDetected` event and logs a warning; it raises the hub to DEBUG for
``escalate_for`` PPO updates after the last anomaly, then restores the level it found;
with ``halt_on="critical"`` it asks the trainer to stop. It only ever talks to the rest
of the system through the hub, and it never touches the hidden state: a broken
configuration must stay visible.
"""

from __future__ import annotations

import logging

from esper_telemetry.contracts import (
    Anomaly,
    AnomalyDetected,
    AnomalyDetectedPayload,
    AnomalyType,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    Severity,
    TelemetryEvent,
    TelemetryLevel,
)
from esper_telemetry.hub import Backend, TelemetryHub
from esper_telemetry.telemetry.anomaly_detector import AnomalyDetector

logger = logging.getLogger("esper_telemetry.hub")
#: Each anomaly is logged at the level of its severity: a critical one reads "critical:".
_LOG_LEVEL = {Severity.WARNING: logging.WARNING, Severity.CRITICAL: logging.CRITICAL}


class AnomalyEscalator(Backend):
    """Detects anomalies in each PPO update and escalates telemetry detail.

    Args:
        detector: The detector (and so the thresholds) to apply; default rule if None.
        escalate_for: PPO updates to stay at DEBUG after the last anomaly (>= 1).
        halt_on: None, or ``"critical"`` to request a halt on the first critical
            anomaly; the trainer's next ``emit_ppo_update_event`` then raises
            ``TrainingHalted``.

    Subscribe it inline, so the level change applies to the very next update::

        hub.subscribe(AnomalyEscalator(halt_on="critical"), mode="inline")
    """

    name = "anomaly-escalator"

    def __init__(
        self,
        detector: AnomalyDetector | None = None,
        *,
        escalate_for: int = 5,
        halt_on: Severity | str | None = None,
    ) -> None:
        if detector is not None and not isinstance(detector, AnomalyDetector):
            raise TypeError(f"detector must be an AnomalyDetector, got {type(detector).__name__}")
        if not isinstance(escalate_for, int) or isinstance(escalate_for, bool) or escalate_for < 1:
            raise ValueError(f"escalate_for must be an int >= 1, got {escalate_for!r}")
        if halt_on is not None and halt_on != Severity.CRITICAL:
            raise ValueError(f"halt_on must be None or 'critical', got {halt_on!r}")
        self.detector = detector if detector is not None else AnomalyDetector()
        self.escalate_for = escalate_for
        self.halt_on = Severity.CRITICAL if halt_on is not None else None
        self._hub: TelemetryHub | None = None
        self._restore_to: TelemetryLevel | None = None
        self._last_anomaly_update = -1

    def __repr__(self) -> str:
        return (
            f"AnomalyEscalator(escalate_for={self.escalate_for}, "
            f"halt_on={self.halt_on.value if self.halt_on else None!r})"
        )

    def on_subscribe(self, hub: TelemetryHub) -> None:
        """Remember the hub it publishes anomalies and level changes on."""
        if self._hub is not None and self._hub is not hub:
            raise ValueError("this AnomalyEscalator is already subscribed to another hub")
        self._hub = hub

    def handle(self, event: TelemetryEvent) -> None:
        """Check one event; only PPO updates carrying LSTM health are examined."""
        if not isinstance(event, PPOUpdateCompleted):
            return
        hub = self._hub
        if hub is None:
            raise RuntimeError("AnomalyEscalator must be subscribed with TelemetryHub.subscribe")
        payload = event.payload
        report = self.detector.check_update(payload)
        if not report.has_anomaly:
            self._maybe_restore(hub, event.update)
            return
        for anomaly in report.anomalies:
            logger.log(
                _LOG_LEVEL[anomaly.severity],
                "LSTM anomaly %s at update %d: %s",
                anomaly.type.value,
                event.update,
                anomaly.message,
            )
            hub.emit(
                AnomalyDetected(
                    update=event.update,
                    payload=AnomalyDetectedPayload(
                        anomaly=anomaly, outlier_envs=self._outliers(payload, anomaly, event.rank)
                    ),
                )
            )
        self._last_anomaly_update = event.update
        if self._restore_to is None:
            self._restore_to = hub.level
        types = ", ".join(t.value for t in report.anomaly_types)
        hub.set_level(TelemetryLevel.DEBUG, reason=f"{types} at update {event.update}")
        if self.halt_on is not None:
            critical = [a for a in report.anomalies if a.severity is Severity.CRITICAL]
            if critical:
                first = critical[0]
                hub.request_halt(f"{first.type.value}: {first.message}", update=event.update)

    def _outliers(
        self, payload: PPOUpdatePayload, anomaly: Anomaly, rank: int
    ) -> tuple[int, ...] | None:
        state = anomaly.state
        if anomaly.type in (AnomalyType.LSTM_REPLAY_MISMATCH, AnomalyType.LSTM_REPLAY_DRIFT):
            # The env of the first mismatched step, when it is one of this rank's own envs
            # (outlier_envs index this rank's batch); drift is a figure of the whole batch.
            replay = payload.replay.get(state) if state is not None else None
            if anomaly.type is AnomalyType.LSTM_REPLAY_DRIFT or replay is None:
                return None
            if replay.first_env is None or replay.first_rank not in (None, rank):
                return None
            return (replay.first_env,)
        # The update that trips an anomaly carries its own detail (see the emitter).
        if state is None or state == payload.primary_name():
            return payload.lstm_outlier_envs
        detail = payload.detail_of(state)
        return None if detail is None else detail.outlier_envs(self.detector.thresholds)

    def _maybe_restore(self, hub: TelemetryHub, update: int) -> None:
        if self._restore_to is None or update - self._last_anomaly_update < self.escalate_for:
            return
        previous, self._restore_to = self._restore_to, None
        hub.set_level(
            previous,
            reason=f"no anomaly for {self.escalate_for} updates after update "
            f"{self._last_anomaly_update}",
        )
