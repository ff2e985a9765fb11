"""The webhook backend against a real HTTP server on this machine, in-process and through
``esper ppo`` with the package built and installed into a temporary folder."""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from esper_webhook import PAUSE_AFTER, URL_VARIABLE, WebhookBackend, make_backend, redacted_url

import esper_telemetry
from esper_telemetry.analytics import read_events
from esper_telemetry.contracts import (
    Anomaly,
    AnomalyDetected,
    AnomalyDetectedPayload,
    AnomalyType,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    RunFinished,
    Severity,
    SubscriberStats,
)
from esper_telemetry.hub import TelemetryHub

PACKAGE = Path(__file__).resolve().parents[1]
SRC = Path(esper_telemetry.__file__).resolve().parents[1]

#: Builds and installs a package from its folder, offline, with the setuptools at hand.
PIP_INSTALL = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
PIP_INSTALL += ["--no-build-isolation", "--no-index"]

#: Three updates of esper ppo with a NaN put into the LSTM state at update 1.
ESPER_PPO = [sys.executable, "-m", "esper_telemetry.cli", "ppo", "--episodes", "3"]
ESPER_PPO += ["--inject-fault", "nan@1", "--wandb", "disabled"]


@dataclass
class Received:
    """One request the server got."""

    path: str
    headers: dict[str, str]
    body: dict[str, object]


