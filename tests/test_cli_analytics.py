"""esper query and esper export, driven in-process with click's CliRunner."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq  # type: ignore[import-untyped]  # pyarrow ships no type hints
import pytest
from click.testing import CliRunner

from esper_telemetry import TelemetryHub, emit_ppo_update_event
from esper_telemetry.backends.analytics import AnalyticsCollector
from esper_telemetry.cli import main
from esper_telemetry.contracts import EVENTS_FILE, LSTMHealthMetrics

H_RMS = [0.25, math.nan, math.inf]


def write_run(run_dir: Path, run_id: str) -> None:
    """Three PPO updates whose h RMS is 0.25, NaN and Inf."""
    with TelemetryHub(run_id) as hub:
        hub.subscribe(AnalyticsCollector(run_dir))
        for k, h_rms in enumerate(H_RMS):
            metrics = LSTMHealthMetrics(
                h_l2_total=1.0,
                c_l2_total=1.0,
                h_rms=h_rms,
                c_rms=0.5,
                h_env_rms_mean=0.3,
                h_env_rms_max=0.4,
                c_env_rms_mean=0.5,
                c_env_rms_max=0.6,
                h_max=0.9,
                c_max=1.5,
                has_nan=math.isnan(h_rms),
                has_inf=math.isinf(h_rms),
            )
            emit_ppo_update_event(
                hub,
                update=k,
                metrics={"policy_loss": 0.5, "value_loss": -1.0, "entropy": 0.69, "fps": 100.0},
                lstm_health=metrics,
            )


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    for name in ("a", "b"):
        write_run(tmp_path / "runs" / name, f"run-{name}")
    return tmp_path / "runs"


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_help_lists_query_and_export() -> None:
    """esper --help names the query and export commands."""
    code, out, _ = invoke("--help")
    assert code == 0
    commands = re.findall(r"^  (\w+)", out.split("Commands:")[1], re.M)
    assert {"query", "export"} <= set(commands)
    code, out, _ = invoke("query", "--help")
    assert code == 0
    assert "--format [table|csv|json]" in out
    assert "RUN_DIR_OR_GLOB SQL" in out


def test_query_prints_an_aligned_table(runs: Path) -> None:
    """The default format is a plain text table with NaN and Infinity spelled out."""
    sql = "SELECT update, lstm_h_rms, lstm_has_nan FROM ppo_updates ORDER BY update"
    code, out, err = invoke("query", str(runs / "a"), sql)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "update  lstm_h_rms  lstm_has_nan",
        "------  ----------  ------------",
        "     0        0.25  false",
        "     1         NaN  true",
        "     2    Infinity  false",
        "(3 rows)",
    ]


def test_query_csv_over_a_glob(runs: Path) -> None:
    """--format csv writes a header and one row per result row, across every run."""
    sql = "SELECT run_id, update, lstm_h_rms, approx_kl FROM ppo_updates ORDER BY run_id, update"
    code, out, _ = invoke("query", str(runs / "*"), sql, "--format", "csv")
    assert code == 0
    assert list(csv.reader(out.splitlines())) == [
        ["run_id", "update", "lstm_h_rms", "approx_kl"],
        ["run-a", "0", "0.25", ""],
        ["run-a", "1", "NaN", ""],
        ["run-a", "2", "Infinity", ""],
        ["run-b", "0", "0.25", ""],
        ["run-b", "1", "NaN", ""],
        ["run-b", "2", "Infinity", ""],
    ]


def test_query_json_is_strict_json_lines(runs: Path) -> None:
    """--format json writes one strict JSON object per row; JSON and MAP columns nest."""
    sql = (
        "SELECT p.update, p.lstm_h_rms, p.extra, e.payload, e.timestamp "
        "FROM ppo_updates p JOIN events e USING (run_id, seq) ORDER BY p.update"
    )
    code, out, _ = invoke("query", str(runs / "a"), sql, "--format", "json")
    assert code == 0

    def refuse(token: str) -> None:
        raise AssertionError(f"non-strict JSON token {token}")

    rows = [json.loads(line, parse_constant=refuse) for line in out.splitlines()]
    assert [(r["update"], r["lstm_h_rms"], r["extra"]) for r in rows] == [
        (0, 0.25, {"fps": 100.0}),
        (1, "NaN", {"fps": 100.0}),
        (2, "Infinity", {"fps": 100.0}),
    ]
    assert rows[1]["payload"]["lstm_h_rms"] == "NaN"
    assert rows[0]["timestamp"].endswith("+00:00")


def test_query_reads_a_named_state_from_recurrent_health(tmp_path: Path) -> None:
    """esper query filters recurrent_health by a state's name: the GRU state "value" has its
    h figures, NaN spelled out, and no c figures."""
    gru = LSTMHealthMetrics(
        h_l2_total=1.0,
        c_l2_total=None,
        h_rms=0.25,
        c_rms=None,
        h_env_rms_mean=0.3,
        h_env_rms_max=0.4,
        c_env_rms_mean=None,
        c_env_rms_max=None,
        h_max=0.9,
        c_max=None,
        has_nan=False,
        has_inf=False,
    )
    with TelemetryHub("states") as hub:
        hub.subscribe(AnalyticsCollector(tmp_path))
        for k, h_rms in enumerate(H_RMS):
            value = gru.model_copy(
                update={"h_rms": h_rms, "has_nan": math.isnan(h_rms), "has_inf": math.isinf(h_rms)}
            )
            emit_ppo_update_event(
                hub,
                update=k,
                metrics={"policy_loss": 0.5, "value_loss": -1.0, "entropy": 0.69},
                recurrent_health={"policy": gru.model_copy(update={"h_rms": 0.5}), "value": value},
            )
    sql = (
        "SELECT update, name, is_primary, h_rms, c_rms, has_cell FROM recurrent_health "
        "WHERE name='value' ORDER BY update"
    )
    code, out, err = invoke("query", str(tmp_path), sql)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "update  name   is_primary     h_rms  c_rms  has_cell",
        "------  -----  ----------  --------  -----  --------",
        "     0  value  false           0.25  NULL   false",
        "     1  value  false            NaN  NULL   false",
        "     2  value  false       Infinity  NULL   false",
        "(3 rows)",
    ]


def test_query_of_an_empty_result_prints_the_header(runs: Path) -> None:
    """A query with no rows still prints its columns in each format."""
    sql = "SELECT run_id, message FROM anomalies"
    assert invoke("query", str(runs / "a"), sql)[1].splitlines() == [
        "run_id  message",
        "------  -------",
        "(0 rows)",
    ]
    assert invoke("query", str(runs / "a"), sql, "--format", "csv")[1] == "run_id,message\n"
    assert invoke("query", str(runs / "a"), sql, "--format", "json")[1] == ""


def test_query_warns_about_skipped_lines_on_stderr(runs: Path) -> None:
    """Bad lines do not stop a query; stderr says how many were skipped and the first."""
    with (runs / "a" / EVENTS_FILE).open("ab") as f:
        f.write(b"not json\n")
    code, out, err = invoke("query", str(runs / "a"), "SELECT count(*) AS n FROM ppo_updates")
    assert (code, out.splitlines()) == (0, ["n", "-", "3", "(1 row)"])
    assert err == (
        f"warning: skipped 1 bad line; the first: {runs / 'a' / EVENTS_FILE}:4: "
        "Invalid JSON: expected ident at line 1 column 2\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query", "{tmp}/nope", "SELECT 1"], "no such run directory or events file"),
        (["query", "{tmp}", "SELECT 1"], "no events.jsonl in run directory"),
        (["query", "{tmp}/x*", "SELECT 1"], "matches"),
        (["query", "{runs}/a", "SELEC 1"], 'Parser Error: syntax error at or near "SELEC"'),
        (["query", "{runs}/a", "SELECT * FROM nope"], "Table with name nope does not exist"),
        (["query", "{runs}/a", "COPY events TO '{tmp}/x.csv'"], "is not a read-only query"),
        (["export", "{tmp}/nope", "--parquet", "{tmp}/x.parquet"], "no such run directory"),
        (["export", "{runs}/a", "--parquet", "{runs}/a/events.jsonl"], "being read"),
    ],
)
def test_errors_are_one_clear_line_with_exit_code_1(
    tmp_path: Path, runs: Path, args: list[str], message: str
) -> None:
    """A missing run, bad SQL or a forbidden write fails with one line on stderr, code 1."""
    before = (runs / "a" / EVENTS_FILE).read_bytes()
    code, out, err = invoke(*(a.format(tmp=tmp_path, runs=runs) for a in args))
    assert (code, out) == (1, "")
    assert err.startswith("Error: ")
    assert err.count("\n") == 1
    assert message in err
    assert (runs / "a" / EVENTS_FILE).read_bytes() == before
    assert not (tmp_path / "x.csv").exists()


def test_a_bad_format_is_a_usage_error() -> None:
    """An unknown --format is refused by click with exit code 2."""
    code, _, err = invoke("query", ".", "SELECT 1", "--format", "xml")
    assert code == 2
    assert "--format" in err


def test_export_writes_parquet_with_the_rows_of_the_query(runs: Path, tmp_path: Path) -> None:
    """esper export --parquet writes ppo_updates; pyarrow reads back the same rows."""
    dest = tmp_path / "ppo.parquet"
    code, out, _ = invoke("export", str(runs / "*"), "--parquet", str(dest))
    assert (code, out) == (0, f"wrote 6 rows of ppo_updates to {dest}\n")
    table = pq.read_table(dest)
    got = [(r["run_id"], r["update"], r["lstm_h_rms"]) for r in table.to_pylist()]
    sql = "SELECT run_id, update, lstm_h_rms FROM ppo_updates ORDER BY run_id, seq"
    code, out, _ = invoke("query", str(runs / "*"), sql, "--format", "json")
    want = [tuple(json.loads(line).values()) for line in out.splitlines()]
    assert [(r, u, _strict(x)) for r, u, x in got] == want


def test_export_another_table(runs: Path, tmp_path: Path) -> None:
    """--table events (or --view events) exports the events table."""
    dest = tmp_path / "events.parquet"
    code, out, _ = invoke("export", str(runs / "a"), "--parquet", str(dest), "--view", "events")
    assert (code, out) == (0, f"wrote 3 rows of events to {dest}\n")
    assert pq.read_table(dest).column_names[:4] == ["run_id", "seq", "update", "event_type"]


def _strict(x: float) -> float | str:
    if math.isnan(x):
        return "NaN"
    return "Infinity" if math.isinf(x) else x


def test_a_query_naming_no_table_sees_every_table(runs: Path) -> None:
    """SHOW TABLES names no analytics table, so all five are loaded and listed."""
    code, out, _ = invoke("query", str(runs / "a"), "SHOW TABLES", "--format", "csv")
    assert code == 0
    assert out.splitlines() == [
        *("name", "anomalies", "events", "level_changes", "ppo_updates", "recurrent_health")
    ]


def test_query_names_the_extra_when_duckdb_is_missing(
    runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without duckdb, esper query fails with one line that says what to install."""
    monkeypatch.setitem(sys.modules, "duckdb", None)
    assert invoke("query", str(runs / "a"), "SELECT 1") == (
        1,
        "",
        "Error: esper query needs duckdb: pip install 'esper-telemetry[analytics]'\n",
    )


