"""WandBBackend against the real wandb in offline mode, read back with `wandb leet inspect`.

Nothing here touches the network: every test points W&B's directories and home at a
temporary folder and runs offline (or disabled). W&B reads its environment variables
once per process, so each test tears W&B's session down before and after.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import wandb

import esper_telemetry
from esper_telemetry import (
    AnomalyType,
    HealthThresholds,
    HubStats,
    Severity,
    TelemetryHub,
    compute_lstm_health,
    compute_recurrent_health,
    emit_ppo_update_event,
)
from esper_telemetry.backends.wandb import WandBBackend
from esper_telemetry.backends.wandb_backfill import backfill_wandb, wandb_holds
from esper_telemetry.backends.wandb_keys import ANOMALY_COLUMNS, GROUPS
from esper_telemetry.contracts import (
    Anomaly,
    AnomalyDetected,
    AnomalyDetectedPayload,
    LSTMHealthMetrics,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    RunFinished,
    RunFinishedPayload,
    RunStarted,
    RunStartedPayload,
)
from tests.wandb_offline import (
    history,
    inspect_run,
    inspect_summary,
    of_type,
    offline_wandb,
    run_dir_of,
)

NAN = float("nan")
INF = float("inf")
RUN_ID = "wandb-backend-test"
#: The diagnostics' thresholds (issue 15) at their defaults, as the run config records them.
DIAGNOSTIC_THRESHOLDS = {
    "h_saturation_frac": 0.5,
    "c_saturation_frac": 0.5,
    "c_runaway_ratio": 0.5,
    "dormant_tau": 0.1,
    "dormant_frac": 0.5,
}
#: 40 hex digits: what a W&B API key looks like.
HEX_KEY = "0123456789abcdef0123456789abcdef01234567"
HEX_IN_TEXT = "fedcba9876543210fedcba9876543210fedcba98"
HF_TOKEN = "hf_TokenValueThatMustNotLeak"
DB_PASSWORD = "correct-horse-battery-staple"
ENV_API_KEY = "local-esperTestKeyThatMustNotLeak_0123456789abcdefghijklmn"
SECRETS = (HEX_KEY, HEX_IN_TEXT, HF_TOKEN, DB_PASSWORD, ENV_API_KEY)
LOGGER = "esper_telemetry.backends.wandb"


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def wandb_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    with offline_wandb(tmp_path, monkeypatch) as path:
        yield path


def as_json(value: float | int) -> float | int | str:
    """How W&B's reader writes a number: NaN and ±Inf as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def lstm_state(nan: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(input_size=3, hidden_size=8, num_layers=2)
    with torch.no_grad():
        _, (h, c) = lstm(torch.randn(5, 4, 3))
    if nan:
        h = h.clone()
        h[1, 2, 3] = NAN
    return h, c


def anomaly(
    update: int,
    kind: AnomalyType,
    severity: Severity,
    *,
    observed: float,
    threshold: float | None,
    message: str,
) -> AnomalyDetected:
    found = Anomaly(
        type=kind, severity=severity, observed=observed, threshold=threshold, message=message
    )
    return AnomalyDetected(update=update, payload=AnomalyDetectedPayload(anomaly=found))


def ppo_event(update: int) -> PPOUpdateCompleted:
    payload = PPOUpdatePayload(policy_loss=0.1, value_loss=0.2, entropy=0.3)
    return PPOUpdateCompleted(update=update, payload=payload)


def rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History rows with the anomaly table's reference left out (see the table's own test)
    and the measured latency, which differs from run to run, checked and replaced by "ms"."""
    out = []
    for row in history(records):
        row = {k: v for k, v in row.items() if not k.startswith("anomaly/table.")}
        if "telemetry/latency_p99_ms" in row:
            assert isinstance(row["telemetry/latency_p99_ms"], int | float)
            assert row["telemetry/latency_p99_ms"] >= 0
            row["telemetry/latency_p99_ms"] = "ms"
        out.append(row)
    return out


def ppo_row(event: PPOUpdateCompleted) -> dict[str, Any]:
    """The history row one PPO_UPDATE_COMPLETED event should produce, written by hand."""
    p = event.payload
    assert isinstance(p, PPOUpdatePayload)
    row: dict[str, Any] = {"_step": event.update, "update": event.update}
    if p.env_steps is not None:
        row["env_steps"] = p.env_steps  # the second x-axis
    row.update({f"extra/{k}": v for k, v in p.extra.items()})
    stats: tuple[str, ...] = ("policy_loss", "value_loss", "entropy", "approx_kl")
    stats += ("clip_fraction", "explained_variance", "grad_norm", "learning_rate")
    for stat in stats:
        if getattr(p, stat) is not None:
            row[f"ppo/{stat}"] = getattr(p, stat)
    health = p.health()
    assert health is not None
    for prefix, state in [
        ("lstm", health),
        *((f"lstm/{n}", m) for n, m in p.named_health().items()),
    ]:
        row.update({f"{prefix}/{k}": getattr(state, k) for k in state.FIGURES})
        row[f"{prefix}/has_nan"] = int(state.has_nan)
        row[f"{prefix}/has_inf"] = int(state.has_inf)
    row["telemetry/level"] = int(event.level)
    # The hub's losses so far and its slowest subscriber's p99 latency.
    row.update({"telemetry/lost": 0, "telemetry/dropped": 0, "telemetry/latency_p99_ms": "ms"})
    return {k: as_json(v) for k, v in row.items() if v is not None}


class Collect(logging.Handler):
    """Keeps the log records of one logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# --------------------------------------------------------------------------- one shared run