@dataclass
class Server:
    """A local HTTP server recording every POST; answers ``status`` after ``delay`` s."""

    port: int
    received: list[Received] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0

    def url(self, rest: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{rest}"


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            body = json.loads(self.rfile.read(length))
            state.received.append(Received(self.path, dict(self.headers.items()), body))
            time.sleep(state.delay)
            try:
                self.send_response(state.status)
                if 300 <= state.status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up first (the timeout tests): nothing to answer

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: the test asserts on what was received

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def as_json(event: AnomalyDetected | PPOUpdateCompleted) -> object:
    """The event as its JSON reads back: NaN is the string "NaN" there."""
    return json.loads(event.model_dump_json())


def closed_port() -> int:
    """A port on this machine nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def anomaly(update: int, severity: Severity = Severity.CRITICAL) -> AnomalyDetected:
    found = Anomaly(
        type=AnomalyType.LSTM_NAN,
        severity=severity,
        observed=float("nan"),
        message="LSTM state holds NaN",
        state="policy",
    )
    return AnomalyDetected(update=update, payload=AnomalyDetectedPayload(anomaly=found))


def update(n: int) -> PPOUpdateCompleted:
    return PPOUpdateCompleted(
        update=n, payload=PPOUpdatePayload(policy_loss=0.1, value_loss=0.2, entropy=0.3)
    )


def drive(
    backend: WebhookBackend, *events: AnomalyDetected | PPOUpdateCompleted
) -> tuple[list[AnomalyDetected | PPOUpdateCompleted], SubscriberStats]:
    """Emit ``events`` on a hub the backend is subscribed to (thread mode), close it."""
    hub = TelemetryHub("hook-run")
    hub.subscribe(backend)
    sent = [hub.emit(e) for e in events]
    stats = hub.close(timeout=30)
    (mine,) = [s for s in stats.subscribers if s.name == "webhook"]
    return sent, mine


def test_each_anomaly_is_posted_once_as_text_and_its_event(server: Server) -> None:
    """Only the anomaly is posted, to the URL's path and query, with a chat line and
    the event exactly as the hub published it; nothing is lost."""
    backend = WebhookBackend(server.url("/hook/T0?token=abc"))
    sent, stats = drive(backend, update(0), anomaly(1), update(1))
    assert [(r.path, r.headers["Content-Type"]) for r in server.received] == [
        ("/hook/T0?token=abc", "application/json")
    ]
    body = server.received[0].body
    assert body["text"] == (
        "esper run hook-run, update 1: critical lstm_nan (state policy): LSTM state holds NaN"
    )
    assert body["event"] == as_json(sent[1])  # as JSON: the observed NaN is not == itself
    assert (stats.delivered, stats.failed, stats.lost, backend.sent) == (3, 0, 0, 1)


def test_a_user_and_password_in_the_url_are_sent_as_basic_authentication(
    server: Server,
) -> None:
    """user:password@ leaves the address and becomes the Authorization header."""
    url = f"http://bot:s3%40cret@127.0.0.1:{server.port}/hook"
    drive(WebhookBackend(url), anomaly(0))
    (got,) = server.received
    assert got.path == "/hook"
    assert got.headers["Authorization"] == "Basic " + base64.b64encode(b"bot:s3@cret").decode()
    assert got.headers["Host"] == f"127.0.0.1:{server.port}"


def test_an_unreachable_url_is_counted_logged_once_and_never_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every anomaly not delivered is counted as undelivered (lost, not failed: the
    backend did not raise); one warning names the host only, never the secret parts."""
    port = closed_port()
    backend = WebhookBackend(f"http://me:pw1@127.0.0.1:{port}/T0/s3cret?token=tk2")
    with caplog.at_level(logging.WARNING, logger="esper_webhook"):
        _, stats = drive(backend, anomaly(0), anomaly(1))
    assert (stats.failed, stats.undelivered, stats.lost) == (0, 2, 2)
    assert [r.getMessage() for r in caplog.records] == [
        f"webhook http://127.0.0.1:{port}/…: an anomaly was not delivered "
        "(ConnectionRefusedError: [Errno 111] Connection refused); later failures are only "
        "counted"
    ]
    assert backend.last_error == "ConnectionRefusedError: [Errno 111] Connection refused"


def test_an_error_status_is_a_failure(server: Server) -> None:
    """A 500 answer counts as undelivered, with the status as the error."""
    server.status = 500
    backend = WebhookBackend(server.url())
    _, stats = drive(backend, anomaly(0))
    assert (len(server.received), stats.undelivered, backend.sent) == (1, 1, 0)
    assert backend.last_error == "HTTP 500 Internal Server Error"


def test_after_failures_in_a_row_it_pauses_and_counts_without_trying(server: Server) -> None:
    """An endpoint that keeps failing gets PAUSE_AFTER requests; the later anomalies of
    the pause are counted as undelivered all the same."""
    server.status = 503
    backend = WebhookBackend(server.url())
    _, stats = drive(backend, *(anomaly(n) for n in range(PAUSE_AFTER + 2)))
    assert (len(server.received), stats.undelivered) == (PAUSE_AFTER, PAUSE_AFTER + 2)


def test_a_redirect_is_not_followed_and_is_a_failure(server: Server) -> None:
    """A 302 would be followed as a GET without the body: it counts as undelivered."""
    server.status = 302
    backend = WebhookBackend(server.url())
    _, stats = drive(backend, anomaly(0))
    assert [r.path for r in server.received] == ["/hook"]
    assert (stats.undelivered, backend.last_error) == (1, "HTTP 302 Found")


def test_a_slow_endpoint_is_given_up_on_after_the_timeout(server: Server) -> None:
    """The request ends after ``timeout`` seconds, counted; the hub closes promptly."""
    server.delay = 3.0
    backend = WebhookBackend(server.url(), timeout=0.3)
    began = time.monotonic()
    _, stats = drive(backend, anomaly(0))
    assert time.monotonic() - began < 2.5
    assert (stats.undelivered, backend.last_error) == (1, "TimeoutError: timed out")


def test_min_severity_leaves_out_the_milder_anomalies(server: Server) -> None:
    """min_severity=critical: a warning is not posted, a critical one is."""
    backend = make_backend(url=server.url(), min_severity="critical")
    drive(backend, anomaly(0, Severity.WARNING), anomaly(1, Severity.CRITICAL))
    assert [r.body["text"] for r in server.received] == [
        "esper run hook-run, update 1: critical lstm_nan (state policy): LSTM state holds NaN"
    ]


def test_the_url_may_come_from_the_environment(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the option url, ESPER_WEBHOOK_URL is used."""
    monkeypatch.setenv(URL_VARIABLE, server.url("/from-env"))
    drive(make_backend(), anomaly(0))
    assert [r.path for r in server.received] == ["/from-env"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "needs a URL: set ESPER_WEBHOOK_URL, or --backend webhook:url=https://host/path"),
        (
            {"url": "ftp://u:s3cret@host/x"},
            "url must be an http or https URL with a host, got 'ftp://host/…'",
        ),
        ({"url": "http:///s3cret"}, "url must be an http or https URL with a host, got 'http://"),
        ({"url": "http://h:99999/s3cret"}, "url must be an http or https URL with a host, got"),
        ({"url": "http://h/", "timeout": "soon"}, "timeout must be a number of seconds, got"),
        ({"url": "http://h/", "timeout": "nan"}, "timeout must be a number of seconds above 0"),
        ({"url": "http://h/", "timeout": "0"}, "timeout must be a number of seconds above 0"),
        ({"url": "http://h/", "min_severity": "mild"}, "min_severity must be one of warning,"),
    ],
)
def test_bad_options_are_refused_without_showing_the_secret(
    options: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One line naming the option; a URL appears redacted."""
    monkeypatch.delenv(URL_VARIABLE, raising=False)
    with pytest.raises(ValueError, match=r"needs|must") as caught:
        make_backend(**options)
    assert str(caught.value).startswith(message)
    assert "s3cret" not in str(caught.value)


def test_a_redacted_url_keeps_only_the_scheme_and_the_host() -> None:
    """Path, query, fragment and user info are left out (a Slack hook's path is its key)."""
    assert [
        redacted_url(u)
        for u in ("https://a:b@h.example/T0/B1/xyz", "http://[::1]:8080?t=1", "https://h/", "")
    ] == ["https://h.example/…", "http://[::1]:8080/…", "https://h", "://"]


# --- through esper ppo, installed as a plugin ---------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """esper-webhook built from a copy of its folder and installed into a fresh one."""
    base = tmp_path_factory.mktemp("webhook")
    copy = base / "source"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "tests"))
    subprocess.run(
        [*PIP_INSTALL, "--target", str(base / "site"), str(copy)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return base / "site"


def esper_ppo(tmp: Path, site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "ESPER_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(site), str(SRC)]),
        WANDB_MODE="offline",
        HOME=str(tmp / "home"),
        OMP_NUM_THREADS="1",
    )
    small = ("--envs", "2", "--episode-length", "8", "--hidden", "16", "--no-progress")
    return subprocess.run(
        [*ESPER_PPO, "--run-dir", str(tmp / "runs"), *small, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=240,
    )


def test_esper_ppo_posts_the_runs_anomalies(tmp_path: Path, site: Path, server: Server) -> None:
    """--backend webhook:url=...: the server receives every anomaly of the run as the
    analytics log holds it; the URL's token appears in no output."""
    url = server.url("/hook?token=s3cret")
    result = esper_ppo(tmp_path, site, "--run-id", "hooked", "--backend", f"webhook:url={url}")
    assert result.returncode == 0, result.stderr
    logged = [
        e for e in read_events(tmp_path / "runs" / "hooked") if isinstance(e, AnomalyDetected)
    ]
    assert [a.payload.anomaly.type for a in logged] == [AnomalyType.LSTM_NAN] * len(logged)
    assert logged
    assert [r.body["event"] for r in server.received] == [as_json(a) for a in logged]
    assert "s3cret" not in result.stdout + result.stderr


def test_esper_ppo_trains_on_when_the_webhook_is_unreachable(tmp_path: Path, site: Path) -> None:
    """Every update is trained and logged; the verdict (exit 4) counts the webhook's
    undelivered anomalies; one warning, without the token."""
    url = f"http://127.0.0.1:{closed_port()}/hook?token=s3cret"
    result = esper_ppo(tmp_path, site, "--run-id", "unreached", "--backend", f"webhook:url={url}")
    assert result.returncode == 4, result.stderr
    events = list(read_events(tmp_path / "runs" / "unreached"))
    assert [e.payload.status for e in events if isinstance(e, RunFinished)] == ["completed"]
    assert [e.update for e in events if isinstance(e, PPOUpdateCompleted)] == [0, 1, 2]
    anomalies = sum(isinstance(e, AnomalyDetected) for e in events)
    assert len([x for x in result.stderr.splitlines() if "was not delivered" in x]) == 1
    assert result.stderr.splitlines()[-1] == (
        f"esper ppo: backend failed to deliver everything: webhook (lost {anomalies}: "
        f"failed 0, dropped 0, abandoned 0, undelivered {anomalies})"
    )
    assert "s3cret" not in result.stdout + result.stderr
