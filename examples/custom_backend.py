"""A backend of your own: post every anomaly, as JSON, to an HTTP endpoint.

``WebhookBackend`` is what you would write to page someone, open a ticket or ping a
chat channel when the LSTM state goes bad. To show it working without the network, the
script starts a small HTTP server on 127.0.0.1 in a thread, trains the reference
recurrent PPO with a NaN injected into its LSTM state, and prints what the server
received. Run it::

    python examples/custom_backend.py --fault nan@2 --run-dir runs/webhook

What makes it a well-behaved backend:

- it subclasses ``esper_telemetry.Backend`` and overrides ``handle``, ``flush``,
  ``close`` and ``undelivered``; the hub calls each at the right time;
- it is subscribed in thread mode (the default): it gets its own thread and a bounded
  queue, so a slow endpoint never delays training;
- every post waits at most ``timeout`` seconds; a post that fails is logged, counted and
  kept for the next ``flush()`` (at most ``keep`` of them, the oldest dropped first), and
  whatever was never delivered shows in ``hub.stats()`` through ``undelivered()``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from esper_telemetry import Backend, TelemetryHub
from esper_telemetry.backends import AnalyticsCollector, AnomalyEscalator
from esper_telemetry.contracts import AnomalyDetected, TelemetryEvent
from esper_telemetry.training import FaultKind, PPOConfig, parse_fault, train

logger = logging.getLogger("webhook")


class WebhookBackend(Backend):
    """Posts each ``AnomalyDetected`` event's JSON to ``url``; other events are ignored.

    Args:
        url: An ``http://`` or ``https://`` URL.
        timeout: Seconds one post may take (connecting, sending, reading the answer).
        keep: How many failed posts to keep for another try at ``flush()``.
    """

    name = "webhook"

    def __init__(self, url: str, *, timeout: float = 2.0, keep: int = 100) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http://HOST/... or https://HOST/..., got {url!r:.80}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.url = url
        self.timeout = timeout
        self.sent = 0  # posts the endpoint accepted
        self.failed = 0  # posts that failed (a retry that fails counts again)
        self.dropped = 0  # failed posts pushed out of the bounded retry queue: lost
        self._parts = parts
        self._unsent: deque[bytes] = deque(maxlen=keep)
        self._connection: http.client.HTTPConnection | None = None

    def handle(self, event: TelemetryEvent) -> None:
        """Post an anomaly at once (on this backend's own thread)."""
        match event:
            case AnomalyDetected():
                self._post_or_keep(event.model_dump_json().encode())  # strict JSON
            case _:
                pass  # updates, level changes, run start and end: not alerts

    def flush(self) -> None:
        """Try the kept posts again, oldest first; stop at the first that fails."""
        for _ in range(len(self._unsent)):
            if not self._post_or_keep(self._unsent.popleft()):
                break  # still down: do not spend a timeout on each of the others

    def close(self) -> None:
        """Close the connection (the hub has just flushed)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def undelivered(self) -> int:
        """Anomalies handled but not delivered: dropped, or still waiting for a retry."""
        return self.dropped + len(self._unsent)

    def _post_or_keep(self, body: bytes) -> bool:
        try:
            self._post(body)
        except (OSError, http.client.HTTPException) as exc:  # timeouts are OSErrors
            self.failed += 1
            logger.warning("post to %s failed: %s", self.url, exc)
            if len(self._unsent) == self._unsent.maxlen:
                self.dropped += 1  # the append below pushes the oldest out
            self._unsent.append(body)
            return False
        self.sent += 1
        return True

    def _post(self, body: bytes) -> None:
        if self._connection is None:  # one connection, kept alive while the server allows
            https = self._parts.scheme == "https"
            kind = http.client.HTTPSConnection if https else http.client.HTTPConnection
            self._connection = kind(self._parts.netloc, timeout=self.timeout)
        path = self._parts.path or "/"
        if self._parts.query:
            path += "?" + self._parts.query
        try:
            self._connection.request("POST", path, body, {"Content-Type": "application/json"})
            response = self._connection.getresponse()
            response.read()
        except BaseException:
            self.close()  # a broken connection is opened afresh next time
            raise
        if response.status >= 300:
            raise OSError(f"HTTP {response.status} {response.reason}")


# ---- a stand-in for the service you would post to --------------------------------------


def start_server(received: list[dict[str, Any]], port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1 (port 0: a free one) keeping every JSON body posted."""

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the demo's output to what the backend sent

    server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# ---- the training run ------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    def fault(text: str) -> tuple[FaultKind, int]:
        try:
            return parse_fault(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=5, help="PPO updates at most")
    p.add_argument("--fault", type=fault, default=("nan", 2), help="KIND@UPDATE (nan@2)")
    p.add_argument("--run-dir", type=Path, default=None, help="also write the run here")
    args = p.parse_args()
    if args.run_dir is not None and args.run_dir.is_dir() and any(args.run_dir.iterdir()):
        p.error(f"--run-dir: {args.run_dir} is not empty; give a new directory")
    return args


def main() -> None:
    args = parse_args()
    logging.basicConfig(format="%(name)s: %(message)s")  # the escalator's and ours
    received: list[dict[str, Any]] = []
    server = start_server(received)
    webhook = WebhookBackend(f"http://127.0.0.1:{server.server_port}/alerts", timeout=2.0)
    # A tiny policy, so the run takes seconds; PPOConfig() alone learns the task.
    config = PPOConfig(updates=args.updates, envs=2, steps=8, hidden=16, epochs=2, fault=args.fault)
    with TelemetryHub() as hub:
        hub.subscribe(AnomalyEscalator(halt_on="critical"), mode="inline")  # finds anomalies
        hub.subscribe(webhook, queue_size=64)  # its own thread and a queue of 64 events
        if args.run_dir is not None:
            hub.subscribe(AnalyticsCollector(args.run_dir))
        result = train(config, hub)
    # Leaving the block flushed and closed every backend: every post has been answered.
    server.shutdown()
    print(f"training {result.status} after {result.updates} updates")
    for body in received:
        anomaly = body["payload"]["anomaly"]
        print(
            f"server received: {anomaly['type']} ({anomaly['severity']}) "
            f"at update {body['update']}: {anomaly['message']}"
        )
    print(f"webhook: {webhook.sent} sent, {webhook.failed} failed, {webhook.undelivered()} lost")


if __name__ == "__main__":
    main()
