"""AnalyticsCollector: strict JSON lines, append-only, fsync policies, kill -9 and write errors."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from esper_telemetry import TelemetryHub, emit_ppo_update_event
from esper_telemetry.analytics import BadLine, read_events
from esper_telemetry.backends.analytics import AnalyticsCollector
from esper_telemetry.contracts import (
    EVENTS_FILE,
    LSTMHealthMetrics,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    TelemetryEvent,
    parse_event,
)

SPECIAL_FLOATS = [
    math.nan,
    math.inf,
    -math.inf,
    -0.0,
    0.0,
    1e-310,  # subnormal
    5e-324,  # smallest subnormal
    1.7976931348623157e308,  # largest finite
    -2.2250738585072014e-308,
    0.1,
    1 / 3,
]

# Importing esper is lazy: a child that needs the collector loads neither torch nor the hub's
# other backends.
CHILD_PRELUDE = textwrap.dedent(
    """
    import sys
    from esper_telemetry.backends.analytics import AnalyticsCollector
    from esper_telemetry.contracts import PPOUpdateCompleted, PPOUpdatePayload
    """
)


def bits(x: float) -> bytes:
    """The float's exact bits; every NaN as one NaN (JSON has no NaN sign or payload)."""
    return b"NaN" if math.isnan(x) else struct.pack("<d", x)


def metrics(value: float) -> LSTMHealthMetrics:
    value = abs(value)  # norms, RMS and max|x| are >= 0 (NaN and +Inf allowed)
    return LSTMHealthMetrics(
        h_l2_total=value,
        c_l2_total=value,
        h_rms=value,
        c_rms=value,
        h_env_rms_mean=value,
        h_env_rms_max=value,
        c_env_rms_mean=value,
        c_env_rms_max=value,
        h_max=value,
        c_max=value,
        has_nan=math.isnan(value),
        has_inf=math.isinf(value),
    )


def float_fields(payload: PPOUpdatePayload) -> dict[str, float]:
    out = {
        name: getattr(payload, name)
        for name in PPOUpdatePayload.model_fields
        if isinstance(getattr(payload, name), float)
    }
    out.update({f"extra.{k}": v for k, v in payload.extra.items()})
    return out


def write_special_run(
    run_dir: Path, run_id: str = "special", *, resume: bool = False
) -> list[TelemetryEvent]:
    with TelemetryHub(run_id) as hub:
        hub.subscribe(AnalyticsCollector(run_dir, resume=resume))
        emitted = [
            emit_ppo_update_event(
                hub,
                update=hub.first_update + k,
                metrics={"policy_loss": x, "value_loss": -x, "entropy": 0.5, "custom": x},
                lstm_health=metrics(x),
            )
            for k, x in enumerate(SPECIAL_FLOATS)
        ]
    events: list[TelemetryEvent] = [e for e in emitted if e is not None]
    assert len(events) == len(SPECIAL_FLOATS)
    return events


def test_lines_are_strict_json_and_floats_round_trip_bit_exact(tmp_path: Path) -> None:
    """Every line parses as strict JSON and reads back with each float's exact bits."""
    events = write_special_run(tmp_path)
    raw = (tmp_path / EVENTS_FILE).read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.decode("utf-8").splitlines()

    def refuse(token: str) -> None:
        raise AssertionError(f"non-strict JSON token {token}")

    parsed = [json.loads(line, parse_constant=refuse) for line in lines]
    assert [p["payload"]["policy_loss"] for p in parsed][:3] == ["NaN", "Infinity", "-Infinity"]
    assert [p["payload"]["lstm_h_rms"] for p in parsed][:3] == ["NaN", "Infinity", "Infinity"]
    read = list(read_events(tmp_path))
    assert [e.model_dump_json() for e in read] == [e.model_dump_json() for e in events]
    for written, back in zip(events, read, strict=True):
        assert isinstance(written.payload, PPOUpdatePayload)
        assert isinstance(back.payload, PPOUpdatePayload)
        expected = {k: bits(v) for k, v in float_fields(written.payload).items()}
        assert {k: bits(v) for k, v in float_fields(back.payload).items()} == expected


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_any_float_round_trips_bit_exact(value: float) -> None:
    """Any float written by the collector reads back with the same bits (NaN as NaN)."""
    event = PPOUpdateCompleted(
        update=0,
        payload=PPOUpdatePayload(policy_loss=value, value_loss=0.0, entropy=0.0),
    )
    back = parse_event(event.model_dump_json())
    assert isinstance(back.payload, PPOUpdatePayload)
    assert bits(back.payload.policy_loss) == bits(value)