def test_esper_query_loads_neither_torch_nor_gymnasium(runs: Path) -> None:
    """A query, run in a fresh interpreter, prints its rows without importing the trainer."""
    code = textwrap.dedent(
        f"""
        import sys
        from esper_telemetry.cli import main
        try:
            main(["query", {str(runs / "a")!r}, "SELECT count(*) AS n FROM ppo_updates"])
        except SystemExit as exit:
            assert exit.code in (0, None), exit.code
        print(sorted(m for m in ("torch", "gymnasium") if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.splitlines() == ["n", "-", "3", "(1 row)", "[]"]


def tree(root: Path) -> list[str]:
    """Every file and folder under root, hidden ones included, as sorted relative paths."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.mark.parametrize(
    "sql",
    [
        "EXPORT DATABASE '{runs}/a/newdir'",
        "EXPORT DATABASE 'newdir' (FORMAT parquet)",
        "COPY events TO '{tmp}/x.csv'",
        "COPY (SELECT 1) TO 'sub/x.parquet' (FORMAT parquet)",
        "ATTACH '{tmp}/x.db' AS x",
        "ATTACH ':memory:' AS m",
        "DETACH memory",
        "INSTALL httpfs",
        "LOAD httpfs",
        "CREATE TABLE t AS SELECT 1",
        "CREATE TEMP VIEW v AS SELECT 1",
        "CREATE SECRET (TYPE s3)",
        "INSERT INTO events SELECT * FROM events",
        "DELETE FROM events",
        "PRAGMA version",
        "PRAGMA database_list",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        "CALL pragma_version()",
        "CHECKPOINT",
        "VACUUM",
        "USE memory",
        "EXPLAIN ANALYZE COPY (SELECT 1) TO 'y.csv'",
        "SELECT 1; COPY events TO 'z.csv'",
        "PIVOT ppo_updates ON update USING count(*)",
        "/* a comment */ EXPORT DATABASE 'commented'",
    ],
)
def test_a_statement_that_is_not_a_read_only_query_is_refused_and_touches_nothing(
    tmp_path: Path, runs: Path, monkeypatch: pytest.MonkeyPatch, sql: str
) -> None:
    """Writes, attachments, extensions, settings, pragmas and DDL are refused from their
    parse before DuckDB binds them: exit 1, one line naming the statement, and not one file
    or folder created, changed or removed anywhere under the test's folder (the cwd)."""
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    contents = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code, out, err = invoke("query", str(runs / "a"), sql.format(tmp=tmp_path, runs=runs))
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("Error: SQL: statement ")
    assert "is not a read-only query" in err
    assert tree(tmp_path) == before
    assert {p: p.read_bytes() for p in contents} == contents


