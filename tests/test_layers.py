"""The architecture table, checked: every part imports only what its row allows.

Two checks per part. Statically, every ``import`` of an esper module written anywhere
in the part's source (at the top, inside a function, under ``TYPE_CHECKING``) must
point down the table. Dynamically, importing the real part in a fresh interpreter, the
way a user does, must not load a library or a part its row forbids (this catches an
import chain, such as a package ``__init__`` that drags torch in).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import esper_telemetry

SRC = Path(esper_telemetry.__file__).parent
PKG = "esper_telemetry"

#: Heavy or optional third-party libraries a part may not load by being imported.
HEAVY = ("torch", "gymnasium", "wandb", "duckdb", "pyarrow", "textual", "matplotlib")

#: part (module prefix) -> esper parts it may never import (module prefixes).
NEVER: dict[str, tuple[str, ...]] = {
    "contracts": (
        "hub",
        "backends",
        "telemetry",
        "training",
        "analytics",
        "tui",
        "report",
        "cli",
        "run",
        "errors",
        "testing",
    ),
    "telemetry.lstm_health": ("hub", "backends", "training", "analytics", "tui", "cli", "run"),
    "telemetry.anomaly_detector": (
        "hub",
        "backends",
        "telemetry.lstm_health",
        "training",
        "analytics",
        "tui",
        "cli",
        "run",
    ),
    "telemetry.emitters": ("backends", "training", "analytics", "tui", "cli", "run"),
    "hub": ("backends", "telemetry", "training", "analytics", "tui", "report", "cli", "run"),
    "backends": ("training", "analytics", "tui", "report", "cli", "run", "testing"),
    "analytics": ("backends", "hub", "telemetry", "training", "tui", "report", "cli", "run"),
    "training": ("backends", "analytics", "tui", "report", "cli", "run"),
    "tui": ("training", "backends", "telemetry", "cli", "run"),
    "report": ("training", "backends", "telemetry", "hub", "tui", "cli", "run"),
    # An integration is a trainer's glue: it publishes like a trainer, never runs esper's.
    "integrations": ("training", "analytics", "tui", "report", "cli", "run"),
}

#: part -> third-party libraries importing it may not load.
NO_LIBRARY: dict[str, tuple[str, ...]] = {
    "contracts": (*HEAVY, "blinker", "structlog", "rich", "numpy"),
    "telemetry.anomaly_detector": (*HEAVY, "blinker"),
    "hub": HEAVY,
    "backends": HEAVY,
    "backends.escalator": HEAVY,
    "backends.log": HEAVY,
    "backends.analytics": HEAVY,
    "analytics": HEAVY,
    "training.faults": HEAVY,
    "cli": HEAVY,
}


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.append((".".join(parts), path))
    return found


def _esper_imports(path: Path, module: str) -> set[str]:
    """The esper modules ``path`` imports anywhere, relative to the package (``hub._hub``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                base = module.split(".")[: -node.level] if module else []
                names = [".".join([PKG, *base, node.module])]
            else:
                names = [node.module]
        out.update(n.removeprefix(f"{PKG}.") for n in names if n.startswith(f"{PKG}."))
    return out


def _part_of(module: str, table: dict[str, tuple[str, ...]]) -> str | None:
    """The most specific row of ``table`` that ``module`` belongs to."""
    rows = [p for p in table if module == p or module.startswith(f"{p}.")]
    return max(rows, key=len, default=None)


def _under(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(f"{prefix}.")


def test_every_import_points_down_the_table() -> None:
    """No module imports a part its row of the architecture table forbids."""
    violations = []
    for module, path in _modules():
        row = _part_of(module, NEVER)
        if row is None:
            continue
        for target in sorted(_esper_imports(path, module)):
            if any(_under(target, banned) for banned in NEVER[row]):
                violations.append(f"{module} imports {target}")
    assert violations == []


def _backend_of(module: str) -> str:
    """The backend a module of ``backends`` belongs to: ``backends._wandb_file`` and
    ``backends.wandb_backfill`` are parts of ``wandb``."""
    return module.removeprefix("backends.").lstrip("_").split("_")[0]


def test_backends_never_import_each_other() -> None:
    """A backend module imports no other backend (the package's lazy index aside); the
    modules of one backend may import each other."""
    backends = {m for m, _ in _modules() if m.startswith("backends.")}
    violations = [
        f"{module} imports {target}"
        for module, path in _modules()
        if module in backends
        for target in sorted(_esper_imports(path, module))
        if target in backends and _backend_of(target) != _backend_of(module)
    ]
    assert violations == []


def test_the_parts_of_one_backend_are_told_apart_from_other_backends() -> None:
    assert {_backend_of(m) for m in ("backends._wandb_file", "backends.wandb_backfill")} == {
        "wandb"
    }
    assert _backend_of("backends.log") != _backend_of("backends.analytics")


@pytest.mark.parametrize("part", sorted(NO_LIBRARY))
def test_importing_a_part_loads_no_forbidden_library(part: str) -> None:
    """Importing the real part in a fresh interpreter loads none of its forbidden libraries."""
    forbidden = NO_LIBRARY[part]
    banned_parts = NEVER.get(_part_of(part, NEVER) or "", ())
    code = (
        "import sys\n"
        f"import {PKG}.{part}\n"
        f"libs = [m for m in {forbidden!r} if m in sys.modules]\n"
        f"parts = sorted(m for m in sys.modules if any(m == '{PKG}.' + b or "
        f"m.startswith('{PKG}.' + b + '.') for b in {banned_parts!r}))\n"
        "print(libs, parts)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"


@pytest.mark.parametrize("args", [["--help"], ["query", "--help"], ["report", "--help"]])
def test_the_command_line_help_loads_neither_torch_nor_gymnasium(args: list[str]) -> None:
    """``esper --help`` and friends stay light: no torch, no gymnasium."""
    code = (
        "import sys\n"
        "from esper_telemetry.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stderr.write(repr([m for m in ('torch', 'gymnasium') if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip() == "[]"
