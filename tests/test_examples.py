"""Every script of ``examples/`` runs as a user would run it, for a few updates.

Each runs in a real child process from a temporary directory, with this checkout's
``src`` on its path and W&B offline, and writes its run under that directory; the
test then reads the run back and checks what the script printed. ``cleanrl_ppo_lstm.py``
and ``ddp.py`` have their own files (``test_cleanrl_example.py``, ``test_ddp_example.py``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from esper_telemetry.contracts import TelemetryEvent
from tests.reliability.children import child_env, read_back

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
    # The print subscriber shows every event; the alarm speaks once, for update 2.
    assert len(re.findall(r"^event_type=<EventType\.", stdout, re.M)) == 5
    alarms = [line for line in stdout.splitlines() if not line.startswith("event_type=")]
    assert alarms == ["update 2: LSTM state CRITICAL"]


MINIMAL = Example("minimal.py", ("--updates", "3", "--run-dir", "run"), check_minimal)

EXAMPLES = [MINIMAL]


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
