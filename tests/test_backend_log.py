"""StructlogBackend: strict JSON lines, levels, and no change to the user's structlog setup."""

from __future__ import annotations

import errno
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import structlog

from esper_telemetry import TelemetryHub, _append
from esper_telemetry.backends.log import StructlogBackend
from esper_telemetry.contracts import (
    Anomaly,
    AnomalyDetected,
    AnomalyDetectedPayload,
    AnomalyType,
    HealthThresholds,
    LSTMHealthDetail,
    LSTMHealthMetrics,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    Severity,
    TelemetryEvent,
)


def strict(line: str) -> dict[str, Any]:
    def refuse(token: str) -> float:
        raise ValueError(f"non-standard JSON token {token}")

    parsed: dict[str, Any] = json.loads(line, parse_constant=refuse)
    return parsed


def ppo(update: int, **fields: float) -> PPOUpdateCompleted:
    payload = PPOUpdatePayload(policy_loss=0.1, value_loss=0.2, entropy=0.3, **fields)
    return PPOUpdateCompleted(update=update, payload=payload)


def anomaly(update: int, severity: Severity) -> AnomalyDetected:
    found = Anomaly(
        type=AnomalyType.LSTM_INF,
        severity=severity,
        observed=math.inf,
        message="LSTM state holds Inf",
    )
    return AnomalyDetected(
        update=update, payload=AnomalyDetectedPayload(anomaly=found, outlier_envs=(1,))
    )


def test_json_lines_are_strict_and_carry_the_payload(tmp_path: Path) -> None:
    """Each event is one strict-JSON line named after its type, NaN/Inf as strings."""
    path = tmp_path / "log.jsonl"
    with TelemetryHub("logrun") as hub:
        hub.subscribe(StructlogBackend(path))
        hub.emit(ppo(7, grad_norm=math.inf, lstm_h_rms=math.nan, lstm_c_rms=-0.0))
    (record,) = [strict(line) for line in path.read_text().splitlines()]
    assert record.pop("timestamp").endswith("+00:00")
    assert record == {
        "event": "PPO_UPDATE_COMPLETED",
        "level": "info",
        "run_id": "logrun",
        "seq": 0,
        "update": 7,
        "rank": 0,
        "telemetry_level": "NORMAL",
        "policy_loss": 0.1,
        "value_loss": 0.2,
        "entropy": 0.3,
        "grad_norm": "Infinity",
        "lstm_h_rms": "NaN",
        "lstm_c_rms": -0.0,
        "extra": {},
    }


def lstm_state(h_rms: float) -> LSTMHealthMetrics:
    return LSTMHealthMetrics(
        h_l2_total=2.0,
        c_l2_total=4.0,
        h_rms=h_rms,
        c_rms=1.0,
        h_env_rms_mean=0.5,
        h_env_rms_max=0.6,
        c_env_rms_mean=1.0,
        c_env_rms_max=1.2,
        h_max=0.9,
        c_max=2.5,
        has_nan=False,
        has_inf=False,
    )


GRU_NAN = LSTMHealthMetrics(
    h_l2_total=math.nan,
    c_l2_total=None,
    h_rms=math.nan,
    c_rms=None,
    h_env_rms_mean=math.nan,
    h_env_rms_max=math.nan,
    c_env_rms_mean=None,
    c_env_rms_max=None,
    h_max=math.nan,
    c_max=None,
    has_nan=True,
    has_inf=False,
)
GRU_DETAIL = LSTMHealthDetail(
    h_layer_rms=(math.nan,), c_layer_rms=None, h_env_rms=(math.nan,), c_env_rms=None
)
#: What the log holds of lstm_state(0.5): its figures as JSON, and where they come from.
LSTM_FIELDS = {
    "h_l2_total": 2.0,
    "c_l2_total": 4.0,
    "h_rms": 0.5,
    "c_rms": 1.0,
    "h_env_rms_mean": 0.5,
    "h_env_rms_max": 0.6,
    "c_env_rms_mean": 1.0,
    "c_env_rms_max": 1.2,
    "h_max": 0.9,
    "c_max": 2.5,
    "has_nan": False,
    "has_inf": False,
    "scope": "process",
    "ranks": 1,
}