@dataclass(frozen=True)
class Scenario:
    """One offline run driven through a real hub, and everything read back from it."""

    events: dict[str, Any] = field(repr=False)
    records: list[dict[str, Any]] = field(repr=False)
    summary: dict[str, Any] = field(repr=False)
    stats: HubStats
    skipped: int
    warnings: list[str]
    files: dict[Path, bytes] = field(repr=False)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    """One offline run through a real hub, read back once for the tests below."""
    root = tmp_path_factory.mktemp("wandb-scenario")
    collect = Collect()
    log = logging.getLogger(LOGGER)
    log.addHandler(collect)
    try:
        with pytest.MonkeyPatch.context() as mp, offline_wandb(root, mp) as wandb_dir:
            mp.setenv("WANDB_API_KEY", ENV_API_KEY)  # ignored offline; must still never leak
            backend, events, stats = drive_scenario()
            run_dir = run_dir_of(wandb_dir, RUN_ID)
            yield Scenario(
                events=events,
                records=inspect_run(run_dir),
                summary=inspect_summary(run_dir),
                stats=stats,
                skipped=backend.skipped,
                warnings=[r.getMessage() for r in collect.records if r.levelno >= logging.WARNING],
                files={p: p.read_bytes() for p in root.rglob("*") if p.is_file()},
            )
    finally:
        log.removeHandler(collect)


def drive_scenario() -> tuple[WandBBackend, dict[str, Any], HubStats]:
    """Three PPO updates (the second with NaN in h), anomalies, a level change, late events."""
    backend = WandBBackend(
        "esper-tests",
        config={"team": "esper", "db_password": DB_PASSWORD, "seed": 7},
    )
    hub = TelemetryHub(RUN_ID)
    hub.subscribe(backend)
    events: dict[str, Any] = {}
    started = RunStartedPayload(
        config={
            "lr": 3e-4,
            "seed": 1,
            "wandb_api_key": HEX_KEY,
            "model": {"layers": 2, "HF_Token": HF_TOKEN, "sizes": [8, 8]},
            "runs": [{"note": f"resumed with {HEX_IN_TEXT}"}, {"ok": "plain text"}],
            "command": f"train --key-from-env {ENV_API_KEY}",
        },
        description="offline test run",
    )
    hub.emit(RunStarted(update=0, payload=started))
    ppo = {"policy_loss": 0.1, "value_loss": 0.5, "entropy": 0.69, "approx_kl": 0.01}
    events["u0"] = emit_ppo_update_event(
        hub,
        update=0,
        metrics={**ppo, "fps": 1000.0},
        lstm_health=compute_lstm_health(lstm_state()),
        env_steps=64,
    )
    events["u1"] = emit_ppo_update_event(
        hub,
        update=1,
        metrics={"policy_loss": NAN, "value_loss": INF, "entropy": 0.68},
        lstm_health=compute_lstm_health(lstm_state(nan=True)),
        env_steps=128,
    )
    events["nan1"] = hub.emit(
        anomaly(
            1,
            AnomalyType.LSTM_NAN,
            Severity.CRITICAL,
            observed=NAN,
            threshold=None,
            message="h holds NaN.",
        )
    )
    events["vanish1"] = hub.emit(
        anomaly(
            1,
            AnomalyType.LSTM_C_VANISHING,
            Severity.WARNING,
            observed=1e-8,
            threshold=1e-6,
            message="c is vanishing.",
        )
    )
    events["level1"] = hub.set_level("debug", reason="lstm_nan at update 1")
    events["u2"] = emit_ppo_update_event(
        hub,
        update=2,
        metrics=ppo,
        lstm_health=compute_lstm_health(lstm_state(), detail=True),
        env_steps=192,
    )
    events["nan2"] = hub.emit(
        anomaly(
            2,
            AnomalyType.LSTM_NAN,
            Severity.CRITICAL,
            observed=NAN,
            threshold=None,
            message="h holds NaN again.",
        )
    )
    events["late_ppo"] = hub.emit(ppo_event(1))
    events["late_inf"] = hub.emit(
        anomaly(
            0,
            AnomalyType.LSTM_INF,
            Severity.CRITICAL,
            observed=INF,
            threshold=None,
            message="c holds Inf.",
        )
    )
    finished = RunFinishedPayload(status="completed", summary={"mean_return": 1.5, "worst_kl": NAN})
    hub.emit(RunFinished(update=2, payload=finished))
    return backend, events, hub.close(timeout=30)


def test_history_has_one_row_per_update_with_every_value(scenario: Scenario) -> None:
    """Each update is one row at step=update holding its PPO, LSTM, anomaly and level keys."""
    u0, u1, u2 = (scenario.events[k] for k in ("u0", "u1", "u2"))
    p2 = u2.payload
    assert isinstance(p2, PPOUpdatePayload)
    assert p2.lstm_detail is not None
    assert p2.lstm_detail.c_layer_rms is not None
    debug_keys = {
        f"{prefix}/layer{i}/{x}_rms": layers[i]
        for prefix in ("lstm", "lstm/policy")
        for i in (0, 1)
        for x, layers in (("h", p2.lstm_detail.h_layer_rms), ("c", p2.lstm_detail.c_layer_rms))
    }
    debug_keys["lstm/outlier_envs"] = 0
    assert rows(scenario.records) == [
        ppo_row(u0),
        {
            **ppo_row(u1),
            "anomaly/lstm_nan": 1,
            "anomaly/lstm_c_vanishing": 1,
            "telemetry/level": 3,  # the level change of update 1 merges into its row
        },
        {
            **ppo_row(u2),
            **debug_keys,
            "anomaly/lstm_nan": 2,  # RUN_FINISHED's final/ scalars: summary only
        },
    ]


def test_nan_and_inf_are_logged_as_nan_and_inf(scenario: Scenario) -> None:
    """The broken update's NaN loss, Inf loss, NaN RMS and NaN flag reach W&B unchanged."""
    row = rows(scenario.records)[1]
    broken = {k: row[k] for k in ("ppo/policy_loss", "ppo/value_loss", "lstm/h_rms")}
    assert broken == {"ppo/policy_loss": "NaN", "ppo/value_loss": "Infinity", "lstm/h_rms": "NaN"}
    assert (row["lstm/has_nan"], row["lstm/has_inf"]) == (1, 0)


