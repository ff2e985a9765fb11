"""Corrupted analytics logs: random bytes inserted, lines cut short, invalid UTF-8, events
of a newer schema, a torn tail. Read by ``read_events``, by the public cursor
(``EventCursor``) and by ``esper watch``'s follower built on it (``LogFollower``), the
last two fed the file in random pieces as if it were being written.

Every line is accounted for exactly once (read as an event, or skipped and reported with
its line number); every line left untouched reads back as the event it was.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from esper_telemetry import TelemetryHub
from esper_telemetry.analytics import BadLine, EventCursor, read_events
from esper_telemetry.backends import AnalyticsCollector, AnomalyEscalator
from esper_telemetry.contracts import EVENTS_FILE, SCHEMA_VERSION, TelemetryEvent
from esper_telemetry.tui import LogFollower
from tests.faulty_lstm import FaultyLSTM


@cache
def clean_log() -> bytes:
    """A real run's events file: 8 PPO updates, a NaN, its anomaly and level changes."""
    with tempfile.TemporaryDirectory() as run_dir:
        with TelemetryHub("corrupt") as hub:
            hub.subscribe(AnomalyEscalator(escalate_for=2), mode="inline")
            hub.subscribe(AnalyticsCollector(run_dir))
            model = FaultyLSTM(hub, {3: "nan"})
            for k in range(8):
                model.update(k)
        return (Path(run_dir) / EVENTS_FILE).read_bytes()


def newer(line: bytes) -> bytes:
    data = json.loads(line)
    data["schema_version"] = SCHEMA_VERSION + 1
    data["payload"]["field_from_the_future"] = 1
    return json.dumps(data).encode()


@dataclass(frozen=True)
class Corruption:
    kind: str
    line: int
    at: float
    junk: bytes


corruptions = st.builds(
    Corruption,
    kind=st.sampled_from(
        ["insert", "cut", "utf8", "newer", "delete-newline", "blank", "duplicate"]
    ),
    line=st.integers(0, 1000),
    at=st.floats(0, 1),
    junk=st.binary(min_size=1, max_size=12),
)


def corrupt(original: bytes, changes: list[Corruption], torn: float | None) -> bytes:
    lines = original.split(b"\n")[:-1]
    originals = set(lines)
    for c in changes:
        i = c.line % len(lines)
        line = lines[i]
        cut = int(c.at * len(line))
        if c.kind == "insert":
            line = line[:cut] + c.junk + line[cut:]
        elif c.kind == "cut":
            line = line[:cut]
        elif c.kind == "utf8":
            line = line[:cut] + b"\xff\xfe" + line[cut:]
        elif c.kind == "newer":
            line = newer(line) if line in originals else line
        elif c.kind == "delete-newline" and i + 1 < len(lines):
            line += lines.pop(i + 1)
        elif c.kind == "blank":
            line = b"   \t"
        elif c.kind == "duplicate":  # a second writer's copy of an earlier line
            lines.insert(i + 1 + int(c.at * (len(lines) - i)), line)
            continue
        lines[i] = line
    data = b"".join(line + b"\n" for line in lines)
    if torn is not None:
        first = original.split(b"\n")[0]
        data += first[: max(1, int(torn * len(first)))]
    return data


@dataclass
class Expected:
    """What a reader must make of a file, worked out from its bytes alone."""

    counted: list[int]  # non-blank line numbers, the torn tail included
    untouched: dict[int, bytes]  # line number -> an original line, byte for byte
    torn_tail: int | None


def expected(original: bytes, data: bytes) -> Expected:
    originals = set(original.split(b"\n")[:-1])
    pieces = data.split(b"\n")
    complete, tail = pieces[:-1], pieces[-1]
    counted = [n for n, line in enumerate(complete, 1) if line.strip()]
    untouched = {n: line for n, line in enumerate(complete, 1) if line in originals}
    torn_tail = len(complete) + 1 if tail.strip() else None
    if torn_tail is not None:
        counted.append(torn_tail)
    return Expected(counted, untouched, torn_tail)


