"""The files a run leaves in its directory: named here once, for the writers and every reader.

========================  ===============================================================
``events.jsonl``          the analytics log (``AnalyticsCollector``): the source of truth
``events.rank<N>.jsonl``  rank N's analytics log, when every rank publishes
                          (``TelemetryHub(publish_ranks="all")`` in a distributed run)
``log.jsonl``             the structured log (``StructlogBackend``); ``log.rank<N>.jsonl``
                          per rank, as above
``wandb/``                the offline W&B run (``WandBBackend(dir=run_dir)``)
``report.png``            the run report (``esper report``, ``esper ppo --report``)
========================  ===============================================================

>>> RunLayout("runs/r1").events
PosixPath('runs/r1/events.jsonl')
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

EVENTS_FILE: Final = "events.jsonl"
LOG_FILE: Final = "log.jsonl"
WANDB_DIR: Final = "wandb"
REPORT_FILE: Final = "report.png"


_RANK_FILE = re.compile(r"events\.rank(\d+)\.jsonl")


def per_rank_name(name: str, rank: int) -> str:
    """``events.jsonl`` -> ``events.rank3.jsonl``: the file of one rank."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.rank{rank}.{suffix}" if dot else f"{name}.rank{rank}"


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

    def events_of_rank(self, rank: int) -> Path:
        """Rank ``rank``'s analytics log, when every rank publishes."""
        return self.root / per_rank_name(EVENTS_FILE, rank)

    def event_files(self) -> list[Path]:
        """The analytics logs present: ``events.jsonl``, then ``events.rank<N>.jsonl`` by N."""
        files = [self.events] if self.events.is_file() else []
        ranked = []
        for path in self.root.glob("events.rank*.jsonl"):
            match = _RANK_FILE.fullmatch(path.name)
            if match is not None and path.is_file():
                ranked.append((int(match[1]), path))
        return files + [path for _, path in sorted(ranked)]

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