def logged(*events: TelemetryEvent, **options: Any) -> list[dict[str, Any]]:
    """The strict-JSON records a StructlogBackend writes for ``events``, without timestamps."""
    out = io.StringIO()
    with TelemetryHub("states") as hub:
        hub.subscribe(StructlogBackend(stream=out, **options), mode="inline")
        for event in events:
            hub.emit(event)
    records = [strict(line) for line in out.getvalue().splitlines()]
    for record in records:
        record.pop("timestamp")
    return records


def test_an_update_logs_each_named_state_with_its_status() -> None:
    """states maps each named state to its status and figures (a GRU without c figures, NaN
    as "NaN"); the flat lstm_* keys repeat the primary state, recurrent_detail the others'."""
    payload = PPOUpdatePayload(
        policy_loss=0.1,
        value_loss=0.2,
        entropy=0.3,
        recurrent_health={"policy": lstm_state(0.5), "value": GRU_NAN},
        primary_state="policy",
        recurrent_detail={"value": GRU_DETAIL},
        episode_return_mean=12.5,
        episode_return_window=20,
    )
    (record,) = logged(PPOUpdateCompleted(update=3, payload=payload))
    assert record == {
        "event": "PPO_UPDATE_COMPLETED",
        "level": "info",
        "run_id": "states",
        "seq": 0,
        "update": 3,
        "rank": 0,
        "telemetry_level": "NORMAL",
        "policy_loss": 0.1,
        "value_loss": 0.2,
        "entropy": 0.3,
        **{f"lstm_{k}": v for k, v in LSTM_FIELDS.items() if k not in ("scope", "ranks")},
        "health_scope": "process",
        "health_ranks": 1,
        "primary_state": "policy",
        "states": {
            "policy": {"status": "HEALTHY", **LSTM_FIELDS},
            "value": {
                "status": "CRITICAL",
                **dict.fromkeys(("h_l2_total", "h_rms", "h_env_rms_mean"), "NaN"),
                **dict.fromkeys(("h_env_rms_max", "h_max"), "NaN"),
                "has_nan": True,
                "has_inf": False,
                "scope": "process",
                "ranks": 1,
            },
        },
        "recurrent_detail": {
            "value": {
                "h_layer_rms": ["NaN"],
                "c_layer_rms": None,
                "h_env_rms": ["NaN"],
                "c_env_rms": None,
                "worst_envs": None,
                "env_counts": None,
            }
        },
        "episode_return_mean": 12.5,
        "episode_return_window": 20,
        "extra": {},
    }


def test_an_update_from_before_state_names_logs_its_state_as_policy() -> None:
    """An update with only the flat lstm_* fields (a log from before names) logs states
    with one state, policy, from them; no primary_state, no recurrent_detail."""
    flat = {f"lstm_{k}": v for k, v in LSTM_FIELDS.items() if k not in ("scope", "ranks")}
    payload = PPOUpdatePayload.model_validate(
        {"policy_loss": 0.1, "value_loss": 0.2, "entropy": 0.3, **flat}
    )
    (record,) = logged(PPOUpdateCompleted(update=0, payload=payload))
    assert record["states"] == {"policy": {"status": "HEALTHY", **LSTM_FIELDS}}
    assert [
        k for k in ("primary_state", "recurrent_health", "recurrent_detail") if k in record
    ] == []


