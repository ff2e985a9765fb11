"""HealthPanel: the live terminal panel of one run's LSTM health (Textual).

The panel shows what :class:`~esper_telemetry.tui._state.PanelState` holds: every
named recurrent state of the last update (a row each, the primary state first, when
there are several: h_rms, c_rms or "—" for a state without a cell, max |x| and the
state's verdict), and one of them in detail (the primary; ``s`` picks the next): h_rms
and c_rms with their verdicts (a word and a colour from ``STATUS_COLOUR``, by the one
rule: ``LSTMHealthMetrics.status_of`` per tensor, ``health_status`` for the whole state,
with the run's ``HealthThresholds``; nothing about c for a GRU state), env-RMS mean and
max, max |h| and |c|, sparklines of h_rms and c_rms; the NaN/Inf flags; the last
update's PPO statistics with the mean episode return labelled with its window; the
anomaly log (newest first, each naming its state); the telemetry level and when it
changed; and each subscriber's counters.

Events reach it two ways, both as messages on its own thread:

* in the training process, :class:`~esper_telemetry.tui.PanelBackend` posts each
  event it receives from the hub (``post_message`` is thread-safe), and a timer polls
  ``hub.stats()`` for the subscriber table;
* for ``esper watch``, a timer polls a :class:`~esper_telemetry.tui.LogFollower`.

Widgets are redrawn at most four times a second whatever the event rate, only where
what they show changed, and never while the display is paused. Keys: ``q`` quit,
``p`` pause the display (training goes on), ``s`` show the next state in detail,
``?`` help.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from datetime import UTC
from typing import ClassVar

from rich.console import RenderableType
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Header, Static

from esper_telemetry.analytics import BadLine
from esper_telemetry.contracts import (
    AnomalyDetected,
    HealthStatus,
    HealthThresholds,
    HubStats,
    Severity,
    SubscriberStats,
    TelemetryEvent,
    TelemetryLevel,
    format_value,
)
from esper_telemetry.tui._follow import LogFollower
from esper_telemetry.tui._format import sparkline, status_style, status_text
from esper_telemetry.tui._state import PanelState, StateView

#: Columns of the states table (one row per named state).
_STATE_COLUMNS = ("state", "h rms", "c rms", "max |x|", "status")
#: Rows of the detail table (key, label); its columns are h and c.
_HEALTH_ROWS = (
    ("rms", "rms"),
    ("status", "status"),
    ("env_mean", "env-RMS mean"),
    ("env_max", "env-RMS max"),
    ("max", "max |x|"),
    # The diagnostics (RecurrentDiagnostics), "—" where the trainer measured none.
    ("saturated", "saturated"),
    ("growth", "growth ratio"),
    ("dormant", "dormant units"),
)
_ANOMALY_COLUMNS = ("update", "state", "type", "severity", "value", "threshold")
Cell = str | Text
#: What a cell shows where there is nothing: c of a state without a cell, an unnamed state.
_NOTHING = format_value(None)

_SUBSCRIBER_COLUMNS = ("subscriber", "delivered", "failed", "dropped", "queue")

#: The colour an anomaly row takes: that of the verdict its severity corresponds to.
_SEVERITY_STATUS = {
    Severity.WARNING: HealthStatus.WARNING,
    Severity.CRITICAL: HealthStatus.CRITICAL,
}

HELP_TEXT = f"""\
[b]esper — LSTM health panel[/b]

  [b]q[/b]   quit (in `esper ppo --tui`: stops training after the current
      update, flushes every backend, then prints the summary)
  [b]p[/b]   pause / resume the display (training is never paused)
  [b]s[/b]   show the next recurrent state in detail (with several states)
  [b]?[/b]   this help (escape or ? closes it)

