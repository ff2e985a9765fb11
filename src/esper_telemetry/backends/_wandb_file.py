"""What a W&B run's transaction log (``run-<id>.wandb``) holds, read without W&B's service.

``WandBBackend`` reads the file of an offline run once the run has finished, to tell a
row W&B was given from a row W&B wrote. W&B's service process (``wandb-core``) reports a
failed write (a full disk, a file size limit) in its own ``debug-internal.log`` only;
``run.log`` and ``run.finish`` return as if all were well, so the file is the only
witness of what was kept. ``run.finish()`` also returns before ``wandb-core`` has
written the end of the file (it holds its last records in a buffer a few ms longer),
so the check reads the file once it is final: see :func:`read_final_run_file`.

The format (W&B's LevelDB-style log): a 7-byte header (``b":W&B"``, magic ``0xBEE1``,
version 0), then 32 KiB blocks of chunks. A chunk is a 7-byte header (CRC-32 of its type
byte and data, little-endian; data length, uint16; type: FULL 1, FIRST 2, MIDDLE 3,
LAST 4) and its data; a block's last 6 bytes or fewer are zero padding. The data of a
FULL chunk, or of FIRST + MIDDLE... + LAST chunks, is one serialized
``wandb_internal_pb2.Record``. Reading stops at the first chunk that is cut off or
fails its checksum: nothing after it can be trusted to be what W&B meant to write.
"""

from __future__ import annotations

import importlib
import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# W&B's generated protobuf modules ship without type stubs (and protobuf's are not
# installed), so the records are typed Any here.
_pb: Any = importlib.import_module("wandb.proto.wandb_internal_pb2")

_FILE_HEADER = struct.Struct("<4sHB")
_FILE_IDENT, _FILE_MAGIC = b":W&B", 0xBEE1
_CHUNK_HEADER = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
#: The record kinds whose contents the check needs; every other record is only counted.
_READ = frozenset({"history", "summary", "config", "run", "exit"})


@dataclass
class RunFileContents:
    """What the records of one run file hold, as far as a check of delivery needs."""

    steps: set[int] = field(default_factory=set)
    """The step of every history row."""
    config_keys: set[str] = field(default_factory=set)
    """Top-level config keys set by ``run`` and ``config`` records."""
    summary_keys: set[str] = field(default_factory=set)
    """Keys set by ``summary`` records (a nested key joined with "/")."""
    notes: bool = False
    """A ``run`` record carries notes."""
    project: str | None = None
    """The project named by the first ``run`` record that names one."""
    layout: dict[str, Any] | None = None
    """The key layout esper logged with (``config["esper"]["layout"]``), when recorded."""
    exited: bool = False
    """The file holds the exit record ``run.finish()`` writes last."""
    records: int = 0
    """Records read."""
    damaged: bool = False
    """Reading stopped early: a chunk was cut off, failed its checksum or did not parse."""


def run_folders(wandb_dir: str | Path, run_id: str) -> list[Path]:
    """The run folders of W&B run ``run_id`` under ``wandb_dir``, oldest first.

    W&B names a folder ``[offline-]run-<YYYYMMDD_HHMMSS>-<id>``, and adds ``-1``, ``-2``...
    when a second run of that id starts within the same second; the run file inside,
    ``run-<id>.wandb``, is what tells the run apart.
    """
    found = []
    for folder in Path(wandb_dir).glob("*run-*"):
        if not (folder / f"run-{run_id}.wandb").is_file():
            continue
        stamp = folder.name.removeprefix("offline-").removeprefix("run-")
        extra = stamp[16:].removeprefix(run_id).removeprefix("-")
        found.append(((stamp[:15], int(extra) if extra.isdigit() else 0), folder))
    return [folder for _, folder in sorted(found)]


