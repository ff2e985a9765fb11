"""An esper backend that posts every anomaly to a webhook, as one JSON request each.

``esper ppo --backend webhook:url=https://alerts.example.com/esper`` subscribes it (or
set ``ESPER_WEBHOOK_URL`` and leave the URL off the command line). Each
``AnomalyDetected`` event becomes one ``POST`` with a JSON body::

    {"text": "esper run R, update 3: critical lstm_nan (state policy): ...",
     "event": { ...the event, as in events.jsonl... }}

``text`` is what chat webhooks (Slack, Mattermost) show; ``event`` is the whole contract,
for a service that validates it against esper's JSON Schema. Other events are ignored.

Bounded and quiet by design:

- the hub runs it on its own thread with a bounded queue (``esper ppo`` subscribes
  plugins in thread mode), so a slow endpoint never delays training;
- each request gives up after ``timeout`` seconds; nothing is retried; after
  ``PAUSE_AFTER`` failures in a row it stops trying for ``PAUSE_S`` seconds, so an
  endpoint that is down costs a few timeouts, not one per anomaly;
- a request that fails (refused, timed out, an HTTP error status) is counted and logged
  once, never raised: :meth:`WebhookBackend.undelivered` reports the count, which the
  run's summary and exit status show as lost (exit 4);
- the URL is never logged or shown whole: its path, query and user name or password
  may be the secret (a Slack hook's path is), so only the scheme and host appear
  (:func:`redacted_url`). A ``user:password@`` in the URL is sent as HTTP basic
  authentication.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import math
import os
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import unquote, urlsplit, urlunsplit

from esper_telemetry.contracts import AnomalyDetected, Severity, TelemetryEvent
from esper_telemetry.hub import Backend

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "PAUSE_AFTER",
    "PAUSE_S",
    "URL_VARIABLE",
    "WebhookBackend",
    "make_backend",
    "redacted_url",
]

__version__ = "0.1.0"

#: The environment variable read for the URL when the option ``url`` is not given.
URL_VARIABLE = "ESPER_WEBHOOK_URL"

#: Seconds one request may take before it counts as failed.
DEFAULT_TIMEOUT_S = 5.0

#: Failed requests in a row after which the backend stops trying for ``PAUSE_S`` seconds
#: (the anomalies of the pause are counted as undelivered without a request).
PAUSE_AFTER = 3

#: Seconds the backend stops trying after ``PAUSE_AFTER`` failures in a row.
PAUSE_S = 30.0

#: The most of a response body that is read (and thrown away) before the next request.
_MAX_RESPONSE_BYTES = 64 * 1024

_log = logging.getLogger("esper_webhook")

_SEVERITY_RANK = {Severity.WARNING: 0, Severity.CRITICAL: 1}


class WebhookBackend(Backend):
    """Posts each ``AnomalyDetected`` event (at ``min_severity`` or worse) to ``url``.

    Args:
        url: An ``http`` or ``https`` URL. ``user:password@`` in it is sent as basic
            authentication, not as part of the address.
        timeout: Seconds each request may take; above 0 and finite.
        min_severity: Post only anomalies this bad or worse; None: every anomaly.

    Raises:
        ValueError: a URL that is not http(s) with a host, or a bad timeout; the message
            shows the URL redacted.
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        min_severity: Severity | None = None,
    ) -> None:
        self._url, self._auth = _address_and_auth(url)
        self.target = redacted_url(url)
        """Where it posts, safe to show: the scheme and host only."""
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a number of seconds above 0, got {timeout!r}")
        self._timeout = float(timeout)
        self._min_rank = -1 if min_severity is None else _SEVERITY_RANK[min_severity]
        self._lock = threading.Lock()  # undelivered() is read from other threads
        self._sent = 0
        self._failed = 0
        self._last_error: str | None = None
        self._in_a_row = 0  # failures since the last success (the hub's thread only)
        self._paused_until = 0.0

    @property
    def sent(self) -> int:
        """Anomalies posted and accepted (a 2xx answer)."""
        with self._lock:
            return self._sent

    @property
    def last_error(self) -> str | None:
        """Why the last failed request failed, in one line (None: none failed)."""
        with self._lock:
            return self._last_error

    def handle(self, event: TelemetryEvent) -> None:
        """Post the event if it is an anomaly bad enough; a failure is counted, not raised."""
        match event:
            case AnomalyDetected(payload=p) if _SEVERITY_RANK[p.anomaly.severity] >= self._min_rank:
                if time.monotonic() < self._paused_until:  # the endpoint is down: not tried
                    with self._lock:
                        self._failed += 1
                    return
                self._post(_body(event))
            case _:
                return

    def undelivered(self) -> int:
        """Anomalies whose request failed."""
        with self._lock:
            return self._failed

    def _post(self, body: bytes) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": f"esper-webhook/{__version__}"}
        if self._auth is not None:
            headers["Authorization"] = self._auth
        request = urllib.request.Request(self._url, data=body, headers=headers, method="POST")
        try:
            with _opener.open(request, timeout=self._timeout) as response:
                response.read(_MAX_RESPONSE_BYTES)
        except urllib.error.HTTPError as exc:  # an answer, but not a 2xx
            exc.close()
            self._failure(f"HTTP {exc.code} {exc.reason}")
        # TimeoutError and a refused connection are OSErrors; a garbled answer is an
        # HTTPException. The URL is in none of their messages.
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            self._failure(_one_line(reason))
        else:
            with self._lock:
                self._sent += 1
            self._in_a_row = 0

    def _failure(self, reason: str) -> None:
        with self._lock:
            self._failed += 1
            first = self._failed == 1
            self._last_error = reason
        self._in_a_row += 1
        if self._in_a_row >= PAUSE_AFTER:
            # Each failure may have cost a whole timeout: pause, so that a run full of
            # anomalies still shuts down within the hub's close timeout.
            self._paused_until = time.monotonic() + PAUSE_S
            self._in_a_row = 0
        if first:  # once: the run's summary counts the rest
            _log.warning(
                "webhook %s: an anomaly was not delivered (%s); later failures are only counted",
                self.target,
                reason,
            )