@pytest.mark.parametrize(
    ("sql", "first"),
    [
        ("DESCRIBE ppo_updates", "column_name"),
        ("SUMMARIZE SELECT update FROM ppo_updates", "column_name"),
        ("SHOW ppo_updates", "column_name"),
        ("FROM ppo_updates SELECT count(*) AS n", "n"),
        ("WITH u AS (SELECT update FROM ppo_updates) SELECT max(update) AS m FROM u", "m"),
        ("VALUES (1)", "col0"),
        ("TABLE level_changes", "run_id"),
        ("EXPLAIN SELECT * FROM ppo_updates", "explain_key"),
        ("/* why */ EXPLAIN ANALYZE SELECT count(*) FROM events", "explain_key"),
        (
            "PIVOT (SELECT update, 1 AS one FROM ppo_updates) ON update IN (0, 1) USING sum(one)",
            "0",
        ),
        ("SELECT 1 AS a; SELECT 2 AS b", "b"),
    ],
)
def test_read_only_statements_of_every_kind_still_run(runs: Path, sql: str, first: str) -> None:
    """SELECT in each of its spellings, and EXPLAIN of one, run as before."""
    code, out, err = invoke("query", str(runs / "a"), sql, "--format", "csv")
    assert (code, err) == (0, "")
    assert out.splitlines()[0].split(",")[0] == first