def test_critical_anomalies_raise_alerts_and_warnings_do_not(scenario: Scenario) -> None:
    """Only critical anomalies (the default alert_on) become alerts, each after its update."""

    def alert(kind: str, update: int, observed: str, message: str) -> dict[str, str]:
        text = f"run {RUN_ID}, update {update}: observed {observed}, threshold none. {message}"
        return {"level": "ERROR", "title": f"esper: {kind}", "text": text, "wait_duration": "60000"}

    expected = [
        alert("lstm_nan", 1, "nan", "h holds NaN."),
        alert("lstm_nan", 2, "nan", "h holds NaN again."),
        alert("lstm_inf", 0, "inf", "c holds Inf."),  # late: not logged, still alerted
    ]
    assert of_type(scenario.records, "alert") == expected
    # W&B writes a row when the next step begins: the first alert lies between rows 0 and 1.
    kinds = [r["type"] for r in scenario.records if r["type"] in ("history", "alert")]
    assert kinds == ["history", "alert", "history", "alert", "alert", "history"]


def test_late_events_are_skipped_counted_and_warned_once(scenario: Scenario) -> None:
    """Events of an update lower than one logged are not logged, counted, and warned once."""
    assert scenario.skipped == 2
    assert scenario.warnings == [
        "WandBBackend: PPO_UPDATE_COMPLETED of update 1 arrived with the run at step 2; W&B "
        "drops lower steps, so it was not logged (counted in .skipped; later ones are not "
        "warned about)"
    ]
    assert [row["_step"] for row in rows(scenario.records)] == [0, 1, 2]


def test_config_is_merged_and_secrets_are_redacted(scenario: Scenario) -> None:
    """RUN_STARTED's config joins the constructor's (which wins) with every secret redacted."""
    config = dict(scenario.summary["config"])
    esper = config.pop("esper")
    # Always recorded: the version and the rule in force (the default one here).
    assert esper == {
        "version": esper_telemetry.__version__,
        "thresholds": {
            "vanishing_rms": 1e-6,
            "warning_rms": 5.0,
            "critical_rms": 10.0,
            **DIAGNOSTIC_THRESHOLDS,
        },
        # The key layout, which a backfill reads back to write the same keys.
        "layout": {"prefix": "", "x_axis": "update", "log": list(GROUPS)},
    }
    assert config == {
        "team": "esper",
        "db_password": "[REDACTED]",
        "seed": 7,
        "lr": 3e-4,
        "wandb_api_key": "[REDACTED]",
        "model": {"layers": 2, "HF_Token": "[REDACTED]", "sizes": [8, 8]},
        "runs": [{"note": "[REDACTED]"}, {"ok": "plain text"}],
        "command": "[REDACTED]",
    }


def test_no_secret_appears_in_any_file_wandb_wrote(scenario: Scenario) -> None:
    """No secret, nor the WANDB_API_KEY in the environment, is in any file under the run."""
    assert len(scenario.files) > 3
    leaks = [
        (path.name, secret)
        for path, data in scenario.files.items()
        for secret in SECRETS
        if secret.encode() in data
    ]
    assert leaks == []


def test_summary_keeps_the_current_and_the_worst_lstm_values_and_the_outcome(
    scenario: Scenario,
) -> None:
    """lstm/* summaries: the last value (how the state is now) and the worst (max, and min
    for a figure that can vanish; NaN once NaN was seen); RUN_FINISHED fills the rest."""
    u0, u2 = scenario.events["u0"].payload, scenario.events["u2"].payload
    assert isinstance(u0, PPOUpdatePayload)
    assert isinstance(u2, PPOUpdatePayload)
    summary = {k: v for k, v in scenario.summary["summary"].items() if not k.startswith("_")}
    lstm = {k: v for k, v in summary.items() if k.startswith("lstm/")}
    assert len(lstm) == 12 + 5 + 12 + 4  # the primary state flat, then as "policy"
    flags = ("/has_nan", "/has_inf", "/outlier_envs")
    assert {k: sorted(v) for k, v in lstm.items()} == {
        k: ["last", "max"] if k.endswith(flags) else ["last", "max", "min"] for k in lstm
    }
    # Update 1's h held a NaN, update 2's is healthy again: worst NaN, current healthy.
    assert lstm["lstm/h_rms"] == {"max": "NaN", "min": "NaN", "last": u2.lstm_h_rms}
    assert lstm["lstm/has_nan"] == {"max": 1, "last": 0}
    c_max = {"max": u0.lstm_c_max, "min": u0.lstm_c_max, "last": u0.lstm_c_max}
    assert lstm["lstm/c_max"] == lstm["lstm/policy/c_max"] == c_max
    assert lstm["lstm/policy/h_rms"] == lstm["lstm/h_rms"]
    outcome = {k: v for k, v in summary.items() if k.startswith(("run/", "final/"))}
    assert outcome == {"run/status": "completed", "final/mean_return": 1.5, "final/worst_kl": "NaN"}
    assert (scenario.summary["notes"], scenario.summary["state"]) == (
        "offline test run",
        "finished",
    )


def test_metrics_are_declared_against_the_update(scenario: Scenario) -> None:
    """define_metric makes `update` every metric's x-axis and max the lstm/* summary."""
    health = [f"lstm/{k}" for k in LSTMHealthMetrics.FIGURES]
    policy = [f"lstm/policy/{k}" for k in LSTMHealthMetrics.FIGURES]
    per_layer = [f"lstm/layer{i}/{x}_rms" for i in (0, 1) for x in "hc"]
    policy_layers = [f"lstm/policy/layer{i}/{x}_rms" for i in (0, 1) for x in "hc"]
    assert of_type(scenario.records, "metric") == [
        {"name": "update", "options": {"defined": True, "hidden": True}},
        {"name": "env_steps", "options": {"defined": True, "hidden": True}},
        *(
            {
                "glob_name": f"{section}/*",
                "options": {"defined": True, "step_sync": True},
                "step_metric": "update",
            }
            for section in ("ppo", "extra", "anomaly", "telemetry")
        ),
        *(
            {
                "name": key,
                "options": {"defined": True, "step_sync": True},
                "step_metric": "update",
                # The current value and the worst: max, and min where a figure can vanish.
                "summary": {"last": True, "max": True}
                if key.endswith(("/has_nan", "/has_inf", "/outlier_envs"))
                else {"last": True, "max": True, "min": True},
            }
            # each lstm/ key declared as it first appears: policy's with update 0, the
            # per-layer ones with the detail of update 2
            for key in [*health, *policy, *per_layer, "lstm/outlier_envs", *policy_layers]
        ),
    ]