def original_events(original: bytes) -> dict[bytes, str]:
    """Each original line -> the JSON of the event it holds."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / EVENTS_FILE
        path.write_bytes(original)
        events = list(read_events(path))
    return dict(zip(original.split(b"\n")[:-1], (e.model_dump_json() for e in events), strict=True))


def read_file(data: bytes) -> tuple[list[str], list[BadLine]]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / EVENTS_FILE
        path.write_bytes(data)
        bad: list[BadLine] = []
        events = [e.model_dump_json() for e in read_events(path, on_bad_line=bad.append)]
    return events, bad


@given(
    changes=st.lists(corruptions, min_size=1, max_size=6),
    torn=st.one_of(st.none(), st.floats(0, 0.99)),
)
def test_read_events_accounts_for_every_line_and_reads_every_untouched_one(
    changes: list[Corruption], torn: float | None
) -> None:
    """Each non-blank line is an event or a reported bad line, once; untouched lines read
    back as their events unless an earlier line read as an event of the same (run_id,
    seq), which makes them a reported duplicate; only the unterminated last line is
    reported torn."""
    original = clean_log()
    data = corrupt(original, changes, torn)
    want = expected(original, data)
    events, bad = read_file(data)

    bad_numbers = [b.line_number for b in bad]
    good_numbers = [n for n in want.counted if n not in bad_numbers]
    assert sorted(bad_numbers) == bad_numbers
    assert set(bad_numbers) <= set(want.counted)
    assert len(good_numbers) == len(events)
    by_line = dict(zip(good_numbers, events, strict=True))
    by_original = original_events(original)
    duplicates = {b.line_number for b in bad if b.duplicate}
    for n in duplicates & set(want.untouched):
        key = run_and_seq(by_original[want.untouched[n]])
        assert any(run_and_seq(by_line[g]) == key for g in good_numbers if g < n)
    kept = set(want.untouched) - duplicates
    assert kept <= set(good_numbers)
    assert {n: by_line[n] for n in kept} == {n: by_original[want.untouched[n]] for n in kept}
    keys = [run_and_seq(e) for e in events]
    assert len(keys) == len(set(keys))
    assert [b.line_number for b in bad if b.torn] == (
        [want.torn_tail] if want.torn_tail in bad_numbers else []
    )


def run_and_seq(event_json: str) -> tuple[str, int]:
    data = json.loads(event_json)
    return data["run_id"], data["seq"]


class Growing:
    """One of the two incremental readers, polled after each piece is written."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.follower = LogFollower(path) if kind == "LogFollower" else None
        self.cursor = EventCursor(path) if kind == "EventCursor" else None

    def poll(self) -> tuple[list[TelemetryEvent], list[BadLine]]:
        if self.follower is not None:
            chunk = self.follower.poll()
            return list(chunk.events), list(chunk.bad_lines)
        assert self.cursor is not None
        batch = self.cursor.read()
        assert not batch.restarted  # the file only grew
        return list(batch.events), list(batch.bad_lines)

    def waiting(self) -> str | int | None:
        """What is left of an unterminated last line (LogFollower's sentence, the cursor's
        byte count), or None."""
        if self.follower is not None:
            return self.follower.waiting_for
        assert self.cursor is not None
        return self.cursor.pending_bytes or None


