"""StructlogBackend: one structured log line per telemetry event.

The backend builds a logger of its own with ``structlog.wrap_logger``; it never calls
``structlog.configure``, so an application's structlog setup is left as it was.

JSON output is strict JSON: structlog's ``JSONRenderer`` would write bare ``NaN`` and
``Infinity`` tokens, so a processor first turns non-finite floats into the strings
"NaN", "Infinity" and "-Infinity" (the same spelling as the event contracts).

Written to a file, each line goes to the operating system in one unbuffered ``write``
(``esper_telemetry._append``): a line that cannot be written (a full disk) makes
``handle`` raise, so the hub counts that event as failed, and it is never written
later. Failed events are therefore exactly the events missing from the file; a
fragment a short write left behind stands alone as one bad line.
"""

from __future__ import annotations

import functools
import json
import sys
import threading
from collections.abc import MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import structlog

from esper_telemetry._append import LineAppender
from esper_telemetry._files import remove_if_empty
from esper_telemetry._tail import claim
from esper_telemetry.contracts import (
    AnomalyDetected,
    HealthThresholds,
    LSTMHealthMetrics,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    Severity,
    TelemetryEvent,
    TelemetryLevelChanged,
    health_status,
    json_safe,
)
from esper_telemetry.contracts.layout import per_rank_name
from esper_telemetry.hub import Backend

if TYPE_CHECKING:
    from esper_telemetry.hub import TelemetryHub

#: Keys the backend sets itself; a payload field of the same name is logged as payload_<name>.
_RESERVED = frozenset(
    {"event", "level", "timestamp", "run_id", "seq", "update", "rank", "telemetry_level"}
)
_LEVEL_NUMBERS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


class StructlogBackend(Backend):
    """Writes each event as a structlog event named after its event type.

    Args:
        path: A file to append JSON lines (or console lines) to; created if missing.
            Each line is written whole or not at all (see the module docstring).
        stream: A text stream to write to instead (default: standard error).
        format: ``"json"`` (strict JSON lines) or ``"console"`` (human-readable).
        resume: Continue the run already in the JSON log at ``path`` (see below).
        thresholds: The health rule each state's ``status`` is judged by (pass the
            anomaly detector's); the default rule if None.

    A JSON log file belongs to one run: subscribed to a hub, the backend refuses a file
    that already holds another run's lines (or an earlier run's with the same id) unless
    ``resume`` is set and the file holds the hub's run; the hub then continues that
    run's ``seq`` and update index after a torn last line, if any, is dropped.

    Levels: ``ANOMALY_DETECTED`` logs at warning (error when critical); the rest at
    info. Keys: ``run_id``, ``seq``, ``update``, ``rank``, ``telemetry_level``,
    ``timestamp`` (the event's, UTC) and every payload field that is not None; a payload
    field whose name is one of those (or ``event``/``level``) is logged as
    ``payload_<name>``, and telemetry levels are written by name. An anomaly's fields
    are logged flat: ``anomaly_type``, ``severity``, ``observed``, ``threshold``,
    ``message``, ``state`` (the named state it was found in, when it names one),
    ``outlier_envs``.

    A PPO update logs its recurrent states under ``states``, in place of the payload's
    ``recurrent_health``: each named state (the primary one first; a log from before
    states had names gives ``policy``, from the flat ``lstm_*`` fields) maps to its
    ``status`` (``HEALTHY``, ``WARNING`` or ``CRITICAL``, by ``thresholds``) and its
    figures, ``scope`` and ``ranks``, and, when the trainer checked it, its ``replay``
    (``ReplayConsistency``'s fields that are set); a state without a cell has no ``c_*``
    figures.
    ``primary_state`` names the state the flat ``lstm_*`` keys repeat, and
    ``recurrent_detail`` holds the detail of the other states when the update has any;
    an update without a named state has neither ``states`` nor ``recurrent_detail``.
    """

    name = "structlog"

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        stream: TextIO | None = None,
        format: Literal["json", "console"] = "json",
        resume: bool = False,
        thresholds: HealthThresholds | None = None,
    ) -> None:
        if not isinstance(resume, bool):
            raise ValueError(f"resume must be True or False, got {resume!r}")
        if thresholds is not None and not isinstance(thresholds, HealthThresholds):
            raise TypeError(
                f"thresholds must be a HealthThresholds or None, got {type(thresholds).__name__}"
            )
        self._thresholds = thresholds or HealthThresholds()
        if format not in ("json", "console"):
            raise ValueError(f"format must be 'json' or 'console', got {format!r}")
        if path is not None and stream is not None:
            raise ValueError("path and stream are exclusive: give one, or neither for stderr")
        self._file: LineAppender | None = None
        self._created = False
        self._handled = 0
        if path is not None:
            target = Path(path)
            if target.is_dir():
                raise ValueError(f"path: {str(target)!r} is a directory, expected a file")
            target.parent.mkdir(parents=True, exist_ok=True)
            self._created = not target.exists()
            self._file = LineAppender(target)
        self.path = Path(path) if path is not None else None
        self._out: TextIO | None = None if self._file else (stream or sys.stderr)
        self.format = format
        self._resume = resume
        self._lock = threading.Lock()
        self._log = self._logger()

    def _logger(self) -> Any:
        renderer: Any
        if self.format == "json":
            renderer = structlog.processors.JSONRenderer(
                serializer=functools.partial(json.dumps, allow_nan=False)
            )
        else:
            renderer = structlog.dev.ConsoleRenderer(colors=False)
        return structlog.wrap_logger(
            _LineLogger(self._file) if self._file else structlog.PrintLogger(self._out),
            processors=[structlog.processors.add_log_level, _non_finite_as_strings, renderer],
            wrapper_class=structlog.make_filtering_bound_logger(_LEVEL_NUMBERS["debug"]),
            cache_logger_on_first_use=False,
        )

    def __repr__(self) -> str:
        where = str(self.path) if self.path else getattr(self._out, "name", "stream")
        return f"StructlogBackend({where!r}, format={self.format!r})"

    def on_subscribe(self, hub: TelemetryHub) -> None:
        """Refuse a JSON log of another run (or of an earlier run with this id) unless
        resuming; when resuming, continue the hub where the log ends.

        Raises:
            ValueError: the log holds lines this hub may not append to.
        """
        if self._file is None:
            return
        if hub.per_rank_files and self._handled == 0:
            with self._lock:  # this rank's own file: log.rank<N>.jsonl
                self._file.close()
                if self._created:
                    remove_if_empty(self._file.path)
                self._file = LineAppender(
                    self._file.path.with_name(per_rank_name(self._file.path.name, hub.rank))
                )
                self._log = self._logger()
                self.path = self._file.path
        if self.format != "json":
            return
        with self._lock:
            position = claim(
                self._file.path, hub.run_id, resume=self._resume, live=hub.stats().emitted > 0
            )
            self._file.reread_end()
        if position is not None:
            hub.resume_after(position.seq, position.update)

    def handle(self, event: TelemetryEvent) -> None:
        """Log one event at the level its type and severity call for.

        Raises:
            OSError: the line could not be written (the hub counts the event as failed).
            RuntimeError: the backend's file was closed.
        """
        payload = event.payload.model_dump(mode="json")
        level = "info"
        match event:
            case PPOUpdateCompleted(payload=p):
                payload = _with_states(payload, p, self._thresholds)
            case AnomalyDetected(payload=p):
                anomaly = payload.pop("anomaly")
                payload = {"anomaly_type": anomaly.pop("type"), **anomaly, **payload}
                level = "error" if p.anomaly.severity is Severity.CRITICAL else "warning"
            case TelemetryLevelChanged(payload=p):
                payload.update(previous=p.previous.name, level=p.level.name)
        fields = {
            (f"payload_{k}" if k in _RESERVED else k): v
            for k, v in payload.items()
            if v is not None
        }
        with self._lock:
            getattr(self._log, level)(
                event.event_type.value,
                run_id=event.run_id,
                seq=event.seq,
                update=event.update,
                rank=event.rank,
                telemetry_level=event.level.name,
                timestamp=event.timestamp.isoformat(),
                **fields,
            )
            self._handled += 1

    def flush(self) -> None:
        """Flush the stream; a file has nothing buffered (each line is written at once)."""
        with self._lock:
            if self._out is not None:
                self._out.flush()

    def close(self) -> None:
        """Close the file if this backend opened it, else flush the stream. Idempotent."""
        with self._lock:
            if self._file is not None:
                self._file.close()
            elif self._out is not None:
                self._out.flush()