Status words follow the one health rule (the detector's thresholds):
  [{status_style(HealthStatus.HEALTHY)}]HEALTHY[/]   every RMS within bounds
  [{status_style(HealthStatus.WARNING)}]WARNING[/]   an RMS above warning_rms
  [{status_style(HealthStatus.CRITICAL)}]CRITICAL[/]  NaN/Inf, an RMS or env-RMS above critical_rms,
            or an RMS below vanishing_rms

Sparklines: h_rms and c_rms of the last updates, log scale,
each bar coloured by its own verdict; × marks a NaN or Inf.
A state without a cell (GRU, RNN) has no c: "—", and no c verdict.
"""


class HelpScreen(ModalScreen[None]):
    """The key and colour legend; escape or ? closes it."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: auto; height: auto; border: round $accent;
                          padding: 1 2; background: $surface; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss", "Close"),
        Binding("question_mark", "dismiss", "Close", key_display="?"),
    ]

    def compose(self) -> ComposeResult:
        """The legend."""
        yield Static(HELP_TEXT, id="help-text")


class HealthPanel(App[None]):
    """The live health panel of one run.

    Args:
        thresholds: The health rule's thresholds; pass the instance the anomaly
            detector uses, so the panel and the detector agree. Default: the defaults.
        stats: A callable returning the hub's stats (``hub.stats``), polled for the
            subscriber table when the panel runs in the training process.
        follow: A log follower, polled for new events (``esper watch``).
        source: What the panel is showing, in words (shown under the title).
        exit_when: Polled a few times a second; the panel exits once it returns True
            (e.g. SIGTERM asked the run to stop).
        history: Updates covered by the sparklines.
        poll_interval: Seconds between looks at a followed log.
        stats_interval: Seconds between polls of ``stats``.
        refresh_interval: Seconds between redraws of what changed (the panel's own
            thread shares the interpreter with training: redraws are rationed).

    Raises:
        TypeError: ``thresholds`` is not a ``HealthThresholds``.
        ValueError: ``history`` < 1 or an interval <= 0.
    """

    TITLE = "esper — LSTM health"
    CSS = """
    #main { height: 1fr; }
    #left { width: 1fr; }
    #right { width: 2fr; max-width: 62; }
    #health-box { height: auto; border: round $accent; padding: 0 1; }
    #states { height: auto; margin-bottom: 1; }
    #health { height: auto; }
    #anomalies { height: 1fr; min-height: 5; border: round $accent; }
    #ppo { height: auto; border: round $accent; }
    #level { height: auto; border: round $accent; padding: 0 1; }
    #subscribers { height: auto; border: round $accent; }
    #subscribers-note { height: auto; padding: 0 1; color: $text-muted; }
    #status { height: auto; padding: 0 1; background: $boost; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("p", "toggle_pause", "Pause display"),
        Binding("s", "next_state", "Next state"),
        Binding("question_mark", "help", "Help", key_display="?"),
    ]

    class Telemetry(Message):
        """Events (and, from a followed log, skipped lines) for the panel to absorb.

        ``ack`` is set once the panel has absorbed them, so a sender on another
        thread can wait without polling the panel's state.
        """

        def __init__(
            self,
            events: Sequence[TelemetryEvent],
            bad_lines: Sequence[BadLine] = (),
            *,
            ack: threading.Event | None = None,
        ) -> None:
            super().__init__()
            self.events = tuple(events)
            self.bad_lines = tuple(bad_lines)
            self.ack = ack

    class WorkFinished(Message):
        """The work running beside the panel (training) has ended."""

        def __init__(self, error: str | None = None) -> None:
            super().__init__()
            self.error = error

    def __init__(
        self,
        *,
        thresholds: HealthThresholds | None = None,
        stats: Callable[[], HubStats] | None = None,
        follow: LogFollower | None = None,
        source: str = "",
        exit_when: Callable[[], bool] | None = None,
        history: int = 60,
        poll_interval: float = 0.25,
        stats_interval: float = 1.0,
        refresh_interval: float = 0.25,
    ) -> None:
        super().__init__()
        if thresholds is not None and not isinstance(thresholds, HealthThresholds):
            raise TypeError(f"thresholds must be HealthThresholds, got {type(thresholds).__name__}")
        if not isinstance(history, int) or isinstance(history, bool) or history < 1:
            raise ValueError(f"history must be an int >= 1, got {history!r}")
        for name, value in (
            ("poll_interval", poll_interval),
            ("stats_interval", stats_interval),
            ("refresh_interval", refresh_interval),
        ):
            if not (isinstance(value, int | float) and value > 0):
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        self.thresholds = thresholds if thresholds is not None else HealthThresholds()
        self.state = PanelState(self.thresholds, history=history)
        self.paused = False
        self.work_status: str | None = None
        self._stats = stats
        self._follow = follow
        self._source = source
        self._exit_when = exit_when
        self._poll_interval = poll_interval
        self._stats_interval = stats_interval
        self._mounted = threading.Event()
        self._gone = threading.Event()
        self._on_mounted: list[Callable[[], None]] = []
        self._dirty = True
        self._shown_anomalies = -1
        self._shown_text: dict[str, Text] = {}
        self._shown_rows: dict[str, list[tuple[str, tuple[Cell, ...]]]] = {}
        self._refresh_interval = refresh_interval
        self._read_error: str | None = None

    # -- for other threads --------------------------------------------------------------

    @property
    def accepting_events(self) -> bool:
        """True while the panel is up and absorbs events (safe to read from any thread)."""
        return self._mounted.is_set() and not self._gone.is_set() and self.is_running

    @property
    def shows_latest(self) -> bool:
        """True when the screen shows every event absorbed so far (and is not paused)."""
        return not self._dirty and not self.paused

    def call_when_mounted(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the panel's thread once it is on screen (e.g. start training).

        Call it before :meth:`run`.
        """
        self._on_mounted.append(callback)

    def work_finished(self, error: str | None = None) -> None:
        """Tell the panel that training ended; thread-safe, ignored once it has exited."""
        with contextlib.suppress(RuntimeError):  # its loop closed already: nobody to tell
            self.post_message(self.WorkFinished(error))

    def exit(
        self,
        result: None = None,
        return_code: int = 0,
        message: RenderableType | None = None,
    ) -> None:
        """Leave the panel; from then on it accepts no more events."""
        self._gone.set()
        super().exit(result, return_code, message)

    # -- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        """Health over anomalies on the left; PPO, level and subscribers on the right."""
        yield Header()
        with Horizontal(id="main"):
            with Vertical(id="left"):
                with Vertical(id="health-box"):
                    yield Static(id="overall")
                    yield DataTable(id="states", cursor_type="none", show_cursor=False)
                    yield Static(id="detail-title")
                    yield DataTable(id="health", cursor_type="none", show_cursor=False)
                    yield Static(id="replay")
                    yield Static(id="sparklines")
                    yield Static(id="thresholds")
                yield DataTable(id="anomalies", cursor_type="none", show_cursor=False)
            with Vertical(id="right"):
                yield DataTable(id="ppo", cursor_type="none", show_cursor=False)
                yield Static(id="level")
                yield DataTable(id="subscribers", cursor_type="none", show_cursor=False)
                yield Static(id="subscribers-note")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        """Set up the tables and timers, then run what waited for the panel."""
        self.sub_title = self._source
        self.query_one("#health-box").border_title = "LSTM health"
        self.query_one("#ppo").border_title = "PPO statistics"
        self.query_one("#anomalies").border_title = "Anomalies (newest first)"
        self.query_one("#level").border_title = "Telemetry level"
        self.query_one("#subscribers").border_title = "Subscribers"
        states = self._table("states")
        for name in _STATE_COLUMNS:
            states.add_column(name, key=name)
        states.display = False
        health = self._table("health")
        health.add_column("", key="metric")
        health.add_column("h", key="h")
        health.add_column("c", key="c")
        self._table("ppo").add_column("statistic", key="name")
        self._table("ppo").add_column("value", key="value")
        for name in _ANOMALY_COLUMNS:
            self._table("anomalies").add_column(name, key=name)
        for name in _SUBSCRIBER_COLUMNS:
            self._table("subscribers").add_column(name, key=name)
        t = self.thresholds
        self.query_one("#thresholds", Static).update(
            Text(
                f"thresholds: warning > {format_value(t.warning_rms)}, critical > "
                f"{format_value(t.critical_rms)}, vanishing < {format_value(t.vanishing_rms)}",
                style="dim",
            )
        )
        self.set_interval(self._refresh_interval, self._render_if_dirty)
        if self._stats is not None:
            self._poll_stats()
            self.set_interval(self._stats_interval, self._poll_stats)
        if self._follow is not None:
            self._poll_log()
            self.set_interval(self._poll_interval, self._poll_log)
        if self._exit_when is not None:
            self.set_interval(0.2, self._check_exit)
        self._render_all()
        self._mounted.set()
        for callback in self._on_mounted:
            callback()

    def on_unmount(self) -> None:
        """Accept no more events."""
        self._gone.set()

    # -- input --------------------------------------------------------------------------

    def on_health_panel_telemetry(self, message: Telemetry) -> None:
        """Absorb events posted by a backend (or a follower)."""
        try:
            for event in message.events:
                self.state.apply(event)
            for bad in message.bad_lines:
                self.state.add_bad_line(bad)
            self._dirty = True
        finally:
            if message.ack is not None:
                message.ack.set()

    def on_health_panel_work_finished(self, message: WorkFinished) -> None:
        """Say that training ended and that q leaves."""
        self.work_status = (
            f"training failed: {message.error}" if message.error else "training finished"
        )
        self._dirty = True
        self._render_status()

    def action_toggle_pause(self) -> None:
        """Freeze or unfreeze the display; events are still absorbed meanwhile."""
        self.paused = not self.paused
        if not self.paused:
            self._dirty = True
            self._render_all()
        self._render_status()

    def action_next_state(self) -> None:
        """Show the next recurrent state of the last update in detail."""
        self.state.select_next()
        self._dirty = True
        self._render_all()

    def action_help(self) -> None:
        """Show the key and colour legend."""
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    # -- timers -------------------------------------------------------------------------

    def _poll_stats(self) -> None:
        assert self._stats is not None
        stats = self._stats()
        shown = self.state.hub_stats
        self.state.set_live_stats(stats)
        if shown is None or _counters(shown) != _counters(stats):
            self._dirty = True

    def _poll_log(self) -> None:
        assert self._follow is not None
        waiting = self._follow.waiting_for
        try:
            chunk = self._follow.poll()
        except OSError as exc:
            self._read_error = f"cannot read {self._follow.path}: {exc}"
            self._dirty = True
            return
        if self._read_error is not None:
            self._read_error = None
            self._dirty = True
        if chunk.restarted:
            self.state = PanelState(self.thresholds, history=self.state.history)
            self._shown_anomalies = -1
            self._shown_text.clear()
            self._shown_rows.clear()
        for event in chunk.events:
            self.state.apply(event)
        for bad in chunk.bad_lines:
            self.state.add_bad_line(bad)
        if chunk.events or chunk.bad_lines or chunk.restarted:
            self._dirty = True
        if self._follow.waiting_for != waiting:
            self._render_status()
        if chunk.more:
            self.call_later(self._poll_log)  # catch up, letting keys through in between

    def _check_exit(self) -> None:
        assert self._exit_when is not None
        if self._exit_when():
            self.exit()

    def _render_if_dirty(self) -> None:
        if self._dirty:
            self._render_all()

    # -- rendering ----------------------------------------------------------------------
    # Layout is the expensive part of a refresh (tens of ms), and it runs on the thread
    # that shares the GIL with training: widgets are touched only when what they show
    # changed, and re-laid out only when their size may have.

    def _render_all(self) -> None:
        self._render_status()
        if self.paused:
            return
        self._dirty = False
        self._render_health()
        self._render_ppo()
        self._render_anomalies()
        self._render_level()
        self._render_subscribers()

    def _table(self, name: str) -> DataTable[Cell]:
        return self.query_one(f"#{name}", DataTable)

    def _set_text(self, name: str, content: Text) -> None:
        previous = self._shown_text.get(name)
        if previous == content:
            return
        self._shown_text[name] = content
        resized = previous is None or len(previous.plain) != len(content.plain)
        self.query_one(f"#{name}", Static).update(content, layout=resized)

    def _set_title(self, name: str, title: str) -> None:
        widget = self.query_one(f"#{name}")
        if widget.border_title != title:
            widget.border_title = title

    def _sync_table(self, name: str, rows: list[tuple[str, tuple[Cell, ...]]]) -> None:
        """Show ``rows`` (key, cells), changing only the cells that differ."""
        table = self._table(name)
        shown = self._shown_rows.get(name)
        if shown is not None and [k for k, _ in shown] == [k for k, _ in rows]:
            columns = list(table.columns)
            for (key, old), (_, new) in zip(shown, rows, strict=True):
                for column, before, after in zip(columns, old, new, strict=True):
                    if before != after:
                        grow = len(str(after)) > len(str(before))
                        table.update_cell(key, column, after, update_width=grow)
        else:
            table.clear()
            for key, cells in rows:
                table.add_row(*cells, key=key)
        self._shown_rows[name] = rows

    def _render_health(self) -> None:
        view, shown = self.state.health, self.state.detail()
        if view is None or shown is None:
            self._set_text("overall", Text("no LSTM health yet", style="dim"))
            return
        several = len(view.states) > 1
        worst = [s.name for s in view.states if s.status is view.status]
        self._set_text(
            "overall",
            Text.assemble(
                "worst state " if several else "state ",
                status_text(view.status),
                f": {', '.join(worst)}" if several and len(worst) < len(view.states) else "",
                f"   update {view.update}   NaN ",
                _flag(view.has_nan),
                "   Inf ",
                _flag(view.has_inf),
            ),
        )
        states = self._table("states")
        if states.display != several:
            states.display = several
        if several:
            self._sync_table("states", [_state_row(s, s is shown) for s in view.states])
        title = Text.assemble((shown.name, "bold"), (" (primary)" if shown.primary else "", "dim"))
        if several:
            title.append("   s: next state", style="dim")
        self._set_text("detail-title", title)
        self._sync_table("health", _health_rows(shown))
        self._set_text("replay", replay_text(shown, self.state.thresholds))
        self._set_text("sparklines", self._sparklines(shown.name, view.update))

    def _sparklines(self, name: str, update: int) -> Text:
        history = list(self.state.rms_history[name])
        lines = Text()
        series = (("h_rms", [h for _, h, _ in history]), ("c_rms", [c for *_, c in history]))
        for label, column in series:
            values = [v for v in column if v is not None]
            if not values:  # a state without a cell: no c line
                continue
            lines.append(f"{label} ")
            lines.append_text(sparkline(values, self.thresholds))
            lines.append(f"  {format_value(values[-1])}\n")
        lines.append(f"updates {history[0][0]}–{update}, log scale", style="dim")
        return lines

    def _render_ppo(self) -> None:
        update = self.state.ppo_update
        self._set_title(
            "ppo", "PPO statistics" if update is None else f"PPO statistics — update {update}"
        )
        self._sync_table(
            "ppo",
            [
                (name, (name, str(value) if isinstance(value, int) else format_value(value)))
                for name, value in self.state.ppo_rows()
            ],
        )

    def _render_anomalies(self) -> None:
        count = self.state.anomaly_count
        if count == self._shown_anomalies:
            return
        self._shown_anomalies = count
        self._sync_table("anomalies", [_anomaly_row(event) for event in self.state.anomalies])
        shown = len(self.state.anomalies)
        more = f", newest {shown} shown" if shown < count else ""
        self._set_title("anomalies", f"Anomalies (newest first): {count}{more}")

    def _render_level(self) -> None:
        level, change = self.state.level, self.state.level_change
        if level is None:
            self._set_text("level", Text("no event yet", style="dim"))
            return
        style = "bold magenta" if level >= TelemetryLevel.DEBUG else "bold"
        text = Text.assemble((level.name, style))
        if change is None:
            text.append("  since the start", style="dim")
        else:
            when = change.timestamp.astimezone(UTC).strftime("%H:%M:%S UTC")
            text.append(f"  since update {change.update} ({when})")
            if change.payload.reason:
                text.append(f"\n{change.payload.reason}", style="dim")
        self._set_text("level", text)

    def _render_subscribers(self) -> None:
        stats = self.state.hub_stats
        table = self._table("subscribers")
        if table.display != (stats is not None):
            table.display = stats is not None
        if stats is None:
            note = "n/a (watching a log)" if self._follow is not None else "no stats yet"
        elif self.state.hub_stats_live:
            note = f"live from the hub, every {self._stats_interval:g} s"
        else:
            note = "from RUN_FINISHED: the counts just before the hub closed"
        self._set_text("subscribers-note", Text(note))
        if stats is not None:
            self._sync_table("subscribers", [_subscriber_row(s) for s in stats.subscribers])

    def _render_status(self) -> None:
        s = self.state
        text = Text()
        if s.run_id:
            text.append(f"run {s.run_id}  ")
        if s.finished is not None:
            text.append(f"finished: {s.finished.status}", style="bold")
            if s.finished.message:
                text.append(f" ({s.finished.message})")
        elif s.events_seen:
            text.append("running", style="bold")
        else:
            text.append("waiting for events", style="dim")
        text.append(f"  ·  {s.events_seen} events")
        if self.work_status is not None:
            text.append(f"  ·  {self.work_status}: press q to leave", style="bold")
        if self.paused:
            text.append("  ·  PAUSED: display frozen, training goes on (p resumes)", "reverse")
        text.append_text(self._problems())
        self._set_text("status", text)

    def _problems(self) -> Text:
        """What the status line says about reading a followed log."""
        text = Text()
        waiting = self._follow.waiting_for if self._follow is not None else None
        if waiting:
            text.append(f"  ·  {waiting}", style="dim")
        alarm = status_style(HealthStatus.CRITICAL)
        if self._read_error:
            text.append(f"\n{self._read_error}", style=alarm)
        s = self.state
        if s.bad_line_count:
            plural = "" if s.bad_line_count == 1 else "s"
            last = s.bad_lines[-1]
            text.append(f"\n{s.bad_line_count} bad line{plural} skipped; last: {last}", alarm)
        return text