def read_run_file(path: str | Path) -> RunFileContents:
    """Read the run file at ``path``; a missing or foreign file holds nothing.

    Raises:
        OSError: the file exists but cannot be read.
    """
    contents = RunFileContents()
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return contents
    if len(data) < _FILE_HEADER.size:
        contents.damaged = bool(data)
        return contents
    ident, magic, _version = _FILE_HEADER.unpack_from(data)
    if (ident, magic) != (_FILE_IDENT, _FILE_MAGIC):
        contents.damaged = True
        return contents
    for body in _records(data, contents):
        try:
            record = _pb.Record.FromString(body)
        except Exception:  # protobuf's DecodeError: bytes that are not a Record
            contents.damaged = True
            break
        contents.records += 1
        _note(record, contents)
    return contents


def read_final_run_file(
    path: str | Path, internal_log: str | Path, timeout: float, poll: float = 0.05
) -> RunFileContents:
    """Read the run file once ``wandb-core`` is done with it.

    That is when the file holds the exit record (written last), or when ``wandb-core``
    logged an error writing it (it will write no more), or after ``timeout`` seconds,
    whichever comes first; ``timeout=0`` reads it once, at once.

    Raises:
        OSError: the file exists but cannot be read.
    """
    deadline = time.monotonic() + timeout
    name = Path(path).name
    while True:
        contents = read_run_file(path)
        if contents.exited or time.monotonic() >= deadline:
            return contents
        failed = first_error(internal_log, about=name)
        if failed is not None and name in failed:
            return contents
        time.sleep(poll)


def first_error(log_path: str | Path, about: str) -> str | None:
    """The first ERROR message of a ``debug-internal.log`` (JSON lines) that mentions
    ``about`` (the run file's name), else its first ERROR message, else None.

    Best effort: a missing or unreadable log, or a line that is not JSON, gives nothing.
    """
    first: str | None = None
    try:
        with Path(log_path).open(encoding="utf-8", errors="replace") as log:
            for line in log:
                if '"ERROR"' not in line:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(entry, dict) or entry.get("level") != "ERROR":
                    continue
                message = str(entry.get("msg", ""))
                if about in message:
                    return message
                first = first if first is not None else message
    except OSError:
        pass
    return first


def _records(data: bytes, contents: RunFileContents) -> Iterator[bytes]:
    pos, pending = _FILE_HEADER.size, bytearray()
    while pos < len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _CHUNK_HEADER.size:
            pos += room  # the block's zero trailer
            continue
        if pos + _CHUNK_HEADER.size > len(data):
            contents.damaged = True  # a cut-off chunk header
            return
        crc, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0 and crc == 0:
            pos += room  # zero padding up to the next block
            continue
        start, end = pos + _CHUNK_HEADER.size, pos + _CHUNK_HEADER.size + length
        body = data[start:end]
        if end > len(data) or zlib.crc32(bytes([kind]) + body) != crc:
            contents.damaged = True
            return
        pos = end
        if kind == _FULL:
            yield body
        elif kind == _FIRST:
            pending = bytearray(body)
        elif kind == _MIDDLE:
            pending += body
        elif kind == _LAST:
            yield bytes(pending + body)
            pending = bytearray()
        else:
            contents.damaged = True
            return


def _note(record: Any, contents: RunFileContents) -> None:
    kind = record.WhichOneof("record_type")
    if kind not in _READ:
        return
    if kind == "history":
        contents.steps.add(_step_of(record.history))
    elif kind == "summary":
        contents.summary_keys.update(_key(item) for item in record.summary.update)
    elif kind == "config":
        _note_config(record.config.update, contents)
    elif kind == "run":
        _note_config(record.run.config.update, contents)
        contents.notes = contents.notes or bool(record.run.notes)
        contents.project = contents.project or record.run.project or None
    else:
        contents.exited = True


def _note_config(items: Any, contents: RunFileContents) -> None:
    for item in items:
        key = _key(item)
        contents.config_keys.add(key)
        if key == "esper" and contents.layout is None:
            try:
                layout = json.loads(item.value_json).get("layout")
            except (ValueError, AttributeError):  # not esper's section: nothing to learn
                continue
            contents.layout = layout if isinstance(layout, dict) else None


def _step_of(history: Any) -> int:
    if history.HasField("step"):
        return int(history.step.num)
    for item in history.item:
        if _key(item) == "_step":
            return int(json.loads(item.value_json))
    return -1


def _key(item: Any) -> str:
    key: str = item.key or "/".join(item.nested_key)
    return key
