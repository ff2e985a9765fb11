"""esper_telemetry.analytics: the line parser, the cursor reader, read_events, connect
(DuckDB tables), export_parquet, and SQL results as text (run_query, render_result)."""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow.parquet as pq  # type: ignore[import-untyped]  # pyarrow ships no type hints
import pytest
from hypothesis import given
from hypothesis import strategies as st

from esper_telemetry import TelemetryHub, TelemetryLevel, emit_ppo_update_event
from esper_telemetry.analytics import (
    QUERY_FORMATS,
    TABLES,
    BadLine,
    EventBatch,
    EventCursor,
    QueryFormat,
    _reader,
    connect,
    events_file,
    export_parquet,
    find_event_files,
    parse_line,
    read_events,
    render_result,
    run_query,
    tables_in,
)
from esper_telemetry.backends.analytics import AnalyticsCollector
from esper_telemetry.contracts import (
    EVENTS_FILE,
    SCHEMA_VERSION,
    Anomaly,
    AnomalyDetected,
    AnomalyDetectedPayload,
    LSTMHealthDetail,
    LSTMHealthMetrics,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    RunFinished,
    RunFinishedPayload,
    RunStarted,
    RunStartedPayload,
    TelemetryEvent,
    TelemetryLevelChanged,
    TelemetryLevelChangedPayload,
)

H_RMS = [0.5, math.nan, math.inf, -0.0, 1e-310]


def health(h_rms: float) -> LSTMHealthMetrics:
    return LSTMHealthMetrics(
        h_l2_total=2.0,
        c_l2_total=4.0,
        h_rms=h_rms,
        c_rms=1.0,
        h_env_rms_mean=0.5,
        h_env_rms_max=0.6,
        c_env_rms_mean=1.0,
        c_env_rms_max=1.2,
        h_max=0.9,
        c_max=2.5,
        has_nan=math.isnan(h_rms),
        has_inf=math.isinf(h_rms),
    )


def write_run(run_dir: Path, run_id: str) -> list[TelemetryEvent]:
    """Five PPO updates (h_rms from H_RMS), a level change and an anomaly at update 1."""
    detail = LSTMHealthDetail(
        h_layer_rms=(math.nan,), c_layer_rms=(1.0,), h_env_rms=(0.1, 9.0), c_env_rms=(1.0, 1.0)
    )
    with TelemetryHub(run_id) as hub:
        hub.subscribe(AnalyticsCollector(run_dir))
        out: list[TelemetryEvent | None] = []
        for k, h_rms in enumerate(H_RMS):
            if k == 1:
                out.append(hub.set_level("debug", reason="lstm_nan at update 1"))
                anomaly = Anomaly(
                    type="lstm_nan", severity="critical", observed=math.nan, message="NaN in h."
                )
                out.append(
                    hub.emit(
                        AnomalyDetected(
                            update=k,
                            payload=AnomalyDetectedPayload(anomaly=anomaly, outlier_envs=(1,)),
                        )
                    )
                )
            out.append(
                emit_ppo_update_event(
                    hub,
                    update=k,
                    metrics={
                        "policy_loss": -0.01 * k,
                        "value_loss": 0.5,
                        "entropy": 0.69,
                        "approx_kl": None if k == 0 else 0.01,
                        "mean_reward": math.nan if k == 2 else float(k),
                    },
                    lstm_health=(health(h_rms), detail),
                    env_steps=128 * (k + 1),
                )
            )
    events = [e for e in out if e is not None]
    assert len(events) == len(H_RMS) + 2
    return events


def ppo_line(update: int, seq: int | None = None) -> bytes:
    """One line of an events file: a PPO update, as the analytics collector writes it."""
    event = PPOUpdateCompleted(
        run_id="r",
        seq=update if seq is None else seq,
        update=update,
        timestamp=V1_TIME,
        payload=PPOUpdatePayload(policy_loss=0.1, value_loss=0.2, entropy=0.3),
    )
    return event.model_dump_json().encode() + b"\n"


def dumps(events: list[TelemetryEvent]) -> list[str]:
    return [e.model_dump_json() for e in events]


def updates(batch: EventBatch) -> list[int]:
    return [e.update for e in batch.events]


def bits(x: float) -> bytes:
    return b"NaN" if math.isnan(x) else struct.pack("<d", x)


#: Lines written by esper-telemetry with schema_version 1 (the anomaly's fields flat in
#: its payload), one of each event type: they must load for as long as version 1 reads.
V1_LINES = (
    b'{"event_type":"RUN_STARTED","schema_version":1,"run_id":"v1","seq":0,"update":0,'
    b'"timestamp":"2026-01-02T03:04:05.678901Z","rank":0,"level":2,"payload":{"config":'
    b'{"lr":0.001,"envs":8,"nested":{"x":[1,2]}},"description":"demo"}}\n',
    b'{"event_type":"PPO_UPDATE_COMPLETED","schema_version":1,"run_id":"v1","seq":1,'
    b'"update":1,"timestamp":"2026-01-02T03:04:05.678901Z","rank":0,"level":2,"payload":'
    b'{"policy_loss":-0.01,"value_loss":0.5,"entropy":0.69,"approx_kl":0.01,'
    b'"clip_fraction":null,"explained_variance":null,"grad_norm":null,"learning_rate":null,'
    b'"env_steps":256,"lstm_h_l2_total":2.0,"lstm_c_l2_total":4.0,"lstm_h_rms":"NaN",'
    b'"lstm_c_rms":1.0,"lstm_h_env_rms_mean":0.5,"lstm_h_env_rms_max":"Infinity",'
    b'"lstm_c_env_rms_mean":1.0,"lstm_c_env_rms_max":1.2,"lstm_h_max":0.9,"lstm_c_max":2.5,'
    b'"lstm_has_nan":true,"lstm_has_inf":true,"lstm_detail":null,"lstm_outlier_envs":[1],'
    b'"extra":{"mean_reward":1.5}}}\n',
    b'{"event_type":"ANOMALY_DETECTED","schema_version":1,"run_id":"v1","seq":2,"update":1,'
    b'"timestamp":"2026-01-02T03:04:05.678901Z","rank":0,"level":3,"payload":{"anomaly_type":'
    b'"lstm_nan","severity":"critical","observed":"NaN","threshold":null,"message":'
    b'"NaN in h.","outlier_envs":[1]}}\n',
    b'{"event_type":"TELEMETRY_LEVEL_CHANGED","schema_version":1,"run_id":"v1","seq":3,'
    b'"update":1,"timestamp":"2026-01-02T03:04:05.678901Z","rank":0,"level":3,"payload":'
    b'{"previous":2,"level":3,"reason":"lstm_nan at update 1"}}\n',
    b'{"event_type":"RUN_FINISHED","schema_version":1,"run_id":"v1","seq":4,"update":1,'
    b'"timestamp":"2026-01-02T03:04:05.678901Z","rank":0,"level":3,"payload":{"status":'
    b'"halted","message":"critical anomaly","summary":{"return":12.5},"hub_stats":null}}\n',
)
V1_TIME = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


# -- parse_line -----------------------------------------------------------------------


def test_parse_line_reads_a_line_with_or_without_its_newline() -> None:
    """A line as bytes (newline or not, LF or CRLF) or str gives the event, no reason."""
    line = ppo_line(4)
    expected = PPOUpdateCompleted.model_validate_json(line)
    results = [parse_line(x) for x in (line, line[:-1], line[:-1] + b"\r\n", line.decode())]
    assert results == [(expected, "")] * 4


def test_parse_line_gives_one_reason_per_kind_of_bad_line() -> None:
    """Unknown or missing event_type, a wrong field and a newer schema each get one sentence."""
    good = json.loads(ppo_line(0))
    newer_kind = {**good, "event_type": "SOMETHING_NEW", "schema_version": SCHEMA_VERSION + 1}
    wrong_field = {**good, "update": -1}
    lines = [
        json.dumps({k: v for k, v in good.items() if k != "event_type"}),
        json.dumps({**good, "event_type": "NOPE"}),
        json.dumps(newer_kind),
        json.dumps(wrong_field),
        json.dumps({**good, "surprise": 1}),
        "",
    ]
    assert [parse_line(line) for line in lines] == [
        (None, "not a valid event: event_type: Field required"),
        (None, "not a valid event: event_type: unknown event type 'NOPE'"),
        (
            None,
            f"schema_version {SCHEMA_VERSION + 1} is newer than this reader understands "
            f"({SCHEMA_VERSION}); upgrade esper-telemetry to read it",
        ),
        (None, "not a valid event: update: Input should be greater than or equal to 0"),
        (None, "not a valid event: surprise: Extra inputs are not permitted"),
        (None, "Invalid JSON: EOF while parsing a value at line 1 column 0"),
    ]


