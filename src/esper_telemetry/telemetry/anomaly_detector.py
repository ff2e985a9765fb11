"""Turn an LSTM health measurement into a list of typed anomalies.

The detector applies :class:`~esper_telemetry.contracts.HealthThresholds` through its
own predicates (``is_exploding``, ``is_vanishing``), the same ones ``health_status``
uses, so a state the detector flags is never shown as healthy elsewhere.
"""

from __future__ import annotations

import math

from esper_telemetry.contracts import (
    Anomaly,
    AnomalyReport,
    AnomalyType,
    HealthThresholds,
    LSTMHealthMetrics,
    Severity,
)


class AnomalyDetector:
    """Checks LSTM health metrics against one set of thresholds.

    >>> from esper_telemetry.contracts import LSTMHealthMetrics
    >>> m = LSTMHealthMetrics(h_l2_total=1.0, c_l2_total=90.0, h_rms=0.3, c_rms=12.0,
    ...     h_env_rms_mean=0.3, h_env_rms_max=0.4, c_env_rms_mean=12.0, c_env_rms_max=15.0,
    ...     h_max=0.9, c_max=40.0, has_nan=False, has_inf=False)
    >>> AnomalyDetector().check_lstm_health(m).anomaly_types
    [<AnomalyType.LSTM_C_EXPLOSION: 'lstm_c_explosion'>]
    """

    def __init__(self, thresholds: HealthThresholds | None = None) -> None:
        if thresholds is not None and not isinstance(thresholds, HealthThresholds):
            raise TypeError(
                f"thresholds must be HealthThresholds or None, got {type(thresholds).__name__}"
            )
        self._thresholds = thresholds if thresholds is not None else HealthThresholds()

    @property
    def thresholds(self) -> HealthThresholds:
        """The thresholds this detector applies."""
        return self._thresholds

    def __repr__(self) -> str:
        return f"AnomalyDetector(thresholds={self._thresholds!r})"

    def check_lstm_health(self, metrics: LSTMHealthMetrics) -> AnomalyReport:
        """Return every anomaly in ``metrics``, in a fixed order.

        Order: ``lstm_nan``, ``lstm_inf``, then h before c for explosion and vanishing.
        A NaN RMS compares false with every threshold, so a NaN state reports
        ``lstm_nan`` alone; an infinite RMS is also an explosion.

        Raises:
            TypeError: ``metrics`` is not an ``LSTMHealthMetrics``.
        """
        if not isinstance(metrics, LSTMHealthMetrics):
            raise TypeError(f"metrics must be LSTMHealthMetrics, got {type(metrics).__name__}")
        t = self._thresholds
        found: list[Anomaly] = []
        # A NaN or infinite figure is a NaN or Inf in the state, flags or not (the one rule,
        # HealthThresholds.status, says CRITICAL for it too): metrics built by hand may
        # carry one without the flag.
        figures: tuple[float, ...] = (metrics.h_rms, metrics.c_rms, metrics.h_env_rms_max)
        figures += (metrics.c_env_rms_max, metrics.h_max, metrics.c_max)
        if metrics.has_nan or any(math.isnan(v) for v in figures):
            found.append(_critical(AnomalyType.LSTM_NAN, math.nan, None, "LSTM state holds NaN"))
        if metrics.has_inf or any(math.isinf(v) for v in figures[4:]):
            found.append(_critical(AnomalyType.LSTM_INF, math.inf, None, "LSTM state holds Inf"))
        for name, rms, env_max, explosion in (
            ("h", metrics.h_rms, metrics.h_env_rms_max, AnomalyType.LSTM_H_EXPLOSION),
            ("c", metrics.c_rms, metrics.c_env_rms_max, AnomalyType.LSTM_C_EXPLOSION),
        ):
            if t.is_exploding(rms, env_max):
                # Name the whole state when it is over the line, else the worst env.
                if rms > t.critical_rms:
                    what, observed = f"{name}_rms", rms
                else:
                    what, observed = f"{name}_env_rms_max", env_max
                found.append(
                    _critical(
                        explosion,
                        observed,
                        t.critical_rms,
                        f"{what} = {observed:.4g} is above critical_rms = {t.critical_rms:g}",
                    )
                )
        for name, rms, vanishing in (
            ("h", metrics.h_rms, AnomalyType.LSTM_H_VANISHING),
            ("c", metrics.c_rms, AnomalyType.LSTM_C_VANISHING),
        ):
            if t.is_vanishing(rms):
                found.append(
                    _critical(
                        vanishing,
                        rms,
                        t.vanishing_rms,
                        f"{name}_rms = {rms:.4g} is below vanishing_rms = {t.vanishing_rms:g}",
                    )
                )
        return AnomalyReport(anomalies=tuple(found))


def _critical(kind: AnomalyType, observed: float, threshold: float | None, msg: str) -> Anomaly:
    return Anomaly(
        type=kind, severity=Severity.CRITICAL, observed=observed, threshold=threshold, message=msg
    )
