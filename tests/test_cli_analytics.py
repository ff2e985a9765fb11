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
        (["query", "{runs}/a", "COPY events TO '{tmp}/x.csv'"], "disabled by configuration"),
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
    """SHOW TABLES names no analytics table, so all four are loaded and listed."""
    code, out, _ = invoke("query", str(runs / "a"), "SHOW TABLES", "--format", "csv")
    assert code == 0
    assert out.splitlines() == ["name", "anomalies", "events", "level_changes", "ppo_updates"]


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