def test_the_two_rows_w_and_b_would_drop_are_counted_as_lost(scenario: Scenario) -> None:
    """The backend handled all 11 events; the 2 late rows it could not log are lost in stats."""
    (sub,) = scenario.stats.subscribers
    assert (
        sub.name,
        sub.delivered,
        sub.failed,
        sub.undelivered,
        sub.lost,
        scenario.stats.lossless,
        sub.stuck,
    ) == ("wandb", 11, 0, 2, 2, False, False)


# --------------------------------------------------------------------------- other runs


def test_a_run_handed_in_is_shared_never_stepped_and_never_finished(wandb_dir: Path) -> None:
    """A caller's run keeps its own steps: esper's rows take no step (W&B's next one), carry
    both axes, hold only the health group by default, and close() leaves the run open."""
    run = wandb.init(project="esper-tests", id="callers-run", reinit="create_new")
    run.log({"caller/metric": 0.0}, step=100)
    backend = WandBBackend(run=run, config={"api_token": "abc", "batch": 4})
    health = compute_lstm_health(lstm_state())
    with TelemetryHub("hub-run") as hub:
        hub.subscribe(backend)
        for update in (3, 1):  # a lower update is not dropped: the step is not esper's
            emit_ppo_update_event(
                hub,
                update=update,
                metrics={"policy_loss": 0.1, "value_loss": 0.2, "entropy": 0.3},
                lstm_health=health,
                env_steps=64 * (update + 1),
            )
    run.log({"caller/metric": 1.0}, step=200)  # raises if close() had finished the run
    run.finish()
    records = inspect_run(run_dir_of(wandb_dir, "callers-run"))
    logged = history(records)
    # W&B's own rule for a log without a step: it joins the open row (the caller's step
    # 100) and commits it; the next takes step 101. Nothing is dropped either way.
    assert [(r["_step"], r.get("update"), r.get("env_steps")) for r in logged] == [
        (100, 3, 256),
        (101, 1, 128),
        (200, None, None),
    ]
    assert (logged[0]["caller/metric"], logged[2]["caller/metric"]) == (0, 1)
    # Health only: the caller's logger has PPO's statistics already.
    esper_keys = {k for r in logged[:2] for k in r if k not in ("_step", "caller/metric")}
    assert {k.split("/")[0] for k in esper_keys} == {"update", "env_steps", "lstm"}
    assert logged[0]["lstm/h_rms"] == health.h_rms
    assert backend.skipped == 0
    # config=, and esper's section, which a run handed in gets too.
    esper = {
        "layout": {"log": ["health"], "prefix": "", "x_axis": "update"},
        "thresholds": {
            "critical_rms": 10,
            "vanishing_rms": 1e-06,
            "warning_rms": 5,
            **DIAGNOSTIC_THRESHOLDS,
        },
        "version": esper_telemetry.__version__,
    }
    assert of_type(records, "config") == [
        {"update": {"api_token": "[REDACTED]", "batch": 4, "esper": esper}}
    ]
    assert len(of_type(records, "exit")) == 1


def test_alert_on_chooses_the_severities_that_alert(wandb_dir: Path) -> None:
    """alert_on=('warning',) alerts on warnings only, at W&B's WARN level."""
    backend = WandBBackend("esper-tests", alert_on=("warning",))
    with TelemetryHub("alert-run") as hub:
        hub.subscribe(backend)
        for severity in (Severity.CRITICAL, Severity.WARNING):
            hub.emit(
                anomaly(
                    0,
                    AnomalyType.LSTM_H_EXPLOSION,
                    severity,
                    observed=12.5,
                    threshold=10.0,
                    message="h RMS is too high.",
                )
            )
    records = inspect_run(run_dir_of(wandb_dir, "alert-run"))
    assert of_type(records, "alert") == [
        {
            "level": "WARN",
            "title": "esper: lstm_h_explosion",
            "text": "run alert-run, update 0: observed 12.5, threshold 10. h RMS is too high.",
            "wait_duration": "60000",
        }
    ]
    assert rows(records) == [{"_step": 0, "update": 0, "anomaly/lstm_h_explosion": 2}]


def test_disabled_mode_handles_events_and_writes_nothing(wandb_dir: Path) -> None:
    """mode='disabled' takes every event and leaves WANDB_DIR empty."""
    backend = WandBBackend("esper-tests", mode="disabled")
    with TelemetryHub("disabled-run") as hub:
        hub.subscribe(backend)
        hub.emit(ppo_event(0))
        hub.emit(
            anomaly(
                0,
                AnomalyType.LSTM_NAN,
                Severity.CRITICAL,
                observed=NAN,
                threshold=None,
                message="NaN.",
            )
        )
    assert hub.stats().lossless
    assert list(wandb_dir.iterdir()) == []