# -- EventCursor ----------------------------------------------------------------------


def test_the_cursor_reads_only_the_lines_added_since_the_last_read(tmp_path: Path) -> None:
    """Each read returns the new complete lines; a read with nothing new returns nothing."""
    path = tmp_path / EVENTS_FILE
    path.write_bytes(ppo_line(0) + ppo_line(1))
    cursor = EventCursor(tmp_path)
    reads = [updates(cursor.read())]
    with path.open("ab") as f:
        f.write(ppo_line(2))
    reads += [updates(cursor.read()), updates(cursor.read())]
    assert reads == [[0, 1], [2], []]
    assert (cursor.path, cursor.line_number, cursor.offset) == (path, 3, path.stat().st_size)


def test_the_cursor_leaves_a_torn_last_line_until_its_newline_arrives(tmp_path: Path) -> None:
    """An unterminated last line is neither read nor reported; once complete, it is read."""
    path = tmp_path / EVENTS_FILE
    whole = ppo_line(1)
    path.write_bytes(ppo_line(0) + whole[:30])
    cursor = EventCursor(path)
    first = cursor.read()
    waiting = (cursor.line_number, cursor.pending_bytes)
    with path.open("ab") as f:
        f.write(whole[30:])
    second = cursor.read()
    assert [first, second] == [
        EventBatch(events=(PPOUpdateCompleted.model_validate_json(ppo_line(0)),)),
        EventBatch(events=(PPOUpdateCompleted.model_validate_json(whole),)),
    ]
    assert (waiting, cursor.pending_bytes) == ((1, 30), 0)


def test_the_cursor_reports_complete_bad_lines_by_number(tmp_path: Path) -> None:
    """A complete line that is not an event is a BadLine with its number, never torn."""
    path = tmp_path / EVENTS_FILE
    path.write_bytes(ppo_line(0) + b"\n" + b'{"not": "an event"}\n' + ppo_line(1))
    batch = EventCursor(path).read()
    assert updates(batch) == [0, 1]
    assert batch.bad_lines == (
        BadLine(path, 3, "not a valid event: event_type: Field required", torn=False),
    )


def test_the_cursor_starts_over_when_the_file_shrinks(tmp_path: Path) -> None:
    """A truncated, shorter file is read again from its start, flagged as a restart."""
    path = tmp_path / EVENTS_FILE
    path.write_bytes(ppo_line(0) + ppo_line(1))
    cursor = EventCursor(path)
    first = cursor.read()
    path.write_bytes(ppo_line(7))
    second = cursor.read()
    third = cursor.read()
    assert [(updates(b), b.restarted) for b in (first, second, third)] == [
        ([0, 1], False),
        ([7], True),
        ([], False),
    ]
    assert (cursor.restarts, cursor.line_number) == (1, 1)


def test_the_cursor_starts_over_when_the_file_is_replaced(tmp_path: Path) -> None:
    """A file renamed over the one being read (even a longer one) is read from its start."""
    path = tmp_path / EVENTS_FILE
    path.write_bytes(ppo_line(0))
    cursor = EventCursor(path)
    first = cursor.read()
    keep_inode_busy = path.open("rb")  # so that the new file cannot reuse its inode
    try:
        (tmp_path / "new.jsonl").write_bytes(ppo_line(5) + ppo_line(6))
        os.replace(tmp_path / "new.jsonl", path)
        second = cursor.read()
    finally:
        keep_inode_busy.close()
    assert [(updates(b), b.restarted) for b in (first, second)] == [([0], False), ([5, 6], True)]


def test_the_cursor_skips_an_over_long_line_written_in_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line over MAX_LINE_BYTES is skipped as it grows and reported once it ends."""
    monkeypatch.setattr(_reader, "MAX_LINE_BYTES", 2000)
    path = tmp_path / EVENTS_FILE
    path.write_bytes(ppo_line(0) + b"x" * 3000)
    cursor = EventCursor(path)
    first = cursor.read()
    waiting = cursor.pending_bytes
    with path.open("ab") as f:
        f.write(b"x" * 3000 + b"\n" + ppo_line(2))
    second = cursor.read()
    assert [(updates(b), b.bad_lines) for b in (first, second)] == [
        ([0], ()),
        ([2], (BadLine(path, 2, "line longer than 2000 bytes"),)),
    ]
    assert (waiting, cursor.line_number) == (0, 3)


def test_max_lines_bounds_one_read_and_the_next_read_goes_on(tmp_path: Path) -> None:
    """read(max_lines=2) takes two lines and says there may be more; the rest follow."""
    path = tmp_path / EVENTS_FILE
    path.write_bytes(b"".join(ppo_line(k) for k in range(5)))
    cursor = EventCursor(path)
    reads = [cursor.read(max_lines=2) for _ in range(3)]
    assert [(updates(b), b.more) for b in reads] == [([0, 1], True), ([2, 3], True), ([4], False)]
    with pytest.raises(ValueError, match="max_lines must be None or an int >= 1, got 0"):
        cursor.read(max_lines=0)


def test_a_file_that_does_not_exist_yet_reads_as_empty(tmp_path: Path) -> None:
    """A cursor on a run directory without events reads nothing until the file appears."""
    cursor = EventCursor(tmp_path)
    before = cursor.read()
    (tmp_path / EVENTS_FILE).write_bytes(ppo_line(0))
    after = cursor.read()
    assert [(updates(b), b.restarted) for b in (before, after)] == [([], False), ([0], False)]
    with pytest.raises(FileNotFoundError, match="no such run directory or events file"):
        EventCursor(tmp_path / "nope")


# -- read_events ----------------------------------------------------------------------


def test_read_events_gives_back_exactly_what_was_written(tmp_path: Path) -> None:
    """read_events yields every event in order, equal to what was emitted (NaN included)."""
    events = write_run(tmp_path, "r1")
    assert dumps(list(read_events(tmp_path))) == dumps(events)
    assert dumps(list(read_events(tmp_path / EVENTS_FILE))) == dumps(events)


def test_bad_lines_are_skipped_and_reported_with_their_line_numbers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each kind of bad line is skipped with a reason and line number; good lines are read."""
    good = write_run(tmp_path / "src", "r1")
    good_lines = (tmp_path / "src" / EVENTS_FILE).read_bytes().splitlines(keepends=True)
    newer = json.loads(good_lines[0])
    newer["schema_version"] = SCHEMA_VERSION + 1
    newer_shape = {**newer, "payload": {"something": "else"}}
    no_timestamp = json.loads(good_lines[1])
    del no_timestamp["timestamp"]
    lines = [
        good_lines[0],  # 1
        bytes(range(256)).replace(b"\n", b"") + b"\n",  # 2: random bytes
        good_lines[1][:40] + b"\n",  # 3: truncated JSON
        good_lines[1].replace(b"r1", b"r\xff1"),  # 4: invalid UTF-8
        json.dumps(newer).encode() + b"\n",  # 5: newer schema_version, valid shape
        json.dumps(newer_shape).encode() + b"\n",  # 6: newer schema_version, new shape
        b"[1, 2, 3]\n",  # 7: valid JSON, wrong shape
        b'{"event_type": "PPO_UPDATE_COMPLETED", "update": 1, "payload": {}}\n',  # 8
        json.dumps(no_timestamp).encode() + b"\n",  # 9: an envelope field missing
        b"\n",  # 10: blank, skipped silently
        *good_lines[1:],  # 11..
        good_lines[2][:-30],  # torn tail
    ]
    (tmp_path / EVENTS_FILE).write_bytes(b"".join(lines))
    _, torn_reason = parse_line(lines[-1])
    bad: list[BadLine] = []
    with caplog.at_level(logging.WARNING, logger="esper_telemetry.analytics"):
        events = list(read_events(tmp_path, on_bad_line=bad.append))
    assert dumps(events) == dumps(good)
    newer_reason = (
        f"schema_version {SCHEMA_VERSION + 1} is newer than this reader understands "
        f"({SCHEMA_VERSION}); upgrade esper-telemetry to read it"
    )
    path = tmp_path / EVENTS_FILE
    assert bad == [
        BadLine(path, 2, "invalid UTF-8 at byte offset 127"),
        BadLine(path, 3, "Invalid JSON: EOF while parsing a value at line 1 column 40"),
        BadLine(path, 4, f"invalid UTF-8 at byte offset {good_lines[1].index(b'r1') + 1}"),
        BadLine(path, 5, newer_reason),
        BadLine(path, 6, newer_reason),
        BadLine(path, 7, "not a valid event: line: Input should be an object"),
        BadLine(
            path, 8, "not a valid event: payload.policy_loss: Field required (and 2 more errors)"
        ),
        BadLine(path, 9, "not an event as logged: missing timestamp"),
        BadLine(path, len(lines), f"torn last line (no newline at the end): {torn_reason}", True),
    ]
    assert [r.getMessage() for r in caplog.records] == [
        f"skipped a bad line of an events file: {b}" for b in bad
    ]


