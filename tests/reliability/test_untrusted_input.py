"""Untrusted names and logs: a run id cannot leave the run root, and reading a log never
executes or unpickles anything (JSON and validated contracts only)."""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Mapping
from pathlib import Path

import pytest
from rich.console import Console

from esper_telemetry.analytics import BadLine, EventCursor, connect, read_events
from esper_telemetry.contracts import EVENTS_FILE, RunStarted, RunStartedPayload
from esper_telemetry.run import RunOptions, run_ppo
from esper_telemetry.training import PPOConfig
from esper_telemetry.tui import LogFollower

ESCAPES = [
    "../escape",
    "../../etc/cron.d/x",
    "/tmp/absolute",
    "a/b",
    "a\\b",
    "nul\x00byte",
    "..",
    ".",
    ".hidden",
    "",
    "~",
    "x" * 200,
]


@pytest.mark.parametrize("run_id", ESCAPES, ids=repr)
def test_a_run_id_that_could_leave_the_run_root_is_refused_before_anything_is_written(
    tmp_path: Path, run_id: str
) -> None:
    """run_ppo refuses it with exit 2 and a message naming --run-id; no file or folder
    is created anywhere under the test's directory (not even the run root)."""
    outcome = run_ppo(
        RunOptions(
            config=PPOConfig(updates=1, envs=2, steps=8, hidden=16, epochs=1),
            run_root=tmp_path / "runs",
            run_id=run_id,
            wandb="disabled",
            progress=False,
        ),
        Console(file=io.StringIO()),
    )
    assert (outcome.exit_code, outcome.run_dir) == (2, None)
    assert outcome.message.startswith("--run-id: run_id must be 1-128 letters, digits")
    assert list(tmp_path.rglob("*")) == []


class Planted:
    """Unpickling this creates ``marker``: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def lures(marker: Path) -> list[bytes]:
    """Lines that run code if a reader unpickles, YAML-loads or jsonpickle-decodes them."""
    return [
        pickle.dumps(Planted(marker), protocol=5),
        pickle.dumps(Planted(marker), protocol=0),
        f'!!python/object/apply:pathlib.Path.touch ["{marker}"]'.encode(),
        json.dumps({"__class__": "pathlib.Path", "__init__": [str(marker)]}).encode(),
        json.dumps({"py/reduce": [{"py/function": "pathlib.Path.touch"}, [str(marker)]]}).encode(),
        json.dumps(
            {"event_type": "RUN_STARTED", "update": 0, "payload": {"__class__": "x"}}
        ).encode(),
    ]


def test_the_pickle_lures_are_live(tmp_path: Path) -> None:
    """Unpickled on purpose, each pickle lure does create its marker: the lures can bite."""
    probes = [tmp_path / "probe0", tmp_path / "probe1"]
    for i, probe in enumerate(probes):
        pickle.loads(lures(probe)[i])  # our own bytes: unpickled to prove they are live
    assert [p.exists() for p in probes] == [True, True]


def hostile_log(tmp_path: Path, marker: Path) -> tuple[Path, int, dict[str, object]]:
    """The lures, then one valid event holding them as text; (file, lure lines, config)."""
    planted = lures(marker)
    config: dict[str, object] = {
        "yaml": planted[2].decode(),
        "class": json.loads(planted[3]),
        "pickle": planted[0].hex(),
    }
    valid = RunStarted(
        run_id="hostile", seq=0, update=0, payload=RunStartedPayload(config=config)
    ).model_dump_json()
    data = b"\n".join(planted) + b"\n"
    path = tmp_path / EVENTS_FILE
    path.write_bytes(data + valid.encode() + b"\n")
    return path, data.count(b"\n"), config


@pytest.mark.parametrize("reader", ["read_events", "EventCursor", "LogFollower", "connect"])
def test_reading_a_log_of_pickles_and_class_tags_executes_nothing(
    tmp_path: Path, reader: str
) -> None:
    """Each lure is one bad line; the valid event's config comes back as plain data; the
    marker a code path would create never appears."""
    marker = tmp_path / "executed"
    path, lure_lines, config = hostile_log(tmp_path, marker)
    bad: list[BadLine] = []
    configs: list[object]
    if reader == "connect":
        con = connect(path, on_bad_line=bad.append)
        rows = con.execute("SELECT payload FROM events").fetchall()
        configs = [json.loads(payload)["config"] for (payload,) in rows]
    else:
        if reader == "read_events":
            events = list(read_events(path, on_bad_line=bad.append))
        elif reader == "EventCursor":
            batch = EventCursor(path).read()
            events, bad = list(batch.events), list(batch.bad_lines)
        else:
            chunk = LogFollower(path).poll()
            events, bad = list(chunk.events), list(chunk.bad_lines)
        configs = [plain(e.payload.config) if isinstance(e, RunStarted) else e for e in events]
    assert [b.line_number for b in bad] == list(range(1, lure_lines + 1))
    assert configs == [config]
    assert not marker.exists()


def plain(value: object) -> object:
    """A read-only config (FrozenDict, tuples) as the plain JSON data it stands for."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value
