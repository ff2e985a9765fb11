"""The files a run leaves in its directory: named here once, for the writers and every reader.

========================  ===============================================================
``events.jsonl``          the analytics log (``AnalyticsCollector``): the source of truth
``log.jsonl``             the structured log (``StructlogBackend``)
``wandb/``                the offline W&B run (``WandBBackend(dir=run_dir)``)
``report.png``            the run report (``esper report``, ``esper ppo --report``)
========================  ===============================================================

>>> RunLayout("runs/r1").events
PosixPath('runs/r1/events.jsonl')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

EVENTS_FILE: Final = "events.jsonl"
LOG_FILE: Final = "log.jsonl"
WANDB_DIR: Final = "wandb"
REPORT_FILE: Final = "report.png"


@dataclass(frozen=True)
class RunLayout:
    """Where each file of one run lives.

    Args:
        root: The run's directory (``runs/<run_id>`` for ``esper ppo``).
    """

    root: Path

    def __init__(self, root: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def events(self) -> Path:
        """The analytics log."""
        return self.root / EVENTS_FILE

    @property
    def log(self) -> Path:
        """The structured log."""
        return self.root / LOG_FILE

    @property
    def wandb(self) -> Path:
        """W&B's folder, made by ``WandBBackend(dir=root)`` (W&B names it ``wandb``)."""
        return self.root / WANDB_DIR

    @property
    def report(self) -> Path:
        """The default report picture."""
        return self.root / REPORT_FILE
