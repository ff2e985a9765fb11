"""Regenerate the pictures of the docs: the panel's SVG and the report's PNG.

One command remakes both (``make docs-images``)::

    PYTHONPATH=$PWD/src .venv/bin/python docs/_tools/images.py [--out DIR]

It trains the two short runs their captions name with the reference trainer, through
``run_ppo`` (the wiring of ``esper ppo``: the anomaly escalator inline, the analytics
log; W&B disabled) in a temporary run root, then

* ``tui.svg``: the real panel (``HealthPanel``) follows the finished run's log, as
  ``esper watch RUN_DIR`` does, headless at a fixed terminal size, until it has shown
  ``RUN_FINISHED``; Textual's own screenshot of that screen is written (its CSS class
  names fixed, so that a rerun changes only what the screen shows: the clock time of
  the last level change);
* ``report.png``: ``esper_telemetry.report.write_report`` draws the other run, as
  ``esper report RUN_DIR --output report.png`` does.

``tui_svg(run_dir, target)`` and ``report_png(run_dir, target)`` are importable;
``tests/test_docs_images.py`` makes the SVG of a smaller run with them.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from esper_telemetry.run import EXIT_OK, RunOptions, run_ppo
from esper_telemetry.training import PPOConfig, parse_fault

DOCS = Path(__file__).resolve().parent.parent

TUI_SIZE = (130, 36)
"""The terminal of the screenshot, in cells: at 120 columns the anomaly table's last
column is cut off."""


@dataclass(frozen=True)
class DemoRun:
    """One short run a picture shows, in the words of ``esper ppo``."""

    run_id: str
    updates: int
    """``--episodes``: PPO updates."""
    fault: str
    """``--inject-fault``: ``KIND@UPDATE``."""

    def config(self) -> PPOConfig:
        """The trainer's settings: ``esper ppo``'s defaults, these updates and fault."""
        return PPOConfig(updates=self.updates, fault=parse_fault(self.fault))

    @property
    def command(self) -> str:
        """The ``esper ppo`` command line that trains the same run."""
        return f"esper ppo --episodes {self.updates} --inject-fault {self.fault}"


TUI_RUN = DemoRun("tui-demo", updates=24, fault="explode@10")
REPORT_RUN = DemoRun("report-demo", updates=40, fault="explode@15")


def train_run(run_root: Path, run: DemoRun, config: PPOConfig | None = None) -> Path:
    """Train ``run`` under ``run_root`` the way ``esper ppo`` does; its run directory.

    Args:
        run_root: The folder the run directory is made in (``--run-dir``).
        run: The run's name, updates and fault.
        config: Other trainer settings (e.g. a smaller network for a test); default:
            ``run.config()``.

    Raises:
        RuntimeError: the run did not complete with every event delivered.
    """
    import torch

    torch.set_num_threads(1)  # as esper ppo does
    options = RunOptions(
        config=config if config is not None else run.config(),
        run_root=run_root,
        run_id=run.run_id,
        wandb="disabled",
        progress=False,
    )
    outcome = run_ppo(options, Console(file=io.StringIO()))
    if outcome.exit_code != EXIT_OK or outcome.run_dir is None:
        raise RuntimeError(f"{run.command}: exit {outcome.exit_code}: {outcome.message}")
    return outcome.run_dir


def tui_svg(
    run_dir: Path, target: Path, *, size: tuple[int, int] = TUI_SIZE, timeout: float = 60.0
) -> Path:
    """Show a finished run in the panel, as ``esper watch RUN_DIR``; save its SVG screenshot.

    The panel runs headless at ``size`` (columns, rows) and follows the run's
    ``events.jsonl`` until it has shown the run's ``RUN_FINISHED`` event, then
    Textual's ``App.export_screenshot`` of the screen is written to ``target``.

    Raises:
        TimeoutError: the panel had not shown the whole run after ``timeout`` seconds.
    """
    from esper_telemetry.tui import HealthPanel, LogFollower

    app = HealthPanel(follow=LogFollower(run_dir), poll_interval=0.05)

    async def shoot() -> None:
        async with app.run_test(size=size) as pilot:
            deadline = time.monotonic() + timeout
            while not (app.state.finished is not None and app.shows_latest):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the panel had not shown all of {run_dir} in {timeout} s")
                await pilot.pause(0.05)
            await pilot.pause()
            svg = app.export_screenshot()
        # Rich names the SVG's classes after a hash of the screen, so a new clock time in
        # the level box would rename every line; one fixed name keeps the diff to the text.
        target.write_text(re.sub(r"\bterminal-\d+", "terminal-esper-tui", svg), encoding="utf-8")

    asyncio.run(shoot())
    return target


def report_png(run_dir: Path, target: Path) -> Path:
    """Draw a run's report, as ``esper report RUN_DIR --output TARGET``; where it went."""
    from esper_telemetry.report import write_report

    return write_report(run_dir, target)


def main(argv: list[str] | None = None) -> int:
    """Train both runs in a temporary folder and write ``tui.svg`` and ``report.png``."""
    parser = argparse.ArgumentParser(
        prog="docs/_tools/images.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--out", type=Path, default=DOCS, help="Folder to write into (default: docs/)."
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    if not out.is_dir():
        parser.error(f"--out: no folder {str(out)!r}; create it first")
    with tempfile.TemporaryDirectory(prefix="esper-docs-images-") as root:
        for run, name, draw in (
            (TUI_RUN, "tui.svg", tui_svg),
            (REPORT_RUN, "report.png", report_png),
        ):
            started = time.monotonic()
            run_dir = train_run(Path(root), run)
            written = draw(run_dir, out / name)
            took = time.monotonic() - started
            sys.stdout.write(f"wrote {written} ({run.command}, {took:.0f} s)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
