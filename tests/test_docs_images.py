"""docs/_tools/images.py: the panel's SVG and the report's PNG, made from a real short run."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

from esper_telemetry.analytics import read_events
from esper_telemetry.contracts import AnomalyDetected, format_value
from esper_telemetry.training import PPOConfig, parse_fault
from tests.script import load_script

ROOT = Path(__file__).resolve().parent.parent
NS = "{http://www.w3.org/2000/svg}"


def load_images() -> ModuleType:
    """docs/_tools/images.py as a module (docs/ is no package)."""
    return load_script(ROOT / "docs/_tools/images.py", "docs_images")


images = load_images()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-update run of the reference trainer, its c state exploded at update 1."""
    run = images.DemoRun("images-test", updates=4, fault="explode@1")
    config = PPOConfig(
        updates=4, envs=2, steps=8, hidden=16, epochs=1, fault=parse_fault(run.fault)
    )
    path: Path = images.train_run(tmp_path_factory.mktemp("runs"), run, config)
    return path


def screen(path: Path) -> tuple[ET.Element, list[str]]:
    """A terminal screenshot's root element and its rows of text, each cell in its column.

    Rich writes every run of one style as a ``<text>`` at its cell's x and its row's y,
    ``textLength`` cells wide; the rows are rebuilt from those positions.
    """
    root = ET.parse(path).getroot()
    pieces = [
        (float(t.get("y", "0")), float(t.get("x", "0")), float(t.get("textLength", "0")), text)
        for t in root.iter(f"{NS}text")
        if t.get("textLength") and (text := "".join(t.itertext()).replace("\xa0", " "))
    ]
    cell = min(length / len(text) for _, _, length, text in pieces)
    rows: dict[float, list[str]] = {}
    for y, x, _, text in pieces:
        row = rows.setdefault(y, [])
        column = round(x / cell)
        row.extend(" " * (column + len(text) - len(row)))
        row[column : column + len(text)] = text
    return root, ["".join(rows[y]).rstrip() for y in sorted(rows)]


def anomaly_rows(rows: list[str]) -> list[list[str]]:
    """The rows of the panel's anomaly table, as the words of its left column."""
    start = next(i for i, row in enumerate(rows) if "Anomalies (newest first)" in row)
    return [row.split("│")[1].split() for row in rows[start + 2 :] if row.startswith("│")]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; fails on anything but a PNG."""
    head = path.read_bytes()[:24]
    assert (head[:8], head[12:16]) == (b"\x89PNG\r\n\x1a\n", b"IHDR")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_the_panel_screenshot_shows_the_finished_run_and_its_explosion(
    run_dir: Path, tmp_path: Path
) -> None:
    """The SVG is the panel after the whole run: the policy state, the explosion, the end."""
    written = images.tui_svg(run_dir, tmp_path / "tui.svg")
    root, rows = screen(written)
    assert root.tag == f"{NS}svg"
    classes = {t.get("class", "").rsplit("-", 1)[0] for t in root.iter(f"{NS}text")}
    assert classes == {"terminal-esper-tui"}  # not Rich's hash of the screen: diffs stay small
    assert len(rows) == images.TUI_SIZE[1]
    assert [row.split()[1] for row in rows if "policy (primary)" in row] == ["policy"] * 2
    found = [e for e in read_events(run_dir) if isinstance(e, AnomalyDetected)]
    assert [(e.update, e.payload.anomaly.type.value) for e in found][:1] == [
        (1, "lstm_c_explosion")
    ]
    assert anomaly_rows(rows)[: len(found)] == [
        [
            str(e.update),
            str(e.payload.anomaly.state),
            e.payload.anomaly.type.value,
            e.payload.anomaly.severity.value.upper(),
            format_value(e.payload.anomaly.observed),
            format_value(e.payload.anomaly.threshold),
        ]
        for e in reversed(found)
    ]
    assert any("run images-test  finished: completed" in row for row in rows)


def test_the_committed_screenshot_has_the_same_terminal_size_and_content(
    run_dir: Path, tmp_path: Path
) -> None:
    """docs/tui.svg was made at TUI_SIZE (same view box) and shows what its caption says."""
    made, _ = screen(images.tui_svg(run_dir, tmp_path / "tui.svg"))
    committed, rows = screen(ROOT / "docs/tui.svg")
    assert committed.get("viewBox") == made.get("viewBox")
    explosions = [cells[:4] for cells in anomaly_rows(rows) if "lstm_c_explosion" in cells]
    assert explosions == [["10", "policy", "lstm_c_explosion", "CRITICAL"]]
    assert any("run tui-demo  finished: completed" in row for row in rows)


def test_the_report_png_is_a_png_of_the_figure_size(run_dir: Path, tmp_path: Path) -> None:
    """report_png writes the report as esper report does: a 1200 x 750 PNG."""
    written = images.report_png(run_dir, tmp_path / "report.png")
    assert png_size(written) == (1200, 750)
    assert png_size(ROOT / "docs/report.png") == (1200, 750)


def test_a_missing_out_folder_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out naming no folder exits 2 with one line naming --out, before any training."""
    with pytest.raises(SystemExit) as exited:
        images.main(["--out", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip().splitlines()
    missing = repr(str(tmp_path / "nope"))
    assert (exited.value.code, err[-1]) == (
        2,
        f"docs/_tools/images.py: error: --out: no folder {missing}; create it first",
    )