def test_wandb_mode_from_the_environment_is_the_default(
    wandb_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With mode=None the backend follows WANDB_MODE, e.g. disabled in CI."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    backend = WandBBackend("esper-tests")
    assert repr(backend) == "WandBBackend(mode='disabled', run=None, skipped=0)"


class HangingRun:
    """A stand-in for a W&B run whose finish() blocks until released.

    The one stand-in in this file: real wandb cannot be made to hang on demand.
    """

    def __init__(self) -> None:
        self.release = threading.Event()
        self.finish_called = threading.Event()
        self.id = "hanging"
        self.step = 0
        self.logged: list[tuple[dict[str, Any], int | None]] = []

    def define_metric(self, name: str, **kwargs: Any) -> None:
        pass

    def log(self, data: dict[str, Any], step: int | None = None) -> None:
        self.logged.append((data, step))

    def alert(self, **kwargs: Any) -> None:
        pass

    def finish(self) -> None:
        self.finish_called.set()
        self.release.wait()


def test_close_returns_within_finish_timeout_when_finish_hangs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A run.finish() that never returns costs close() finish_timeout, then a TimeoutError
    the hub counts as a failure; the backend is then aborted.

    wandb.init is replaced by a stand-in whose finish() blocks: the one place this file
    does not use the real wandb, because a real hang cannot be produced on demand (a
    stopped wandb-core: ``tests/reliability/test_wandb_failures.py``). The stand-in has
    no service process, so nothing is stopped.
    """
    hanging = HangingRun()
    monkeypatch.setattr(wandb, "init", lambda **kwargs: hanging)
    backend = WandBBackend("esper-tests", mode="offline", finish_timeout=0.3)
    hub = TelemetryHub("hang-run")
    hub.subscribe(backend)
    hub.emit(ppo_event(0))
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        stats = hub.close(timeout=10)
    elapsed = time.monotonic() - start
    hanging.release.set()
    error = (
        "TimeoutError: W&B run 'hanging' did not finish within 0.3 s; what W&B had not "
        "written yet is lost (`wandb sync` uploads what its run file holds)"
    )
    assert hanging.finish_called.is_set()
    assert 0.3 <= elapsed < 3.0
    assert [(s.stuck, s.failed, s.last_error) for s in stats.subscribers] == [(False, 1, error)]
    assert (backend.finished, backend.aborted) == (False, True)
    assert [r.getMessage() for r in caplog.records] == [
        "telemetry subscriber 'wandb' raised in close(); the other subscribers are unaffected"
    ]


def test_online_mode_without_credentials_fails_at_subscribe(
    wandb_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Online without an API key raises one clear error at subscribe; nothing subscribes."""
    monkeypatch.delenv("WANDB_MODE")  # and no WANDB_API_KEY, netrc or settings file
    backend = WandBBackend("esper-tests", mode="online")
    hub = TelemetryHub("online-run")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="wandb login") as info:
        hub.subscribe(backend)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "WANDB_API_KEY" in message
    assert "mode='offline'" in message
    assert isinstance(info.value.__cause__, wandb.errors.UsageError)
    assert (hub.stats().subscribers, backend.run) == ((), None)
    hub.close()


# --------------------------------------------------------------------------- misuse


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        pytest.param({"mode": "cloud"}, ValueError, "mode must be one of", id="mode"),
        pytest.param({"project": ""}, ValueError, "project must be", id="project-empty"),
        pytest.param(
            {"project": "a/b"},
            ValueError,
            "project: W&B names cannot contain /",
            id="project-slash",
        ),
        pytest.param(
            {"alert_on": "critical"}, ValueError, "alert_on must be a tuple", id="alert_on-str"
        ),
        pytest.param(
            {"alert_on": ("fatal",)},
            ValueError,
            "alert_on: 'fatal' is not a severity",
            id="alert_on-unknown",
        ),
        pytest.param({"config": [("a", 1)]}, TypeError, "config must be a mapping", id="config"),
        pytest.param(
            {"config": {1: "a"}}, ValueError, "config: keys must be strings", id="config-key"
        ),
        pytest.param({"name": " "}, ValueError, "name must be", id="name"),
        pytest.param({"finish_timeout": 0}, ValueError, "finish_timeout must be", id="timeout-0"),
        pytest.param(
            {"finish_timeout": True}, ValueError, "finish_timeout must be", id="timeout-bool"
        ),
        pytest.param({"dir": 3}, TypeError, "dir must be a path", id="dir"),
        pytest.param({"run": object()}, TypeError, "run must be a W&B run", id="run"),
        pytest.param(
            {"run": HangingRun(), "project": "p"},
            ValueError,
            "project: only applies",
            id="run-and-project",
        ),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Each bad argument raises at construction, and the message names it."""
    with pytest.raises(error, match=re.escape(message)):
        WandBBackend(**kwargs)


def test_an_unknown_wandb_mode_in_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A WANDB_MODE the backend cannot honour raises, naming WANDB_MODE."""
    monkeypatch.setenv("WANDB_MODE", "shared")
    with pytest.raises(ValueError, match="WANDB_MODE='shared' is not a mode"):
        WandBBackend("esper-tests")


def test_handle_before_subscribe_is_refused() -> None:
    """A backend that was never subscribed has no run and says how to fix that."""
    with pytest.raises(RuntimeError, match="before the backend was subscribed"):
        WandBBackend("esper-tests", mode="disabled").handle(ppo_event(0))


def test_one_backend_serves_one_hub(wandb_dir: Path) -> None:
    """Subscribing the same backend to a second hub fails and leaves that hub empty."""
    backend = WandBBackend("esper-tests", mode="disabled")
    with TelemetryHub("first") as first, TelemetryHub("second") as second:
        first.subscribe(backend)
        with pytest.raises(RuntimeError, match="already subscribed to a hub"):
            second.subscribe(backend)
        assert second.stats().subscribers == ()