def make_backend(url: str = "", timeout: str = "", min_severity: str = "") -> WebhookBackend:
    """Posts each anomaly as JSON to a webhook URL (options: url, timeout, min_severity).

    ``url`` defaults to the environment variable ``ESPER_WEBHOOK_URL``: a URL holding a
    token is better kept off the command line, where other users' ``ps`` can read it.
    """
    url = url or os.environ.get(URL_VARIABLE, "")
    if not url:
        raise ValueError(
            f"needs a URL: set {URL_VARIABLE}, or --backend webhook:url=https://host/path"
        )
    seconds = DEFAULT_TIMEOUT_S
    if timeout:
        try:
            seconds = float(timeout)
        except ValueError:
            raise ValueError(f"timeout must be a number of seconds, got {timeout!r}") from None
    severity = None
    if min_severity:
        try:
            severity = Severity(min_severity)
        except ValueError:
            choices = ", ".join(s.value for s in Severity)
            raise ValueError(
                f"min_severity must be one of {choices}, got {min_severity!r}"
            ) from None
    return WebhookBackend(url, timeout=seconds, min_severity=severity)


def redacted_url(url: str) -> str:
    """The URL with everything that may be secret left out: only scheme, host and port.

    >>> redacted_url("https://bot:s3cret@hooks.example.com:8443/T0/B1/xyz?token=abc")
    'https://hooks.example.com:8443/…'
    >>> redacted_url("http://localhost:8000")
    'http://localhost:8000'
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(a URL that cannot be read)"
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    where = f"{host}:{port}" if port is not None else host
    hidden = parts.path not in ("", "/") or parts.query or parts.fragment
    return f"{parts.scheme}://{where}" + ("/…" if hidden else "")


def _address_and_auth(url: str) -> tuple[str, str | None]:
    """The URL to request, without user info, and the basic-auth header from it (or None)."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"url must be an http or https URL with a host, got {redacted_url(url)!r}")
    auth = None
    if parts.username is not None or parts.password is not None:
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), auth


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is a failure: urllib would follow it as a GET, without the body, and
    could carry the credentials to another host."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def _body(event: AnomalyDetected) -> bytes:
    anomaly = event.payload.anomaly
    state = f" (state {anomaly.state})" if anomaly.state else ""
    text = (
        f"esper run {event.run_id}, update {event.update}: {anomaly.severity.value} "
        f"{anomaly.type.value}{state}: {anomaly.message}"
    )
    return json.dumps(
        {"text": text, "event": json.loads(event.model_dump_json())}, allow_nan=False
    ).encode("utf-8")


def _one_line(error: object) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
