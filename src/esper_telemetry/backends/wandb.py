"""WandBBackend: every event on one Weights & Biases run, plotted against the PPO update.

The backend creates its W&B run when it is subscribed (``on_subscribe``), so a missing
API key in online mode fails at ``hub.subscribe`` rather than in the middle of training.
It may also be handed a run you created; it then never finishes that run.

What goes where:

=============================  =============================================================
event                          W&B
=============================  =============================================================
``RUN_STARTED``                ``run.config`` (secrets redacted), ``run.notes``
``PPO_UPDATE_COMPLETED``       ``ppo/<stat>``, ``ppo/env_steps``, ``ppo/<extra>``, the 12
                               ``lstm/<metric>`` (flags as 0/1), ``telemetry/level``; at DEBUG
                               also ``lstm/layer<i>/h_rms``, ``lstm/layer<i>/c_rms`` and
                               ``lstm/outlier_envs`` (a count)
``ANOMALY_DETECTED``           ``anomaly/<type>``: how many so far; ``run.alert`` for the
                               severities in ``alert_on``
``TELEMETRY_LEVEL_CHANGED``    ``telemetry/level``: the new level
``RUN_FINISHED``               ``run.summary``: ``run/status``, ``run/message``; its
                               summary scalars as ``final/<name>`` in the last row
=============================  =============================================================

One x-axis: every ``run.log`` passes ``step=event.update`` and the key ``update``, which
``define_metric`` declares as the step metric of every key above. W&B merges logs of one step
until the step advances and silently drops a lower step, so an event whose update is
lower than one already logged is not logged: it is counted in :attr:`WandBBackend.skipped`,
reported to the hub as undelivered (so ``hub.stats()`` counts it as lost and ``esper ppo``
exits 4), and the first one is logged as a warning. NaN and Inf are logged as they are. Every
``lstm/*`` key's summary is its maximum over the run, so the runs table shows the worst
value; one NaN makes that summary NaN, which is the worst value there is.

>>> from esper_telemetry import TelemetryHub, emit_ppo_update_event
>>> backend = WandBBackend("esper-doc", mode="disabled")
>>> with TelemetryHub("doc-run") as hub:
...     _ = hub.subscribe(backend)
...     _ = emit_ppo_update_event(hub, update=0, metrics={
...         "policy_loss": 0.1, "value_loss": 0.5, "entropy": 0.69})
>>> backend.skipped
0
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esper_telemetry._extras import missing_message
from esper_telemetry.contracts import (
    PPO_STATISTICS,
    WANDB_MODES,
    AnomalyDetected,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    RunFinished,
    RunStarted,
    Severity,
    TelemetryEvent,
    TelemetryLevelChanged,
    WandbMode,
)

try:
    import wandb
except ImportError as err:  # pragma: no cover - exercised in a test that hides wandb
    raise ImportError(missing_message("esper_telemetry.backends.wandb", "wandb")) from err

from esper_telemetry.hub import REDACTED, Backend, redact_secrets

if TYPE_CHECKING:
    from esper_telemetry.hub import TelemetryHub

__all__ = ["REDACTED", "WandBBackend"]

logger = logging.getLogger("esper_telemetry.backends.wandb")

Mode = WandbMode


#: How long ``close()`` waits for ``run.finish()`` by default, in seconds.
DEFAULT_FINISH_TIMEOUT_S = 30.0

_MODES = WANDB_MODES
# W&B's older spellings of the modes, still accepted in WANDB_MODE.
_MODE_ALIASES = {"dryrun": "offline", "run": "online"}
_BAD_PROJECT_CHARS = frozenset("/\\#?%:")
_PPO_STATS = (*PPO_STATISTICS, "env_steps")
_LSTM_FIELDS = tuple(name for name in PPOUpdatePayload.model_fields if name.startswith("lstm_"))
_LSTM_METRICS = tuple(n for n in _LSTM_FIELDS if n not in ("lstm_detail", "lstm_outlier_envs"))
# Key prefixes under a glob; lstm/ keys are declared one by one (see _declare_max).
_SECTIONS = ("ppo", "anomaly", "telemetry", "final")
_LSTM_KEYS = tuple(f"lstm/{name.removeprefix('lstm_')}" for name in _LSTM_METRICS)
# The values of wandb.AlertLevel, which wandb's type stubs do not export.
_ALERT_LEVELS = {Severity.WARNING: "WARN", Severity.CRITICAL: "ERROR"}


class WandBBackend(Backend):
    """Publishes telemetry events to one W&B run, with the PPO update as the step.

    Args:
        project: The W&B project of the run it creates; None lets W&B decide
            (``WANDB_PROJECT``, else its default). Not allowed with ``run``.
        mode: ``"offline"`` writes the run under ``dir`` only (sync it later with
            ``wandb sync``); ``"online"`` streams it to W&B and needs ``wandb login`` or
            ``WANDB_API_KEY``; ``"disabled"`` makes every call a no-op. None (default):
            ``WANDB_MODE`` when it is set, else ``"offline"``. Not allowed with ``run``.
        run: An existing W&B run to log to. The backend then never finishes it; its
            step must be the PPO update (a step it has passed is skipped here).
        dir: The folder the run's ``wandb/`` folder goes in (created if missing); None
            lets W&B decide (``WANDB_DIR``, else the working directory). W&B reads its
            environment variables once per process, at its first use.
        config: More configuration for ``run.config``, merged with the ``RUN_STARTED``
            config; on a key present in both, this one wins. Secrets are redacted.
        alert_on: The anomaly severities that call ``run.alert``; ``()`` for none.
        name: The run's display name; None uses the hub's ``run_id``. The run's id is
            always the hub's ``run_id``. Not allowed with ``run``.
        finish_timeout: How long ``close()`` waits for ``run.finish()``, in seconds.

    Secrets never reach W&B: in ``config`` and the ``RUN_STARTED`` config, a value whose
    key contains "key", "token", "secret" or "password" (any case, any depth), a string
    that holds 40 hex digits in a row (what a W&B API key looks like), and a string
    that holds the value of ``WANDB_API_KEY`` become ``"[REDACTED]"``.

    The hub calls ``handle``, ``flush`` and ``close`` from one thread at a time; the
    backend adds no locking of its own.

    Raises:
        ValueError: a bad ``project``, ``mode``, ``dir``, ``alert_on``, ``name`` or
            ``finish_timeout``, a config key that is not a string, ``run`` together with
            a setting that only applies to a run the backend creates, or an unknown
            ``WANDB_MODE``.
        TypeError: ``run`` is not a W&B run, ``config`` is not a mapping or ``dir`` is
            not a path.
    """

    name = "wandb"
    """The subscription name on a hub (the W&B run's name is the ``name`` argument)."""

    def __init__(
        self,
        project: str | None = None,
        *,
        mode: Mode | None = None,
        run: wandb.Run | None = None,
        dir: str | os.PathLike[str] | None = None,
        config: Mapping[str, Any] | None = None,
        alert_on: Iterable[Severity | str] = (Severity.CRITICAL,),
        name: str | None = None,
        finish_timeout: float = DEFAULT_FINISH_TIMEOUT_S,
    ) -> None:
        if run is not None:
            given = {"project": project, "mode": mode, "dir": dir, "name": name}
            clash = [k for k, v in given.items() if v is not None]
            if clash:
                raise ValueError(
                    f"{', '.join(clash)}: only applies to a run the backend creates; "
                    "pass either run= or these settings, not both"
                )
            if not all(callable(getattr(run, m, None)) for m in ("log", "alert", "finish")):
                raise TypeError(f"run must be a W&B run (wandb.init()), got {type(run).__name__}")
        self._project = _checked_project(project)
        self._mode: Mode | None = _resolved_mode(mode) if run is None else None
        self._dir = _checked_dir(dir)
        self._config = _redacted(_checked_config(config))
        self._alert_on = _checked_severities(alert_on)
        self._name = _checked_name(name)
        self._finish_timeout = _checked_timeout(finish_timeout)
        self._run: wandb.Run | None = run
        self._owns_run = run is None
        self._subscribed = False
        self._closed = False
        self._last_step = -1
        self._skipped = 0
        self._anomalies: Counter[str] = Counter()
        self._max_keys: set[str] = set()

    # -- public state -------------------------------------------------------------------

    @property
    def run(self) -> wandb.Run | None:
        """The W&B run; None until the backend is subscribed, unless one was given."""
        return self._run

    @property
    def skipped(self) -> int:
        """Events not logged because their update was lower than one already logged."""
        return self._skipped

    def __repr__(self) -> str:
        run_id = getattr(self._run, "id", None)
        return f"WandBBackend(mode={self._mode!r}, run={run_id!r}, skipped={self._skipped})"

    # -- Backend protocol ---------------------------------------------------------------

    def on_subscribe(self, hub: TelemetryHub) -> None:
        """Create the run (unless one was given) and declare its metrics.

        Called once by ``TelemetryHub.subscribe``; if it raises, nothing is subscribed.

        Raises:
            RuntimeError: online mode without W&B credentials; or the backend is
                already subscribed or closed.
        """
        if self._subscribed or self._closed:
            state = "closed" if self._closed else "already subscribed to a hub"
            raise RuntimeError(f"this WandBBackend is {state}; create one backend per hub")
        if self._run is None:
            self._run = self._init_run(hub.run_id)
        else:
            # W&B drops steps below the run's current one; start skipping where it does.
            self._last_step = _current_step(self._run)
            if self._config:
                _update_config(self._run, self._config)
        run = self._run
        run.define_metric("update", hidden=True)
        # One glob per section, no "*": the metrics of a run handed in keep their axis.
        for section in _SECTIONS:
            run.define_metric(f"{section}/*", step_metric="update")
        for key in _LSTM_KEYS:
            self._declare_max(run, key)
        self._subscribed = True

    def handle(self, event: TelemetryEvent) -> None:
        """Log one event to the run (see the module docstring for what goes where).

        Raises:
            RuntimeError: the backend was never subscribed to a hub, or is closed.
        """
        run = self._live_run("handle")
        match event:
            case PPOUpdateCompleted(payload=p):
                self._log(run, event, _ppo_row(event, p))
            case AnomalyDetected(payload=p):
                kind = p.anomaly.type.value
                self._anomalies[kind] += 1
                self._log(run, event, {f"anomaly/{kind}": self._anomalies[kind]})
                if p.anomaly.severity in self._alert_on:
                    run.alert(
                        title=f"esper: {kind}",
                        text=_alert_text(event),
                        level=_ALERT_LEVELS[p.anomaly.severity],
                    )
            case TelemetryLevelChanged(payload=p):
                self._log(run, event, {"telemetry/level": int(p.level)})
            case RunStarted(payload=p):
                config = _redacted(dict(p.config))
                _update_config(run, {k: v for k, v in config.items() if k not in self._config})
                if p.description:
                    run.notes = p.description
            case RunFinished(payload=p):
                self._finish_row(run, event)

    def _finish_row(self, run: wandb.Run, event: RunFinished) -> None:
        p = event.payload
        outcome: dict[str, str] = {"run/status": p.status}
        if p.message:
            outcome["run/message"] = p.message
        run.summary.update(outcome)
        if p.summary:
            # Logged, not written to run.summary: W&B's summary path turns NaN into
            # null, its history keeps it, and the run's summary takes the last row.
            step = max(self._last_step, event.update)
            self._log(
                run,
                event.model_copy(update={"update": step}),
                {f"final/{k}": v for k, v in p.summary.items()},
            )

    def undelivered(self) -> int:
        """Rows not logged because W&B would have dropped them (see :attr:`skipped`)."""
        return self._skipped

    def flush(self) -> None:
        """Do nothing: W&B has no flush that makes a run durable.

        Each ``run.log``, alert, config and summary change is already on its way to W&B's
        service process, which appends it to the run's ``.wandb`` file (offline) or
        streams it (online). The row of the latest update stays open on purpose until a
        higher update arrives or the run finishes, so that later events of that update
        (anomalies, a level change) land in the same row; ``close()`` finishes it.
        """

    def close(self) -> None:
        """Finish the run if the backend created it, waiting at most ``finish_timeout``.

        ``run.finish()`` runs on a daemon thread: if it does not return in time, a
        warning is logged and ``close`` returns anyway (what W&B had not written yet
        may be lost). A run that was handed in is left open. Closing twice does nothing.

        Raises:
            Exception: whatever ``run.finish()`` raised within the timeout.
        """
        if self._closed:
            return
        self._closed = True
        if self._run is not None and self._owns_run:
            _finish_within(self._run, self._finish_timeout)

    # -- helpers ------------------------------------------------------------------------

    def _init_run(self, run_id: str) -> wandb.Run:
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
        try:
            return wandb.init(
                project=self._project,
                id=run_id,
                name=self._name or run_id,
                dir=self._dir,
                config=dict(self._config),
                mode=self._mode,
                # Never hand back or finish a run the user started with wandb.init.
                reinit="create_new",
            )
        except (wandb.errors.UsageError, wandb.errors.AuthenticationError) as err:
            if self._mode != "online":
                raise
            raise RuntimeError(
                "WandBBackend(mode='online') could not start a W&B run: online mode needs "
                "credentials from `wandb login` or the WANDB_API_KEY environment variable, "
                f"or pass mode='offline' to write the run locally (wandb said: {err})"
            ) from err

    def _live_run(self, what: str) -> wandb.Run:
        if self._closed:
            raise RuntimeError(f"WandBBackend.{what}() was called after close()")
        if self._run is None or not self._subscribed:
            raise RuntimeError(
                f"WandBBackend.{what}() was called before the backend was subscribed; "
                "pass it to TelemetryHub.subscribe first"
            )
        return self._run

    def _log(self, run: wandb.Run, event: TelemetryEvent, row: dict[str, Any]) -> None:
        if event.update < self._last_step:
            self._skipped += 1
            if self._skipped == 1:
                logger.warning(
                    "WandBBackend: %s of update %d arrived with the run at step %d; W&B "
                    "drops lower steps, so it was not logged (counted in .skipped; later "
                    "ones are not warned about)",
                    event.event_type.value,
                    event.update,
                    self._last_step,
                )
            return
        for key in row:
            if key.startswith("lstm/") and key not in self._max_keys:
                self._declare_max(run, key)  # per-layer keys appear at DEBUG level
        run.log({"update": event.update, **row}, step=event.update)
        self._last_step = event.update

    def _declare_max(self, run: wandb.Run, key: str) -> None:
        # One name at a time: when two globs match a key ("lstm/*" and "*"), W&B 0.31
        # picks one at random per key, so a glob "lstm/*" summary would miss some keys.
        run.define_metric(key, step_metric="update", summary="max")
        self._max_keys.add(key)


def _ppo_row(event: PPOUpdateCompleted, payload: PPOUpdatePayload) -> dict[str, Any]:
    # extra first: a known statistic wins over an extra of the same name.
    row: dict[str, Any] = {f"ppo/{k}": v for k, v in payload.extra.items()}
    for stat in _PPO_STATS:
        value = getattr(payload, stat)
        if value is not None:
            row[f"ppo/{stat}"] = value
    for field in _LSTM_METRICS:
        value = getattr(payload, field)
        if value is not None:
            row[f"lstm/{field.removeprefix('lstm_')}"] = (
                int(value) if isinstance(value, bool) else value
            )
    detail = payload.lstm_detail
    if detail is not None:
        for i, (h, c) in enumerate(zip(detail.h_layer_rms, detail.c_layer_rms, strict=True)):
            row[f"lstm/layer{i}/h_rms"] = h
            row[f"lstm/layer{i}/c_rms"] = c
    if payload.lstm_outlier_envs is not None:
        row["lstm/outlier_envs"] = len(payload.lstm_outlier_envs)
    row["telemetry/level"] = int(event.level)
    return row


def _alert_text(event: AnomalyDetected) -> str:
    anomaly, envs = event.payload.anomaly, event.payload.outlier_envs
    threshold = "none" if anomaly.threshold is None else f"{anomaly.threshold:g}"
    text = (
        f"run {event.run_id}, update {event.update}: observed {anomaly.observed:g}, "
        f"threshold {threshold}. {anomaly.message}"
    )
    if envs:
        text += f" Outlier envs: {', '.join(map(str, envs))}."
    return text


def _finish_within(run: wandb.Run, timeout: float) -> None:
    raised: list[BaseException] = []

    def finish() -> None:
        try:
            run.finish()
        except BaseException as exc:  # handed to close() below
            raised.append(exc)

    thread = threading.Thread(target=finish, name="esper-wandb-finish", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        logger.warning(
            "WandBBackend: W&B run %r did not finish within %g s; closing without it "
            "(data W&B had not written yet may be missing; `wandb sync` can retry later)",
            getattr(run, "id", None),
            timeout,
        )
    elif raised:
        raise raised[0]


def _update_config(run: wandb.Run, values: dict[str, Any]) -> None:
    # A changed value must not raise in handle(): a second RUN_STARTED replaces the first.
    run.config.update(values, allow_val_change=True)  # type: ignore[no-untyped-call]


def _current_step(run: wandb.Run) -> int:
    step = getattr(run, "step", 0)
    return step if isinstance(step, int) and not isinstance(step, bool) else 0


def _redacted(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every secret replaced by ``REDACTED`` (the hub's own rule)."""
    redacted: dict[str, Any] = redact_secrets(config)
    return redacted


def _resolved_mode(mode: object) -> Mode:
    if mode is None:
        env = os.environ.get("WANDB_MODE", "").strip().lower()
        if not env:
            return "offline"
        resolved = _MODE_ALIASES.get(env, env)
        if resolved not in _MODES:
            raise ValueError(
                f"WANDB_MODE={env!r} is not a mode WandBBackend supports; use one of "
                f"{', '.join(_MODES)}, or pass mode="
            )
        mode = resolved
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, _MODES))}, got {mode!r}")
    return mode  # type: ignore[return-value]  # checked against Mode's values above


def _checked_project(project: object) -> str | None:
    if project is None:
        return None
    if not isinstance(project, str) or not project.strip():
        raise ValueError(f"project must be a non-empty string or None, got {project!r}")
    if bad := sorted(_BAD_PROJECT_CHARS.intersection(project)):
        raise ValueError(f"project: W&B names cannot contain {' '.join(bad)}, got {project!r}")
    return project


def _checked_dir(dir: object) -> Path | None:
    if dir is None:
        return None
    if not isinstance(dir, str | os.PathLike) or not str(dir):
        raise TypeError(f"dir must be a path or None, got {dir!r}")
    path = Path(dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"dir: {str(path)!r} exists and is not a directory")
    return path


def _checked_config(config: object) -> dict[str, Any]:
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping or None, got {type(config).__name__}")
    if bad := [k for k in config if not isinstance(k, str)]:
        raise ValueError(f"config: keys must be strings, got {bad[0]!r}")
    return dict(config)


def _checked_severities(alert_on: object) -> frozenset[Severity]:
    if isinstance(alert_on, str) or not isinstance(alert_on, Iterable):
        raise ValueError(
            f"alert_on must be a tuple of severities such as ('critical',), got {alert_on!r}"
        )
    chosen: set[Severity] = set()
    for item in alert_on:
        try:
            chosen.add(Severity(item))
        except ValueError:
            names = ", ".join(repr(s.value) for s in Severity)
            raise ValueError(f"alert_on: {item!r} is not a severity; use {names}") from None
    return frozenset(chosen)


def _checked_name(name: object) -> str | None:
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValueError(f"name must be a non-empty string or None, got {name!r}")
    return name


def _checked_timeout(timeout: object) -> float:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ValueError(f"finish_timeout must be a finite number of seconds > 0, got {timeout!r}")
    return float(timeout)