def _state_row(view: StateView, selected: bool) -> tuple[str, tuple[Cell, ...]]:
    """One row of the states table, keyed by the state's name; the state in detail in bold."""
    m = view.metrics
    name = Text(view.name, style="bold" if selected else "")
    if view.primary:
        name.append(" (primary)", style="dim")
    cells: tuple[Cell, ...] = (
        name,
        _rms_cell(m.h_rms, view.h_status),
        _rms_cell(m.c_rms, view.c_status),
        format_value(_max(m.h_max, m.c_max)),
        status_text(view.status),
    )
    return view.name, cells


def _health_rows(view: StateView) -> list[tuple[str, tuple[Cell, ...]]]:
    """The detail table of one state: a row per ``_HEALTH_ROWS`` entry, a cell for h and
    one for c ("—" throughout for a state without a cell)."""
    m = view.metrics
    cells: dict[str, list[Cell]] = {key: [label] for key, label in _HEALTH_ROWS}
    for tensor, status in (("h", view.h_status), ("c", view.c_status)):
        cells["rms"].append(_rms_cell(getattr(m, f"{tensor}_rms"), status))
        cells["status"].append(_NOTHING if status is None else status_text(status))
        cells["env_mean"].append(format_value(getattr(m, f"{tensor}_env_rms_mean")))
        cells["env_max"].append(format_value(getattr(m, f"{tensor}_env_rms_max")))
        cells["max"].append(format_value(getattr(m, f"{tensor}_max")))
    d = m.diagnostics
    cells["saturated"] += [
        format_value(None if d is None else d.h_saturation_frac),
        format_value(None if d is None else d.c_saturation_frac),
    ]
    cells["growth"] += [_NOTHING, format_value(None if d is None else d.c_growth_ratio)]
    cells["dormant"] += [format_value(None if d is None else d.dormant_frac), _NOTHING]
    return [(key, tuple(values)) for key, values in cells.items()]