def test_a_resumed_run_appends_after_the_first_lines_and_never_truncates(
    tmp_path: Path,
) -> None:
    """Resuming the run on disk appends after its lines (seq and update carry on); the
    bytes already written stay as they were."""
    first = write_special_run(tmp_path, "special-1")
    before = (tmp_path / EVENTS_FILE).read_bytes()
    second = write_special_run(tmp_path, "special-1", resume=True)
    assert (tmp_path / EVENTS_FILE).read_bytes().startswith(before)
    assert [e.model_dump_json() for e in read_events(tmp_path)] == [
        e.model_dump_json() for e in first + second
    ]
    n = len(first)
    assert [(e.seq, e.update) for e in second] == [(n + k, n + k) for k in range(n)]


def test_a_resumed_run_drops_the_torn_tail_a_killed_writer_left(tmp_path: Path) -> None:
    """Resuming drops the fragment of the line a killed writer was writing (nothing whole
    is lost), so the log reads back with no bad line."""
    first = write_special_run(tmp_path)
    whole = (tmp_path / EVENTS_FILE).read_bytes()
    with (tmp_path / EVENTS_FILE).open("ab") as f:
        f.write(b'{"event_type":"PPO_UPDATE_COMPLETED","sch')
    more = write_special_run(tmp_path, resume=True)
    bad: list[BadLine] = []
    read = list(read_events(tmp_path, on_bad_line=bad.append))
    assert bad == []
    assert (tmp_path / EVENTS_FILE).read_bytes().startswith(whole)
    assert [e.model_dump_json() for e in read] == [e.model_dump_json() for e in first + more]


def test_a_collector_used_without_a_hub_isolates_a_torn_tail(tmp_path: Path) -> None:
    """Handed events directly, a new collector starts a fresh line after a torn tail:
    only the fragment is lost, reported as one bad line."""
    first = write_special_run(tmp_path)
    with (tmp_path / EVENTS_FILE).open("ab") as f:
        f.write(b'{"event_type":"PPO_UPDATE_COMPLETED","sch')
    more = [e.model_copy(update={"seq": e.seq + len(first)}) for e in first]
    with AnalyticsCollector(tmp_path) as collector:
        for event in more:
            collector.handle(event)
    bad: list[BadLine] = []
    read = list(read_events(tmp_path, on_bad_line=bad.append))
    n = len(SPECIAL_FLOATS)
    assert len(read) == 2 * n
    assert [e.model_dump_json() for e in read[n:]] == [e.model_dump_json() for e in more]
    assert [(b.line_number, b.torn) for b in bad] == [(n + 1, False)]
    assert bad[0].reason.startswith("Invalid JSON: EOF while parsing")


def test_creates_the_run_directory_with_parents(tmp_path: Path) -> None:
    """A missing run directory is created, parents included."""
    run_dir = tmp_path / "runs" / "abc"
    with AnalyticsCollector(run_dir) as collector:
        assert collector.path == run_dir / EVENTS_FILE
    assert (run_dir / EVENTS_FILE).is_file()


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"fsync": "sometimes"}, ValueError, "fsync"),
        ({"fsync": None}, ValueError, "fsync"),
        ({"run_dir": ""}, ValueError, "run_dir"),
        ({"run_dir": 3}, TypeError, "run_dir"),
        ({"run_dir": "FILE"}, ValueError, "run_dir"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(
    tmp_path: Path, kwargs: dict[str, object], error: type[Exception], names: str
) -> None:
    """A bad fsync policy or run directory raises an error that names the argument."""
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    args = {"run_dir": tmp_path / "run", **kwargs}
    if args["run_dir"] == "FILE":
        args["run_dir"] = a_file
    with pytest.raises(error, match=names):
        AnalyticsCollector(**args)  # type: ignore[arg-type]


def test_close_is_idempotent_and_handle_after_close_raises(tmp_path: Path) -> None:
    """close() twice is fine, flush() after close is a no-op, handle() after close raises."""
    collector = AnalyticsCollector(tmp_path)
    collector.close()
    collector.close()
    collector.flush()
    event = PPOUpdateCompleted(
        update=0,
        payload=PPOUpdatePayload(policy_loss=0.0, value_loss=0.0, entropy=0.0),
    )
    with pytest.raises(RuntimeError, match="closed AnalyticsCollector"):
        collector.handle(event)
    with pytest.raises(TypeError, match="TelemetryEvent"):
        AnalyticsCollector(tmp_path).handle("not an event")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("policy", "after_handles", "after_flush", "after_close"),
    [
        ("flush", 0, 1, 2),
        ("every_event", 3, 4, 5),
        ("never", 0, 0, 0),
    ],
)
def test_fsync_calls_follow_the_policy(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    policy: str,
    after_handles: int,
    after_flush: int,
    after_close: int,
) -> None:
    """The events file is fsynced per policy: at flush/close, after every event, or never."""
    collector = AnalyticsCollector(tmp_path, fsync=policy)  # type: ignore[arg-type]
    file_fd = os.open(collector.path, os.O_RDONLY)
    file_inode = os.fstat(file_fd).st_ino
    os.close(file_fd)
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        if os.fstat(fd).st_ino == file_inode:
            synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    event = PPOUpdateCompleted(
        update=0,
        payload=PPOUpdatePayload(policy_loss=0.0, value_loss=0.0, entropy=0.0),
    )
    for _ in range(3):
        collector.handle(event)
    counts = [len(synced)]
    collector.flush()
    counts.append(len(synced))
    collector.close()
    counts.append(len(synced))
    assert counts == [after_handles, after_flush, after_close]
    assert collector.events_written == 3


