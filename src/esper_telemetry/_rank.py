"""One rank of ``esper ppo --nproc N``: ``python -m esper_telemetry._rank SPEC RANK``.

The launcher (:mod:`esper_telemetry._launch`) starts one of these per rank; nobody else
should. A rank holds Ctrl-C and SIGTERM before torch loads (as ``esper ppo`` does), joins
the other ranks (gloo, meeting through a file in the launcher's temporary folder),
runs the very ``run_ppo`` of a one-process run with ``RunOptions.parallel`` set, writes
its outcome to ``OUT/rank<RANK>.json`` and exits with its verdict. Rank 0 shows the
progress bar and the summary; the others print nothing of their own.

The spec (``SPEC``, JSON) is written by :func:`write_spec`: the run's options, the number
of ranks, the rendezvous file, the outcome folder and the one rank a demo fault hits.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from esper_telemetry._files import atomic_write
from esper_telemetry._signals import RunSignals

if TYPE_CHECKING:
    from esper_telemetry.run import RunOptions, RunOutcome, WandbSettings

#: How long a rank waits for the others in the rendezvous and in any one collective
#: before it gives up with an error (gloo's timeout). Generous: rank 0 may spend a while
#: starting W&B while the others wait for it.
RANK_TIMEOUT_S = 300.0

#: How often a rank looks whether its launcher is still there.
_LAUNCHER_POLL_S = 1.0


@dataclass(frozen=True)
class RankOutcome:
    """How one rank ended, as its launcher reads it."""

    exit_code: int
    """The rank's verdict (the exit statuses of ``esper ppo``)."""
    message: str
    """The verdict in words (``"completed"``, ``"halted: ..."``)."""
    trained: bool
    """Training began on this rank (False: it ended during start-up)."""
    ended_at: float | None
    """``time.time()`` when its training ended, before the shutdown; None: never began."""

    @classmethod
    def read(cls, path: Path) -> RankOutcome | None:
        """The outcome a rank wrote, or None when it wrote none (it died first)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return cls(**data)


def write_spec(
    path: Path,
    options: RunOptions,
    *,
    world_size: int,
    init_file: Path,
    out_dir: Path,
    fault_rank: int | None,
) -> None:
    """Write what every rank needs to run ``options`` as one of ``world_size`` ranks."""
    # What cannot travel to another process: refused by ``esper ppo`` before this.
    assert not options.backends, "own backends stay in the launcher's process"
    assert not options.tui, "the panel shows one process"
    assert options.parallel is None, "each rank sets its own"
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options.config).items()}
    spec = {
        "world_size": world_size,
        "init_file": str(init_file),
        "out_dir": str(out_dir),
        "fault_rank": fault_rank,
        "options": {
            "config": config,
            "run_root": str(options.run_root),
            "run_id": options.run_id,
            "level": options.level.name,
            "wandb": options.wandb,
            "wandb_project": options.wandb_project,
            "wandb_settings": asdict(options.wandb_settings),
            "halt_on": options.halt_on,
            "escalate_for": options.escalate_for,
            "thresholds": options.thresholds.model_dump(mode="json"),
            "progress": options.progress,
            "close_timeout": options.close_timeout,
            "report": options.report,
            "resume": options.resume,
            "publish_ranks": options.publish_ranks,
            "plugins": [{"name": p.name, "options": dict(p.options)} for p in options.plugins],
            "autoload_plugins": options.autoload_plugins,
        },
    }
    atomic_write(path, json.dumps(spec).encode("utf-8"))


def main(argv: list[str] | None = None) -> None:
    """Run one rank (see the module docstring); exits with the rank's verdict."""
    spec_path, rank_text = sys.argv[1:] if argv is None else argv
    rank = int(rank_text)
    signals = RunSignals.install(ctrl_c_raises=False)  # before torch loads
    _stop_without_launcher(os.getppid())
    import torch
    import torch.distributed as dist
    from rich.console import Console

    from esper_telemetry.run import run_ppo
    from esper_telemetry.training.parallel import DataParallel

    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    options = _rank_options(spec, rank)
    out = Path(spec["out_dir"]) / f"rank{rank}.json"
    dist.init_process_group(
        "gloo",
        init_method=f"file://{spec['init_file']}",
        rank=rank,
        world_size=int(spec["world_size"]),
        timeout=timedelta(seconds=RANK_TIMEOUT_S),
    )
    console = Console(soft_wrap=True, quiet=rank != 0)
    outcome = run_ppo(replace(options, parallel=DataParallel()), console, signals=signals)
    _write_outcome(out, outcome)
    dist.destroy_process_group()
    signals.exiting()
    sys.exit(outcome.exit_code)


def _rank_options(spec: dict[str, Any], rank: int) -> RunOptions:
    """The run's options as this rank runs them: the demo fault only on its rank; the
    progress bar and the report on rank 0 only."""
    from esper_telemetry.contracts import HealthThresholds, TelemetryLevel
    from esper_telemetry.plugins import BackendSpec
    from esper_telemetry.run import RunOptions
    from esper_telemetry.training import PPOConfig

    given = dict(spec["options"])
    config = dict(given.pop("config"))
    fault_rank = spec["fault_rank"]
    if config["fault"] is not None and (fault_rank is None or fault_rank == rank):
        config["fault"] = tuple(config["fault"])
    else:
        config["fault"] = None
    return RunOptions(
        config=PPOConfig(**config),
        run_root=Path(given.pop("run_root")),
        level=TelemetryLevel[given.pop("level")],
        thresholds=HealthThresholds.model_validate(given.pop("thresholds")),
        wandb_settings=_wandb_settings(given.pop("wandb_settings")),
        plugins=tuple(
            BackendSpec(p["name"], MappingProxyType(p["options"])) for p in given.pop("plugins")
        ),
        progress=given.pop("progress") and rank == 0,
        report=given.pop("report") and rank == 0,
        **given,
    )


def _wandb_settings(given: dict[str, Any]) -> WandbSettings:
    """The W&B settings back from JSON (its lists were tuples)."""
    from esper_telemetry.run import WandbSettings

    log = given.get("log")
    return WandbSettings(
        **{
            **given,
            "tags": tuple(given.get("tags", ())),
            "log": None if log is None else tuple(log),
        }
    )


def _write_outcome(path: Path, outcome: RunOutcome) -> None:
    done = RankOutcome(
        exit_code=outcome.exit_code,
        message=outcome.message,
        trained=outcome.result is not None,
        ended_at=outcome.ended_at,
    )
    atomic_write(path, json.dumps(asdict(done)).encode("utf-8"))


def _stop_without_launcher(launcher: int) -> None:
    """SIGTERM this rank once its launcher is gone (killed outright, it forwards nothing):
    every rank then stops at the same update instead of training on, orphaned."""

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(_LAUNCHER_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="esper-launcher-watch", daemon=True).start()


if __name__ == "__main__":
    main()
