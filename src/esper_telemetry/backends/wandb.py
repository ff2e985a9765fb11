"""WandBBackend: every event on one Weights & Biases run, on the x-axis you choose.

The backend creates its W&B run when it is subscribed (``on_subscribe``), so a missing
API key in online mode fails at ``hub.subscribe`` rather than in the middle of training.
It may also be handed a run you created (to share it with SB3's, CleanRL's or your own
logging); it then never finishes that run and never sets its step.

Every key comes from one layout, :class:`~esper_telemetry.backends.wandb_keys.WandbKeys`
(the dashboards draw with the same one), in four groups that ``log=`` switches on and off,
all under an optional ``prefix=`` (``"esper"``: ``esper/lstm/...``):

=============================  =============================================================
event                          W&B
=============================  =============================================================
``RUN_STARTED``                ``run.config`` (secrets redacted), ``run.notes``; the config
                               always holds ``esper`` (version, thresholds, level policy)
``PPO_UPDATE_COMPLETED``       ``update`` and ``env_steps`` (the two x-axes, in every row);
                               group ``health``: the ``lstm/...`` keys below; ``ppo``:
                               ``ppo/<stat>``, ``ppo/episode_return_mean``, ``extra/<name>``
                               (the trainer's own scalars); ``telemetry``:
                               ``telemetry/level``, ``telemetry/lost`` and
                               ``telemetry/dropped`` (the hub's, so far),
                               ``telemetry/latency_p99_ms`` (its slowest subscriber's)
``ANOMALY_DETECTED``           ``anomalies``: ``anomaly/<type>`` (how many so far) and a row
                               of ``anomaly/table`` (logged at flush when it grew);
                               ``run.alert`` for the severities in ``alert_on`` (whatever
                               ``log=`` says), its title and text naming the state
``TELEMETRY_LEVEL_CHANGED``    ``telemetry``: ``telemetry/level``
``RUN_FINISHED``               ``run.summary`` only: ``run/status``, ``run/message`` and its
                               scalars as ``final/<name>`` (single values: no chart)
=============================  =============================================================

The recurrent states of an update (``<figure>`` is one of the 12 of
:class:`~esper_telemetry.contracts.LSTMHealthMetrics`, flags as 0/1):

======================================  ====================================================
key                                     what
======================================  ====================================================
``lstm/<figure>``                       the primary state (``primary_state``): the keys of
                                        runs from before states had names
``lstm/layer<i>/h_rms``, ``.../c_rms``  its per-layer RMS, on an update with its detail (at
                                        DEBUG, and when it is critical)
``lstm/outlier_envs``                   how many of its envs are outliers, with the detail
``lstm/<name>/<figure>``                every named state, the primary one included (a log
                                        from before names: ``policy``), e.g.
                                        ``lstm/value/c_rms``
``lstm/<name>/layer<i>/h_rms``, ...     its per-layer RMS, on an update with its detail
======================================  ====================================================

A state without a cell (GRU, RNN) has no ``c`` figures: no ``.../c_*`` key is logged for it
(W&B is given no value rather than a made-up one). The keys of a named state appear with
the first update that has it.

The x-axis: every row carries ``update`` and, when the trainer reports it, ``env_steps``;
``define_metric`` makes the chosen one (``x_axis=``) the step metric of every key, so every
chart lines up, and the other stays selectable in the UI. On a run the backend creates,
``run.log`` also passes ``step=update``: W&B merges logs of one step until the step advances
and silently drops a lower step, so an event whose update is lower than one already logged
is not logged: it is counted in :attr:`WandBBackend.skipped`, reported to the hub as
undelivered (so ``hub.stats()`` counts it as lost and ``esper ppo`` exits 4), and the first
one is logged as a warning. On a run handed in, the step belongs to the other logger (and
W&B refuses a step while it syncs TensorBoard): rows are logged without one and join that
logger's open row, so nothing is dropped. NaN and Inf are logged as they are (W&B's summary
path would write a NaN ``final/`` value as null, so it is written as the text ``"NaN"``).
Every ``lstm/*`` key keeps three summaries (declared by name, as each key first appears):
``last``, how the state is now; ``max``, the worst an explosion reached; and ``min``, the
worst a vanishing state reached (the flags and ``outlier_envs`` keep ``last`` and ``max``).
The runs table shows either; one NaN makes ``max`` and ``min`` NaN, which is the worst value
there is, while ``last`` says whether the state has recovered.

W&B's service process can fail to write what it was given (a full disk) without telling
the SDK. So when an offline run the backend created is closed, its ``.wandb`` file is
read back, and every event whose row, config, notes or status the file lacks is
reported as undelivered too, with a warning naming the file and W&B's own error.

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

import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esper_telemetry._extras import missing_message
from esper_telemetry.contracts import (
    WANDB_MODES,
    Anomaly,
    AnomalyDetected,
    HealthThresholds,
    LSTMHealthDetail,
    LSTMHealthMetrics,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    ReplayConsistency,
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

from esper_telemetry.backends._wandb_file import (
    RunFileContents,
    first_error,
    read_final_run_file,
    read_run_file,
    run_folders,
)
from esper_telemetry.backends.wandb_keys import (
    ANOMALY_COLUMNS,
    DEFAULT_GROUPS,
    DIAGNOSTIC_FIGURES,
    PPO_KEYS,
    SHARED_GROUPS,
    Group,
    WandbKeys,
    XAxis,
    checked_groups,
    checked_project,
    checked_tags,
    checked_text,
)
from esper_telemetry.hub import REDACTED, Backend, redact_secrets

if TYPE_CHECKING:
    from esper_telemetry.hub import TelemetryHub

__all__ = ["REDACTED", "WandBBackend"]

logger = logging.getLogger("esper_telemetry.backends.wandb")

Mode = WandbMode


#: How long ``close()`` waits for ``run.finish()`` by default, in seconds.
DEFAULT_FINISH_TIMEOUT_S = 30.0
#: How long ``on_subscribe`` waits for ``wandb.init()`` by default, in seconds: W&B's
#: own ``init_timeout`` is 90 s, but one of its waits (for its service to take the run)
#: has no bound at all.
DEFAULT_INIT_TIMEOUT_S = 120.0
#: How long ``close()`` waits, after ``run.finish()``, for wandb-core to write the end of
#: the run file (it takes a few ms) before checking what the file holds.
_RUN_FILE_SETTLE_S = 10.0

_MODES = WANDB_MODES
# W&B's older spellings of the modes, still accepted in WANDB_MODE.
_MODE_ALIASES = {"dryrun": "offline", "run": "online"}
_LSTM_FIELDS = tuple(name for name in PPOUpdatePayload.model_fields if name.startswith("lstm_"))
_LSTM_METRICS = tuple(n for n in _LSTM_FIELDS if n not in ("lstm_detail", "lstm_outlier_envs"))
_FIGURES = tuple(name.removeprefix("lstm_") for name in _LSTM_METRICS)
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
            what ``wandb.init`` itself would do: ``WANDB_MODE`` when it is set (checked
            here), else W&B's settings (``wandb offline`` in the working directory makes
            runs offline), else online. Not allowed with ``run``.
        run: An existing W&B run to log to, shared with another logger. The backend then
            never finishes it and never sets its step (its rows carry ``update`` and
            ``env_steps``), and logs the ``health`` group only unless ``log`` says more.
        dir: The folder the run's ``wandb/`` folder goes in (created if missing); None
            lets W&B decide (``WANDB_DIR``, else the working directory). W&B reads its
            environment variables once per process, at its first use.
        config: More configuration for ``run.config``, merged with the ``RUN_STARTED``
            config; on a key present in both, this one wins. Secrets are redacted.
        alert_on: The anomaly severities that call ``run.alert``; ``()`` for none.
        name: The run's display name; None uses the run's id. The run's id is the
            hub's ``run_id`` (when every rank of a distributed run publishes,
            ``publish_ranks="all"``: ``<run_id>-rank<N>``, each rank's run in the W&B
            group ``<run_id>``). Not allowed with ``run``.
        finish_timeout: How long ``close()`` waits for ``run.finish()``, in seconds.
        init_timeout: How long ``on_subscribe`` waits for ``wandb.init()``, in seconds;
            past it W&B's service process is stopped and subscribing fails.
        resume: Continue the W&B run whose id is the hub's ``run_id`` if there is one
            (``wandb.init(resume="allow")``); an event whose update is below the resumed
            run's step is skipped (W&B would drop it). Offline, W&B writes a new run
            folder for the same id, which ``wandb sync`` uploads after the first: the
            resumed run's step is then taken from the highest step of the earlier folders
            under the same W&B directory. Not allowed with ``run``.
        entity: The W&B entity (user or team) of the run; None lets W&B decide
            (``WANDB_ENTITY``, else your default entity). Not allowed with ``run``.
        group: The W&B group of the run (for the runs of one sweep or of one distributed
            job); None: none, or ``<run_id>`` for the per-rank runs of a distributed run
            where every rank publishes. Not allowed with ``run``.
        tags: W&B tags of the run (each 1 to 64 characters). Not allowed with ``run``.
        job_type: W&B's job type of the run (``"train"``, ``"eval"``...). Not allowed
            with ``run``.
        thresholds: The ``HealthThresholds`` the run is judged by (the anomaly
            detector's); recorded in ``run.config`` under ``esper.thresholds``. None:
            the default rule.
        level_policy: How the telemetry level moves, as the trainer sets it up (e.g.
            ``{"initial": "NORMAL", "escalate_to": "DEBUG", "escalate_for": 5,
            "halt_on": "critical"}``): JSON values, recorded under ``esper.level_policy``.
        log: The groups to log, some of ``"health"``, ``"ppo"``, ``"anomalies"``,
            ``"telemetry"`` (see the module docstring). None: all four on a run the
            backend creates, ``("health",)`` on a run handed in (its other logger has
            PPO's statistics already).
        prefix: Put before every key with a ``/``, e.g. ``"esper"``: a namespace of its
            own in a shared run. ``""`` (default): none.
        x_axis: What every chart is drawn against: ``"update"`` (default) or
            ``"env_steps"``. Both are logged in every row either way.

    ``run.config`` always holds ``esper.version`` (the esper-telemetry version) and
    ``esper.thresholds``, also for a run handed in.

    Secrets never reach W&B: ``config`` and the ``RUN_STARTED`` config go through the
    hub's one rule (:func:`esper_telemetry.hub.redact_secrets`): a value under a key that
    names a secret (``api_key``, ``authorization``, ``passwd``, ``credentials``... at any
    depth), a string holding a known token shape (W&B keys old and ``wandb_v1_``, 40 hex
    digits, GitHub, Hugging Face, AWS, OpenAI-style ``sk-``, JWTs, bearer headers) and
    the value of a secret environment variable become ``"[REDACTED]"``.

    The hub calls ``handle``, ``flush`` and ``close`` from one thread at a time; the
    backend adds no locking of its own.

    Raises:
        ValueError: a bad ``project``, ``mode``, ``dir``, ``alert_on``, ``name``,
            ``finish_timeout``, ``init_timeout``, ``log``, ``prefix``, ``x_axis``,
            ``entity``, ``group``, ``tags`` or ``job_type``, a config key that is not a
            string, ``run`` together with a setting that only applies to a run the
            backend creates, or an unknown ``WANDB_MODE``.
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
        init_timeout: float = DEFAULT_INIT_TIMEOUT_S,
        resume: bool = False,
        entity: str | None = None,
        group: str | None = None,
        tags: Iterable[str] | None = None,
        job_type: str | None = None,
        thresholds: HealthThresholds | None = None,
        level_policy: Mapping[str, Any] | None = None,
        log: Iterable[Group] | None = None,
        prefix: str = "",
        x_axis: XAxis = "update",
    ) -> None:
        if not isinstance(resume, bool):
            raise ValueError(f"resume must be True or False, got {resume!r}")
        if run is not None:
            _check_run_alone(
                run,
                project=project,
                mode=mode,
                dir=dir,
                name=name,
                resume=resume or None,
                entity=entity,
                group=group,
                tags=tags,
                job_type=job_type,
            )
        self._project = checked_project(project)
        self._mode: Mode | None = _resolved_mode(mode) if run is None else None
        self._dir = _checked_dir(dir)
        self._config = _redacted(_checked_config(config))
        self._entity = checked_text("entity", entity)
        self._user_group = checked_text("group", group, limit=128)
        self._tags = checked_tags(tags)
        self._job_type = checked_text("job_type", job_type, limit=64)
        groups = (DEFAULT_GROUPS if run is None else SHARED_GROUPS) if log is None else log
        self._keys = WandbKeys(prefix=prefix, x_axis=x_axis, groups=checked_groups(groups))
        self._esper = _esper_config(thresholds, level_policy, self._keys)
        self._alert_on = _checked_severities(alert_on)
        self._name = _checked_name(name)
        self._finish_timeout = _checked_timeout(finish_timeout)
        self._init_timeout = _checked_timeout(init_timeout, "init_timeout")
        self._run: wandb.Run | None = run
        self._owns_run = run is None
        # A run the backend creates is stepped by the update; a run handed in is shared
        # with another logger, whose steps are its own: its rows carry the axes only.
        self._steps = run is None
        self._hub: TelemetryHub | None = None
        self._env_steps: tuple[int, int] | None = None  # (update, env_steps) of the latest
        self._table = _AnomalyTable()
        self._resume = resume
        self._group: str | None = None
        self._subscribed = False
        self._closed = False
        self._last_step, self._skipped = -1, 0
        self._anomalies: Counter[str] = Counter()
        self._declared: set[str] = set()
        # What W&B was given, to check against its run file at close (_check_written).
        self._ledger = _StepLedger()
        self._expected: list[_Expected] = []
        self._run_files: tuple[Path, Path] | None = None
        self._unwritten = 0
        self._finished = self._aborted = False
        self._stopped: str | None = None
        self._abort_lock = threading.Lock()

    # -- public state -------------------------------------------------------------------

    @property
    def run(self) -> wandb.Run | None:
        """The W&B run; None until the backend is subscribed, unless one was given."""
        return self._run

    @property
    def skipped(self) -> int:
        """Events not logged because their update was lower than one already logged."""
        return self._skipped

    @property
    def finished(self) -> bool:
        """True once ``run.finish()`` of a run the backend created returned without error;
        False before, and when it timed out, raised or the backend was aborted."""
        return self._finished

    @property
    def aborted(self) -> bool:
        """True once :meth:`abort` was called (or ``close()`` aborted a hung W&B)."""
        return self._aborted

    def __repr__(self) -> str:
        run_id = getattr(self._run, "id", None)
        return f"WandBBackend(mode={self._mode!r}, run={run_id!r}, skipped={self._skipped})"

    # -- Backend protocol ---------------------------------------------------------------

    def on_subscribe(self, hub: TelemetryHub) -> None:
        """Create the run (unless one was given) and declare its metrics.

        Called once by ``TelemetryHub.subscribe``; if it raises, nothing is subscribed.

        Raises:
            RuntimeError: online mode without W&B credentials; ``wandb.init()`` did not
                return within ``init_timeout`` (W&B's service process is then stopped);
                or the backend is already subscribed or closed.
        """
        self._group = self._user_group
        self._hub = hub
        if hub.per_rank_files:  # every rank publishes: one W&B run per rank, grouped
            self._group = self._user_group or hub.run_id
            self._open(f"{hub.run_id}-rank{hub.rank}")
        else:
            self._open(hub.run_id)

    def _open(self, run_id: str) -> None:
        """Create (or take) the run with id ``run_id`` and declare its metrics."""
        if self._subscribed or self._closed:
            state = "closed" if self._closed else "already subscribed to a hub"
            raise RuntimeError(f"this WandBBackend is {state}; create one backend per hub")
        if self._run is None:
            self._refuse_a_second_run(run_id)
            self._run = self._init_run(run_id)
            self._run_files = _offline_run_files(self._run)
            if self._resume:
                # W&B drops steps below the resumed run's; start skipping where it does.
                self._last_step = max(_current_step(self._run), self._resumed_step(run_id))
        else:
            _update_config(self._run, {**self._config, "esper": self._esper})
        run, keys = self._run, self._keys
        # Both axes in every row, hidden from the automatic panels, either one choosable.
        run.define_metric(keys.update_key, hidden=True)
        run.define_metric(keys.env_steps_key, hidden=True)
        # One glob per section, no "*": the metrics of a run handed in keep their axis.
        for section in keys.sections():
            run.define_metric(f"{section}/*", step_metric=keys.x_key)
        if keys.logs("health"):
            for figure in _FIGURES:
                self._declare(run, keys.health(figure))
        self._subscribed = True

    def handle(self, event: TelemetryEvent) -> None:
        """Log one event to the run (see the module docstring for what goes where).

        Raises:
            RuntimeError: the backend was never subscribed to a hub, or is closed.
        """
        run, keys = self._live_run("handle"), self._keys
        match event:
            case PPOUpdateCompleted(payload=p):
                if p.env_steps is not None:
                    self._env_steps = (event.update, p.env_steps)
                self._log(run, event, self._ppo_row(event, p))
            case AnomalyDetected():
                self._on_anomaly(run, event)
            case TelemetryLevelChanged(payload=p):
                if keys.logs("telemetry"):
                    self._log(run, event, {keys.telemetry("level"): int(p.level)})
            case RunStarted(payload=p):
                config = _redacted(dict(p.config))
                # Ours win: config= given to the backend, and the esper section.
                fresh = {k: v for k, v in config.items() if k not in self._config and k != "esper"}
                _update_config(run, fresh)
                if p.description:
                    run.notes = p.description
                self._expected.append(_Expected(config=frozenset(fresh), notes=bool(p.description)))
            case RunFinished():
                self._finish_row(run, event)

    def _on_anomaly(self, run: wandb.Run, event: AnomalyDetected) -> None:
        anomaly = event.payload.anomaly
        if self._keys.logs("anomalies"):
            kind = anomaly.type.value
            self._anomalies[kind] += 1
            self._log(run, event, {self._keys.anomaly_count(kind): self._anomalies[kind]})
            self._table.add(event, self._env_steps_at(event.update))
        if anomaly.severity in self._alert_on:  # alerts follow alert_on, not log=
            run.alert(
                title=_alert_title(anomaly),
                text=_alert_text(event),
                level=_ALERT_LEVELS[anomaly.severity],
            )

    def _env_steps_at(self, update: int) -> int | None:
        """The env steps of ``update``, when its PPO update carried them."""
        if self._env_steps is not None and self._env_steps[0] == update:
            return self._env_steps[1]
        return None

    def _finish_row(self, run: wandb.Run, event: RunFinished) -> None:
        p, keys = event.payload, self._keys
        outcome: dict[str, str | float] = {keys.run("status"): p.status}
        if p.message:
            outcome[keys.run("message")] = p.message
        # Single values: the run's summary only, where the runs table shows them.
        outcome.update({keys.final(k): _summary_value(v) for k, v in p.summary.items()})
        self._log_table(run)
        run.summary.update(outcome)
        self._expected.append(_Expected(summary=frozenset(outcome)))

    def undelivered(self) -> int:
        """Events W&B did not keep: those it would have dropped (see :attr:`skipped`),
        and, once a run the backend created is closed, those W&B was given but its run
        file does not hold (see :meth:`close`)."""
        return self._skipped + self._unwritten + self._table.lost

    def flush(self) -> None:
        """Log the anomaly table if it grew; W&B itself has no flush that makes a run durable.

        The table (``anomaly/table``, one row per anomaly) is logged incrementally: each
        flush adds the rows since the last one. Each ``run.log``, alert, config and summary
        change is already on its way to W&B's service process, which appends it to the
        run's ``.wandb`` file (offline) or streams it (online). The row of the latest update
        stays open on purpose until a higher update arrives or the run finishes, so that
        later events of that update (anomalies, a level change) land in the same row;
        ``close()`` finishes it.
        """
        if self._run is not None and self._subscribed and not (self._closed or self._aborted):
            self._log_table(self._run)

    def close(self) -> None:
        """Finish the run if the backend created it, waiting at most ``finish_timeout``.

        ``run.finish()`` runs on a daemon thread. If it does not return in time, W&B is
        hung: the backend aborts it (:meth:`abort`: W&B's service process is stopped, so
        that it cannot block this process at exit either) and raises ``TimeoutError``,
        which the hub counts as a failure. A run that was handed in is left open.
        Closing twice does nothing; closing after :meth:`abort` finishes nothing.

        Then, for an offline run it created, the backend reads the run's ``.wandb`` file
        (once ``wandb-core`` has written its end, a few ms after ``run.finish()``
        returned; at most 10 s) and counts every event whose row (or config, notes,
        status) it does not hold as undelivered: W&B reports a failed write (a full
        disk) only in its own debug log, so this is how ``hub.stats()`` learns of it.
        A warning names the file, how many rows it holds and the first error
        ``wandb-core`` logged.

        Raises:
            TimeoutError: ``run.finish()`` did not return within ``finish_timeout``.
            Exception: whatever ``run.finish()`` raised within the timeout.
        """
        if self._closed:
            return
        if self._run is not None and self._subscribed and not self._aborted:
            self._log_table(self._run, warn=True)  # what the last flush did not cover
        self._closed = True
        if self._run is not None and self._owns_run:
            try:
                if self._aborted:
                    return
                if not self._finish():
                    stopped = self.abort()
                    raise TimeoutError(
                        f"W&B run {getattr(self._run, 'id', None)!r} did not finish within "
                        f"{self._finish_timeout:g} s; "
                        + (f"{stopped}; " if stopped else "")
                        + "what W&B had not written yet is lost (`wandb sync` uploads what "
                        "its run file holds)"
                    )
                self._finished = True
            finally:
                self._check_written()

    def _finish(self) -> bool:
        """``run.finish()`` within ``finish_timeout``; False if it did not return in time."""
        assert self._run is not None
        try:
            return _finish_within(self._run, self._finish_timeout)
        except Exception as exc:
            if not self._aborted:
                raise
            raise RuntimeError(
                f"W&B run {getattr(self._run, 'id', None)!r} did not finish: W&B was given "
                f"up on (abort()) while it finished ({type(exc).__name__})"
            ) from exc

    def abort(self) -> str | None:
        """Give up on W&B now, for when it hangs: nothing of it may block this process.

        For a run the backend created, W&B's service process (``wandb-core``, started by
        this process) is asked to stop (SIGTERM, and SIGCONT in case it was stopped),
        killed if it has not exited within 2 s, and W&B is torn down
        (``wandb.teardown``), so that W&B's exit hook does not wait for it when Python
        exits. Every W&B run of this process ends with it; what W&B had not written yet
        is lost. A run that was handed in, or a service shared through
        ``WANDB_SERVICE``, is left alone. From then on the backend does nothing with
        W&B: ``handle`` raises (each event counts as failed) and ``close`` finishes
        nothing. Safe from any thread; calling it again does nothing more and returns
        what the first call did.

        ``close()`` calls it when ``run.finish()`` does not return in time; call it when
        the hub gave up on the backend (``hub.stats()`` says it is stuck), as
        ``esper ppo`` does.

        Returns:
            What was done, for a message (``"stopped W&B's service process (wandb-core,
            pid 123)"``), or None when no service process was stopped.
        """
        with self._abort_lock:
            if not self._aborted:
                self._aborted = True
                if self._owns_run and isinstance(self._run, wandb.Run):
                    self._stopped = stop_service()
            return self._stopped

    # -- helpers ------------------------------------------------------------------------

    def _check_written(self) -> None:
        """Count what the offline run file lacks of what W&B was given (see close())."""
        if self._run_files is None:
            return
        sync_file, internal_log = self._run_files
        # A run that finished: wandb-core writes the end of its file just after. One that
        # did not (it raised, hung, was aborted): wandb-core writes no more.
        wait = _RUN_FILE_SETTLE_S if self._finished else 0.0
        try:
            contents = read_final_run_file(sync_file, internal_log, timeout=wait)
        except OSError as exc:
            logger.warning("WandBBackend: could not read W&B's run file to check it: %s", exc)
            return
        rows, events = self._ledger.missing(contents.steps)
        events += sum(1 for e in self._expected if not e.held_by(contents))
        self._unwritten = events
        if events:
            said = first_error(internal_log, about=sync_file.name)
            logger.warning(
                "WandBBackend: W&B's run file %s holds %d of the %d rows it was given%s; "
                "%d events were not written (wandb-core: %s)",
                sync_file,
                self._ledger.rows - rows,
                self._ledger.rows,
                "" if contents.exited else " and no exit record",
                events,
                said or "no error logged",
            )

    def _refuse_a_second_run(self, run_id: str) -> None:
        """One run is one W&B run: a run of this id already under ``dir`` is continued
        (``resume=True``) or refused, never joined by a second one."""
        if self._resume or self._dir is None:
            return
        earlier = run_folders(self._dir / "wandb", run_id)
        if earlier:
            raise ValueError(
                f"{self._dir / 'wandb'} already holds a W&B run with id {run_id!r} "
                f"({earlier[0].name}); give this run a new run_id or directory, or "
                "continue it with resume=True (esper ppo --resume)"
            )

    def _init_run(self, run_id: str) -> wandb.Run:
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
        watchdog = _Watchdog(self._init_timeout)
        try:
            return wandb.init(
                project=self._project,
                id=run_id,
                name=self._name or run_id,
                group=self._group,
                entity=self._entity,
                tags=list(self._tags) if self._tags else None,
                job_type=self._job_type,
                dir=self._dir,
                config={**self._config, "esper": self._esper},
                mode=self._mode,
                # Never hand back or finish a run the user started with wandb.init.
                reinit="create_new",
                resume="allow" if self._resume else None,
            )
        except (wandb.errors.UsageError, wandb.errors.AuthenticationError) as err:
            if self._mode not in ("online", None):
                raise
            chose = "mode='online'" if self._mode else "mode=None (W&B chose online)"
            raise RuntimeError(
                f"WandBBackend({chose}) could not start a W&B run: online mode needs "
                "credentials from `wandb login` or the WANDB_API_KEY environment variable, "
                f"or pass mode='offline' to write the run locally (wandb said: {err})"
            ) from err
        except Exception as err:
            if not watchdog.fired:
                raise
            raise RuntimeError(
                f"W&B did not start its run within {self._init_timeout:g} s (its service "
                f"process did not answer); {watchdog.stopped or 'found no service to stop'}. "
                "Run without W&B (mode='disabled', esper ppo --wandb disabled) or see "
                "W&B's debug-internal.log"
            ) from err
        finally:
            watchdog.cancel()

    def _live_run(self, what: str) -> wandb.Run:
        if self._aborted:
            raise RuntimeError(
                f"WandBBackend.{what}() was called after abort(): W&B was given up on, "
                "nothing more reaches it"
            )
        if self._closed:
            raise RuntimeError(f"WandBBackend.{what}() was called after close()")
        if self._run is None or not self._subscribed:
            raise RuntimeError(
                f"WandBBackend.{what}() was called before the backend was subscribed; "
                "pass it to TelemetryHub.subscribe first"
            )
        return self._run

    def _log(self, run: wandb.Run, event: TelemetryEvent, row: dict[str, Any]) -> None:
        """Log ``row`` with both axes: at step ``update`` on a run the backend created (an
        update below the last one is skipped, see :attr:`skipped`), without a step on a run
        handed in (its other logger owns the step)."""
        if not row:
            return
        keys = self._keys
        axes: dict[str, int] = {keys.update_key: event.update}
        if (env_steps := self._env_steps_at(event.update)) is not None:
            axes[keys.env_steps_key] = env_steps
        for key in row:
            if keys.is_health(key) and key not in self._declared:
                self._declare(run, key)  # per-layer and named-state keys appear later
        if not self._steps:
            run.log({**axes, **row})
            return
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
        run.log({**axes, **row}, step=event.update)
        self._last_step = event.update
        self._ledger.add(event.update)

    def _declare(self, run: wandb.Run, key: str) -> None:
        # One name at a time: when two globs match a key ("lstm/*" and "*"), W&B 0.31
        # picks one at random per key, so a glob "lstm/*" summary would miss some keys.
        # W&B reads "." in a defined name as nesting: a state named "encoder.lstm" has
        # its dots escaped, or its keys' summary would be the last value, not the max.
        run.define_metric(
            key.replace(".", "\\."), step_metric=self._keys.x_key, summary=_summary_of(key)
        )
        self._declared.add(key)

    def _ppo_row(self, event: PPOUpdateCompleted, payload: PPOUpdatePayload) -> dict[str, Any]:
        """The keys of one update, group by group (see :mod:`.wandb_keys`)."""
        keys, row = self._keys, {}
        if keys.logs("health"):
            row.update(_primary_keys(keys, payload))
            # Every named state, the primary one included, at lstm/<name>/<figure>.
            for name, health in payload.named_health().items():
                row.update(_state_keys(keys, name, health, payload.detail_of(name)))
                row.update(_checked_keys(keys, name, health, payload.replay.get(name)))
        if keys.logs("ppo"):
            for stat in PPO_KEYS:
                value = getattr(payload, stat)
                if value is not None:
                    row[keys.ppo(stat)] = value
            # The trainer's own scalars under their own prefix: never mistaken for PPO's.
            row.update({keys.extra(k): v for k, v in payload.extra.items()})
        if keys.logs("telemetry"):
            row[keys.telemetry("level")] = int(event.level)
            row.update(self._hub_figures())
        return row

    def _hub_figures(self) -> dict[str, float | int]:
        """The hub's losses and its slowest subscriber's latency, as they are now."""
        if self._hub is None:
            return {}
        try:
            stats = self._hub.stats()
        except Exception as exc:  # a counter read racing a writer: skip this once
            logger.debug("WandBBackend: hub.stats() raised %r; telemetry/* skipped", exc)
            return {}
        subs = stats.subscribers
        keys = self._keys
        return {
            keys.telemetry("lost"): stats.lost,
            keys.telemetry("dropped"): sum(s.dropped for s in subs),
            keys.telemetry("latency_p99_ms"): max((s.latency_p99_ms for s in subs), default=0.0),
        }

    def _log_table(self, run: wandb.Run, *, warn: bool = False) -> None:
        """Log the anomaly table's new rows, if any; a failure counts them as undelivered
        (and raises, unless ``warn``: then it is logged as a warning)."""
        table = self._table.pending()
        if table is None:
            return
        step = max(self._last_step, 0)
        row = {self._keys.update_key: step, self._keys.anomaly_table: table}
        try:
            run.log(row, step=step) if self._steps else run.log(row)
        except Exception as exc:
            lost = self._table.failed()
            if not warn:
                raise
            logger.warning("WandBBackend: %d anomaly table rows were not logged: %r", lost, exc)
        else:
            self._table.logged()

    def _resumed_step(self, run_id: str) -> int:
        """The first step an offline resumed run may log: after the highest step of the
        earlier run folders of ``run_id`` (offline, ``run.step`` starts at 0, and
        ``wandb sync`` would drop the lower rows)."""
        if self._run_files is None:
            return 0
        wandb_dir = self._run_files[0].parent.parent
        highest = -1
        for folder in run_folders(wandb_dir, run_id):
            try:
                steps = read_run_file(folder / f"run-{run_id}.wandb").steps
            except OSError as exc:
                logger.warning("WandBBackend: could not read %s to resume from it: %s", folder, exc)
                continue
            highest = max(highest, *steps, -1)
        return highest + 1


def _summary_of(key: str) -> str:
    """A health key's summaries: the current value and the worst one.

    ``last`` answers "how is it now", ``max`` "how bad did it get" (an explosion, a NaN
    flag, outlier envs), and for a figure that can also vanish, ``min``.
    """
    if key.endswith(("/has_nan", "/has_inf", "/outlier_envs", "/replay_mismatched")):
        return "max,last"
    return "min,max,last"


def _primary_keys(keys: WandbKeys, payload: PPOUpdatePayload) -> dict[str, float | int]:
    """The primary state at ``lstm/<figure>``: the keys of runs from before names."""
    row: dict[str, float | int] = {}
    for field, figure in zip(_LSTM_METRICS, _FIGURES, strict=True):
        value = getattr(payload, field)
        if value is not None:  # a GRU primary state has no lstm_c_* figures
            row[keys.health(figure)] = _number(value)
    if payload.lstm_detail is not None:
        row.update(_layer_keys(keys, None, payload.lstm_detail))
    if payload.lstm_outlier_envs is not None:
        row[keys.outlier_envs] = len(payload.lstm_outlier_envs)
    return row


def _state_keys(
    keys: WandbKeys, state: str, health: LSTMHealthMetrics, detail: LSTMHealthDetail | None
) -> dict[str, float | int]:
    """One named state at ``lstm/<state>/<figure>``, and its per-layer RMS when detailed."""
    row: dict[str, float | int] = {}
    for figure in health.FIGURES:
        value = getattr(health, figure)
        if value is not None:  # a state without a cell has no c figures
            row[keys.health(figure, state=state)] = _number(value)
    if detail is not None:
        row.update(_layer_keys(keys, state, detail))
    return row


def _checked_keys(
    keys: WandbKeys, state: str, health: LSTMHealthMetrics, replay: ReplayConsistency | None
) -> dict[str, float | int]:
    """A state's diagnostics and replay check, when measured: ``lstm/<state>/<figure>``
    and ``lstm/<state>/replay_<figure>``."""
    row: dict[str, float | int] = {}
    if health.diagnostics is not None:
        for figure in DIAGNOSTIC_FIGURES:
            value = getattr(health.diagnostics, figure)
            if value is not None:  # no cell, or no steps since reset: no c figures
                row[keys.health(figure, state=state)] = _number(value)
    if replay is not None:
        row[keys.health("replay_max_abs_diff", state=state)] = _number(replay.max_abs_diff)
        row[keys.health("replay_mismatched", state=state)] = replay.mismatched
        if replay.drift is not None:
            row[keys.health("replay_drift", state=state)] = _number(replay.drift)
    return row


def _layer_keys(keys: WandbKeys, state: str | None, detail: LSTMHealthDetail) -> dict[str, float]:
    """``lstm/[<state>/]layer<i>/h_rms`` and, for a state with a cell, ``.../c_rms``."""
    cs: tuple[float | None, ...] = detail.c_layer_rms or (None,) * len(detail.h_layer_rms)
    row: dict[str, float] = {}
    for i, (h, c) in enumerate(zip(detail.h_layer_rms, cs, strict=True)):
        row[keys.layer(i, "h", state=state)] = h
        if c is not None:
            row[keys.layer(i, "c", state=state)] = c
    return row


def _summary_value(value: float) -> float | str:
    """A ``final/`` value for ``run.summary``: W&B's summary path writes NaN as null (its
    history path keeps it), so NaN is written as the text ``"NaN"``; ±Inf pass as they are."""
    return "NaN" if math.isnan(value) else value


def _number(value: float | bool) -> float | int:
    # W&B plots numbers: a flag becomes 0 or 1.
    return int(value) if isinstance(value, bool) else value


def _alert_title(anomaly: Anomaly) -> str:
    where = "" if anomaly.state is None else f" in {anomaly.state}"
    return f"esper: {anomaly.type.value}{where}"


def _alert_text(event: AnomalyDetected) -> str:
    anomaly, envs = event.payload.anomaly, event.payload.outlier_envs
    threshold = "none" if anomaly.threshold is None else f"{anomaly.threshold:g}"
    state = "" if anomaly.state is None else f", state {anomaly.state}"
    text = (
        f"run {event.run_id}, update {event.update}{state}: observed {anomaly.observed:g}, "
        f"threshold {threshold}. {anomaly.message}"
    )
    if envs:
        text += f" Outlier envs: {', '.join(map(str, envs))}."
    return text


def _finish_within(run: wandb.Run, timeout: float) -> bool:
    """Call ``run.finish()`` on a daemon thread; False if it did not return in time."""
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
        return False
    if raised:
        raise raised[0]
    return True


#: How long stop_service waits for W&B's service process after SIGTERM, then SIGKILL.
_STOP_GRACE_S = 2.0
#: How long stop_service lets wandb.teardown() take (it cannot block: it runs aside).
_TEARDOWN_BOUND_S = 5.0


class _Watchdog:
    """Stops W&B's service process if not cancelled within ``timeout`` seconds."""

    def __init__(self, timeout: float) -> None:
        self.fired = False
        self.stopped: str | None = None
        self._cancelled = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        with self._lock:  # after this, _fire does nothing
            self._timer.cancel()
            self._cancelled = True

    def _fire(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            self.fired = True
        self.stopped = stop_service()


def stop_service(*, teardown: bool = True) -> str | None:
    """Stop the W&B service process (``wandb-core``) this process started, if any.

    SIGTERM (with SIGCONT, which a stopped process needs to act on it), then SIGKILL if it
    has not exited within 2 s; the process is reaped, so nothing is left behind. Then,
    with ``teardown``, ``wandb.teardown()`` runs on a daemon thread for at most 5 s: it
    unregisters W&B's exit hook (which would otherwise wait for the service forever) and
    lets a later ``wandb.init`` start a fresh service. Does nothing when W&B was never
    imported, has no service yet, or uses one it did not start (``WANDB_SERVICE``).

    A service W&B is still starting (not yet connected) is found by its command line
    (``wandb-core ... --pid <this process>``, Linux) and killed.

    Returns:
        What was done, for a message, or None when nothing was stopped.
    """
    proc = _service_process()
    if proc is None:
        pids = _starting_services()
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if not pids:
            return None
        return f"killed W&B's service process (wandb-core, pid {', '.join(map(str, pids))})"
    how = "stopped"
    try:
        proc.terminate()
        os.kill(proc.pid, signal.SIGCONT)
        proc.wait(_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        how = "killed"
        proc.kill()
        proc.wait(_STOP_GRACE_S)
    except (OSError, subprocess.SubprocessError):  # it exited meanwhile
        pass
    if teardown:
        _teardown_within(_TEARDOWN_BOUND_S)
    return f"{how} W&B's service process (wandb-core, pid {proc.pid})"


def _service_process() -> subprocess.Popen[bytes] | None:
    """The ``wandb-core`` process W&B started for this process, or None.

    W&B keeps it in private attributes (checked for wandb 0.31); if they move, this
    finds nothing and the caller stops nothing, which is what it did before.
    """
    setup = sys.modules.get("wandb.sdk.wandb_setup")
    singleton = getattr(setup, "_singleton", None)
    if singleton is None or getattr(singleton, "_pid", None) != os.getpid():
        return None
    connection = getattr(singleton, "_connection", None)
    owned = getattr(connection, "_proc", None)  # None: a service this process did not start
    proc = getattr(owned, "_process", None)
    return proc if isinstance(proc, subprocess.Popen) else None


def release_service(timeout: float = _TEARDOWN_BOUND_S) -> str | None:
    """End W&B's service for this process now, for a program whose W&B work is done.

    ``wandb.teardown()`` (its service process writes what it holds and exits) runs on a
    daemon thread for at most ``timeout`` seconds; a service still there then is stopped
    (:func:`stop_service`). Afterwards W&B's exit hook has nothing left to wait for when
    Python exits, so neither a hung service nor a Ctrl-C can turn the exit into a hang
    or a traceback. Every W&B run of this process ends; a later ``wandb.init`` starts
    a fresh service. Does nothing when W&B has no service in this process.

    Returns:
        What :func:`stop_service` said, or None when the teardown finished in time.
    """
    if _service_process() is None:
        return None
    if _teardown_within(timeout):
        return None
    return stop_service(teardown=False)


def _starting_services() -> list[int]:
    """The pids of ``wandb-core`` processes started for this process (from /proc)."""
    mine = str(os.getpid()).encode()
    found = []
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:  # no /proc: not Linux
        return []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # it exited while we looked
        if argv[0].endswith(b"wandb-core") and mine in argv:
            i = argv.index(mine)
            if i > 0 and argv[i - 1] == b"--pid":
                found.append(int(entry.name))
    return found


def _teardown_within(timeout: float) -> bool:
    """``wandb.teardown()`` on a daemon thread; False if it did not return in time."""

    def teardown() -> None:
        try:
            wandb.teardown()
        except BaseException as exc:  # the service is gone: its connection errors are expected
            logger.debug("wandb.teardown() after stopping W&B's service raised %r", exc)

    thread = threading.Thread(target=teardown, name="esper-wandb-teardown", daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive()


class _AnomalyTable:
    """``anomaly/table``: one row per anomaly (see ``ANOMALY_COLUMNS``), logged
    incrementally, so each log carries only the rows since the previous one."""

    def __init__(self) -> None:
        self._table: wandb.Table | None = None
        self._rows = 0
        self._logged = 0
        self.lost = 0
        """Rows whose log failed."""

    def add(self, event: AnomalyDetected, env_steps: int | None) -> None:
        anomaly, envs = event.payload.anomaly, event.payload.outlier_envs
        if self._table is None:
            columns: list[str | int] = list(ANOMALY_COLUMNS)
            self._table = wandb.Table(columns, log_mode="INCREMENTAL", allow_mixed_types=True)
        self._table.add_data(
            event.update,
            env_steps,
            anomaly.state or "",
            anomaly.type.value,
            anomaly.severity.value,
            anomaly.observed,
            anomaly.threshold,
            ", ".join(map(str, envs or ())),
            anomaly.message,
        )
        self._rows += 1

    def pending(self) -> wandb.Table | None:
        """The table when it has rows not logged yet, else None."""
        return self._table if self._rows > self._logged else None

    def logged(self) -> None:
        self._logged = self._rows

    def failed(self) -> int:
        """Count the pending rows as lost; how many they were."""
        new, self._logged = self._rows - self._logged, self._rows
        self.lost += new
        return new


@dataclass(frozen=True)
class _Expected:
    """What a RUN_STARTED or RUN_FINISHED event put in W&B: config keys, notes, summary
    keys (a RUN_FINISHED's status, message and ``final/`` values)."""

    config: frozenset[str] = frozenset()
    summary: frozenset[str] = frozenset()
    notes: bool = False

    def held_by(self, contents: RunFileContents) -> bool:
        return (
            self.config <= contents.config_keys
            and self.summary <= contents.summary_keys
            and (contents.notes or not self.notes)
        )


class _StepLedger:
    """How many events went into each history row, kept as runs of consecutive steps.

    Steps arrive in non-decreasing order (``_log`` skips lower ones), so a run of
    training with one event per update is one entry, however long.
    """

    def __init__(self) -> None:
        self._runs: list[list[int]] = []  # [first step, last step, events per step]
        self._step = -1
        self._count = 0
        self.rows = 0

    def add(self, step: int) -> None:
        if step == self._step:
            self._count += 1
            return
        self._settle()
        self._step, self._count = step, 1
        self.rows += 1

    def missing(self, steps: Collection[int]) -> tuple[int, int]:
        """(rows, events) whose step is not in ``steps``."""
        current = [[self._step, self._step, self._count]] if self._count else []
        rows = events = 0
        for first, last, per_step in [*self._runs, *current]:
            absent = sum(1 for step in range(first, last + 1) if step not in steps)
            rows += absent
            events += absent * per_step
        return rows, events

    def _settle(self) -> None:
        """Move the current step into ``_runs``, extending the last run when it can."""
        if self._count == 0:
            return
        last = self._runs[-1] if self._runs else None
        if last is not None and last[1] == self._step - 1 and last[2] == self._count:
            last[1] = self._step
        else:
            self._runs.append([self._step, self._step, self._count])
        self._count = 0


def _offline_run_files(run: wandb.Run) -> tuple[Path, Path] | None:
    """The run file and ``debug-internal.log`` of an offline run; None for other modes.

    Online, the run file is only W&B's local copy: what reached its servers is not
    visible in it, so nothing is checked.
    """
    try:
        if not run.offline or run.disabled:
            return None
        settings = run.settings
        return Path(settings.sync_file).absolute(), Path(settings.log_internal).absolute()
    except Exception:  # a run object without W&B's settings: nothing to check
        return None


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


def _resolved_mode(mode: object) -> Mode | None:
    """``mode`` checked; for None, WANDB_MODE checked, or None when unset (W&B decides)."""
    if mode is None:
        env = os.environ.get("WANDB_MODE", "").strip().lower()
        if not env:
            return None
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


def _check_run_alone(run: object, **given: object) -> None:
    """A run handed in comes without the settings of a run the backend creates."""
    clash = [k for k, v in given.items() if v is not None]
    if clash:
        raise ValueError(
            f"{', '.join(clash)}: only applies to a run the backend creates; "
            "pass either run= or these settings, not both"
        )
    if not all(callable(getattr(run, m, None)) for m in ("log", "alert", "finish")):
        raise TypeError(f"run must be a W&B run (wandb.init()), got {type(run).__name__}")


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


def _esper_config(thresholds: object, level_policy: object, keys: WandbKeys) -> dict[str, Any]:
    """What ``run.config["esper"]`` records: the version, the rule, the key layout (which
    ``esper wandb backfill`` reads back, to write the keys the run wrote), the level policy."""
    from esper_telemetry import __version__

    if thresholds is None:
        thresholds = HealthThresholds()
    if not isinstance(thresholds, HealthThresholds):
        raise TypeError(
            f"thresholds must be a HealthThresholds or None, got {type(thresholds).__name__}"
        )
    out: dict[str, Any] = {
        "version": __version__,
        "thresholds": thresholds.model_dump(),
        "layout": {"prefix": keys.prefix, "x_axis": keys.x_axis, "log": list(keys.groups)},
    }
    if level_policy is not None:
        if not isinstance(level_policy, Mapping):
            raise TypeError(
                f"level_policy must be a mapping of str to JSON values, got "
                f"{type(level_policy).__name__}"
            )
        out["level_policy"] = _redacted(_checked_config(level_policy))
    return out


def _checked_timeout(timeout: object, name: str = "finish_timeout") -> float:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {timeout!r}")
    return float(timeout)
