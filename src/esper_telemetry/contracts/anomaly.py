"""Anomalies found in an LSTM state, and the report that carries them."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from esper_telemetry.contracts._base import Contract, Float, SecretText
from esper_telemetry.contracts.health import StateName


class AnomalyType(StrEnum):
    """What went wrong; the value is the name used in events, logs and W&B keys."""

    LSTM_NAN = "lstm_nan"
    LSTM_INF = "lstm_inf"
    LSTM_H_EXPLOSION = "lstm_h_explosion"
    LSTM_C_EXPLOSION = "lstm_c_explosion"
    LSTM_H_VANISHING = "lstm_h_vanishing"
    LSTM_C_VANISHING = "lstm_c_vanishing"
    LSTM_H_SATURATION = "lstm_h_saturation"
    LSTM_C_SATURATION = "lstm_c_saturation"
    LSTM_C_RUNAWAY = "lstm_c_runaway"
    LSTM_DORMANT = "lstm_dormant"
    LSTM_REPLAY_MISMATCH = "lstm_replay_mismatch"
    LSTM_REPLAY_DRIFT = "lstm_replay_drift"


class Severity(StrEnum):
    """How bad an anomaly is.

    NaN, Inf, explosion and vanishing are critical; saturation, a runaway cell and
    dormant units (from a state's diagnostics) are warnings.
    """

    WARNING = "warning"
    CRITICAL = "critical"


class Anomaly(Contract):
    """One anomaly: what, how bad, the value seen and the threshold it crossed."""

    type: AnomalyType = Field(description="Kind of anomaly.")
    severity: Severity = Field(description="How bad it is.")
    observed: Float = Field(description="The value that crossed the threshold (NaN for NaN).")
    threshold: Float | None = Field(
        default=None, description="The threshold crossed; None for NaN and Inf, which need none."
    )
    message: SecretText = Field(description="One sentence for a person reading a log.")
    state: StateName | None = Field(
        default=None,
        description="The named recurrent state it was found in (a key of the update's "
        "recurrent_health, e.g. 'policy' or 'value'); None when the detector was given no "
        "name, and in logs written before states had names.",
    )


class AnomalyReport(Contract):
    """Every anomaly found in one check, in the order the detector found them.

    >>> AnomalyReport().has_anomaly
    False
    """

    anomalies: tuple[Anomaly, ...] = Field(default=(), description="The anomalies found.")

    @property
    def has_anomaly(self) -> bool:
        """True when at least one anomaly was found."""
        return bool(self.anomalies)

    @property
    def anomaly_types(self) -> list[AnomalyType]:
        """The distinct anomaly types, in the order they were first found."""
        return list(dict.fromkeys(a.type for a in self.anomalies))

    def merge(self, *others: AnomalyReport) -> AnomalyReport:
        """Return one report holding this report's anomalies, then each other's, all kept."""
        for other in others:
            if not isinstance(other, AnomalyReport):
                raise TypeError(f"others: expected AnomalyReport, got {type(other).__name__}")
        merged = self.anomalies + tuple(a for o in others for a in o.anomalies)
        return AnomalyReport(anomalies=merged)