KILL_CHILD = CHILD_PRELUDE + textwrap.dedent(
    """
    collector = AnalyticsCollector(sys.argv[1], fsync="flush")
    k = 0
    while True:
        for _ in range(int(sys.argv[2])):
            payload = PPOUpdatePayload(
                policy_loss=k * 0.1, value_loss=float("nan"), entropy=-0.0,
                lstm_h_rms=float("inf"), extra={"k": float(k)})
            collector.handle(PPOUpdateCompleted(run_id="kill", seq=k, update=k, payload=payload))
            k += 1
        collector.flush()
        print(f"flushed {k}", flush=True)
    """
)


@pytest.mark.parametrize("trial", range(5))
def test_kill_9_loses_nothing_a_completed_flush_covered(tmp_path: Path, trial: int) -> None:
    """SIGKILL at a random moment: every flushed event reads back intact, nothing raises."""
    rng = random.Random(trial)
    batch = rng.choice([1, 7, 50])
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_CHILD, str(tmp_path), str(batch)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    flushed = 0
    try:
        for _ in range(rng.randint(1, 30)):
            flushed = int(child.stdout.readline().split()[1])
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
    # Lines printed between our last read and the kill count too.
    for line in child.stdout.read().splitlines():
        flushed = int(line.split()[1])
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    bad: list[BadLine] = []
    events = list(read_events(tmp_path, on_bad_line=bad.append))
    assert len(events) >= flushed > 0
    assert [e.update for e in events] == list(range(len(events)))
    assert all(b.torn and b.line_number == len(events) + 1 for b in bad)
    for e in events:
        assert isinstance(e.payload, PPOUpdatePayload)
        p = e.payload
        assert (p.policy_loss, p.entropy, p.lstm_h_rms, dict(p.extra)) == (
            e.update * 0.1,
            -0.0,
            math.inf,
            {"k": float(e.update)},
        )
        assert math.isnan(p.value_loss)
        assert math.copysign(1.0, p.entropy) == -1.0


FSIZE_CHILD = CHILD_PRELUDE + textwrap.dedent(
    """
    import json, logging, resource
    from esper_telemetry.hub import TelemetryHub

    logging.disable(logging.CRITICAL)  # the hub logs each failure with a traceback
    def event(k):
        return PPOUpdateCompleted(update=k, payload=PPOUpdatePayload(
            policy_loss=float(k), value_loss=float("nan"), entropy=0.5))

    hub = TelemetryHub("fsize")
    collector = AnalyticsCollector(sys.argv[1])
    hub.subscribe(collector, mode="inline")
    line = len(hub.emit(event(0)).model_dump_json()) + 1
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(2.5 * line), hard))
    for k in (1, 2, 3):
        hub.emit(event(k))
    failed = next(s.failed for s in hub.stats().subscribers if s.name == "analytics")
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    for k in (4, 5):
        hub.emit(event(k))
    hub.close()
    print(json.dumps({"failed": failed, "written": collector.events_written}))
    """
)


def test_a_failed_write_raises_and_damages_no_other_line(tmp_path: Path) -> None:
    """Past RLIMIT_FSIZE, handle raises (the hub counts it); other lines stay intact."""
    out = subprocess.run(
        [sys.executable, "-c", FSIZE_CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    # Update 2 was cut at the limit; update 3 found no room at all.
    assert json.loads(out.stdout) == {"failed": 2, "written": 4}
    bad: list[BadLine] = []
    events = list(read_events(tmp_path, on_bad_line=bad.append))
    assert [e.update for e in events] == [0, 1, 4, 5]
    assert [(b.line_number, b.torn) for b in bad] == [(3, False)]
    assert (tmp_path / EVENTS_FILE).read_bytes().endswith(b"\n")