def test_the_status_of_a_state_follows_the_thresholds_given() -> None:
    """thresholds= is the rule each state's status is judged by."""
    payload = PPOUpdatePayload(
        policy_loss=0.1,
        value_loss=0.2,
        entropy=0.3,
        recurrent_health={"policy": lstm_state(0.5)},
        primary_state="policy",
    )
    event = PPOUpdateCompleted(update=0, payload=payload)
    strict_rule = HealthThresholds(warning_rms=0.4)
    assert [r["states"]["policy"]["status"] for r in logged(event)] == ["HEALTHY"]
    assert [r["states"]["policy"]["status"] for r in logged(event, thresholds=strict_rule)] == [
        "WARNING"
    ]
    with pytest.raises(TypeError, match="thresholds must be a HealthThresholds or None"):
        StructlogBackend(thresholds=0.4)  # type: ignore[arg-type]


def test_an_anomaly_line_names_the_state_it_was_found_in() -> None:
    """An anomaly found in a named state logs that state's name as state."""
    found = Anomaly(
        type=AnomalyType.LSTM_NAN,
        severity=Severity.CRITICAL,
        observed=math.nan,
        message="NaN in h.",
        state="value",
    )
    (record,) = logged(AnomalyDetected(update=1, payload=AnomalyDetectedPayload(anomaly=found)))
    assert {k: record[k] for k in ("anomaly_type", "state", "observed", "message")} == {
        "anomaly_type": "lstm_nan",
        "state": "value",
        "observed": "NaN",
        "message": "NaN in h.",
    }


def test_anomalies_log_at_warning_or_error_and_level_changes_at_info() -> None:
    """A warning anomaly logs at warning, a critical one at error, a level change at info."""
    out = io.StringIO()
    with TelemetryHub("levels") as hub:
        hub.subscribe(StructlogBackend(stream=out), mode="inline")
        hub.emit(anomaly(1, Severity.WARNING))
        hub.emit(anomaly(2, Severity.CRITICAL))
        hub.set_level("debug", reason="anomaly")
    records = [strict(line) for line in out.getvalue().splitlines()]
    assert [(r["event"], r["level"], r.get("observed")) for r in records] == [
        ("ANOMALY_DETECTED", "warning", "Infinity"),
        ("ANOMALY_DETECTED", "error", "Infinity"),
        ("TELEMETRY_LEVEL_CHANGED", "info", None),
    ]
    for record in records:
        record.pop("timestamp")
    assert [records[1], records[2]] == [
        {
            "event": "ANOMALY_DETECTED",
            "level": "error",
            "run_id": "levels",
            "seq": 1,
            "update": 2,
            "rank": 0,
            "telemetry_level": "NORMAL",
            "anomaly_type": "lstm_inf",
            "severity": "critical",
            "observed": "Infinity",
            "message": "LSTM state holds Inf",
            "outlier_envs": [1],
        },
        {
            "event": "TELEMETRY_LEVEL_CHANGED",
            "level": "info",
            "run_id": "levels",
            "seq": 2,
            "update": 2,
            "rank": 0,
            "telemetry_level": "DEBUG",
            "previous": "NORMAL",
            "payload_level": "DEBUG",
            "reason": "anomaly",
        },
    ]


def test_console_format_is_readable_and_appends(tmp_path: Path) -> None:
    """format='console' writes a human line per event; a second backend appends to the file."""
    path = tmp_path / "console.log"
    for update in (0, 1):
        with TelemetryHub("console") as hub:
            hub.subscribe(StructlogBackend(path, format="console"))
            hub.emit(ppo(update))
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert all("PPO_UPDATE_COMPLETED" in line and "policy_loss=0.1" in line for line in lines)
    assert ["update=0" in lines[0], "update=1" in lines[1]] == [True, True]


