"""The documentation site cannot go stale: every code block marked runnable runs, and
what it prints is what the page shows; every table rendered from the code is complete.

A page marks a block with ``<!-- runnable -->`` on the line before its fence (```python
or ```bash); an ``<!-- output -->`` block right after it is the output the page promises:
its lines must appear in the block's standard output in order, a line ``...`` standing
for any number of lines. Each block runs in a fresh directory, in a real subprocess, with
the package on the path and W&B offline.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from esper_telemetry.contracts import AnomalyType, HealthThresholds, LSTMHealthMetrics
from tests.script import load_script

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
MARKED = re.compile(r"^<!-- (runnable|output) -->\n(?=```)", re.M)


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    language: str
    code: str
    output: str | None

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def runnable_blocks(text: str, page: str) -> list[Block]:
    """The runnable blocks of one page, each with the output block that follows it."""
    found: list[tuple[str, int, str, str]] = []  # (mark, line, language, code)
    for marked in MARKED.finditer(text):
        fence = FENCE.match(text, marked.end())
        if fence is None:
            raise ValueError(f"{page}: a {marked.group(1)} mark is not followed by a fenced block")
        line = text.count("\n", 0, marked.start()) + 1
        found.append((marked.group(1), line, fence.group(1), fence.group(2)))
    blocks = []
    for i, (kind, line, language, code) in enumerate(found):
        if kind == "output":
            if i == 0 or found[i - 1][0] != "runnable":
                raise ValueError(f"{page}:{line}: an output block follows no runnable block")
            continue
        following = found[i + 1] if i + 1 < len(found) else None
        output = following[3] if following is not None and following[0] == "output" else None
        if language not in ("python", "bash"):
            raise ValueError(f"{page}:{line}: a runnable block is python or bash, not {language!r}")
        blocks.append(Block(page, line, language, code, output))
    return blocks


def matches(expected: str, actual: str) -> bool:
    """Whether the expected lines appear in ``actual`` in order, ``...`` matching any
    number of lines (none included); without a leading ``...`` the first line must be
    the first, without a trailing one the last the last."""
    want = expected.splitlines()
    have = actual.splitlines()

    def fit(w: int, h: int) -> bool:
        if w == len(want):
            return h == len(have)
        if want[w] == "...":
            return any(fit(w + 1, k) for k in range(h, len(have) + 1))
        return h < len(have) and have[h].rstrip() == want[w].rstrip() and fit(w + 1, h + 1)

    return fit(0, 0)


PAGES = sorted(DOCS.glob("*.md"))
BLOCKS = [b for page in PAGES for b in runnable_blocks(page.read_text(), page.name)]


def test_the_site_has_runnable_blocks_with_their_output() -> None:
    """The quickstart's blocks are among them, with the output they promise."""
    quick = [b for b in BLOCKS if b.page == "quickstart.md"]
    assert {b.language for b in quick} == {"python", "bash"}
    assert all(b.output is not None for b in quick)


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_each_runnable_block_runs_and_prints_what_the_page_shows(
    block: Block, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    if block.language == "python":
        argv = [sys.executable, "-c", block.code]
    else:
        argv = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    done = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{block} failed:\n{done.stdout}\n{done.stderr}"
    if block.output is not None:
        assert matches(block.output, done.stdout), (
            f"{block} printed:\n{done.stdout}\nthe page shows:\n{block.output}"
        )


@pytest.mark.parametrize(
    ("expected", "actual", "verdict"),
    [
        ("a\nb\n", "a\nb\n", True),
        ("...\nb\n", "a\nx\nb\n", True),
        ("a\n...\n", "a\n", True),
        ("a\nb\n", "a\nx\nb\n", False),
        ("b\n", "a\nb\n", False),
        ("...\nc\n", "a\nb\n", False),
    ],
)
def test_an_output_block_matches_in_order_with_dots_for_any_lines(
    expected: str, actual: str, verdict: bool
) -> None:
    assert matches(expected, actual) is verdict


def test_a_mark_without_its_block_is_refused() -> None:
    with pytest.raises(ValueError, match="no runnable block"):
        runnable_blocks("<!-- output -->\n```text\nx\n```\n", "p.md")
    with pytest.raises(ValueError, match="python or bash"):
        runnable_blocks("<!-- runnable -->\n```text\nx\n```\n", "p.md")


# ------------------------------------------------------------------ rendered from code


@pytest.fixture(scope="module")
def hooks() -> ModuleType:
    return load_script(DOCS / "_hooks.py", "esper_docs_hooks")


def test_the_thresholds_table_is_every_field_with_its_default(hooks: ModuleType) -> None:
    table: str = hooks.on_page_markdown("<!-- esper:thresholds -->\n")
    defaults = HealthThresholds()
    for name in HealthThresholds.model_fields:
        (row,) = [r for r in table.splitlines() if r.startswith(f"| `{name}` |")]
        if name != "replay_tolerances":
            assert f"`{getattr(defaults, name)}`" in row


def test_the_metrics_and_anomalies_are_all_listed(hooks: ModuleType) -> None:
    text: str = hooks.on_page_markdown("<!-- esper:metrics -->\n\n<!-- esper:anomalies -->\n")
    for figure in LSTMHealthMetrics.FIGURES:
        assert f"| `{figure}` |" in text
    for kind in AnomalyType:
        assert f"- `{kind.value}`" in text


def test_the_contracts_page_renders_every_exported_schema(hooks: ModuleType) -> None:
    text: str = hooks.on_page_markdown("<!-- esper:schemas -->\n")
    for path in sorted((ROOT / "contracts").glob("*.schema.json")):
        assert f"`contracts/{path.name}`" in text
    assert "| `event_type` |" in text or "One of:" in text


def test_an_unknown_marker_fails_the_build(hooks: ModuleType) -> None:
    with pytest.raises(ValueError, match="esper:nosuch is unknown"):
        hooks.on_page_markdown("<!-- esper:nosuch -->\n")


def test_the_wandb_keys_put_diagnostics_under_named_states_only(hooks: ModuleType) -> None:
    """As the backend logs them: the primary state's flat keys are its 12 figures; the
    diagnostics and the replay check come under ``lstm/<state>/`` only."""
    from esper_telemetry.backends import wandb_keys

    rows = hooks.on_page_markdown("<!-- esper:wandb-keys -->\n").splitlines()
    (primary,) = [r for r in rows if r.startswith("| health: the primary state |")]
    (named,) = [r for r in rows if r.startswith("| health: every named state")]
    for figure in wandb_keys.HEALTH_FIGURES:
        assert f"`<p>lstm/{figure}`" in primary
        assert f"`<p>lstm/<state>/{figure}`" in named
    for figure in (*wandb_keys.DIAGNOSTIC_FIGURES, *wandb_keys.REPLAY_FIGURES):
        assert f"`<p>lstm/{figure}`" not in primary
        assert f"`<p>lstm/<state>/{figure}`" in named
