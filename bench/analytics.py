"""Cost of the analytics path: writing events.jsonl, and loading it into DuckDB.

Measured:

1. ingest: ``AnalyticsCollector.handle`` for N prebuilt PPO-update events (12 ``lstm_*``
   fields, a few extras), with ``fsync="flush"`` and ``flush()`` every 100 events;
   for reference the same with ``fsync="never"`` and (on N/10 events)
   ``fsync="every_event"``. Events are built before timing; their JSON dump is timed.
2. query: a log of M events (default 1,000,000: PPO updates, one NaN ``lstm_h_rms`` in
   every 1,000, plus an anomaly and a level change every 10,000 updates), written
   from a template of a real event line (not timed). Then, each in a fresh
   interpreter so that its peak RSS (``VmHWM`` of ``/proc/self/status``; ``getrusage``'s
   ``ru_maxrss`` would include the parent's peak) is its own:
   ``read_events`` over the whole file (count only); the same through an
   ``EventCursor`` 2,000 lines a read (``esper watch``'s path); ``connect()`` (all four tables)
   and ``connect(tables=["ppo_updates"])``, each followed by
   ``SELECT count(*), max(lstm_h_rms) FROM ppo_updates``. The baseline RSS of an
   interpreter that imported the same modules is printed next to them.

Run::

    .venv/bin/python bench/analytics.py            # 1M events (about 3 minutes)
    .venv/bin/python bench/analytics.py --quick    # 100k events (about 20 s)
    .venv/bin/python bench/analytics.py --skip-ingest --log /tmp/events.jsonl  # reuse a log
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

FLUSH_EVERY = 100
#: The steps measured in a fresh interpreter each.
PHASES = ("baseline", "read", "follow", "connect", "connect-ppo")


def ingest(n: int, fsync: str, flush_every: int | None) -> float:
    """Events per second through AnalyticsCollector.handle (+ flush) for n events."""
    from esper_telemetry.backends.analytics import AnalyticsCollector
    from esper_telemetry.contracts import PPOUpdateCompleted, PPOUpdatePayload

    events = [
        PPOUpdateCompleted(
            run_id="bench",
            seq=k,
            update=k,
            payload=PPOUpdatePayload.model_validate(_payload_fields(k)),
        )
        for k in range(n)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        collector = AnalyticsCollector(tmp, fsync=fsync)  # type: ignore[arg-type]
        start = time.perf_counter()
        for k, event in enumerate(events, 1):
            collector.handle(event)
            if flush_every and k % flush_every == 0:
                collector.flush()
        collector.close()
        elapsed = time.perf_counter() - start
    return n / elapsed


def write_log(path: Path, n: int) -> None:
    """Write n events (strict JSON lines) quickly from a template of a real event."""
    from esper_telemetry.contracts import (
        Anomaly,
        AnomalyDetected,
        AnomalyDetectedPayload,
        EventBase,
        PPOUpdateCompleted,
        PPOUpdatePayload,
        TelemetryLevel,
        TelemetryLevelChanged,
        TelemetryLevelChangedPayload,
    )

    template = PPOUpdateCompleted(
        run_id="bench",
        seq=0,
        update=0,
        payload=PPOUpdatePayload.model_validate(_payload_fields(0)),
    ).model_dump_json()
    data = json.loads(template)
    prefix = template.split('"seq"')[0]  # event_type, schema_version, run_id
    seq = 0
    with path.open("w", encoding="utf-8") as f:
        for k in range(n):
            fields = _payload_fields(k)
            data["payload"].update(fields)
            payload = json.dumps(
                {key: _strict(v) for key, v in data["payload"].items()}, separators=(",", ":")
            )
            f.write(
                f'{prefix}"seq":{seq},"update":{k},"timestamp":"2026-11-26T12:00:00.000000Z",'
                f'"rank":0,"level":2,"payload":{payload}}}\n'
            )
            seq += 1
            if k % 10_000 == 9_999 and seq < n:
                extras: tuple[EventBase, ...] = (
                    AnomalyDetected(
                        run_id="bench",
                        seq=seq,
                        update=k,
                        payload=AnomalyDetectedPayload(
                            anomaly=Anomaly(
                                type="lstm_nan",
                                severity="critical",
                                observed=math.nan,
                                message="NaN in the LSTM state.",
                            )
                        ),
                    ),
                    TelemetryLevelChanged(
                        run_id="bench",
                        seq=seq + 1,
                        update=k,
                        payload=TelemetryLevelChangedPayload(
                            previous=TelemetryLevel.NORMAL, level=TelemetryLevel.DEBUG
                        ),
                    ),
                )
                for extra in extras:
                    f.write(extra.model_dump_json() + "\n")
                seq += 2
    # The template loop writes n PPO updates plus the extras; trim to exactly n lines.
    _truncate_lines(path, n)


def phase_read(path: Path) -> dict[str, float]:
    from esper_telemetry.analytics import read_events

    start = time.perf_counter()
    count = sum(1 for _ in read_events(path))
    return {"seconds": time.perf_counter() - start, "events": count, "rss_mib": _peak_rss_mib()}


def phase_follow(path: Path) -> dict[str, float]:
    from esper_telemetry.analytics import EventCursor

    cursor = EventCursor(path)
    start = time.perf_counter()
    count = 0
    more = True
    while more:
        batch = cursor.read(max_lines=2000)
        count += len(batch.events)
        more = batch.more
    return {"seconds": time.perf_counter() - start, "events": count, "rss_mib": _peak_rss_mib()}


def phase_connect(path: Path, tables: list[str] | None) -> dict[str, float]:
    from esper_telemetry.analytics import connect

    start = time.perf_counter()
    con = connect(path, tables=tables)
    loaded = time.perf_counter()
    ((count, top),) = con.execute("SELECT count(*), max(lstm_h_rms) FROM ppo_updates").fetchall()
    done = time.perf_counter()
    ((finite_top, nan_rows),) = con.execute(
        "SELECT max(lstm_h_rms) FILTER (WHERE NOT isnan(lstm_h_rms)), "
        "count(*) FILTER (WHERE isnan(lstm_h_rms)) FROM ppo_updates"
    ).fetchall()
    return {
        "connect_s": loaded - start,
        "query_s": done - loaded,
        "rows": count,
        "max": top,
        "max_finite": finite_top,
        "nan_rows": nan_rows,
        "rss_mib": _peak_rss_mib(),
    }


def phase_baseline() -> dict[str, float]:
    import duckdb  # noqa: F401
    import pyarrow  # type: ignore[import-untyped]  # noqa: F401

    import esper_telemetry.analytics  # noqa: F401

    return {"rss_mib": _peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k-event log, 10k ingest")
    parser.add_argument("--events", type=int, default=None, help="events in the log")
    parser.add_argument("--ingest", type=int, default=None, help="events for the ingest rate")
    parser.add_argument("--skip-ingest", action="store_true", help="only the query part")
    parser.add_argument("--log", type=Path, help="events file to use (written if missing)")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        result = {
            "read": lambda: phase_read(args.file),
            "follow": lambda: phase_follow(args.file),
            "connect": lambda: phase_connect(args.file, None),
            "connect-ppo": lambda: phase_connect(args.file, ["ppo_updates"]),
            "baseline": phase_baseline,
        }[args.phase]()
        print(json.dumps(result))
        return
    n_log = args.events or (100_000 if args.quick else 1_000_000)
    n_ingest = args.ingest or (10_000 if args.quick else 100_000)
    print(
        f"python {platform.python_version()}, duckdb {version('duckdb')}, "
        f"pyarrow {version('pyarrow')}, pydantic {version('pydantic')}, {os.cpu_count()} CPUs"
    )
    if not args.skip_ingest:
        _print_ingest(n_ingest)

    with tempfile.TemporaryDirectory() as tmp:
        log = args.log or Path(tmp) / "events.jsonl"
        start = time.perf_counter()
        if not log.exists():
            write_log(log, n_log)
        size = log.stat().st_size
        with log.open("rb") as f:
            n_log = sum(1 for _ in f)
        print(
            f"\n## query ({n_log} events, {size / 2**20:.0f} MiB, "
            f"ready in {time.perf_counter() - start:.1f} s)\n"
        )
        phases = {phase: _run_phase(phase, log) for phase in PHASES}
    _print_query(n_log, phases)


def _print_ingest(n_ingest: int) -> None:
    print(f"\n## ingest ({n_ingest} events)\n")
    print("| fsync | flush | events | events/s | µs/event |")
    print("|---|---|---:|---:|---:|")
    for fsync, every, n in (
        ("flush", FLUSH_EVERY, n_ingest),
        ("never", FLUSH_EVERY, n_ingest),
        ("every_event", None, max(n_ingest // 10, 1)),
    ):
        rate = ingest(n, fsync, every)
        flush = f"every {every}" if every else "-"
        print(f"| {fsync} | {flush} | {n} | {rate:,.0f} | {1e6 / rate:.1f} |")


def _print_query(n_log: int, phases: dict[str, dict[str, float]]) -> None:
    base, read, follow = phases["baseline"], phases["read"], phases["follow"]
    all_tables, ppo = phases["connect"], phases["connect-ppo"]
    print("| step | time | events/s | peak RSS |")
    print("|---|---:|---:|---:|")
    print(f"| interpreter + imports (baseline) | - | - | {base['rss_mib']:.0f} MiB |")
    print(
        f"| read_events, count only | {read['seconds']:.1f} s | "
        f"{read['events'] / read['seconds']:,.0f} | {read['rss_mib']:.0f} MiB |"
    )
    print(
        f"| EventCursor.read(max_lines=2000) until done | {follow['seconds']:.1f} s | "
        f"{follow['events'] / follow['seconds']:,.0f} | {follow['rss_mib']:.0f} MiB |"
    )
    for label, con in (
        ("connect() (all 4 tables)", all_tables),
        ('connect(tables=["ppo_updates"])', ppo),
    ):
        print(
            f"| {label} | {con['connect_s']:.1f} s | "
            f"{n_log / con['connect_s']:,.0f} | {con['rss_mib']:.0f} MiB |"
        )
        print(f"| then SELECT count(*), max(lstm_h_rms) | {con['query_s'] * 1e3:.1f} ms | - | - |")
    print(
        f"\nppo_updates: {ppo['rows']} rows, max(lstm_h_rms) = {ppo['max']} (DuckDB orders NaN "
        f"above every number), finite max = {ppo['max_finite']}, NaN rows = {ppo['nan_rows']}"
    )


# -- helpers --------------------------------------------------------------------------


def _payload_fields(k: int) -> dict[str, float | int | bool | dict[str, float]]:
    x = 0.5 + (k % 997) / 997
    h_rms = math.nan if k % 1000 == 999 else x
    return {
        "policy_loss": -0.01 * x,
        "value_loss": 0.3 * x,
        "entropy": 0.69 - 0.1 * x,
        "approx_kl": 0.01 * x,
        "clip_fraction": 0.1 * x,
        "explained_variance": 0.9 * x,
        "grad_norm": 1.5 * x,
        "learning_rate": 3e-4,
        "env_steps": 2048 * (k + 1),
        "lstm_h_l2_total": 40.0 * x,
        "lstm_c_l2_total": 80.0 * x,
        "lstm_h_rms": h_rms,
        "lstm_c_rms": 2.0 * x,
        "lstm_h_env_rms_mean": x,
        "lstm_h_env_rms_max": 1.3 * x,
        "lstm_c_env_rms_mean": 2.0 * x,
        "lstm_c_env_rms_max": 2.6 * x,
        "lstm_h_max": 0.99,
        "lstm_c_max": 5.0 * x,
        "lstm_has_nan": math.isnan(h_rms),
        "lstm_has_inf": False,
        "extra": {"mean_reward": x, "fps": 12_000.0 + k % 100},
    }


def _strict(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _truncate_lines(path: Path, n: int) -> None:
    with path.open("rb+") as f:
        for _ in range(n):
            f.readline()
        f.truncate()


def _peak_rss_mib() -> float:
    # VmHWM, not getrusage's ru_maxrss: ru_maxrss survives exec, so a child would report
    # its parent's peak at the time it was spawned.
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_phase(phase: str, log: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--file", str(log)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    main()