@pytest.mark.parametrize("kind", ["LogFollower", "EventCursor"])
@given(
    changes=st.lists(corruptions, min_size=1, max_size=6),
    torn=st.one_of(st.none(), st.floats(0, 0.99)),
    cuts=st.lists(st.floats(0, 1), max_size=8),
)
def test_a_follower_reads_a_growing_corrupted_log_like_read_events(
    kind: str, changes: list[Corruption], torn: float | None, cuts: list[float]
) -> None:
    """Fed the same file in random pieces, the watch follower and the cursor yield the same
    events and bad lines as read_events, and wait on the unterminated last line instead of
    reporting it."""
    data = corrupt(clean_log(), changes, torn)
    want_events, want_bad = read_file(data)
    events: list[str] = []
    bad: list[BadLine] = []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / EVENTS_FILE
        path.touch()
        reader = Growing(kind, path)
        offsets = [*sorted(int(c * len(data)) for c in cuts), len(data)]
        written = 0
        for end in offsets:
            with path.open("ab") as f:
                f.write(data[written:end])
            written = end
            new_events, new_bad = reader.poll()
            events += [e.model_dump_json() for e in new_events]
            bad += new_bad
        waiting = reader.waiting()
    assert events == want_events
    assert [(b.line_number, b.reason) for b in bad] == [
        (b.line_number, b.reason) for b in want_bad if not b.torn
    ]
    tail = data.rsplit(b"\n", 1)[-1]
    complete_lines = data.count(b"\n")
    if not tail:
        assert waiting is None
    elif kind == "EventCursor":
        assert waiting == len(tail)
    else:
        assert isinstance(waiting, str)
        assert waiting.startswith(f"waiting for the rest of line {complete_lines + 1} ")


READERS = ["read_events", "LogFollower", "EventCursor"]


def read_with(reader: str, path: Path) -> tuple[list[TelemetryEvent], list[BadLine]]:
    """Every event and bad line of a finished file, by one of the readers."""
    if reader == "read_events":
        bad: list[BadLine] = []
        return list(read_events(path, on_bad_line=bad.append)), bad
    if reader == "LogFollower":
        chunk = LogFollower(path).poll()
        return list(chunk.events), list(chunk.bad_lines)
    batch = EventCursor(path).read()
    return list(batch.events), list(batch.bad_lines)


@pytest.mark.parametrize("reader", READERS)
def test_an_event_of_a_newer_schema_is_skipped_naming_both_versions(
    tmp_path: Path, reader: str
) -> None:
    """A line written by a newer esper is reported on its line, with an upgrade hint."""
    lines = clean_log().split(b"\n")
    (tmp_path / EVENTS_FILE).write_bytes(b"\n".join([lines[0], newer(lines[1]), lines[2], b""]))
    events, bad = read_with(reader, tmp_path)
    assert [e.seq for e in events] == [0, 2]
    assert [(b.line_number, b.reason, b.torn) for b in bad] == [
        (
            2,
            f"schema_version {SCHEMA_VERSION + 1} is newer than this reader understands "
            f"({SCHEMA_VERSION}); upgrade esper-telemetry to read it",
            False,
        )
    ]


def version_1(line: bytes) -> bytes:
    """An anomaly line as schema_version 1 wrote it: the anomaly's fields flat in the payload,
    and no state named (states have names since schema_version 3)."""
    data = json.loads(line)
    payload = data["payload"]
    anomaly = payload.pop("anomaly")
    del anomaly["state"]
    data["schema_version"] = 1
    data["payload"] = {"anomaly_type": anomaly.pop("type"), **anomaly, **payload}
    return json.dumps(data).encode()


@pytest.mark.parametrize("reader", READERS)
def test_an_anomaly_line_of_schema_version_1_reads_as_the_anomaly_it_was(
    tmp_path: Path, reader: str
) -> None:
    """Every line of the clean log, its anomaly rewritten in the flat version-1 shape, reads
    back: the anomaly event the same as the current one but for its schema_version and the
    state it names (version 1 named none)."""
    lines = clean_log().split(b"\n")[:-1]
    (i,) = [n for n, line in enumerate(lines) if b'"ANOMALY_DETECTED"' in line]
    old = [*lines[:i], version_1(lines[i]), *lines[i + 1 :]]
    (tmp_path / EVENTS_FILE).write_bytes(b"".join(line + b"\n" for line in old))
    events, bad = read_with(reader, tmp_path)
    unnamed = [*lines[:i], without_state(lines[i]), *lines[i + 1 :]]
    current = b"".join(line + b"\n" for line in unnamed)
    expected = list(read_events(run_holding(tmp_path / "current", current)))
    assert json.loads(lines[i])["payload"]["anomaly"]["state"] == "policy"
    versions = [SCHEMA_VERSION] * len(lines)
    versions[i] = 1
    assert bad == []
    assert [e.schema_version for e in events] == versions
    assert [e.model_copy(update={"schema_version": SCHEMA_VERSION}) for e in events] == expected


