"""Secrets never leave the hub: planted, then searched for in every byte a run produced.

The W&B API key (its environment value, and anything shaped like one: 40 hex digits)
and every config value under a key that names a secret (``*key*``, ``*token*``,
``*secret*``, ``*password*``) must reach no events file, log line, W&B file or terminal.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from esper_telemetry import TelemetryHub
from esper_telemetry.analytics import read_events
from esper_telemetry.backends import (
    AnalyticsCollector,
    AnomalyEscalator,
    StructlogBackend,
    WandBBackend,
)
from esper_telemetry.contracts import (
    Anomaly,
    AnomalyDetected,
    AnomalyDetectedPayload,
    AnomalyType,
    RunFinished,
    RunFinishedPayload,
    RunLayout,
    RunStarted,
    RunStartedPayload,
    Severity,
    TelemetryLevel,
    TelemetryLevelChanged,
    TelemetryLevelChangedPayload,
)
from esper_telemetry.hub import REDACTED
from tests.faulty_lstm import FaultyLSTM
from tests.reliability.children import SMALL, child_env, esper_ppo, finish, start
from tests.wandb_offline import offline_wandb

#: Not hex: caught only because it is the value of WANDB_API_KEY.
ENV_API_KEY = "planted-WandbApiKey-NotHex-zyxwvutsrqponmlk"
HEX_API_KEY = "c0ffee00" * 5
CONFIG_SECRETS = {
    "api_key": "planted-api-key-value",
    "HF_TOKEN": "planted-hf-token-value",
    "client_secret": "planted-client-secret-value",
    "db_password": "planted-db-password-value",
}
IN_A_LIST = "planted-access-token-in-a-list"
ALL_SECRETS = (ENV_API_KEY, HEX_API_KEY, IN_A_LIST, *CONFIG_SECRETS.values())


def leaks(root: Path, *texts: str) -> list[tuple[str, str]]:
    """(where, secret) for every planted secret found in a file under root or a text."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        data = path.read_bytes()
        found += [(str(path.relative_to(root)), s) for s in ALL_SECRETS if s.encode() in data]
    for i, text in enumerate(texts):
        found += [(f"text {i}", s) for s in ALL_SECRETS if s in text]
    return found


def test_the_wandb_api_key_of_the_environment_reaches_no_output_of_esper_ppo(
    tmp_path: Path,
) -> None:
    """`esper ppo --wandb offline` with WANDB_API_KEY set: the key is in no file under the
    run (W&B's included), W&B's home and caches, stdout or stderr."""
    env = child_env(tmp_path, WANDB_API_KEY=HEX_API_KEY)
    argv = esper_ppo(tmp_path, "secret", "--wandb", "offline", "--episodes", "2", *SMALL)
    proc = start(argv, tmp_path, env=env)
    out, err = finish(proc, timeout=120)
    assert proc.returncode == 0, err
    assert RunLayout(tmp_path / "runs" / "secret").wandb.is_dir()
    assert leaks(tmp_path, out, err) == []


def test_planted_secrets_reach_no_backend_file_log_line_or_terminal(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Secret config keys and the API key planted in every free-text field of every event
    type, through every backend (W&B offline, a console log on stderr): none gets out."""
    run_dir = tmp_path / "run"
    with offline_wandb(tmp_path, monkeypatch), caplog.at_level(logging.DEBUG):
        monkeypatch.setenv("WANDB_API_KEY", ENV_API_KEY)
        hub = TelemetryHub("planted")
        hub.subscribe(AnomalyEscalator(), mode="inline")
        hub.subscribe(WandBBackend("esper-secrets", mode="offline", dir=run_dir))
        hub.subscribe(AnalyticsCollector(run_dir))
        hub.subscribe(StructlogBackend(RunLayout(run_dir).log))
        hub.subscribe(StructlogBackend(stream=sys.stderr, format="console"), name="terminal")
        config = {
            "lr": 3e-4,
            **CONFIG_SECRETS,
            "nested": [{"access_token": IN_A_LIST}],
            "commit": HEX_API_KEY,
            "note": f"the key is {ENV_API_KEY}",
        }
        said = f"key {ENV_API_KEY} and {HEX_API_KEY}"
        hub.emit(RunStarted(update=0, payload=RunStartedPayload(config=config, description=said)))
        FaultyLSTM(hub, {1: "nan"}).update(0)
        anomaly = Anomaly(
            type=AnomalyType.LSTM_NAN, severity=Severity.CRITICAL, observed=1.0, message=said
        )
        hub.emit(AnomalyDetected(update=1, payload=AnomalyDetectedPayload(anomaly=anomaly)))
        hub.emit(
            TelemetryLevelChanged(
                update=1,
                payload=TelemetryLevelChangedPayload(
                    previous=TelemetryLevel.NORMAL, level=TelemetryLevel.DEBUG, reason=said
                ),
            )
        )
        hub.emit(RunFinished(update=1, payload=RunFinishedPayload(status="failed", message=said)))
        stats = hub.close(timeout=60)
    captured = capfd.readouterr()
    assert stats.lossless
    assert {s.name: s.delivered for s in stats.subscribers} == {
        "anomaly-escalator": 5,
        "wandb": 5,
        "analytics": 5,
        "structlog": 5,
        "terminal": 5,
    }
    assert leaks(tmp_path, captured.out, captured.err, caplog.text) == []
    # Redacted where they were, not dropped: every free-text field arrived as the marker.
    texts: list[object] = []
    for event in read_events(run_dir):
        match event:
            case RunStarted(payload=p):
                keys = (*CONFIG_SECRETS, "commit", "note")
                texts += [p.description, *(p.config[k] for k in keys)]
                config = p.model_dump(mode="json")["config"]
                assert (config["lr"], config["nested"]) == (3e-4, [{"access_token": REDACTED}])
            case AnomalyDetected(payload=p):
                texts.append(p.anomaly.message)
            case TelemetryLevelChanged(payload=p):
                texts.append(p.reason)
            case RunFinished(payload=p):
                texts.append(p.message)
    assert texts == [REDACTED] * 10