def test_more_than_ten_bad_lines_log_ten_warnings_then_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log gets the first ten bad lines one by one, then a single line with the total."""
    (tmp_path / EVENTS_FILE).write_bytes(b"garbage\n" * 25)
    with caplog.at_level(logging.WARNING, logger="esper_telemetry.analytics"):
        assert list(read_events(tmp_path)) == []
    path = tmp_path / EVENTS_FILE
    reason = "Invalid JSON: expected value at line 1 column 1"
    assert [r.getMessage() for r in caplog.records] == [
        *(f"skipped a bad line of an events file: {path}:{n}: {reason}" for n in range(1, 11)),
        f"{path}: 25 bad lines skipped in all (the first 10 were logged)",
    ]


def test_a_line_over_the_limit_is_skipped_without_being_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line longer than MAX_LINE_BYTES is reported and the reader goes on after it."""
    events = write_run(tmp_path / "src", "r1")
    good = (tmp_path / "src" / EVENTS_FILE).read_bytes()
    monkeypatch.setattr(_reader, "MAX_LINE_BYTES", 2000)
    (tmp_path / EVENTS_FILE).write_bytes(b"x" * 9000 + b"\n" + good)
    bad: list[BadLine] = []
    assert dumps(list(read_events(tmp_path, on_bad_line=bad.append))) == dumps(events)
    assert bad == [BadLine(tmp_path / EVENTS_FILE, 1, "line longer than 2000 bytes")]


def test_read_events_takes_the_end_of_the_file_as_the_end_of_its_last_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished file's unterminated last line is read when valid, reported when not."""
    monkeypatch.setattr(_reader, "MAX_LINE_BYTES", 2000)
    path = tmp_path / EVENTS_FILE
    results = []
    for tail in (ppo_line(1)[:-1], b"x" * 3000, b"   "):
        path.write_bytes(ppo_line(0) + tail)
        bad: list[BadLine] = []
        results.append(([e.update for e in read_events(path, on_bad_line=bad.append)], bad))
    assert results == [
        ([0, 1], []),
        ([0], [BadLine(path, 2, "line longer than 2000 bytes", torn=False)]),
        ([0], []),
    ]