def replay_text(view: StateView, thresholds: HealthThresholds) -> Text:
    """One line on the state's replay check: its verdict as a word, the largest
    difference against the dtype's tolerance, the steps that differ (and the first), and
    the drift when measured; "not measured" when the trainer made no check."""
    r, status = view.replay, view.replay_status
    if r is None or status is None:
        return Text.assemble("replay check ", ("not measured", "dim"))
    word = "mismatch" if status is HealthStatus.CRITICAL else "matches"
    line = Text.assemble(
        "replay check ",
        status_text(status),
        f" {word}: max |diff| {format_value(r.max_abs_diff)} ",
        (f"(tolerance {thresholds.replay_tolerance(r.dtype):g}, {r.dtype})", "dim"),
        f"   {r.mismatched} of {r.compared} steps differ",
    )
    if r.first_step is not None:
        rank = f"rank {r.first_rank} " if r.first_rank is not None else ""
        line.append(f", first {rank}env {r.first_env} step {r.first_step}")
    if r.drift is not None:
        line.append(f"   drift {format_value(r.drift)}")
    return line


def _rms_cell(rms: float | None, status: HealthStatus | None) -> Cell:
    """An RMS in its verdict's colour, or "—" for c of a state without a cell."""
    if rms is None or status is None:
        return _NOTHING
    return Text(format_value(rms), style=status_style(status, bold=False))