def without_state(line: bytes) -> bytes:
    """An anomaly line as the current version writes it, its anomaly's state unnamed."""
    data = json.loads(line)
    data["payload"]["anomaly"]["state"] = None
    return json.dumps(data).encode()


def run_holding(folder: Path, data: bytes) -> Path:
    """A run directory whose events file holds ``data``."""
    folder.mkdir()
    (folder / EVENTS_FILE).write_bytes(data)
    return folder


# --------------------------------------------------------------------------- two writers, huge ints

#: A child that appends ``count`` PPO updates of run "shared" to ``run_dir``'s events file:
#: it says it is ready (a file ``go.<base>``), then waits for ``go``, so that two of them
#: write at the same time.
WRITER = """
import sys, time
from pathlib import Path
from esper_telemetry import TelemetryHub, emit_ppo_update_event
from esper_telemetry.backends import AnalyticsCollector
run_dir, count, base, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
with TelemetryHub("shared") as hub:
    hub.subscribe(AnalyticsCollector(run_dir, fsync="never"), mode="inline")
    Path(f"{go}.{base}").touch()
    while not go.exists():
        time.sleep(0.001)
    for k in range(count):
        emit_ppo_update_event(hub, update=base + k, metrics={
            "policy_loss": 0.1, "value_loss": 0.2, "entropy": 0.3})
"""


def esper(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esper_telemetry.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_two_writers_and_huge_ints_leave_a_run_that_esper_query_and_export_read(
    tmp_path: Path,
) -> None:
    """Two processes append the same run's seqs 0..199 to one events file, and lines with
    ints past int64 follow: the readers keep the first line of each seq and report every
    other line by number; esper query and esper export give results, never a traceback."""
    run_dir, go = tmp_path / "run", tmp_path / "go"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(run_dir), "200", str(base), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for base in (0, 1000)
    ]
    deadline = time.monotonic() + 120  # a liveness guard: the writers say when ready
    while not all(Path(f"{go}.{base}").exists() for base in (0, 1000)):
        assert time.monotonic() < deadline, "the writers never got ready"
        assert all(w.poll() is None for w in writers), "a writer exited before writing"
        time.sleep(0.01)
    go.touch()
    for w in writers:
        _, err = w.communicate(timeout=120)
        assert (w.returncode, err) == (0, "")
    path = run_dir / EVENTS_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 400
    template = json.loads(lines[0])
    huge = []
    for field, value in (("update", 2**70), ("rank", 2**64), ("seq", 2**63)):
        huge.append(json.dumps({**template, field: value}).encode() + b"\n")
    with path.open("ab") as f:
        f.write(b"".join(huge))

    bad: list[BadLine] = []
    events = list(read_events(run_dir, on_bad_line=bad.append))
    first_of_seq: dict[int, int] = {}
    for n, line in enumerate(lines, 1):
        first_of_seq.setdefault(json.loads(line)["seq"], n)
    assert [e.seq for e in events] == list(range(200))
    assert [e.update for e in events] == [
        json.loads(lines[first_of_seq[s] - 1])["update"] for s in range(200)
    ]
    assert [(b.line_number, b.duplicate) for b in bad] == [
        *((n, True) for n in range(1, 401) if n not in first_of_seq.values()),
        (401, False),
        (402, False),
        (403, False),
    ]

    query = esper(
        "query",
        str(run_dir),
        "SELECT count(*) AS n, count(DISTINCT seq) AS seqs FROM ppo_updates",
        "--format",
        "csv",
        cwd=tmp_path,
    )
    export = esper("export", str(run_dir), "--parquet", str(tmp_path / "p.parquet"), cwd=tmp_path)
    for done in (query, export):
        assert "Traceback" not in done.stderr
        assert done.returncode == 0, done.stderr
        assert f"warning: skipped 203 bad lines; the first: {bad[0]}" in done.stderr
    assert query.stdout == "n,seqs\n200,200\n"
    assert export.stdout == f"wrote 200 rows of ppo_updates to {tmp_path / 'p.parquet'}\n"