def test_the_query_database_cannot_spill_to_disk(runs: Path) -> None:
    """The query database has no temporary folder (DuckDB would create ./.tmp to spill) and
    shows no progress bar; both are locked."""
    sql = (
        "SELECT current_setting('temp_directory') AS t, current_setting('enable_progress_bar') AS p"
    )
    code, out, _ = invoke("query", str(runs / "a"), sql, "--format", "json")
    assert (code, out) == (0, '{"t":"","p":false}\n')


@pytest.mark.parametrize("sql", ["", "   ", "\n\t", ";", " ; ;", "-- just a comment", "/* x */"])
def test_empty_sql_is_one_line(runs: Path, sql: str) -> None:
    """Empty, blank, comment-only or semicolon-only SQL: exit 1 and one line saying so."""
    assert invoke("query", str(runs / "a"), "--", sql) == (
        1,
        "",
        'Error: SQL: empty (or only comments); give a query, e.g. "SELECT * FROM ppo_updates"\n',
    )


def test_an_undecodable_byte_in_the_sql_is_one_line(runs: Path, tmp_path: Path) -> None:
    """A byte that is not UTF-8 in the SQL argument of a real command line: exit 1 and one
    line naming the byte and where it is, no traceback."""
    argv = [sys.executable, "-m", "esper_telemetry.cli", "query", str(runs / "a")]
    done = subprocess.run(
        [*(a.encode() for a in argv), b"SELECT '\xff' AS x"],
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (1, b"")
    assert done.stderr == (
        b"Error: SQL: character 9 is byte 0xff, which is not UTF-8; write the query in UTF-8\n"
    )


@pytest.mark.parametrize(
    "owned",
    [
        "a/events.jsonl",
        "a/log.jsonl",
        "a/report.png",
        "a/wandb/offline-run-x/run-x.wandb",
        "a/wandb/debug.log",
        "b/log.jsonl",  # another run's own file, though only a is read
    ],
)
def test_export_refuses_a_file_a_run_owns(runs: Path, owned: str) -> None:
    """--parquet onto a run's events file, structured log, report or W&B files is refused:
    exit 1, one line; the file is left as it was."""
    target = runs / owned
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.write_bytes(b"the run's own bytes\n")
    before = target.read_bytes()
    code, out, err = invoke("export", str(runs / "a"), "--parquet", str(target))
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith(f"Error: destination: {str(target)!r} is ")
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_export_may_write_beside_a_runs_files(runs: Path) -> None:
    """A Parquet file of the user's own inside a run directory is fine."""
    dest = runs / "a" / "ppo.parquet"
    code, out, _ = invoke("export", str(runs / "a"), "--parquet", str(dest))
    assert (code, out) == (0, f"wrote 3 rows of ppo_updates to {dest}\n")
