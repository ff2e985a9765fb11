"""Optional dependencies: one place that knows which extra brings which library."""

from __future__ import annotations

import importlib.util
from typing import Final

#: The extra that installs each optional library.
EXTRA_OF: Final = {
    "wandb": "wandb",
    "wandb_workspaces": "wandb",
    "duckdb": "analytics",
    "pyarrow": "analytics",
    "textual": "tui",
    "matplotlib": "report",
    "stable_baselines3": "sb3",
    "sb3_contrib": "sb3",
}


def install_hint(module: str) -> str:
    """The pip command that installs the extra bringing ``module``."""
    return f"pip install 'esper-telemetry[{EXTRA_OF[module.split('.')[0]]}]'"


def missing_message(what: str, module: str) -> str:
    """One line: ``what`` needs ``module``, and the command that installs it."""
    return f"{what} needs {module.split('.')[0]}: {install_hint(module)}"


def is_installed(module: str) -> bool:
    """True when ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def require(what: str, module: str) -> None:
    """Raise ``ImportError`` naming the extra to install when ``module`` is missing."""
    if not is_installed(module):
        raise ImportError(missing_message(what, module), name=module)
