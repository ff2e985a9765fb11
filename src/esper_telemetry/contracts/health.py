"""Health of an LSTM hidden state: the metrics, the thresholds and the one rule.

Every part of esper that calls a state healthy, warning or critical (the anomaly
detector, the terminal panel, W&B, the logs) goes through :class:`HealthThresholds`
and :func:`health_status`, so they can never disagree.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Self

from pydantic import Field, model_validator

from esper_telemetry.contracts._base import Bool, Contract, Float, StrictFloat


class LSTMHealthMetrics(Contract):
    """Health of one LSTM state ``(h, c)`` (the 12 fields of record TELE-340).

    Non-finite values are data: an exploded state gives ``inf`` or ``nan`` here, and it
    is stored and shown as such.

    >>> m = LSTMHealthMetrics(h_l2_total=2.0, c_l2_total=4.0, h_rms=0.5, c_rms=1.0,
    ...     h_env_rms_mean=0.5, h_env_rms_max=0.6, c_env_rms_mean=1.0, c_env_rms_max=1.2,
    ...     h_max=0.9, c_max=2.5, has_nan=False, has_inf=False)
    >>> m.to_dict()["lstm_h_rms"]
    0.5
    """

    h_l2_total: Float = Field(description="L2 norm of the whole h tensor.")
    c_l2_total: Float = Field(description="L2 norm of the whole c tensor.")
    h_rms: Float = Field(description="RMS of h: its L2 norm / sqrt(number of elements).")
    c_rms: Float = Field(description="RMS of c: its L2 norm / sqrt(number of elements).")
    h_env_rms_mean: Float = Field(description="Mean over the batch of each env's RMS of h.")
    h_env_rms_max: Float = Field(description="Largest per-env RMS of h.")
    c_env_rms_mean: Float = Field(description="Mean over the batch of each env's RMS of c.")
    c_env_rms_max: Float = Field(description="Largest per-env RMS of c.")
    h_max: Float = Field(description="Largest absolute value in h.")
    c_max: Float = Field(description="Largest absolute value in c.")
    has_nan: Bool = Field(description="True when h or c holds a NaN.")
    has_inf: Bool = Field(description="True when h or c holds +Inf or -Inf.")

    def to_dict(self) -> dict[str, float | bool]:
        """Return the 12 values under ``lstm_``-prefixed keys (``lstm_h_rms``, ...)."""
        return {f"lstm_{name}": getattr(self, name) for name in type(self).model_fields}


class LSTMHealthDetail(Contract):
    """Debug-level detail of one LSTM state, from ``compute_lstm_health(..., detail=True)``."""

    h_layer_rms: tuple[Float, ...] = Field(description="RMS of h per layer, layer 0 first.")
    c_layer_rms: tuple[Float, ...] = Field(description="RMS of c per layer, layer 0 first.")
    h_env_rms: tuple[Float, ...] = Field(description="RMS of h per env (batch element).")
    c_env_rms: tuple[Float, ...] = Field(description="RMS of c per env (batch element).")

    def outlier_envs(self, thresholds: HealthThresholds | None = None) -> tuple[int, ...]:
        """Indices of the envs whose h or c RMS is non-finite or above ``warning_rms``."""
        t = thresholds or HealthThresholds()
        return tuple(
            i
            for i, (h, c) in enumerate(zip(self.h_env_rms, self.c_env_rms, strict=True))
            if not (math.isfinite(h) and math.isfinite(c)) or t.is_warning(max(h, c))
        )


class HealthStatus(StrEnum):
    """Verdict on one LSTM state; always shown as a word, never only as a colour."""

    HEALTHY = "HEALTHY"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"


class HealthThresholds(Contract):
    """The thresholds of the one health rule (defaults from the seed project).

    All comparisons are strict: an RMS of exactly ``critical_rms`` is not critical.
    """

    vanishing_rms: StrictFloat = Field(
        default=1e-6, gt=0, description="An RMS below this is a vanishing state (critical)."
    )
    warning_rms: StrictFloat = Field(
        default=5.0, gt=0, description="An RMS above this is a warning."
    )
    critical_rms: StrictFloat = Field(
        default=10.0, gt=0, description="An RMS or per-env RMS above this is an explosion."
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not (self.vanishing_rms < self.warning_rms < self.critical_rms):
            raise ValueError(
                "thresholds must satisfy vanishing_rms < warning_rms < critical_rms, got "
                f"vanishing_rms={self.vanishing_rms!r}, warning_rms={self.warning_rms!r}, "
                f"critical_rms={self.critical_rms!r}"
            )
        for name in ("vanishing_rms", "warning_rms", "critical_rms"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        return self

    def is_exploding(self, rms: float, env_rms_max: float) -> bool:
        """True when the RMS or the largest per-env RMS is above ``critical_rms``."""
        return rms > self.critical_rms or env_rms_max > self.critical_rms

    def is_vanishing(self, rms: float) -> bool:
        """True when the RMS is below ``vanishing_rms`` (NaN is not vanishing)."""
        return rms < self.vanishing_rms

    def is_warning(self, rms: float) -> bool:
        """True when the RMS is above ``warning_rms``."""
        return rms > self.warning_rms


def health_status(
    metrics: LSTMHealthMetrics, thresholds: HealthThresholds | None = None
) -> HealthStatus:
    """Classify one LSTM state; the rule every consumer uses.

    CRITICAL when the state holds NaN or Inf, when h's or c's RMS or largest per-env
    RMS is above ``critical_rms``, or when an RMS is below ``vanishing_rms``. WARNING
    when an RMS is above ``warning_rms``. HEALTHY otherwise.

    Raises:
        TypeError: ``metrics`` or ``thresholds`` has the wrong type.

    >>> ok = LSTMHealthMetrics(h_l2_total=1.0, c_l2_total=1.0, h_rms=0.3, c_rms=0.6,
    ...     h_env_rms_mean=0.3, h_env_rms_max=0.4, c_env_rms_mean=0.6, c_env_rms_max=0.7,
    ...     h_max=0.9, c_max=1.5, has_nan=False, has_inf=False)
    >>> health_status(ok)
    <HealthStatus.HEALTHY: 'HEALTHY'>
    >>> health_status(ok.model_copy(update={"c_rms": 5.5}))
    <HealthStatus.WARNING: 'WARNING'>
    """
    if not isinstance(metrics, LSTMHealthMetrics):
        raise TypeError(f"metrics must be LSTMHealthMetrics, got {type(metrics).__name__}")
    t = thresholds if thresholds is not None else HealthThresholds()
    if not isinstance(t, HealthThresholds):
        raise TypeError(f"thresholds must be HealthThresholds, got {type(t).__name__}")
    m = metrics
    if m.has_nan or m.has_inf:
        return HealthStatus.CRITICAL
    if t.is_exploding(m.h_rms, m.h_env_rms_max) or t.is_exploding(m.c_rms, m.c_env_rms_max):
        return HealthStatus.CRITICAL
    if t.is_vanishing(m.h_rms) or t.is_vanishing(m.c_rms):
        return HealthStatus.CRITICAL
    if t.is_warning(m.h_rms) or t.is_warning(m.c_rms):
        return HealthStatus.WARNING
    return HealthStatus.HEALTHY