def _max(a: float, b: float | None) -> float:
    # The larger of max |h| and max |c|; a NaN wins (max() would depend on the order).
    if b is None:
        return a
    return a if a != a or a >= b else b


def _anomaly_row(event: AnomalyDetected) -> tuple[str, tuple[Cell, ...]]:
    """One row of the anomaly log, keyed by the event's seq."""
    a = event.payload.anomaly
    style = status_style(_SEVERITY_STATUS[a.severity])
    cells: tuple[Cell, ...] = (
        str(event.update),
        _NOTHING if a.state is None else a.state,
        Text(a.type.value, style=style),
        Text(a.severity.value.upper(), style=style),
        format_value(a.observed),
        format_value(a.threshold),
    )
    return str(event.seq), cells


def _subscriber_row(s: SubscriberStats) -> tuple[str, tuple[Cell, ...]]:
    """One row of the subscriber table: failures in red, drops in yellow."""
    failed = status_style(HealthStatus.CRITICAL) if s.failed else ""
    dropped = status_style(HealthStatus.WARNING) if s.dropped else ""
    queue = f"{s.queue_depth}/{s.queue_size}" if s.mode == "thread" else "inline"
    cells: tuple[Cell, ...] = (
        s.name,
        str(s.delivered),
        Text(str(s.failed), style=failed),
        Text(str(s.dropped), style=dropped),
        queue,
    )
    return s.name, cells


def _counters(stats: HubStats) -> list[tuple[str, int, int, int, int]]:
    """What the subscriber table shows of the stats (latencies change on every event)."""
    return [(s.name, s.delivered, s.failed, s.dropped, s.queue_depth) for s in stats.subscribers]


def _flag(value: bool) -> Text:
    return Text("yes", style=status_style(HealthStatus.CRITICAL)) if value else Text("no")