def test_importing_without_wandb_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without wandb installed, importing the backend says which extra to install."""
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an absent package looks like
    monkeypatch.delitem(sys.modules, "esper_telemetry.backends.wandb")
    with pytest.raises(ImportError, match=r"pip install 'esper-telemetry\[wandb\]'"):
        importlib.import_module("esper_telemetry.backends.wandb")


def test_per_layer_maxima_include_the_update_that_exploded(wandb_dir: Path) -> None:
    """With the escalator, the exploding update itself logs per-layer RMS, so W&B's per-layer
    max summary holds the spike (before, detail only started with the next update)."""
    from esper_telemetry.backends.escalator import AnomalyEscalator
    from tests.faulty_lstm import FaultyLSTM

    with TelemetryHub("explode-run") as hub:
        hub.subscribe(AnomalyEscalator(escalate_for=1), mode="inline")
        hub.subscribe(WandBBackend("esper-tests"))
        trainer = FaultyLSTM(hub, {3: "explode"})
        for k in range(5):
            trainer.update(k)
    summary = inspect_summary(run_dir_of(wandb_dir, "explode-run"))["summary"]
    rows = history(inspect_run(run_dir_of(wandb_dir, "explode-run")))
    spike = rows[3]
    assert (
        [("lstm/layer0/c_rms" in row) for row in rows],
        spike["lstm/layer0/c_rms"] == spike["lstm/c_rms"],  # one layer: the layer is the state
        summary["lstm/layer0/c_rms"]["max"] == summary["lstm/c_rms"]["max"] == spike["lstm/c_rms"],
    ) == ([False, False, False, True, True], True, True)


#: The figures of a state without a cell (a GRU): h's, and the flags.
H_FIGURES = (
    "h_l2_total",
    "h_rms",
    "h_env_rms_mean",
    "h_env_rms_max",
    "h_max",
    "has_nan",
    "has_inf",
)


def drive_named_states() -> list[PPOUpdateCompleted]:
    """Two updates at DEBUG of a GRU primary state "policy" and an LSTM "critic.lstm" (NaN
    in its c at update 1), and an anomaly found in "critic.lstm" at update 1."""
    torch.manual_seed(0)
    gru, lstm = torch.nn.GRU(3, 4), torch.nn.LSTM(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        h_gru = gru(x)[1]
        h, c = lstm(x)[1]
    broken_c = c.clone()
    broken_c[1, 0, 2] = NAN
    events: list[PPOUpdateCompleted] = []
    with TelemetryHub("named-run") as hub:
        hub.subscribe(WandBBackend("esper-tests"))
        hub.set_level("debug")
        for k, cell in enumerate((c, broken_c)):
            states = compute_recurrent_health(
                {"policy": h_gru, "critic.lstm": (h, cell)}, detail=True
            )
            event = emit_ppo_update_event(
                hub,
                update=k,
                metrics={"policy_loss": 0.1, "value_loss": 0.2, "entropy": 0.3},
                recurrent_health=states,
                episode_return_mean=NAN if k == 0 else 12.5,
                episode_return_window=20,
            )
            assert event is not None
            events.append(event)
        found = Anomaly(
            type=AnomalyType.LSTM_NAN,
            severity=Severity.CRITICAL,
            observed=NAN,
            message="c holds NaN.",
            state="critic.lstm",
        )
        hub.emit(AnomalyDetected(update=1, payload=AnomalyDetectedPayload(anomaly=found)))
    return events


def named_row(event: PPOUpdateCompleted) -> dict[str, Any]:
    """The history row of an update of drive_named_states, written by hand."""
    p = event.payload
    gru_state, lstm_state_ = p.recurrent_health["policy"], p.recurrent_health["critic.lstm"]
    gru_detail, lstm_detail = p.detail_of("policy"), p.detail_of("critic.lstm")
    assert gru_detail is not None
    assert lstm_detail is not None
    assert lstm_detail.c_layer_rms is not None
    row: dict[str, Any] = {"_step": event.update, "update": event.update}
    row |= {"ppo/policy_loss": 0.1, "ppo/value_loss": 0.2, "ppo/entropy": 0.3}
    row["ppo/episode_return_mean"] = p.episode_return_mean
    for prefix in ("lstm", "lstm/policy"):
        row |= {f"{prefix}/{f}": getattr(gru_state, f) for f in H_FIGURES}
        row[f"{prefix}/layer0/h_rms"] = gru_detail.h_layer_rms[0]
    row["lstm/outlier_envs"] = 0
    row |= {f"lstm/critic.lstm/{f}": getattr(lstm_state_, f) for f in LSTMHealthMetrics.FIGURES}
    for i in (0, 1):
        row[f"lstm/critic.lstm/layer{i}/h_rms"] = lstm_detail.h_layer_rms[i]
        row[f"lstm/critic.lstm/layer{i}/c_rms"] = lstm_detail.c_layer_rms[i]
    row["telemetry/level"] = 3
    row.update({"telemetry/lost": 0, "telemetry/dropped": 0, "telemetry/latency_p99_ms": "ms"})
    return {k: as_json(int(v) if isinstance(v, bool) else v) for k, v in row.items()}


def test_every_named_state_is_logged_under_its_name_and_a_gru_has_no_c_keys(
    wandb_dir: Path,
) -> None:
    """A GRU primary state "policy" and an LSTM "critic.lstm": the primary at lstm/<figure>
    without any c key, each state at lstm/<name>/<figure> with its per-layer RMS, NaN kept,
    each key's summary its max (a dotted name too), the episode return under ppo/."""
    events = drive_named_states()
    run_dir = run_dir_of(wandb_dir, "named-run")
    records = inspect_run(run_dir)
    logged = rows(records)
    assert logged == [named_row(events[0]), {**named_row(events[1]), "anomaly/lstm_nan": 1}]
    assert (logged[1]["lstm/critic.lstm/c_rms"], logged[1]["lstm/critic.lstm/has_nan"]) == (
        "NaN",
        1,
    )
    assert not any("c_" in k for k in logged[0] if not k.startswith("lstm/critic.lstm/"))
    summary = inspect_summary(run_dir)["summary"]
    lstm_keys = {k for k in logged[0] if k.startswith("lstm/")}
    assert {k: sorted(summary[k]) for k in lstm_keys} == {
        k: ["last", "max"]
        if k.endswith(("/has_nan", "/has_inf", "/outlier_envs"))
        else ["last", "max", "min"]
        for k in lstm_keys
    }
    assert summary["lstm/critic.lstm/c_rms"] == {"max": "NaN", "min": "NaN", "last": "NaN"}
    defined = {r.get("name") for r in of_type(records, "metric")}
    assert {"lstm/critic\\.lstm/c_rms", "lstm/policy/h_rms"} <= defined


def test_an_alert_names_the_state_its_anomaly_was_found_in(wandb_dir: Path) -> None:
    """The alert of an anomaly found in "critic.lstm" names that state in its title and text."""
    drive_named_states()
    records = inspect_run(run_dir_of(wandb_dir, "named-run"))
    assert of_type(records, "alert") == [
        {
            "level": "ERROR",
            "title": "esper: lstm_nan in critic.lstm",
            "text": "run named-run, update 1, state critic.lstm: observed nan, threshold none. "
            "c holds NaN.",
            "wait_duration": "60000",
        }
    ]


