"""Latency of ``TelemetryHub.emit`` with a slow subscriber, next to a plain blinker ``send``.

Measured: wall time of each ``emit`` call (``time.perf_counter_ns`` around it) as seen by
the emitting ("training") thread, with four subscribers: three cheap callables (append,
count, keep the last update) and one that sleeps 20 ms per event. Scenarios:

a. plain blinker: ``Signal.send`` to the same four callables (it waits for the sleeper);
a0. plain blinker: ``Signal.send`` to four cheap callables (the sleeper replaced, as in c):
   the raw cost of blinker's dispatch, which the hub also uses;
b. hub, all four in thread mode; the sleeper's queue holds every event (no back-pressure);
b'. as (b), but the emitting thread wakes every idle worker itself, as the hub did before
   its wake-up chain (a bench-only stand-in for the chain): the before/after of that change;
c. hub, as (b) but the sleeper replaced by a fourth cheap callable (the control);
d. hub, the sleeper with ``when_full="drop_oldest"`` and ``queue_size=64``.

(b) and (c) run paced (one emit every 200 µs, as a trainer would: the wait sleeps and so
releases the GIL, then spins the last few µs) and unpaced (a burst); (a), (a0) and (d)
run paced. Two reference rows, paced, show the hub's cost without worker threads: four
cheap subscribers inline, and no subscriber at all. All scenarios run in interleaved
rounds (a fresh hub or signal per round, order reversed every other round) so that
drifts of this shared machine fall on all of them alike; (a) gets few sends, as each
costs the sleeper's 20 ms. Events are built before timing, so pydantic validation of the
event is not counted; the hub's own ``model_copy`` stamping is. Each hub is closed with a
short timeout after its round; the sleeper's backlog is then counted as abandoned, which
is expected. For the threaded scenarios the table also gives the thread wake-ups the
emitting thread made per emit (the hub's wake-up chain: at most one).

Run::

    .venv/bin/python bench/hub.py            # full run (about 12 s)
    .venv/bin/python bench/hub.py --quick    # smoke run (about 4 s)
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Literal

import blinker

from esper_telemetry import PPOUpdateCompleted, PPOUpdatePayload, TelemetryEvent, TelemetryHub
from esper_telemetry.hub._wake import WakeChain

SLEEP_S = 0.020
PACE_NS = 200_000
P99_TARGET_US = 50.0
CLOSE_TIMEOUT_S = 0.3

Handler = Callable[[TelemetryEvent], None]
WhenFull = Literal["block", "drop_oldest"]
Mode = Literal["thread", "inline"]
Kind = Literal["hub", "blinker"]


def make_events(n: int) -> list[PPOUpdateCompleted]:
    payload = PPOUpdatePayload(policy_loss=0.1, value_loss=0.2, entropy=0.3)
    return [PPOUpdateCompleted(update=k, payload=payload) for k in range(n)]


def make_handlers(with_sleeper: bool) -> list[Handler]:
    """Three cheap callables plus the sleeper (or a fourth cheap one)."""
    seen: list[TelemetryEvent] = []
    counter = [0]
    last = [0]

    def append(event: TelemetryEvent) -> None:
        seen.append(event)

    def count(event: TelemetryEvent) -> None:
        counter[0] += 1

    def keep_last(event: TelemetryEvent) -> None:
        last[0] = event.update

    def sleeper(event: TelemetryEvent) -> None:
        time.sleep(SLEEP_S)

    def cheap4(event: TelemetryEvent) -> None:
        counter[0] += 1

    return [append, count, keep_last, sleeper if with_sleeper else cheap4]


def timed_emits(
    send: Callable[[PPOUpdateCompleted], object], events: list[PPOUpdateCompleted], pace_ns: int
) -> list[int]:
    """Call ``send`` on each event, timing each call; wait ``pace_ns`` between starts."""
    clock = time.perf_counter_ns
    samples: list[int] = []
    next_start = clock()
    for event in events:
        if pace_ns:
            remaining = next_start - clock()
            if remaining > 80_000:
                time.sleep((remaining - 60_000) / 1e9)  # releases the GIL, like torch work
            while clock() < next_start:
                pass
            next_start += pace_ns
        t0 = clock()
        send(event)
        samples.append(clock() - t0)
    return samples


class WakeEach(WakeChain):
    """The hub before its wake-up chain: the emitting thread wakes every idle worker."""

    def release(self) -> None:
        batch = list(self._batch)
        self._batch.clear()
        for worker in batch:
            if worker.ring():
                self.dispatcher_wakeups += 1


@dataclass
class Scenario:
    """One set-up; its emits are spread over several rounds, interleaved with the others."""

    name: str
    with_sleeper: bool
    pace_ns: int
    sleeper_queue: int = 0  # 0: large enough for every event
    when_full: WhenFull = "block"
    mode: Mode = "thread"
    subscribers: int = 4
    kind: Kind = "hub"
    wake_each: bool = False
    key: str = ""
    samples: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # delivered/dropped/abandoned
    cheap_lost: int = 0
    emitter_wakeups: int = 0

    def run_round(self, n: int) -> None:
        """A fresh hub (or signal), ``n`` timed emits, then close() with a short timeout."""
        events = make_events(n)
        handlers = make_handlers(self.with_sleeper)[: self.subscribers]
        if self.kind == "blinker":
            sig = blinker.Signal()
            for fn in handlers:

                def receiver(sender: object, *, event: TelemetryEvent, _fn: Handler = fn) -> None:
                    _fn(event)

                sig.connect(receiver, weak=False)
            self.samples += timed_emits(lambda e: sig.send(None, event=e), events, self.pace_ns)
            return
        hub = TelemetryHub("bench")
        if self.wake_each:
            hub._wake_chain = WakeEach()  # before subscribing: each subscription keeps it
        for i, fn in enumerate(handlers):
            fourth = i == 3
            queue = self.sleeper_queue if fourth and self.sleeper_queue else max(n, 1024)
            policy: WhenFull = self.when_full if fourth else "block"
            hub.subscribe(fn, mode=self.mode, queue_size=queue, when_full=policy, name=fn.__name__)
        self.samples += timed_emits(hub.emit, events, self.pace_ns)
        # The hub's own count of wake-ups made on the emitting thread (a test hook).
        self.emitter_wakeups += hub._wake_chain.dispatcher_wakeups
        stats = hub.close(timeout=CLOSE_TIMEOUT_S)
        for sub in stats.subscribers:
            if sub.name == "sleeper":
                for key in ("delivered", "dropped", "abandoned"):
                    self.counts[key] = self.counts.get(key, 0) + getattr(sub, key)
            else:
                self.cheap_lost += n - sub.delivered

    def row(self) -> str:
        s = sorted(self.samples)
        med, p99, top = s[len(s) // 2], s[min(len(s) - 1, int(0.99 * len(s)))], s[-1]
        wakes = (
            f"{self.emitter_wakeups / len(s):.2f}"
            if self.kind == "hub" and self.mode == "thread"
            else "–"
        )
        return (
            f"| {self.name} | {len(s)} | {med / 1e3:,.1f} µs | {p99 / 1e3:,.1f} µs | "
            f"{top / 1e3:,.1f} µs | {wakes} |"
        )

    def stat(self, q: float) -> float:
        s = sorted(self.samples)
        return s[min(len(s) - 1, int(q * len(s)))] / 1e3


@dataclass
class Scenarios:
    """Every scenario of one run, by role."""

    a: Scenario
    a0: Scenario
    hubs: list[Scenario]

    def __getattr__(self, name: str) -> Scenario:
        return {sc.key: sc for sc in self.hubs}[name]


def build() -> Scenarios:
    paced = PACE_NS
    hubs = [
        Scenario("b. hub, sleeper threaded (paced)", True, paced),
        Scenario("b'. hub, sleeper threaded, emitter wakes each (paced)", True, paced),
        Scenario("c. hub, no sleeper (paced)", False, paced),
        Scenario("b. hub, sleeper threaded (burst)", True, 0),
        Scenario("c. hub, no sleeper (burst)", False, 0),
        Scenario("d. hub, sleeper drop_oldest q=64 (paced)", True, paced, 64, "drop_oldest"),
        # Reference rows: what the hub costs without waking any worker thread.
        Scenario("ref: hub, 4 cheap inline (paced)", False, paced, mode="inline"),
        Scenario("ref: hub, no subscriber (paced)", False, paced, subscribers=0),
    ]
    for sc, key in zip(hubs, ("b", "b1", "c", "bb", "cb", "d", "r1", "r0"), strict=True):
        sc.key = key
    hubs[1].wake_each = True
    return Scenarios(
        a=Scenario(
            "a. blinker send, 4 receivers incl. sleeper (paced)", True, paced, kind="blinker"
        ),
        a0=Scenario("a0. blinker send, 4 cheap receivers (paced)", False, paced, kind="blinker"),
        hubs=hubs,
    )


def report(sc: Scenarios) -> None:
    print("| scenario | emits | median | p99 | max | wake-ups by the emitter per emit |")
    print("|---|---:|---:|---:|---:|---:|")
    for one in (sc.a, sc.a0, *sc.hubs):
        print(one.row())
    print()
    for one in sc.hubs[:6]:
        sleeper = f"; sleeper at close(): {one.counts}" if one.counts else ""
        print(f"- {one.name}: cheap subscribers lost {one.cheap_lost} events{sleeper}")
    print()
    print("Side by side, paced (hub b against blinker's raw send to the same callables):")
    for label, ref in (("a, same four incl. sleeper", sc.a), ("a0, four cheap", sc.a0)):
        print(
            f"- b / {label}: median {sc.b.stat(0.5) / ref.stat(0.5):.3f}, "
            f"p99 {sc.b.stat(0.99) / ref.stat(0.99):.3f}"
        )
    print(
        f"- b / b' (the wake-up chain against waking each worker): median "
        f"{sc.b.stat(0.5) / sc.b1.stat(0.5):.2f}, p99 {sc.b.stat(0.99) / sc.b1.stat(0.99):.2f}"
    )


def checks(sc: Scenarios) -> list[tuple[str, bool]]:
    b, bb = sc.b, sc.bb
    found = [
        (
            f"b paced: p99 {b.stat(0.99):.1f} µs < {P99_TARGET_US:g} µs",
            b.stat(0.99) < P99_TARGET_US,
        ),
        (
            f"b burst: p99 {bb.stat(0.99):.1f} µs < {P99_TARGET_US:g} µs",
            bb.stat(0.99) < P99_TARGET_US,
        ),
    ]
    for label, x, y in (("paced", b, sc.c), ("burst", bb, sc.cb)):
        med, p99 = x.stat(0.5) / y.stat(0.5), x.stat(0.99) / y.stat(0.99)
        found.append(
            (
                f"sleeper has no effect, {label}: b/c median {med:.2f}, p99 {p99:.2f} (≤ 1.25)",
                med <= 1.25 and p99 <= 1.25,
            )
        )
    worst = max(one.stat(1.0) for one in (b, bb, sc.d))
    found.append(
        (f"no hub emit waits for the sleeper: max {worst:,.0f} µs < 20,000 µs", worst < 20_000)
    )
    chained = (b, sc.c, bb, sc.cb, sc.d)
    most = max(one.emitter_wakeups / len(one.samples) for one in chained)
    found.append((f"at most one wake-up per emit: most {most:.2f} per emit ≤ 1", most <= 1))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few emits: a smoke run")
    args = parser.parse_args()
    n, rounds = (300, 2) if args.quick else (2000, 5)
    n_blinker = 10 if args.quick else 50  # each costs the sleeper's 20 ms
    # close() gives up on the sleeper's backlog and logs a warning each time; expected here.
    logging.getLogger("esper_telemetry.hub").setLevel(logging.ERROR)
    print(
        f"# bench/hub.py  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  "
        f"Python {platform.python_version()}  blinker {version('blinker')}  "
        f"{'quick' if args.quick else 'full'}; pace {PACE_NS / 1e3:g} µs, sleeper "
        f"{SLEEP_S * 1e3:g} ms/event; {n} emits per hub scenario in {rounds} interleaved rounds; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n"
    )
    Scenario("warm-up", False, 0).run_round(200)  # pydantic, blinker, thread machinery
    sc = build()
    everything = [sc.a0, *sc.hubs]
    for k in range(rounds):
        sc.a.run_round(n_blinker // rounds)
        for one in everything if k % 2 == 0 else reversed(everything):
            one.run_round(n // rounds)
    report(sc)
    print()
    found = checks(sc)
    for text, ok in found:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    print(f"overall: {'PASS' if all(ok for _, ok in found) else 'FAIL'}")


if __name__ == "__main__":
    main()