def test_read_events_streams_in_bounded_memory(tmp_path: Path) -> None:
    """Reading 10,000 events keeps Python's peak allocation far below the file's size."""
    (tmp_path / EVENTS_FILE).write_bytes(b"".join(ppo_line(k) for k in range(10_000)))
    size = (tmp_path / EVENTS_FILE).stat().st_size
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_events(tmp_path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 10_000
    assert peak < size / 20


def test_a_missing_run_is_reported_before_iteration(tmp_path: Path) -> None:
    """read_events raises FileNotFoundError at once for a missing dir or events file."""
    with pytest.raises(FileNotFoundError, match="no such run directory or events file"):
        read_events(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no events\.jsonl in run directory"):
        read_events(tmp_path)
    with pytest.raises(FileNotFoundError, match="matches"):
        find_event_files(str(tmp_path / "*"))


def test_find_event_files_resolves_dirs_files_and_globs(tmp_path: Path) -> None:
    """Dirs give their events.jsonl; a glob skips dirs without one and non-.jsonl files."""
    for name in ("b", "a"):
        write_run(tmp_path / name, name)
    (tmp_path / "empty").mkdir()
    (tmp_path / "export.parquet").write_bytes(b"PAR1")
    assert events_file(tmp_path / "a") == tmp_path / "a" / EVENTS_FILE
    assert find_event_files(tmp_path / "a" / EVENTS_FILE) == [tmp_path / "a" / EVENTS_FILE]
    assert find_event_files(f"{tmp_path}/*") == [
        tmp_path / "a" / EVENTS_FILE,
        tmp_path / "b" / EVENTS_FILE,
    ]
    assert find_event_files(f"{tmp_path}/*/events.jsonl") == find_event_files(f"{tmp_path}/*")


# -- connect --------------------------------------------------------------------------


def columns(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    rows = con.execute(f"DESCRIBE {table}").fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


LEVEL = "ENUM('OFF', 'MINIMAL', 'NORMAL', 'DEBUG')"


def test_connect_creates_the_five_tables_with_typed_columns(tmp_path: Path) -> None:
    """events, ppo_updates, recurrent_health, anomalies and level_changes exist with the
    documented types."""
    write_run(tmp_path, "r1")
    con = connect(tmp_path)
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert tables == set(TABLES)
    assert columns(con, "events") == [
        ("run_id", "VARCHAR"),
        ("seq", "BIGINT"),
        ("update", "BIGINT"),
        ("event_type", "VARCHAR"),
        ("level", LEVEL),
        ("rank", "BIGINT"),
        ("timestamp", "TIMESTAMP WITH TIME ZONE"),
        ("schema_version", "BIGINT"),
        ("payload", "JSON"),
    ]
    ppo = dict(columns(con, "ppo_updates"))
    assert list(ppo)[:6] == ["run_id", "seq", "update", "timestamp", "rank", "level"]
    # Every payload field but the named states, which are recurrent_health's rows.
    named = ("recurrent_health", "recurrent_detail", "replay")
    assert list(ppo)[6:] == [n for n in PPOUpdatePayload.model_fields if n not in named]
    booleans = {"lstm_has_nan", "lstm_has_inf"}
    doubles = (
        {n for n in ppo if n.startswith("lstm_")}
        - booleans
        - {
            "lstm_detail",
            "lstm_outlier_envs",
        }
    )
    doubles |= {"policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"}
    doubles |= {"explained_variance", "grad_norm", "learning_rate"}
    assert len(doubles) == 18
    assert {n: ppo[n] for n in doubles} == dict.fromkeys(doubles, "DOUBLE")
    assert {n: ppo[n] for n in booleans} == dict.fromkeys(booleans, "BOOLEAN")
    assert (ppo["env_steps"], ppo["lstm_detail"], ppo["lstm_outlier_envs"], ppo["extra"]) == (
        "BIGINT",
        "JSON",
        "BIGINT[]",
        "MAP(VARCHAR, DOUBLE)",
    )
    assert {n: ppo[n] for n in ("health_scope", "health_ranks", "primary_state")} == {
        "health_scope": "VARCHAR",
        "health_ranks": "BIGINT",
        "primary_state": "VARCHAR",
    }
    assert (ppo["episode_return_mean"], ppo["episode_return_window"]) == ("DOUBLE", "BIGINT")
    figures = LSTMHealthMetrics.FIGURES
    assert columns(con, "recurrent_health") == [
        *columns(con, "ppo_updates")[:6],
        ("name", "VARCHAR"),
        ("is_primary", "BOOLEAN"),
        *((f, "BOOLEAN" if f.startswith("has_") else "DOUBLE") for f in figures),
        ("has_cell", "BOOLEAN"),
        ("scope", "VARCHAR"),
        ("ranks", "BIGINT"),
        ("detail", "JSON"),
        ("replay_max_abs_diff", "DOUBLE"),
        ("replay_dtype", "VARCHAR"),
        *((f"replay_{n}", "BIGINT") for n in ("compared", "mismatched", "first_env", "first_step")),
        ("replay_drift", "DOUBLE"),
        ("replay_ranks", "BIGINT"),
        ("replay_first_rank", "BIGINT"),
    ]
    assert [c for c, _ in columns(con, "anomalies")] == [
        *("run_id", "seq", "update", "timestamp", "rank", "level", "anomaly_type", "severity"),
        *("observed", "threshold", "message", "state", "outlier_envs"),
    ]
    assert columns(con, "level_changes")[-3:] == [
        ("previous", LEVEL),
        ("level", LEVEL),
        ("reason", "VARCHAR"),
    ]


def test_ppo_updates_keep_nan_inf_and_exact_bits(tmp_path: Path) -> None:
    """NaN stays NaN (isnan works), Inf stays Inf, -0.0 and subnormals keep their bits."""
    write_run(tmp_path, "r1")
    con = connect(tmp_path)
    rows = con.execute(
        "SELECT update, lstm_h_rms, isnan(lstm_h_rms), isinf(lstm_h_rms), lstm_has_nan, "
        "level, approx_kl, env_steps, extra['mean_reward'], lstm_outlier_envs "
        "FROM ppo_updates ORDER BY update"
    ).fetchall()
    assert [bits(r[1]) for r in rows] == [bits(x) for x in H_RMS]
    assert [r[2:6] for r in rows] == [
        (False, False, False, "NORMAL"),
        (True, False, True, "DEBUG"),
        (False, True, False, "DEBUG"),
        (False, False, False, "DEBUG"),
        (False, False, False, "DEBUG"),
    ]
    assert [r[6] for r in rows] == [None, 0.01, 0.01, 0.01, 0.01]
    assert [r[7] for r in rows] == [128, 256, 384, 512, 640]
    rewards = [r[8] for r in rows]
    assert math.isnan(rewards[2])
    assert rewards[:2] + rewards[3:] == [0.0, 1.0, 3.0, 4.0]
    assert [r[9] for r in rows] == [None, [1], [1], [1], [1]]
    assert con.execute("SELECT count(*) FROM ppo_updates WHERE isnan(lstm_h_rms)").fetchall() == [
        (1,)
    ]


def test_json_columns_hold_the_strict_json_of_the_contracts(tmp_path: Path) -> None:
    """events.payload and ppo_updates.lstm_detail are strict JSON that validates back."""
    events = write_run(tmp_path, "r1")
    con = connect(tmp_path)
    payloads = con.execute("SELECT payload FROM events ORDER BY seq").fetchall()
    assert [p for (p,) in payloads] == [e.payload.model_dump_json() for e in events]
    ((detail,),) = con.execute("SELECT lstm_detail FROM ppo_updates WHERE update = 1").fetchall()
    assert json.loads(detail)["h_layer_rms"] == ["NaN"]
    assert con.execute(
        "SELECT payload->>'$.anomaly.observed', level FROM events "
        "WHERE event_type = 'ANOMALY_DETECTED'"
    ).fetchall() == [("NaN", "DEBUG")]


def test_anomalies_and_level_changes_rows(tmp_path: Path) -> None:
    """Anomaly and level-change events become one typed row each."""
    write_run(tmp_path, "r1")
    con = connect(tmp_path)
    ((anomaly),) = con.execute(
        "SELECT run_id, update, anomaly_type, severity, isnan(observed), threshold, message, "
        "outlier_envs FROM anomalies"
    ).fetchall()
    assert anomaly == ("r1", 1, "lstm_nan", "critical", True, None, "NaN in h.", [1])
    assert con.execute(
        "SELECT run_id, update, previous, level, reason, "
        "level > previous, level > 'NORMAL'::telemetry_level FROM level_changes"
    ).fetchall() == [("r1", 0, "NORMAL", "DEBUG", "lstm_nan at update 1", True, True)]
    assert TelemetryLevel.DEBUG > TelemetryLevel.NORMAL


def test_a_glob_of_runs_gives_one_table_with_run_id(tmp_path: Path) -> None:
    """connect('runs/*') puts every run's rows in the same tables, told apart by run_id."""
    for name in ("alpha", "beta"):
        write_run(tmp_path / "runs" / name, f"run-{name}")
    (tmp_path / "runs" / "no-events").mkdir()
    con = connect(str(tmp_path / "runs" / "*"))
    assert con.execute(
        "SELECT run_id, count(*), count(*) FILTER (WHERE isnan(lstm_h_rms)) "
        "FROM ppo_updates GROUP BY run_id ORDER BY run_id"
    ).fetchall() == [("run-alpha", 5, 1), ("run-beta", 5, 1)]
    assert con.execute("SELECT count(DISTINCT run_id), count(*) FROM events").fetchall() == [
        (2, 14)
    ]


def test_connect_reports_bad_lines_and_loads_the_rest(tmp_path: Path) -> None:
    """A corrupt line reaches on_bad_line; the tables hold every good event."""
    write_run(tmp_path, "r1")
    with (tmp_path / EVENTS_FILE).open("ab") as f:
        f.write(b'{"event_type": "PPO_UPD')
    bad: list[BadLine] = []
    con = connect(tmp_path, on_bad_line=bad.append, chunk_rows=2)
    assert con.execute("SELECT update FROM ppo_updates ORDER BY seq").fetchall() == [
        (0,),
        (1,),
        (2,),
        (3,),
        (4,),
    ]
    reason = "torn last line (no newline at the end): Invalid JSON: EOF while parsing a string"
    assert bad == [BadLine(tmp_path / EVENTS_FILE, 8, f"{reason} at line 1 column 23", torn=True)]


def test_version_1_lines_of_every_event_type_still_load(tmp_path: Path) -> None:
    """A log written with schema_version 1 reads into the new classes and fills each table."""
    (tmp_path / EVENTS_FILE).write_bytes(b"".join(V1_LINES))
    envelope = {"run_id": "v1", "timestamp": V1_TIME, "schema_version": 1}
    anomaly = Anomaly(type="lstm_nan", severity="critical", observed=math.nan, message="NaN in h.")
    expected: list[TelemetryEvent] = [
        RunStarted(
            **envelope,
            seq=0,
            update=0,
            payload=RunStartedPayload(
                config={"lr": 0.001, "envs": 8, "nested": {"x": [1, 2]}}, description="demo"
            ),
        ),
        PPOUpdateCompleted.model_validate_json(V1_LINES[1]),
        AnomalyDetected(
            **envelope,
            seq=2,
            update=1,
            level=TelemetryLevel.DEBUG,
            payload=AnomalyDetectedPayload(anomaly=anomaly, outlier_envs=(1,)),
        ),
        TelemetryLevelChanged(
            **envelope,
            seq=3,
            update=1,
            level=TelemetryLevel.DEBUG,
            payload=TelemetryLevelChangedPayload(
                previous=TelemetryLevel.NORMAL,
                level=TelemetryLevel.DEBUG,
                reason="lstm_nan at update 1",
            ),
        ),
        RunFinished(
            **envelope,
            seq=4,
            update=1,
            level=TelemetryLevel.DEBUG,
            payload=RunFinishedPayload(
                status="halted", message="critical anomaly", summary={"return": 12.5}
            ),
        ),
    ]
    bad: list[BadLine] = []
    assert dumps(list(read_events(tmp_path, on_bad_line=bad.append))) == dumps(expected)
    assert bad == []
    con = connect(tmp_path)
    assert con.execute(
        "SELECT seq, event_type, level, schema_version FROM events ORDER BY seq"
    ).fetchall() == [
        (0, "RUN_STARTED", "NORMAL", 1),
        (1, "PPO_UPDATE_COMPLETED", "NORMAL", 1),
        (2, "ANOMALY_DETECTED", "DEBUG", 1),
        (3, "TELEMETRY_LEVEL_CHANGED", "DEBUG", 1),
        (4, "RUN_FINISHED", "DEBUG", 1),
    ]
    assert con.execute(
        "SELECT seq, update, isnan(lstm_h_rms), lstm_h_env_rms_max, env_steps, lstm_has_nan, "
        "lstm_outlier_envs, extra FROM ppo_updates"
    ).fetchall() == [(1, 1, True, math.inf, 256, True, [1], {"mean_reward": 1.5})]
    assert con.execute(
        "SELECT run_id, seq, update, timestamp, level, anomaly_type, severity, "
        "isnan(observed), threshold, message, outlier_envs FROM anomalies"
    ).fetchall() == [
        ("v1", 2, 1, V1_TIME, "DEBUG", "lstm_nan", "critical", True, None, "NaN in h.", [1])
    ]
    assert con.execute("SELECT seq, previous, level, reason FROM level_changes").fetchall() == [
        (3, "NORMAL", "DEBUG", "lstm_nan at update 1")
    ]


def test_tables_selects_what_is_loaded(tmp_path: Path) -> None:
    """tables=['ppo_updates'] creates only that table; an unknown name is refused."""
    write_run(tmp_path, "r1")
    con = connect(tmp_path, tables=["ppo_updates"])
    names = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
    assert names == ["ppo_updates"]
    with pytest.raises(ValueError, match="tables: unknown"):
        connect(tmp_path, tables=["ppo"])
    with pytest.raises(ValueError, match="chunk_rows"):
        connect(tmp_path, chunk_rows=0)


# -- named recurrent states -----------------------------------------------------------


def gru_health(h_rms: float) -> LSTMHealthMetrics:
    """The health of a GRU state: h alone, every c figure None."""
    return LSTMHealthMetrics(
        h_l2_total=1.5,
        c_l2_total=None,
        h_rms=h_rms,
        c_rms=None,
        h_env_rms_mean=0.2,
        h_env_rms_max=0.3,
        c_env_rms_mean=None,
        c_env_rms_max=None,
        h_max=0.7,
        c_max=None,
        has_nan=math.isnan(h_rms),
        has_inf=math.isinf(h_rms),
    )


#: The h RMS of the GRU state "value" at each update of write_named_run.
VALUE_H_RMS = [0.25, math.nan, 2.0]
#: Its detail at update 1, where its NaN makes it CRITICAL (so the update carries it).
VALUE_DETAIL = LSTMHealthDetail(
    h_layer_rms=(math.nan,), c_layer_rms=None, h_env_rms=(math.nan, 0.1), c_env_rms=None
)


def write_named_run(run_dir: Path, run_id: str, primary: str = "policy") -> None:
    """Three updates of two named states, the LSTM "policy" and the GRU "value", and an
    anomaly found in "value" at update 1."""
    with TelemetryHub(run_id) as hub:
        hub.subscribe(AnalyticsCollector(run_dir))
        for k, h_rms in enumerate(VALUE_H_RMS):
            emit_ppo_update_event(
                hub,
                update=k,
                metrics={"policy_loss": 0.1, "value_loss": 0.2, "entropy": 0.3},
                recurrent_health={
                    "policy": health(0.5),
                    "value": (gru_health(h_rms), VALUE_DETAIL),
                },
                primary=primary,
                episode_return_mean=math.nan if k == 0 else 10.0 * k,
                episode_return_window=20,
            )
            if k == 1:
                anomaly = Anomaly(
                    type="lstm_nan",
                    severity="critical",
                    observed=math.nan,
                    message="NaN in h.",
                    state="value",
                )
                hub.emit(AnomalyDetected(update=k, payload=AnomalyDetectedPayload(anomaly=anomaly)))


def shown(row: tuple[object, ...]) -> tuple[object, ...]:
    """A row with each NaN as the string "NaN", so rows compare with ==."""
    return tuple("NaN" if isinstance(v, float) and math.isnan(v) else v for v in row)


FIGURES = ", ".join(LSTMHealthMetrics.FIGURES)


def test_recurrent_health_holds_one_row_per_named_state_of_each_update(tmp_path: Path) -> None:
    """Two named states give two rows per update, each with its exact figures (NaN kept, c
    NULL for the GRU), told apart by name, the primary one marked."""
    write_named_run(tmp_path, "named")
    con = connect(tmp_path)
    rows = con.execute(
        f"SELECT update, name, is_primary, {FIGURES}, has_cell, scope, ranks "
        "FROM recurrent_health ORDER BY update, name"
    ).fetchall()
    expected = [
        (k, name, name == "policy", *(getattr(m, f) for f in m.FIGURES), m.has_cell, "process", 1)
        for k, h_rms in enumerate(VALUE_H_RMS)
        for name, m in (("policy", health(0.5)), ("value", gru_health(h_rms)))
    ]
    assert [shown(r) for r in rows] == [shown(r) for r in expected]
    value = con.execute(
        "SELECT update, h_rms, isnan(h_rms), c_rms, c_max, has_nan, has_cell "
        "FROM recurrent_health WHERE name = 'value' ORDER BY update"
    ).fetchall()
    assert [shown(r) for r in value] == [
        (0, 0.25, False, None, None, False, False),
        (1, "NaN", True, None, None, True, False),
        (2, 2.0, False, None, None, False, False),
    ]
    assert con.execute(
        "SELECT count(*) FROM recurrent_health WHERE name = 'value' AND isnan(h_rms)"
    ).fetchall() == [(1,)]


def test_recurrent_health_holds_the_detail_of_a_state_where_the_update_has_it(
    tmp_path: Path,
) -> None:
    """The detail column is the state's LSTMHealthDetail as strict JSON, NaN as "NaN", and
    NULL where the update carries no detail of that state."""
    write_named_run(tmp_path, "named")
    con = connect(tmp_path, tables=["recurrent_health"])
    rows = con.execute(
        "SELECT update, name, detail FROM recurrent_health WHERE detail IS NOT NULL"
    ).fetchall()
    assert [(u, n) for u, n, _ in rows] == [(1, "value")]
    text = rows[0][2]
    assert json.loads(text)["h_layer_rms"] == ["NaN"]
    assert json.loads(text)["c_layer_rms"] is None
    assert LSTMHealthDetail.model_validate_json(text).model_dump_json() == (
        VALUE_DETAIL.model_dump_json()
    )


def test_ppo_updates_name_the_primary_state_and_the_episode_returns(tmp_path: Path) -> None:
    """ppo_updates keeps one row per update: the primary state's flat figures, its name,
    and the declared episode returns (NaN kept)."""
    write_named_run(tmp_path, "named")
    con = connect(tmp_path)
    rows = con.execute(
        "SELECT update, primary_state, lstm_h_rms, lstm_c_rms, episode_return_mean, "
        "episode_return_window FROM ppo_updates ORDER BY update"
    ).fetchall()
    assert [shown(r) for r in rows] == [
        (0, "policy", 0.5, 1.0, "NaN", 20),
        (1, "policy", 0.5, 1.0, 10.0, 20),
        (2, "policy", 0.5, 1.0, 20.0, 20),
    ]


def test_a_gru_primary_state_leaves_the_c_columns_null(tmp_path: Path) -> None:
    """With the GRU "value" as the primary state, ppo_updates holds its h figures and NULL
    for every lstm_c_* column."""
    write_named_run(tmp_path, "gru", primary="value")
    con = connect(tmp_path, tables=["ppo_updates", "recurrent_health"])
    c_columns = [f"lstm_{f}" for f in LSTMHealthMetrics.FIGURES if f.startswith("c_")]
    rows = con.execute(
        f"SELECT update, primary_state, lstm_h_rms, {', '.join(c_columns)} "
        "FROM ppo_updates ORDER BY update"
    ).fetchall()
    assert [shown(r) for r in rows] == [
        (k, "value", h, None, None, None, None, None)
        for k, h in enumerate(shown(tuple(VALUE_H_RMS)))
    ]
    assert con.execute(
        "SELECT DISTINCT name FROM recurrent_health WHERE is_primary"
    ).fetchall() == [("value",)]


def test_anomalies_name_the_state_they_were_found_in(tmp_path: Path) -> None:
    """anomalies.state is the anomaly's state; NULL for an anomaly that names none."""
    write_named_run(tmp_path / "named", "named")
    write_run(tmp_path / "unnamed", "unnamed")
    con = connect(str(tmp_path / "*"), tables=["anomalies"])
    assert con.execute(
        "SELECT run_id, update, anomaly_type, state FROM anomalies ORDER BY run_id"
    ).fetchall() == [("named", 1, "lstm_nan", "value"), ("unnamed", 1, "lstm_nan", None)]


#: A PPO update and an anomaly as schema_version 2 wrote them: the state's figures only in
#: the flat lstm_* fields, no state names, no episode returns.
V2_LINES = (
    b'{"event_type":"PPO_UPDATE_COMPLETED","schema_version":2,"run_id":"v2","seq":0,'
    b'"update":0,"timestamp":"2026-01-02T03:04:05.678901Z","rank":0,"level":2,"payload":'
    b'{"policy_loss":-0.01,"value_loss":0.5,"entropy":0.69,"approx_kl":0.01,'
    b'"clip_fraction":null,"explained_variance":null,"grad_norm":null,"learning_rate":null,'
    b'"env_steps":256,"lstm_h_l2_total":2.0,"lstm_c_l2_total":4.0,"lstm_h_rms":"NaN",'
    b'"lstm_c_rms":1.0,"lstm_h_env_rms_mean":0.5,"lstm_h_env_rms_max":"Infinity",'
    b'"lstm_c_env_rms_mean":1.0,"lstm_c_env_rms_max":1.2,"lstm_h_max":0.9,"lstm_c_max":2.5,'
    b'"lstm_has_nan":true,"lstm_has_inf":true,"lstm_detail":{"h_layer_rms":["NaN"],'
    b'"c_layer_rms":[1.0],"h_env_rms":["NaN",0.5],"c_env_rms":[1.0,1.0]},'
    b'"lstm_outlier_envs":[0],"health_scope":"all_ranks","health_ranks":2,'
    b'"extra":{"mean_reward":1.5}}}\n',
    b'{"event_type":"ANOMALY_DETECTED","schema_version":2,"run_id":"v2","seq":1,"update":0,'
    b'"timestamp":"2026-01-02T03:04:05.678901Z","rank":0,"level":2,"payload":{"anomaly":'
    b'{"type":"lstm_nan","severity":"critical","observed":"NaN","threshold":null,'
    b'"message":"NaN in h."},"outlier_envs":[0]}}\n',
)


def test_a_log_from_before_state_names_gives_a_policy_row(tmp_path: Path) -> None:
    """A version-2 update, with only the flat lstm_* fields, is one recurrent_health row
    named "policy" holding those figures and its detail; an update without a recurrent
    state gives none; names, state and returns it predates are NULL."""
    (tmp_path / EVENTS_FILE).write_bytes(b"".join(V2_LINES) + ppo_line(1, seq=2))
    con = connect(tmp_path)
    rows = con.execute(
        f"SELECT seq, name, is_primary, {FIGURES}, has_cell, scope, ranks, detail->'$.h_env_rms' "
        "FROM recurrent_health"
    ).fetchall()
    assert [shown(r) for r in rows] == [
        (
            *(0, "policy", True, 2.0, 4.0, "NaN", 1.0, 0.5, math.inf, 1.0, 1.2, 0.9, 2.5),
            *(True, True, True, "all_ranks", 2, '["NaN",0.5]'),
        )
    ]
    assert con.execute(
        "SELECT seq, primary_state, episode_return_mean, episode_return_window FROM ppo_updates "
        "ORDER BY seq"
    ).fetchall() == [(0, None, None, None), (2, None, None, None)]
    assert con.execute("SELECT seq, state FROM anomalies").fetchall() == [(1, None)]


def test_old_and_new_runs_answer_the_same_query(tmp_path: Path) -> None:
    """One query over a version-2 run and a run with named states reads the primary state
    of both, and a state by name."""
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / EVENTS_FILE).write_bytes(b"".join(V2_LINES))
    write_named_run(tmp_path / "new", "new")
    con = connect(str(tmp_path / "*"), tables=["recurrent_health"])
    rows = con.execute(
        "SELECT run_id, update, name, h_rms, c_rms FROM recurrent_health "
        "WHERE name = 'policy' ORDER BY run_id, update"
    ).fetchall()
    assert [shown(r) for r in rows] == [
        ("new", 0, "policy", 0.5, 1.0),
        ("new", 1, "policy", 0.5, 1.0),
        ("new", 2, "policy", 0.5, 1.0),
        ("v2", 0, "policy", "NaN", 1.0),
    ]
    assert con.execute(
        "SELECT run_id, count(*) FROM recurrent_health WHERE is_primary GROUP BY run_id "
        "ORDER BY run_id"
    ).fetchall() == [("new", 3), ("v2", 1)]


def test_run_query_over_recurrent_health_loads_only_that_table(tmp_path: Path) -> None:
    """A statement over recurrent_health runs on a database that holds only it."""
    write_named_run(tmp_path, "named")
    sql = (
        "SELECT (SELECT list(table_name ORDER BY table_name) FROM duckdb_tables()) AS loaded, "
        "count(*) AS n FROM recurrent_health WHERE name = 'value'"
    )
    assert list(run_query(tmp_path, sql, fmt="json")) == ['{"loaded":["recurrent_health"],"n":3}\n']


def test_recurrent_health_exports_to_parquet_in_key_order(tmp_path: Path) -> None:
    """export_parquet(table='recurrent_health') writes every row, by run_id, seq, name."""
    write_named_run(tmp_path / "run", "named")
    dest = tmp_path / "states.parquet"
    assert export_parquet(tmp_path / "run", dest, table="recurrent_health") == 6
    assert duckdb.connect().execute(
        f"SELECT update, name, isnan(h_rms) FROM '{dest}'"
    ).fetchall() == [
        (0, "policy", False),
        (0, "value", False),
        (1, "policy", False),
        (1, "value", True),
        (2, "policy", False),
        (2, "value", False),
    ]


@pytest.mark.parametrize(
    "sql",
    [
        "COPY events TO '{dir}/out.csv'",
        "ATTACH '{dir}/other.duckdb'",
        "SELECT * FROM read_json_auto('{dir}/events.jsonl')",
        "SELECT * FROM read_text('/etc/hostname')",
        "INSTALL httpfs",
    ],
)
def test_sql_on_a_connection_cannot_touch_files(tmp_path: Path, sql: str) -> None:
    """File reads, writes, ATTACH and extension installs are refused; the log is unchanged."""
    write_run(tmp_path, "r1")
    before = (tmp_path / EVENTS_FILE).read_bytes()
    con = connect(tmp_path)
    with pytest.raises(duckdb.Error):
        con.execute(sql.format(dir=tmp_path))
    with pytest.raises(duckdb.Error):
        con.execute("SET enable_external_access = true")
    assert sorted(p.name for p in tmp_path.iterdir()) == [EVENTS_FILE]
    assert (tmp_path / EVENTS_FILE).read_bytes() == before


def test_allow_file_access_lets_sql_write_files(tmp_path: Path) -> None:
    """With allow_file_access=True, COPY ... TO works as in plain DuckDB."""
    write_run(tmp_path / "run", "r1")
    con = connect(tmp_path / "run", allow_file_access=True)
    con.execute(f"COPY (SELECT update FROM ppo_updates) TO '{tmp_path}/out.csv' (HEADER)")
    assert (tmp_path / "out.csv").read_text().split() == ["update", "0", "1", "2", "3", "4"]


def test_missing_duckdb_names_the_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without duckdb, connect() and export_parquet() raise ImportError naming the extra."""
    write_run(tmp_path, "r1")
    monkeypatch.setitem(sys.modules, "duckdb", None)
    monkeypatch.delitem(sys.modules, "esper_telemetry.analytics._duckdb")
    messages = []
    for call in (
        lambda: connect(tmp_path),
        lambda: export_parquet(tmp_path, tmp_path / "x.parquet"),
        lambda: run_query(tmp_path, "SELECT 1"),
        lambda: tables_in("SELECT 1"),
    ):
        with pytest.raises(ImportError) as info:
            call()
        messages.append(str(info.value))
    hint = "needs duckdb: pip install 'esper-telemetry[analytics]'"
    assert messages == [
        f"esper_telemetry.analytics.{name} {hint}"
        for name in ("connect", "export_parquet", "run_query", "tables_in")
    ]
    assert len(list(read_events(tmp_path))) == 7


def test_importing_analytics_and_reading_need_no_duckdb(tmp_path: Path) -> None:
    """esper_telemetry.analytics reads without duckdb or pyarrow, and loads no torch, hub
    or backend."""
    write_run(tmp_path, "r1")
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["duckdb"] = sys.modules["pyarrow"] = None  # as if not installed
        from esper_telemetry.analytics import connect, read_events
        print(len(list(read_events({str(tmp_path)!r}))))
        try:
            connect({str(tmp_path)!r})
        except ImportError as exc:
            print(exc)
        loaded = ("torch", "esper_telemetry.hub", "esper_telemetry.backends")
        print([name for name in loaded if name in sys.modules])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.splitlines() == [
        "7",
        "esper_telemetry.analytics.connect needs duckdb: pip install 'esper-telemetry[analytics]'",
        "[]",
    ]


# -- export_parquet -------------------------------------------------------------------


def test_export_parquet_writes_the_same_rows(tmp_path: Path) -> None:
    """The Parquet file holds the table's rows, NaN included, ordered by run_id and seq."""
    for name in ("b", "a"):
        write_run(tmp_path / "runs" / name, name)
    runs = str(tmp_path / "runs" / "*")
    dest = tmp_path / "ppo.parquet"
    assert export_parquet(runs, dest) == 10
    table = pq.read_table(dest)
    expected = connect(runs).sql("SELECT * FROM ppo_updates ORDER BY run_id, seq").to_arrow_table()
    assert table.column_names == expected.column_names
    got, want = table.to_pylist(), expected.to_pylist()
    assert [(r["run_id"], r["update"]) for r in got] == [(r["run_id"], r["update"]) for r in want]
    assert [bits(r["lstm_h_rms"]) for r in got] == [bits(r["lstm_h_rms"]) for r in want]
    assert json.dumps(got, default=str) == json.dumps(want, default=str)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ppo.parquet", "runs"]


def test_exported_nan_is_found_by_duckdb_isnan(tmp_path: Path) -> None:
    """DuckDB's isnan filter finds the NaN rows in the exported file (no float statistics)."""
    write_run(tmp_path / "run", "r1")
    dest = tmp_path / "ppo.parquet"
    export_parquet(tmp_path / "run", dest)
    assert duckdb.connect().execute(
        f"SELECT update FROM '{dest}' WHERE isnan(lstm_h_rms)"
    ).fetchall() == [(1,)]


def test_export_other_tables_and_refuse_bad_destinations(tmp_path: Path) -> None:
    """Any table exports, into a new folder too; a bad table or destination is refused."""
    write_run(tmp_path / "run", "r1")
    assert export_parquet(tmp_path / "run", tmp_path / "e.parquet", table="events") == 7
    assert export_parquet(tmp_path / "run", tmp_path / "a.parquet", table="anomalies") == 1
    with pytest.raises(ValueError, match="table must be one of"):
        export_parquet(tmp_path / "run", tmp_path / "x.parquet", table="nope")
    with pytest.raises(ValueError, match="is an events file being read"):
        export_parquet(tmp_path / "run", tmp_path / "run" / EVENTS_FILE)
    with pytest.raises(ValueError, match="is a directory"):
        export_parquet(tmp_path / "run", tmp_path)
    with pytest.raises(OSError, match="File exists"):
        export_parquet(tmp_path / "run", tmp_path / "e.parquet" / "x.parquet")
    assert export_parquet(tmp_path / "run", tmp_path / "new" / "p.parquet") == 5
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet")) == [
        "a.parquet",
        "e.parquet",
        "new/p.parquet",
    ]


def test_a_failed_export_leaves_the_old_file_and_no_temporary_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export that fails while writing keeps the destination as it was, with no leftover."""
    write_run(tmp_path / "run", "r1")
    dest = tmp_path / "ppo.parquet"
    dest.write_bytes(b"old")

    class FailingWriter(pq.ParquetWriter):  # type: ignore[misc]
        def write_batch(self, *args: object, **kwargs: object) -> None:
            raise OSError("disk full")

    monkeypatch.setattr(pq, "ParquetWriter", FailingWriter)
    with pytest.raises(OSError, match="disk full"):
        export_parquet(tmp_path / "run", dest)
    assert (sorted(p.name for p in tmp_path.iterdir()), dest.read_bytes()) == (
        ["ppo.parquet", "run"],
        b"old",
    )


# -- tables_in, render_result, run_query ----------------------------------------------


def test_tables_in_names_the_tables_a_statement_reads() -> None:
    """Only the analytics tables named are listed, in TABLES order; none or unparsable: None."""
    statements = [
        "SELECT * FROM ppo_updates",
        "SELECT * FROM LEVEL_CHANGES l JOIN events e USING (run_id, seq)",
        "WITH a AS (SELECT * FROM anomalies) SELECT * FROM a, other",
        "SELECT 1; SELECT * FROM main.events",
        "DESCRIBE ppo_updates",
        "SHOW TABLES",
        "SELEC 1",
        "PRAGMA table_info('events')",
        "SELECT * FROM recurrent_health r JOIN ppo_updates p USING (run_id, seq)",
    ]
    assert [tables_in(sql) for sql in statements] == [
        ["ppo_updates"],
        ["events", "level_changes"],
        ["anomalies"],
        ["events"],
        ["ppo_updates"],
        None,
        None,
        None,
        ["ppo_updates", "recurrent_health"],
    ]


VALUES_SQL = (
    "SELECT * FROM (VALUES "
    "(1, 0.25, 'a', true, '{\"x\": \"NaN\"}'::JSON, TIMESTAMPTZ '2026-01-02 03:04:05+00', "
    "[1, 2], map(['k'], [1.5]), 1.50::DECIMAL(4, 2)), "
    "(NULL, 'NaN'::DOUBLE, 'two\nlines\tand a tab', false, NULL, NULL, NULL, NULL, NULL), "
    "(3, 'Infinity'::DOUBLE, NULL, NULL, '[1]'::JSON, NULL, [], map(['n'], ['-inf'::DOUBLE]), "
    "-2.00)"
    ") AS t(n, x, s, b, j, ts, l, m, d)"
)


def render(sql: str, fmt: QueryFormat, batch_rows: int = 1024) -> list[str]:
    con = duckdb.connect()
    try:
        return list(render_result(con.execute(sql), fmt, batch_rows=batch_rows))
    finally:
        con.close()


def test_render_result_as_an_aligned_table() -> None:
    """Numbers right-aligned, NULL and non-finite floats spelled out, control chars escaped."""
    assert render(VALUES_SQL, "table") == [
        "   n         x  s                      b      j             ts                       "
        "  l      m                      d\n"
        "----  --------  ---------------------  -----  ------------  -------------------------"
        "  -----  -----------------  -----\n"
        '   1      0.25  a                      true   {"x": "NaN"}  2026-01-02T03:04:05+00:00'
        '  [1,2]  {"k":1.5}           1.50\n'
        "NULL       NaN  two\\nlines\\tand a tab  false  NULL          NULL                     "
        "  NULL   NULL                NULL\n"
        "   3  Infinity  NULL                   NULL   [1]           NULL                     "
        '  []     {"n":"-Infinity"}  -2.00\n'
        "(3 rows)\n"
    ]


def test_render_result_as_csv_in_batches() -> None:
    """A header, then batch_rows rows per piece; NULL is an empty field."""
    pieces = render(VALUES_SQL, "csv", batch_rows=2)
    assert pieces == [
        "n,x,s,b,j,ts,l,m,d\n"
        '1,0.25,a,true,"{""x"": ""NaN""}",2026-01-02T03:04:05+00:00,"[1,2]","{""k"":1.5}",1.50\n'
        ',NaN,"two\nlines\tand a tab",false,,,,,\n',
        '3,Infinity,,,[1],,[],"{""n"":""-Infinity""}",-2.00\n',
    ]


def test_render_result_as_strict_json_lines() -> None:
    """One strict JSON object per row: JSON columns nest, non-finite floats are strings."""
    (text,) = render(VALUES_SQL, "json")

    def refuse(token: str) -> None:
        raise AssertionError(f"non-strict JSON token {token}")

    assert [json.loads(line, parse_constant=refuse) for line in text.splitlines()] == [
        {
            "n": 1,
            "x": 0.25,
            "s": "a",
            "b": True,
            "j": {"x": "NaN"},
            "ts": "2026-01-02T03:04:05+00:00",
            "l": [1, 2],
            "m": {"k": 1.5},
            "d": 1.5,
        },
        {
            "n": None,
            "x": "NaN",
            "s": "two\nlines\tand a tab",
            "b": False,
            "j": None,
            "ts": None,
            "l": None,
            "m": None,
            "d": None,
        },
        {
            "n": 3,
            "x": "Infinity",
            "s": None,
            "b": None,
            "j": [1],
            "ts": None,
            "l": [],
            "m": {"n": "-Infinity"},
            "d": -2.0,
        },
    ]


def test_an_empty_result_renders_its_columns() -> None:
    """No rows: the table has its header and (0 rows), CSV its header, JSON nothing."""
    sql = "SELECT 1 AS a, 'x' AS b WHERE false"
    assert [render(sql, fmt) for fmt in QUERY_FORMATS] == [
        ["a  b\n-  -\n(0 rows)\n"],
        ["a,b\n"],
        [],
    ]
    with pytest.raises(ValueError, match="fmt must be one of table, csv, json, got 'xml'"):
        render(sql, "xml")  # type: ignore[arg-type]


def test_run_query_renders_sql_over_a_run(tmp_path: Path) -> None:
    """run_query loads the run, runs the statement and yields its rows as text."""
    write_run(tmp_path, "r1")
    sql = "SELECT update, lstm_h_rms FROM ppo_updates ORDER BY update"
    assert list(run_query(tmp_path, sql, fmt="csv")) == [
        "update,lstm_h_rms\n0,0.5\n1,NaN\n2,Infinity\n3,-0.0\n4,1e-310\n"
    ]


def test_run_query_loads_only_the_tables_the_statement_names(tmp_path: Path) -> None:
    """A statement over ppo_updates runs on a database that holds only ppo_updates."""
    write_run(tmp_path, "r1")
    sql = (
        "SELECT (SELECT list(table_name ORDER BY table_name) FROM duckdb_tables()) AS loaded, "
        "count(*) AS n FROM ppo_updates"
    )
    assert list(run_query(tmp_path, sql, fmt="json")) == ['{"loaded":["ppo_updates"],"n":5}\n']


def test_run_query_reports_bad_sql_and_file_access_as_value_errors(tmp_path: Path) -> None:
    """DuckDB's refusal (bad SQL, a table not there, a file write) is a ValueError."""
    write_run(tmp_path, "r1")
    messages = []
    for sql in ("SELEC 1", "SELECT * FROM nope", f"SELECT * FROM read_csv('{tmp_path}/x.csv')"):
        with pytest.raises(ValueError, match="Error: ") as info:
            run_query(tmp_path, sql)
        messages.append(str(info.value).splitlines()[0])
    assert messages == [
        'Parser Error: syntax error at or near "SELEC"',
        "Catalog Error: Table with name nope does not exist!",
        "Permission Error: Cannot access file "
        f'"{tmp_path}/x.csv" - file system operations are disabled by configuration',
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [EVENTS_FILE]


# -- integers outside int64, and a seq seen twice --------------------------------------

I64_MAX = 2**63 - 1


def with_field(line: bytes, path: tuple[str | int, ...], value: object) -> bytes:
    """``line`` (one event's JSON) with the value at ``path`` replaced."""
    data = json.loads(line)
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return json.dumps(data).encode() + b"\n"


def test_a_line_with_an_int_outside_int64_is_skipped_and_the_run_stays_queryable(
    tmp_path: Path,
) -> None:
    """update, rank, seq, env_steps or an outlier index past int64 (or negative) makes its
    line a bad line; read_events, connect, run_query and export_parquet give the rest."""
    good = write_run(tmp_path / "src", "r1")
    lines = (tmp_path / "src" / EVENTS_FILE).read_bytes().splitlines(keepends=True)
    ppo = lines[-1]  # the last PPO update, with detail and outlier envs (level DEBUG)
    changes: list[tuple[tuple[str | int, ...], object]] = [
        (("update",), 2**70),
        (("rank",), 2**64),
        (("seq",), I64_MAX + 1),
        (("payload", "env_steps"), 10**30),
        (("payload", "lstm_outlier_envs", 0), 2**63),
        (("update",), -1),
        (("payload", "env_steps"), -(2**70)),
    ]
    corrupt = [with_field(ppo, path, value) for path, value in changes]
    (tmp_path / EVENTS_FILE).write_bytes(b"".join([*lines, *corrupt]))
    bad: list[BadLine] = []
    events = list(read_events(tmp_path, on_bad_line=bad.append))
    path = tmp_path / EVENTS_FILE
    top = f"less than or equal to {I64_MAX}"
    assert dumps(events) == dumps(good)
    assert [(b.line_number, b.reason) for b in bad] == [
        (8, f"not a valid event: update: Input should be {top}"),
        (9, f"not a valid event: rank: Input should be {top}"),
        (10, f"not a valid event: seq: Input should be {top}"),
        (11, f"not a valid event: payload.env_steps: Input should be {top}"),
        (12, f"not a valid event: payload.lstm_outlier_envs.0: Input should be {top}"),
        (13, "not a valid event: update: Input should be greater than or equal to 0"),
        (14, "not a valid event: payload.env_steps: Input should be greater than or equal to 0"),
    ]
    assert {b.path for b in bad} == {path}
    loaded: list[BadLine] = []
    con = connect(tmp_path, on_bad_line=loaded.append)
    assert con.execute(
        "SELECT max(update), max(env_steps), count(*) FROM ppo_updates"
    ).fetchall() == [(4, 640, 5)]
    assert loaded == bad
    assert list(run_query(tmp_path, "SELECT count(*) AS n FROM events", fmt="csv")) == ["n\n7\n"]
    assert export_parquet(tmp_path, tmp_path / "ppo.parquet") == 5


def test_int64_max_itself_loads_into_every_table(tmp_path: Path) -> None:
    """The largest int64 is a valid update, env_steps and outlier index: loaded exactly."""
    write_run(tmp_path / "src", "r1")
    ppo = (tmp_path / "src" / EVENTS_FILE).read_bytes().splitlines(keepends=True)[-1]
    for path in (("update",), ("payload", "env_steps"), ("payload", "lstm_outlier_envs", 0)):
        ppo = with_field(ppo, path, I64_MAX)
    (tmp_path / EVENTS_FILE).write_bytes(ppo)
    con = connect(tmp_path)
    assert con.execute(
        "SELECT update, env_steps, lstm_outlier_envs FROM ppo_updates"
    ).fetchall() == [(I64_MAX, I64_MAX, [I64_MAX])]


def seq_line(seq: int, update: int, run_id: str = "r") -> bytes:
    return with_field(ppo_line(update, seq), ("run_id",), run_id)


def test_a_repeated_seq_of_a_run_is_reported_and_the_first_is_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A (run_id, seq) an earlier line had is a bad line (duplicate=True) with its number;
    the same seq of another run, and unstamped events (seq -1), are not duplicates."""
    lines = [
        seq_line(0, 0),  # 1
        seq_line(1, 1),  # 2
        seq_line(0, 100),  # 3: a second writer's seq 0
        seq_line(0, 7, run_id="other"),  # 4: another run: its own numbering
        seq_line(2, 2),  # 5
        seq_line(1, 101),  # 6: the second writer's seq 1
        seq_line(-1, 50),  # 7: never emitted through a hub
        seq_line(-1, 51),  # 8
        seq_line(5, 5),  # 9: a gap (lines lost) is no duplicate
        seq_line(4, 4),  # 10: nor is a seq filling it late
        seq_line(5, 105),  # 11
    ]
    path = tmp_path / EVENTS_FILE
    path.write_bytes(b"".join(lines))
    bad: list[BadLine] = []
    with caplog.at_level(logging.WARNING, logger="esper_telemetry.analytics"):
        events = list(read_events(tmp_path, on_bad_line=bad.append))
    assert [(e.run_id, e.seq, e.update) for e in events] == [
        ("r", 0, 0),
        ("r", 1, 1),
        ("other", 0, 7),
        ("r", 2, 2),
        ("r", -1, 50),
        ("r", -1, 51),
        ("r", 5, 5),
        ("r", 4, 4),
    ]
    why = "an earlier line has it (two writers on one file?); skipped, the first is kept"
    assert bad == [
        BadLine(path, n, f"duplicate seq {seq} of run 'r': {why}", duplicate=True)
        for n, seq in ((3, 0), (6, 1), (11, 5))
    ]
    assert [r.getMessage() for r in caplog.records] == [
        f"skipped a bad line of an events file: {b}" for b in bad
    ]


def test_the_cursor_remembers_seqs_across_reads_and_forgets_them_on_a_restart(
    tmp_path: Path,
) -> None:
    """A duplicate arriving in a later read is reported; a replaced file starts afresh."""
    path = tmp_path / EVENTS_FILE
    path.write_bytes(seq_line(0, 0) + seq_line(1, 1))
    cursor = EventCursor(tmp_path)
    first = cursor.read()
    with path.open("ab") as f:
        f.write(seq_line(1, 9) + seq_line(2, 2))
    second = cursor.read()
    path.write_bytes(seq_line(0, 0))  # shorter: read again from the start
    third = cursor.read()
    assert [
        (updates(b), [x.line_number for x in b.bad_lines], b.restarted)
        for b in (
            first,
            second,
            third,
        )
    ] == [([0, 1], [], False), ([2], [3], False), ([0], [], True)]
    assert [x.duplicate for x in second.bad_lines] == [True]


def test_connect_and_run_query_hold_each_seq_of_a_run_once(tmp_path: Path) -> None:
    """Two writers' lines for one run load as the first writer's; (run_id, seq) is a key."""
    lines = [seq_line(s, u) for s, u in ((0, 0), (0, 10), (1, 1), (1, 11), (2, 12))]
    (tmp_path / EVENTS_FILE).write_bytes(b"".join(lines))
    bad: list[BadLine] = []
    con = connect(tmp_path, on_bad_line=bad.append)
    assert con.execute("SELECT seq, update FROM ppo_updates ORDER BY seq").fetchall() == [
        (0, 0),
        (1, 1),
        (2, 12),
    ]
    assert [(b.line_number, b.duplicate) for b in bad] == [(2, True), (4, True)]
    sql = "SELECT count(*) AS n, count(DISTINCT seq) AS seqs FROM events"
    assert list(run_query(tmp_path, sql, fmt="csv")) == ["n,seqs\n3,3\n"]


@given(seqs=st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 40)), max_size=80))
def test_the_seq_ranges_find_exactly_the_repeats(seqs: list[tuple[str, int]]) -> None:
    """_SeenSeqs says "new" exactly for the pairs a plain set had not seen, in any order."""
    ranges, plain = _reader._SeenSeqs(), set[tuple[str, int]]()
    answers, expected = [], []
    for run_id, seq in seqs:
        answers.append(ranges.add(run_id, seq))
        expected.append((run_id, seq) not in plain)
        plain.add((run_id, seq))
    assert answers == expected