def test_entity_group_tags_job_type_thresholds_and_level_policy_reach_the_run(
    wandb_dir: Path,
) -> None:
    """W&B's own settings and esper's section of the config, read back by wandb's reader."""
    rule = HealthThresholds(warning_rms=4.0, critical_rms=8.0)
    policy = {"initial": "NORMAL", "escalate_to": "DEBUG", "escalate_for": 5, "halt_on": None}
    backend = WandBBackend(
        "esper-tests",
        entity="esper-team",
        group="sweep-7",
        tags=["lstm", "cartpole", "lstm"],
        job_type="train",
        thresholds=rule,
        level_policy=policy,
    )
    with TelemetryHub("settings") as hub:
        hub.subscribe(backend)
        hub.emit(RunStarted(update=0, payload=RunStartedPayload(config={"esper": "mine"})))
    run_dir = run_dir_of(wandb_dir, "settings")
    (run,) = of_type(inspect_run(run_dir), "run")
    assert (run["entity"], run["run_group"], run["job_type"], run["tags"]) == (
        "esper-team",
        "sweep-7",
        "train",
        ["lstm", "cartpole"],  # a repeated tag once
    )
    esper = inspect_summary(run_dir)["config"]["esper"]
    assert esper["thresholds"] == {
        "vanishing_rms": 1e-6,
        "warning_rms": 4.0,
        "critical_rms": 8.0,
        **DIAGNOSTIC_THRESHOLDS,
    }
    assert esper["level_policy"] == policy
    assert esper["version"] == esper_telemetry.__version__  # not the RUN_STARTED "esper" key


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tags": "lstm"}, r"tags must be a list of strings"),
        ({"tags": ["x" * 65]}, r"tags must be a non-empty string of at most 64"),
        ({"group": ""}, r"group must be a non-empty string"),
        ({"entity": "a\nb"}, r"entity must be a non-empty string .* without control"),
        ({"job_type": 3}, r"job_type must be a non-empty string"),
    ],
)
def test_bad_run_settings_are_one_line_naming_the_argument(
    kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match) as info:
        WandBBackend("p", mode="disabled", **kwargs)
    assert "\n" not in str(info.value)


def test_run_settings_are_refused_with_a_run_handed_in(wandb_dir: Path) -> None:
    run = wandb.init(project="p", id="handed")
    try:
        with pytest.raises(ValueError, match=r"entity, tags: only applies to a run the backend"):
            WandBBackend(run=run, entity="me", tags=["a"])
        with pytest.raises(TypeError, match="thresholds must be a HealthThresholds"):
            WandBBackend(run=run, thresholds={"warning_rms": 1.0})  # type: ignore[arg-type]
    finally:
        run.finish()


