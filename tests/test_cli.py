"""The esper command, driven in-process with click's CliRunner."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from esper_telemetry import __version__
from esper_telemetry.cli import main

ROW = re.compile(r"^\s+(\d+)\s+\S+\s+\S+\s+(\S+)\s+(\S+)\s+(\S+)\s+(HEALTHY|WARNING|CRITICAL)")


def rows(output: str) -> list[tuple[int, str]]:
    return [(int(m[1]), m[5]) for line in output.splitlines() if (m := ROW.match(line))]


def test_help_lists_the_commands() -> None:
    """esper --help names every command."""
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    commands = result.output.split("Commands:")[1]
    assert re.findall(r"^  (\w+)", commands, re.M) == ["contracts", "demo", "export", "query"]


def test_version() -> None:
    """esper --version prints the installed version."""
    result = CliRunner().invoke(main, ["--version"])
    assert (result.exit_code, result.output) == (0, f"esper, version {__version__}\n")


def test_demo_prints_one_healthy_row_per_update() -> None:
    """The demo publishes one event per update and the printer shows each as HEALTHY."""
    result = CliRunner().invoke(main, ["demo", "--updates", "3", "--envs", "8"])
    assert result.exit_code == 0, result.output
    assert rows(result.output) == [(0, "HEALTHY"), (1, "HEALTHY"), (2, "HEALTHY")]
    assert "terminal: delivered 3, failed 0, dropped 0" in result.output


def test_demo_injected_nan_is_shown_as_critical_with_the_anomaly() -> None:
    """--inject-fault nan@1 makes update 1 CRITICAL with lstm_nan; the others stay healthy."""
    result = CliRunner().invoke(
        main, ["demo", "--updates", "3", "--envs", "8", "--inject-fault", "nan@1"]
    )
    assert result.exit_code == 0, result.output
    assert rows(result.output) == [(0, "HEALTHY"), (1, "CRITICAL"), (2, "HEALTHY")]
    (line,) = [ln for ln in result.output.splitlines() if "lstm_nan" in ln]
    update, _reward, _loss, h_rms = line.split()[:4]
    assert (update, h_rms) == ("1", "nan")


def test_demo_rejects_a_malformed_fault() -> None:
    """A bad --inject-fault is a usage error naming the option and the expected form."""
    result = CliRunner().invoke(main, ["demo", "--inject-fault", "melt@2"])
    assert result.exit_code == 2
    assert "--inject-fault" in result.output
    assert "KIND@UPDATE" in result.output


def test_contracts_export_writes_the_committed_schemas(tmp_path: Path) -> None:
    """esper contracts export DIR writes exactly the schemas committed in docs/contracts."""
    result = CliRunner().invoke(main, ["contracts", "export", str(tmp_path)])
    assert result.exit_code == 0, result.output
    committed = Path(__file__).parents[1] / "docs" / "contracts"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in committed.iterdir())
    for path in tmp_path.iterdir():
        assert path.read_text() == (committed / path.name).read_text(), (
            f"{path.name} drifted from the models: run `make schemas` and commit the result"
        )


def test_contracts_export_refuses_a_file_as_directory(tmp_path: Path) -> None:
    """Exporting into a path that is a file fails with a clear message, exit status 2."""
    target = tmp_path / "file"
    target.write_text("x")
    result = CliRunner().invoke(main, ["contracts", "export", str(target)])
    assert result.exit_code == 2
    assert "is a file" in result.output
