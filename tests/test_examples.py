"""Every script of ``examples/`` runs as a user would run it, for a few updates.

Each runs in a real child process from a temporary directory, with this checkout's
``src`` on its path and W&B offline, and writes its run under that directory; the
test then reads the run back and checks what the script printed. ``cleanrl_ppo_lstm.py``
and ``ddp.py`` have their own files (``test_cleanrl_example.py``, ``test_ddp_example.py``).
"""

from __future__ import annotations

import math
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from esper_telemetry import TelemetryHub
from esper_telemetry.contracts import (
    Anomaly,
    AnomalyDetected,
    AnomalyDetectedPayload,
    AnomalyType,
    PPOUpdateCompleted,
    RunFinished,
    RunStarted,
    Severity,
    TelemetryEvent,
)
from tests.reliability.children import child_env, read_back
from tests.script import load_script

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Example:
    """A script, the arguments of its tiny run, and what to check once it has run."""

    script: str
    args: tuple[str, ...]
    check: Callable[[Path, str], None]  # (the tmp directory it ran in, its stdout)

    def __str__(self) -> str:
        return self.script


def kinds(events: list[TelemetryEvent]) -> list[str]:
    return [e.event_type.value for e in events]


def check_minimal(tmp: Path, stdout: str) -> None:
    events, bad = read_back(tmp / "run")
    assert bad == []
    assert kinds(events) == ["RUN_STARTED", *["PPO_UPDATE_COMPLETED"] * 3, "RUN_FINISHED"]
    # The print subscriber shows every event; the alarm speaks once, for update 2. The
    # alarm prints from its own thread, so its line may land inside another: find both.
    assert len(re.findall(r"event_type=<EventType\.", stdout)) == 5
    assert re.findall(r"update \d+: LSTM state [A-Z]+", stdout) == ["update 2: LSTM state CRITICAL"]


def check_custom_backend(tmp: Path, stdout: str) -> None:
    events, bad = read_back(tmp / "run")
    assert bad == []
    anomalies = [e for e in events if isinstance(e, AnomalyDetected)]
    assert [(a.update, a.payload.anomaly.type.value) for a in anomalies] == [(2, "lstm_nan")]
    # The local server got exactly the anomalies of the run's log, and the halt followed.
    received = re.findall(r"^server received: (\w+) \((\w+)\) at update (\d+): ", stdout, re.M)
    assert received == [("lstm_nan", "critical", "2")]
    assert stdout.splitlines()[0] == "training halted after 3 updates"
    assert stdout.splitlines()[-1] == "webhook: 1 sent, 0 failed, 0 lost"


def check_sb3(tmp: Path, stdout: str) -> None:
    events, bad = read_back(tmp / "run")
    assert bad == []
    assert kinds(events) == ["RUN_STARTED", *["PPO_UPDATE_COMPLETED"] * 3, "RUN_FINISHED"]
    started = [e for e in events if isinstance(e, RunStarted)]
    assert [(e.payload.config["algorithm"], e.payload.config["n_steps"]) for e in started] == [
        ("RecurrentPPO", 16)
    ]
    updates = [e for e in events if isinstance(e, PPOUpdateCompleted)]
    assert [(e.update, e.payload.env_steps) for e in updates] == [(0, 32), (1, 64), (2, 96)]
    # The actor's and the critic's LSTM (each has its own), both measured every update.
    assert all(list(e.payload.recurrent_health) == ["policy", "value"] for e in updates)
    finished = [e for e in events if isinstance(e, RunFinished)]
    assert [e.payload.status for e in finished] == ["completed"]
    printed = re.findall(r"^update (\d+): (\d+) env steps, ", stdout, re.M)
    assert printed == [("0", "32"), ("1", "64"), ("2", "96")]


def check_query_runs(tmp: Path, stdout: str) -> None:
    for name, status, updates in (("healthy", "completed", 4), ("exploding", "halted", 3)):
        events, bad = read_back(tmp / "runs" / name)
        assert bad == []
        assert [(e.run_id, e.payload.status) for e in events if isinstance(e, RunFinished)] == [
            (name, status)
        ]
        assert sum(isinstance(e, PPOUpdateCompleted) for e in events) == updates
    # The table has one row per run, the exploding one with its anomaly and its big |c|.
    rows = re.findall(r"^(healthy|exploding) +(\d+) +([0-9.]+) +\S+ +(\d+)$", stdout, re.M)
    assert [(run, n, anomalies) for run, n, _, anomalies in rows] == [
        ("exploding", "3", "1"),
        ("healthy", "4", "0"),
    ]
    assert float(rows[0][2]) > 100 > 10 > float(rows[1][2])
    assert "(2 rows)" in stdout
    assert stdout.splitlines()[-1] == "exploding: first anomaly lstm_c_explosion at update 2"