def test_mode_none_leaves_the_mode_to_wandb_as_wandb_init_does(
    wandb_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without WANDB_MODE, mode=None is W&B's choice: here `wandb offline`'s settings file.

    (Before, the backend chose offline itself; wandb.init would have gone online.)"""
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.chdir(wandb_dir)
    settings = wandb_dir / "wandb" / "settings"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text("[default]\nmode = offline\n")  # what `wandb offline` writes
    backend = WandBBackend("esper-tests")
    assert "mode=None" in repr(backend)
    with TelemetryHub("w-and-b-decides") as hub:
        hub.subscribe(backend)
        assert backend.run is not None
        assert backend.run.offline
    assert run_dir_of(wandb_dir, "w-and-b-decides").is_dir()


def test_mode_none_online_without_credentials_says_what_to_do(
    wandb_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """W&B choosing online without a login fails at subscribe, in one line, nothing sent."""
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.chdir(wandb_dir)
    with TelemetryHub("no-login") as hub, pytest.raises(RuntimeError) as info:
        hub.subscribe(WandBBackend("esper-tests", init_timeout=60))
    message = str(info.value)
    assert message.startswith("WandBBackend(mode=None (W&B chose online)) could not start")
    assert "wandb login" in message
    assert "mode='offline'" in message


# --------------------------------------------------------------------------- layout options


def test_the_anomaly_table_holds_every_anomaly_with_its_columns(scenario: Scenario) -> None:
    """anomaly/table: one row per anomaly, the late one included (its count row was
    skipped, its row in the table is not), NaN observed values as NaN."""
    (table_file,) = [p for p in scenario.files if p.name.endswith(".table.json")]
    table = json.loads(scenario.files[table_file], parse_constant=str)  # NaN stays "NaN"
    assert table["columns"] == list(ANOMALY_COLUMNS)
    assert table["data"] == [
        [1, 128, "", "lstm_nan", "critical", "NaN", None, "", "h holds NaN."],
        [1, 128, "", "lstm_c_vanishing", "warning", 1e-8, 1e-6, "", "c is vanishing."],
        [2, 192, "", "lstm_nan", "critical", "NaN", None, "", "h holds NaN again."],
        [0, None, "", "lstm_inf", "critical", "Infinity", None, "", "c holds Inf."],
    ]
    (row,) = [r for r in history(scenario.records) if "anomaly/table.nrows" in r]
    assert (row["_step"], row["anomaly/table.nrows"], row["anomaly/table.log_mode"]) == (
        2,
        4,
        "INCREMENTAL",
    )


def drive_layout(**options: Any) -> None:
    """One update with an anomaly, a level change and a finish, through WandBBackend(**options)."""
    backend = WandBBackend("esper-tests", **options)
    with TelemetryHub("layout-run") as hub:
        hub.subscribe(backend)
        emit_ppo_update_event(
            hub,
            update=0,
            metrics={"policy_loss": 0.1, "value_loss": 0.2, "entropy": 0.3, "fps": 9.0},
            lstm_health=compute_lstm_health(lstm_state()),
            env_steps=64,
        )
        hub.emit(
            anomaly(
                0, AnomalyType.LSTM_NAN, Severity.WARNING, observed=NAN, threshold=None, message="!"
            )
        )
        hub.set_level("debug")
        finished = RunFinishedPayload(status="completed", summary={"score": 2.0})
        hub.emit(RunFinished(update=0, payload=finished))


def test_log_chooses_the_groups_and_prefix_namespaces_every_key(wandb_dir: Path) -> None:
    """log=('health', 'anomalies') with prefix 'esper': only those groups' keys, every one
    (axes and summary too) under esper/, and the level change (telemetry) not logged."""
    drive_layout(log=("anomalies", "health"), prefix="esper/")
    run_dir = run_dir_of(wandb_dir, "layout-run")
    (row,) = history(inspect_run(run_dir))
    groups = {k.split("/")[1] if k.startswith("esper/") else k for k in row}
    assert groups == {"_step", "update", "env_steps", "lstm", "anomaly"}
    assert (row["esper/update"], row["esper/env_steps"], row["esper/anomaly/lstm_nan"]) == (
        0,
        64,
        1,
    )
    assert row["esper/lstm/h_rms"] == compute_lstm_health(lstm_state()).h_rms
    summary = inspect_summary(run_dir)["summary"]
    assert (summary["esper/run/status"], summary["esper/final/score"]) == ("completed", 2)


def test_x_axis_env_steps_makes_env_steps_every_key_s_step_metric(wandb_dir: Path) -> None:
    drive_layout(x_axis="env_steps")
    records = inspect_run(run_dir_of(wandb_dir, "layout-run"))
    steps = {
        r.get("name") or r.get("glob_name"): r.get("step_metric")
        for r in of_type(records, "metric")
    }
    assert steps.pop("update") is None
    assert steps.pop("env_steps") is None
    assert set(steps.values()) == {"env_steps"}
    assert {"ppo/*", "anomaly/*", "telemetry/*", "lstm/h_rms", "lstm/policy/c_rms"} <= set(steps)
    (row,) = history(records)
    assert (row["_step"], row["update"], row["env_steps"]) == (0, 0, 64)  # both axes logged


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"log": "health"}, r"log must be a list of groups such as \['health'\]"),
        ({"log": ["health", "charts"]}, r"log: 'charts' is not a group; use some of health, ppo"),
        ({"log": []}, r"log must name at least one group"),
        ({"prefix": "my esper"}, r"prefix must be letters, digits"),
        ({"x_axis": "global_step"}, r"x_axis must be one of update, env_steps"),
    ],
)
def test_bad_layout_options_are_one_line_naming_the_argument(
    kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match) as info:
        WandBBackend("p", mode="disabled", **kwargs)
    assert "\n" not in str(info.value)


def test_a_second_run_of_the_same_updates_on_a_resumed_run_is_counted_lost(
    wandb_dir: Path,
) -> None:
    """Updates 0..3 logged, then the same run resumed (resume=True) by a trainer that
    starts again at update 0 (not resumed itself): offline W&B would write them and
    `wandb sync` would drop them below the first folder's steps, so the backend skips
    them, and the hub counts them lost: not lossless, which makes esper ppo exit 4."""

    def updates(resume: bool, numbers: range) -> tuple[WandBBackend, HubStats]:
        backend = WandBBackend("esper-tests", dir=wandb_dir, resume=resume)
        hub = TelemetryHub("resumed")
        hub.subscribe(backend)
        for update in numbers:
            hub.emit(ppo_event(update))
        return backend, hub.close(timeout=30)

    first, stats = updates(False, range(4))
    assert (first.skipped, stats.lossless) == (0, True)
    second, stats = updates(True, range(6))
    assert second.skipped == 4
    ((sub_stats),) = stats.subscribers
    assert (sub_stats.lost, stats.lost, stats.lossless) == (4, 4, False)
    folders = sorted((wandb_dir / "wandb").glob("offline-run-*-resumed*"))
    assert len(folders) == 2
    assert [r["_step"] for r in history(inspect_run(folders[-1]))] == [4, 5]


def test_a_backfill_writes_the_keys_of_the_layout_the_run_was_logged_with(
    wandb_dir: Path,
) -> None:
    """A run logged under prefix 'esper' on the env-steps axis, whose W&B run lost its last
    updates: the backfill reads the layout from the run's config and writes esper/ keys,
    and the end's status under esper/run/status, not unprefixed ones."""
    events: list[Any] = []

    class Keep:
        def handle(self, event: Any) -> None:
            events.append(event)

    backend = WandBBackend("esper-tests", dir=wandb_dir, prefix="esper", x_axis="env_steps")
    with TelemetryHub("prefixed") as hub:
        hub.subscribe(Keep(), mode="inline")
        hub.subscribe(backend)
        for update in range(4):
            if update == 2:
                hub.flush()
                hub.unsubscribe("wandb")  # W&B "loses" updates 2 and 3
                backend.close()
            emit_ppo_update_event(
                hub,
                update=update,
                metrics={"policy_loss": 0.1, "value_loss": 0.2, "entropy": 0.3},
                lstm_health=compute_lstm_health(lstm_state()),
                env_steps=64 * (update + 1),
            )
        hub.emit(RunFinished(update=3, payload=RunFinishedPayload(status="completed")))
    holds = wandb_holds(wandb_dir, "prefixed")
    assert (holds.keys.prefix, holds.keys.x_axis, sorted(holds.steps)) == (
        "esper",
        "env_steps",
        [0, 1],
    )
    done = backfill_wandb(wandb_dir, events)
    assert (done.written_updates, done.wrote_end) == (2, True)
    assert done.run_dir is not None
    rows = history(inspect_run(done.run_dir))
    assert [(r["_step"], r["esper/update"], r["esper/env_steps"]) for r in rows] == [
        (2, 2, 192),
        (3, 3, 256),
    ]
    assert not [k for r in rows for k in r if not k.startswith(("esper/", "_"))]
    summary = inspect_summary(done.run_dir)["summary"]
    assert summary["esper/run/status"] == "completed"
    assert "run/status" not in summary
