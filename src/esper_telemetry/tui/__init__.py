"""The live terminal panel ("Sanctum"): LSTM health, PPO statistics, anomalies, levels.

Needs the ``tui`` extra: ``pip install 'esper-telemetry[tui]'`` (Textual).

* :class:`HealthPanel` is the Textual app;
* :class:`PanelBackend` feeds it from a hub, subscribed with :func:`subscribe_panel`
  (its own thread, a ``drop_oldest`` queue: a slow terminal never slows training);
* :class:`LogFollower` feeds it from a run's ``events.jsonl`` that another process
  is writing (``esper watch``);
* :func:`run_panel` shows the panel on the main thread while training runs on another
  (``esper ppo --tui``).

:func:`format_value` is :func:`esper_telemetry.contracts.format_value`, the one way esper
writes a number for a person, re-exported here for the panel's users.
"""

from esper_telemetry._extras import missing_message

try:
    import textual  # noqa: F401  (only to name the extra when it is missing)
except ModuleNotFoundError as exc:
    raise ImportError(missing_message("esper_telemetry.tui", "textual"), name="textual") from exc

from esper_telemetry.contracts import format_value
from esper_telemetry.tui._app import HealthPanel
from esper_telemetry.tui._backend import PANEL_QUEUE_SIZE, PanelBackend, subscribe_panel
from esper_telemetry.tui._follow import Chunk, LogFollower
from esper_telemetry.tui._runner import run_panel

__all__ = [
    "PANEL_QUEUE_SIZE",
    "Chunk",
    "HealthPanel",
    "LogFollower",
    "PanelBackend",
    "format_value",
    "run_panel",
    "subscribe_panel",
]