def _with_states(
    dumped: dict[str, Any], payload: PPOUpdatePayload, thresholds: HealthThresholds
) -> dict[str, Any]:
    """The dumped payload with ``states`` in place of ``recurrent_health`` (each state's
    replay check inside its entry), and without a ``recurrent_detail`` that holds
    nothing."""
    states = {name: _state(metrics, thresholds) for name, metrics in payload.named_health().items()}
    for name, replay in payload.replay.items():
        checked = replay.model_dump(mode="json")
        states[name]["replay"] = {k: v for k, v in checked.items() if v is not None}
    fields: dict[str, Any] = {}
    for key, value in dumped.items():
        if key == "recurrent_health":
            if states:
                fields["states"] = states
        elif key not in ("recurrent_detail", "replay") or (key == "recurrent_detail" and value):
            fields[key] = value
    return fields


def _state(metrics: LSTMHealthMetrics, thresholds: HealthThresholds) -> dict[str, Any]:
    figures = metrics.model_dump(mode="json")
    return {
        "status": health_status(metrics, thresholds).value,
        **{k: v for k, v in figures.items() if v is not None},
    }


class _LineLogger:
    """structlog's output for a file: each rendered event is one line, written whole.

    The methods are the ones a bound logger calls by level name, as on
    ``structlog.PrintLogger``.
    """

    def __init__(self, file: LineAppender) -> None:
        self._file = file

    def msg(self, message: str) -> None:
        self._file.append(message.encode("utf-8") + b"\n")

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def _non_finite_as_strings(
    logger: object, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: NaN/±Inf anywhere in the event become their JSON strings."""
    for key, value in event_dict.items():
        event_dict[key] = json_safe(value)
    return event_dict
