"""Several runs side by side: SQL with DuckDB over their analytics logs.

Needs the ``analytics`` extra (``pip install 'esper-telemetry[analytics]'``). Run it::

    python examples/query_runs.py --root runs/compare      # trains two small runs first
    python examples/query_runs.py 'runs/*'                 # or query runs you already have

Without a glob it trains two small runs of the reference recurrent PPO under
``--root``: ``healthy``, and ``exploding``, whose cell state is multiplied by 10³ at
update 2 (the escalator then halts it). Each run directory holds an ``events.jsonl``;
``run_query`` loads every run the glob matches into the same in-memory tables, told
apart by ``run_id``, and prints the result as ``esper query`` would. ``connect`` gives
you the DuckDB connection itself, for results you want as Python values.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from esper_telemetry import TelemetryHub
from esper_telemetry.analytics import connect, run_query
from esper_telemetry.backends import AnalyticsCollector, AnomalyEscalator
from esper_telemetry.training import FaultKind, PPOConfig, train

#: One row per run: how far it went, its largest |c|, and how many anomalies it had.
PER_RUN = """
SELECT p.run_id,
       count(*) AS updates,
       round(max(p.lstm_c_max), 3) AS c_max,
       round(avg(p.policy_loss), 4) AS mean_policy_loss,
       (SELECT count(*) FROM anomalies a WHERE a.run_id = p.run_id) AS anomalies
FROM ppo_updates p
GROUP BY p.run_id
ORDER BY p.run_id
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="?", default=None, help="a glob of run directories to query")
    p.add_argument("--root", type=Path, default=Path("runs/compare"), help="where to train")
    p.add_argument("--updates", type=int, default=5, help="PPO updates of each run")
    args = p.parse_args()
    if args.runs is None and args.root.is_dir() and any(args.root.iterdir()):
        p.error(f"--root: {args.root} is not empty; give a new directory or a glob to query")
    return args


def train_two_runs(root: Path, updates: int) -> str:
    """Train ``healthy`` and ``exploding`` under ``root``; return the glob of both."""
    faults: dict[str, tuple[FaultKind, int] | None] = {"healthy": None, "exploding": ("explode", 2)}
    for seed, (name, fault) in enumerate(faults.items()):
        # A tiny policy, so each run takes a few seconds.
        config = PPOConfig(
            updates=updates, envs=2, steps=8, hidden=16, epochs=2, seed=seed, fault=fault
        )
        with TelemetryHub(name) as hub:  # the run id names the run in every table
            hub.subscribe(AnomalyEscalator(halt_on="critical"), mode="inline")
            hub.subscribe(AnalyticsCollector(root / name))
            result = train(config, hub)
        print(f"trained {name}: {result.status} after {result.updates} updates")
    return str(root / "*")


def main() -> None:
    args = parse_args()
    runs = args.runs if args.runs is not None else train_two_runs(args.root, args.updates)

    # run_query: SQL in, rendered text out (fmt="table", "csv" or "json").
    try:
        print("".join(run_query(runs, PER_RUN)))
    except FileNotFoundError as exc:  # the glob matched no run
        raise SystemExit(f"query_runs.py: error: {exc}") from None

    # connect: a DuckDB connection on the same tables, loading only the one asked for.
    con = connect(runs, tables=["anomalies"])
    first = con.sql(
        "SELECT run_id, min(update) AS at, arg_min(anomaly_type, update) AS kind "
        "FROM anomalies GROUP BY run_id ORDER BY run_id"
    ).fetchall()
    con.close()
    for run_id, update, kind in first:
        print(f"{run_id}: first anomaly {kind} at update {update}")


if __name__ == "__main__":
    main()