MINIMAL = Example("minimal.py", ("--updates", "3", "--run-dir", "run"), check_minimal)
CUSTOM_BACKEND = Example(
    "custom_backend.py",
    ("--updates", "4", "--fault", "nan@2", "--run-dir", "run"),
    check_custom_backend,
)
SB3 = Example(
    "sb3_recurrent_ppo.py",
    ("--updates", "3", "--n-envs", "2", "--n-steps", "16", "--run-dir", "run"),
    check_sb3,
)
QUERY_RUNS = Example("query_runs.py", ("--root", "runs", "--updates", "4"), check_query_runs)

EXAMPLES = [MINIMAL, CUSTOM_BACKEND, SB3, QUERY_RUNS]


@pytest.mark.parametrize("example", EXAMPLES, ids=str)
def test_the_example_runs_a_few_updates(example: Example, tmp_path: Path) -> None:
    """The script exits 0, and its run and its output are what its docstring says."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example.script), *example.args],
        cwd=tmp_path,
        env=child_env(tmp_path, PYTHONPATH=str(ROOT / "src"), WANDB_MODE="offline"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    example.check(tmp_path, out.stdout)


def test_a_run_directory_in_use_is_refused_in_one_line(tmp_path: Path) -> None:
    """An example given a directory that already holds something says so and exits 2."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "events.jsonl").write_text("")
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "minimal.py"), "--run-dir", "run"],
        cwd=tmp_path,
        env=child_env(tmp_path, PYTHONPATH=str(ROOT / "src")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1] == (
        "minimal.py: error: --run-dir: run is not empty; give a new directory"
    )
    assert out.stdout == ""


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module, without running its ``main``."""
    return load_script(ROOT / "examples" / f"{name}.py", f"esper_example_{name}")


def test_the_webhook_keeps_a_bounded_few_failed_posts_and_sends_them_at_flush() -> None:
    """With its endpoint down, the webhook counts each failure and keeps the last two; once
    the endpoint is up, flush() delivers those two, and the one pushed out stays lost."""
    example = load_example("custom_backend")
    with socket.socket() as probe:  # a port nothing listens on (for now)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    webhook = example.WebhookBackend(f"http://127.0.0.1:{port}/alerts", timeout=1.0, keep=2)
    nan = Anomaly(
        type=AnomalyType.LSTM_NAN, severity=Severity.CRITICAL, observed=math.nan, message="m"
    )
    with TelemetryHub("webhook-down") as hub:
        hub.subscribe(webhook, mode="inline")
        for update in range(3):
            hub.emit(AnomalyDetected(update=update, payload=AnomalyDetectedPayload(anomaly=nan)))
        assert (webhook.sent, webhook.failed, webhook.dropped, webhook.undelivered()) == (
            0,
            3,
            1,
            3,
        )
        received: list[dict[str, Any]] = []
        server = example.start_server(received, port)
        try:
            hub.flush()
        finally:
            server.shutdown()
            server.server_close()
        assert (webhook.sent, webhook.failed, webhook.undelivered()) == (2, 3, 1)
        assert [body["update"] for body in received] == [1, 2]
        assert [(s.name, s.undelivered) for s in hub.stats().subscribers] == [("webhook", 1)]


#: The examples with a test file of their own.
OWN_TESTS = {"cleanrl_ppo_lstm.py": "test_cleanrl_example.py", "ddp.py": "test_ddp_example.py"}


def test_every_example_is_run_by_the_suite() -> None:
    """Each script of examples/ is run here or by the test file named for it."""
    scripts = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
    assert scripts == sorted([*(e.script for e in EXAMPLES), *OWN_TESTS])
    for script, test in OWN_TESTS.items():
        assert f'"{script}"' in (ROOT / "tests" / test).read_text()
