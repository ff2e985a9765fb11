"""esper_telemetry.analytics: read_events, connect (DuckDB tables) and export_parquet."""

from __future__ import annotations

import json
import logging
import math
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from esper_telemetry import TelemetryHub, TelemetryLevel, emit_ppo_update_event
from esper_telemetry.analytics import (
    TABLES,
    BadLine,
    _reader,
    connect,
    events_file,
    export_parquet,
    find_event_files,
    read_events,
)
from esper_telemetry.backends.analytics import EVENTS_FILE, AnalyticsCollector
from esper_telemetry.contracts import (
    SCHEMA_VERSION,
    AnomalyDetectedPayload,
    EventType,
    LSTMHealthDetail,
    LSTMHealthMetrics,
    PPOUpdatePayload,
    TelemetryEvent,
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
                out.append(
                    hub.emit(
                        TelemetryEvent(
                            event_type=EventType.ANOMALY_DETECTED,
                            update=k,
                            payload=AnomalyDetectedPayload(
                                anomaly_type="lstm_nan",
                                severity="critical",
                                observed=math.nan,
                                message="NaN in h.",
                                outlier_envs=(1,),
                            ),
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


def dumps(events: list[TelemetryEvent]) -> list[str]:
    return [e.model_dump_json() for e in events]


def bits(x: float) -> bytes:
    return b"NaN" if math.isnan(x) else struct.pack("<d", x)


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
    bad: list[BadLine] = []
    with caplog.at_level(logging.WARNING, logger="esper_telemetry.analytics"):
        events = list(read_events(tmp_path, on_bad_line=bad.append))
    assert dumps(events) == dumps(good)
    last = len(lines)
    assert [(b.line_number, b.torn) for b in bad] == [
        *((n, False) for n in (2, 3, 4, 5, 6, 7, 8, 9)),
        (last, True),
    ]
    reasons = {b.line_number: b.reason for b in bad}
    assert reasons[2].startswith("invalid UTF-8")
    assert reasons[3].startswith("Invalid JSON: EOF while parsing")
    assert reasons[4] == f"invalid UTF-8 at byte offset {good_lines[1].index(b'r1') + 1}"
    assert "newer than this reader" in reasons[5]
    assert reasons[6] == reasons[5]
    assert reasons[7] == "not a valid event: line: Input should be an object"
    assert reasons[8].startswith("not a valid event: payload.policy_loss: Field required")
    assert reasons[9] == "not an event as logged: missing timestamp"
    assert reasons[last].startswith("torn last line (no newline at the end): Invalid JSON")
    assert all(b.path == tmp_path / EVENTS_FILE for b in bad)
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
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 11
    assert messages[-1].endswith("25 bad lines skipped in all (the first 10 were logged)")


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
    assert [(b.line_number, b.reason) for b in bad] == [(1, "line longer than 2000 bytes")]


def test_read_events_streams_in_bounded_memory(tmp_path: Path) -> None:
    """Reading 10,000 events keeps Python's peak allocation far below the file's size."""
    line = (
        TelemetryEvent(
            event_type=EventType.PPO_UPDATE_COMPLETED,
            update=0,
            payload=PPOUpdatePayload(policy_loss=0.1, value_loss=0.2, entropy=0.3),
        ).model_dump_json()
        + "\n"
    )
    (tmp_path / EVENTS_FILE).write_text(line * 10_000, encoding="utf-8")
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


def test_connect_creates_the_four_tables_with_typed_columns(tmp_path: Path) -> None:
    """events, ppo_updates, anomalies and level_changes exist with the documented types."""
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
    assert list(ppo)[6:] == list(PPOUpdatePayload.model_fields)
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
    assert [c for c, _ in columns(con, "anomalies")] == [
        *("run_id", "seq", "update", "timestamp", "rank", "level", "anomaly_type", "severity"),
        *("observed", "threshold", "message", "outlier_envs"),
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
        "SELECT payload->>'$.observed', level FROM events WHERE event_type = 'ANOMALY_DETECTED'"
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
    assert con.execute("SELECT count(*) FROM ppo_updates").fetchall() == [(5,)]
    assert [(b.line_number, b.torn) for b in bad] == [(8, True)]


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
    with pytest.raises(ImportError, match=r"pip install 'esper-telemetry\[analytics\]'"):
        connect(tmp_path)
    with pytest.raises(ImportError, match=r"pip install 'esper-telemetry\[analytics\]'"):
        export_parquet(tmp_path, tmp_path / "x.parquet")
    assert len(list(read_events(tmp_path))) == 7


def test_importing_analytics_and_reading_need_no_duckdb(tmp_path: Path) -> None:
    """esper_telemetry.analytics imports and reads without duckdb or pyarrow installed."""
    write_run(tmp_path, "r1")
    code = textwrap.dedent(
        f"""
        import importlib.util, pathlib, sys, types
        sys.modules["duckdb"] = sys.modules["pyarrow"] = None  # as if not installed
        root = pathlib.Path(importlib.util.find_spec("esper_telemetry").origin).parent
        for name, path in (
            ("esper_telemetry", root),
            ("esper_telemetry.backends", root / "backends"),
        ):
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(path)]
            sys.modules[name] = pkg
        from esper_telemetry.analytics import connect, read_events
        print(len(list(read_events({str(tmp_path)!r}))))
        try:
            connect({str(tmp_path)!r})
        except ImportError as exc:
            print(exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.splitlines() == [
        "7",
        "esper_telemetry.analytics needs duckdb for SQL and Parquet: "
        "pip install 'esper-telemetry[analytics]'",
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
    """Any table exports; an unknown table or writing over the log raises ValueError."""
    write_run(tmp_path / "run", "r1")
    assert export_parquet(tmp_path / "run", tmp_path / "e.parquet", table="events") == 7
    assert export_parquet(tmp_path / "run", tmp_path / "a.parquet", table="anomalies") == 1
    with pytest.raises(ValueError, match="table must be one of"):
        export_parquet(tmp_path / "run", tmp_path / "x.parquet", table="nope")
    with pytest.raises(ValueError, match="is an events file being read"):
        export_parquet(tmp_path / "run", tmp_path / "run" / EVENTS_FILE)
    with pytest.raises(ValueError, match="is a directory"):
        export_parquet(tmp_path / "run", tmp_path)
    with pytest.raises(OSError, match="No such file or directory"):
        export_parquet(tmp_path / "run", tmp_path / "missing" / "x.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "e.parquet", "run"]