def test_global_structlog_configuration_is_left_alone() -> None:
    """Building and using the backend neither changes structlog's config nor its output."""
    structlog.reset_defaults()
    before = structlog.get_config()
    out = io.StringIO()
    with TelemetryHub("global") as hub:
        hub.subscribe(StructlogBackend(stream=out))
        hub.emit(ppo(0))
    assert structlog.get_config() == before
    assert structlog.is_configured() is False


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "xml"}, "format must be 'json' or 'console', got 'xml'"),
        ({"path": "x.log", "stream": io.StringIO()}, "path and stream are exclusive"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    """Bad arguments raise ValueError naming them."""
    with pytest.raises(ValueError, match=message):
        StructlogBackend(**kwargs)


def test_a_directory_is_not_a_log_file(tmp_path: Path) -> None:
    """path pointing at a directory raises ValueError naming path."""
    with pytest.raises(ValueError, match=r"path: .* is a directory"):
        StructlogBackend(tmp_path)


class FullDisk:
    """Stands in for ``os`` in ``esper_telemetry._append``: while ``free`` is not None,
    a write takes at most that many more bytes (a short write), then fails with ENOSPC."""

    def __init__(self) -> None:
        self.free: int | None = None

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.free is None:
            return os.write(fd, data)
        if self.free == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = os.write(fd, bytes(data[: self.free]))
        self.free -= written
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def test_a_line_the_disk_had_no_room_for_is_one_failed_event_and_never_written_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the disk full for two events, the hub counts exactly those two as failed; the
    file holds every other event whole, the cut-off start of the first failed line on a
    line of its own, and nothing of the failed events once space returns."""
    disk = FullDisk()
    monkeypatch.setattr(_append, "os", disk)
    path = tmp_path / "log.jsonl"
    with TelemetryHub("full") as hub:
        hub.subscribe(StructlogBackend(path), mode="inline")
        for update in range(6):
            if update == 2:
                disk.free = 40  # the disk fills up 40 bytes into this line
            if update == 4:
                disk.free = None  # and has room again
            hub.emit(ppo(update))
        (stats,) = hub.stats().subscribers
    assert (stats.delivered, stats.failed, stats.last_error) == (
        4,
        2,
        "OSError: [Errno 28] No space left on device",
    )
    *lines, last = path.read_text().split("\n")
    assert (len(lines[2]), last) == (40, "")
    assert [_update_or_fragment(line) for line in lines] == [0, 1, "fragment", 4, 5]


def test_a_torn_last_line_left_by_a_killed_writer_stays_a_line_of_its_own(
    tmp_path: Path,
) -> None:
    """Appending to a file that ends without a newline starts a new line first."""
    path = tmp_path / "log.jsonl"
    path.write_text('{"event": "PPO_UPD')
    with TelemetryHub("torn") as hub:
        hub.subscribe(StructlogBackend(path))
        hub.emit(ppo(0))
    *lines, last = path.read_text().split("\n")
    assert [_update_or_fragment(line) for line in lines] == ["fragment", 0]
    assert (lines[0], last) == ('{"event": "PPO_UPD', "")


def _update_or_fragment(line: str) -> int | str:
    try:
        update: int = strict(line)["update"]
    except ValueError:
        return "fragment"
    return update


def test_esper_ppo_judges_the_logged_states_by_its_own_thresholds(tmp_path: Path) -> None:
    """run_ppo hands its HealthThresholds to the structured log: one rule everywhere."""
    import io

    from rich.console import Console

    from esper_telemetry.contracts import HealthThresholds, RunLayout
    from esper_telemetry.run import RunOptions, run_ppo
    from esper_telemetry.training import PPOConfig

    # Every state of a fresh LSTM has an RMS far below 2: vanishing under this rule.
    rule = HealthThresholds(vanishing_rms=2.0, warning_rms=3.0, critical_rms=4.0)
    options = RunOptions(
        config=PPOConfig(updates=2, envs=2, steps=4, hidden=8, epochs=1),
        run_root=tmp_path,
        run_id="rule",
        wandb="disabled",
        progress=False,
        thresholds=rule,
    )
    run_ppo(options, Console(file=io.StringIO()))
    lines = [json.loads(line) for line in RunLayout(tmp_path / "rule").log.read_text().splitlines()]
    statuses = {
        (line["update"], name): state["status"]
        for line in lines
        if "states" in line
        for name, state in line["states"].items()
    }
    assert statuses == {(u, s): "CRITICAL" for u in (0, 1) for s in ("policy", "value")}
