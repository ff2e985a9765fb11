"""The real ``esper ppo`` in a child process, with gates that hold it at an edge of the run.

Run as ``python tests/reliability/edge_children.py ppo ARGS...`` (the arguments of
``esper ppo``): the same click command, ``run_ppo``, trainer, backends and signal
handling as ``esper ppo``. Environment variables add, for the test that started it:

- ``EDGE_GATES`` (a folder) and ``EDGE_GATE_AT`` (gate names, comma-separated): at each
  named gate the child writes the file ``EDGE_GATES/<gate>`` and waits until the test
  writes ``<gate>.go`` (a bound of ``GATE_BOUND_S`` keeps a broken test from hanging).
  A signal the test sends in between lands at that exact moment. The gates:

  ``torch-import``  as ``import torch`` begins (inside the import statement)
  ``wandb-init``    as ``wandb.init`` begins (the run directory exists, W&B has no
                    service process yet)
  ``wandb-started`` as ``wandb.init`` returns (W&B's service process is running)
  ``closing``       inside the ``close()`` of one more backend (``gate``), while
                    the hub closes: the shutdown is under way and W&B may be finishing
  ``exiting``       in an exit hook, once the command is over and Python exits (as
                    torch's and W&B's exit hooks run)

- ``EDGE_CLOSE_TIMEOUT``: the run's ``close_timeout`` in seconds (``esper ppo``: 30).
- ``EDGE_WANDB_INIT_TIMEOUT``: ``WandBBackend``'s ``init_timeout`` in seconds (120).

The parent side lives here too: :func:`start_child` (output to files, not pipes:
W&B's service process inherits the child's stdout and stderr, and a hung one would
keep a pipe open for ever), :func:`finish_child`, the gates, and :func:`wandb_core_of`.
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.machinery
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

#: How long a gate holds the child at most, and how long the parent waits for a gate to
#: be reached: bounds on a hang, not measures of speed.
GATE_BOUND_S = 120.0
GATES = ("torch-import", "wandb-init", "wandb-started", "closing", "exiting")
#: The argv prefix that runs this file as the child.
CHILD = (sys.executable, str(Path(__file__).resolve()))


# -- the parent's side -----------------------------------------------------------------------


@dataclass
class Child:
    """A child process, its output files, and when it started."""

    proc: subprocess.Popen[bytes]
    folder: Path
    started: float

    @property
    def out(self) -> str:
        """Its standard output so far."""
        return (self.folder / "stdout.txt").read_text(errors="replace")

    @property
    def err(self) -> str:
        """Its standard error so far."""
        return (self.folder / "stderr.txt").read_text(errors="replace")

    def send(self, signum: signal.Signals) -> None:
        """Ctrl-C as a terminal sends it (to the whole process group); SIGTERM as `kill`."""
        if signum is signal.SIGINT:
            os.killpg(self.proc.pid, signum)
        else:
            os.kill(self.proc.pid, signum)


def esper_child(root: Path, run_id: str, *args: str) -> list[str]:
    """The argv of this file's child running ``esper ppo`` into ``root/runs/run_id``."""
    return [*CHILD, "ppo", "--run-dir", str(root / "runs"), "--run-id", run_id, *args]


def start_child(argv: Sequence[str], tmp: Path, env: Mapping[str, str] | None = None) -> Child:
    """Start ``argv`` in ``tmp`` in a session of its own (as under a shell), Ctrl-C enabled,
    with the environment of ``children.child_env`` plus ``env``."""
    from tests.reliability.children import child_env, sigint_not_ignored

    folder = tmp / f"child-{time.monotonic_ns()}"
    folder.mkdir()
    with (
        (folder / "stdout.txt").open("wb") as out,
        (folder / "stderr.txt").open("wb") as err,
        sigint_not_ignored(),
    ):
        proc = subprocess.Popen(
            list(argv),
            env=child_env(tmp, **(env or {})),
            cwd=tmp,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    return Child(proc, folder, time.monotonic())


def finish_child(child: Child, timeout: float) -> int:
    """Wait for the child's exit status; past ``timeout`` kill it (and its W&B service) and
    fail. Then make sure no W&B service of the child outlives the test."""
    try:
        return child.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"the child did not exit within {timeout} s; its stderr: {child.err[-3000:]}"
        ) from None
    finally:
        reap(child)


def reap(child: Child) -> None:
    """Kill the child and every W&B service it started, if still there (SIGKILL: it also
    ends a stopped process)."""
    for pid in wandb_core_of(child.proc.pid):
        os.kill(pid, signal.SIGKILL)
    if child.proc.poll() is None:
        child.proc.kill()
        child.proc.wait()


def gate_env(gates: Path, *at: str, close_timeout: float | None = None) -> dict[str, str]:
    """The environment variables that hold the child at the gates ``at``."""
    unknown = set(at) - set(GATES)
    assert not unknown, f"no such gate: {unknown}"
    env = {"EDGE_GATES": str(gates), "EDGE_GATE_AT": ",".join(at)}
    if close_timeout is not None:
        env["EDGE_CLOSE_TIMEOUT"] = str(close_timeout)
    return env


def wait_for_gate(gates: Path, gate: str, poll: Callable[[], int | None]) -> None:
    """Wait until the child reached ``gate``.

    Raises:
        AssertionError: the child exited first (``poll()`` returned a status), or did not
            get there within ``GATE_BOUND_S``.
    """
    deadline = time.monotonic() + GATE_BOUND_S
    while not (gates / gate).exists():
        status = poll()
        if status is not None:
            raise AssertionError(f"the child exited {status} before reaching gate {gate!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the child did not reach gate {gate!r} in {GATE_BOUND_S} s")
        time.sleep(0.01)


def open_gate(gates: Path, gate: str) -> None:
    """Let the child go on past ``gate``."""
    (gates / f"{gate}.go").touch()


def wandb_core_of(pid: int) -> list[int]:
    """The pids of the live ``wandb-core`` processes W&B started for process ``pid``.

    W&B starts its service in a session of its own and passes it ``--pid <parent>``;
    that argument, not the parent link, finds it even once ``pid`` has exited.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # it exited while we looked
        ours = argv[0].endswith(b"wandb-core") and _after(argv, b"--pid") == str(pid)
        if ours and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _after(argv: Sequence[bytes], flag: bytes) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg == flag:
            return argv[i + 1].decode(errors="replace")
    return None


# -- the child's side ------------------------------------------------------------------------


def _gate(name: str) -> None:
    """Say the child is at gate ``name`` and wait for the test to open it (if it holds one)."""
    if name not in os.environ.get("EDGE_GATE_AT", "").split(","):
        return
    gates = Path(os.environ["EDGE_GATES"])
    (gates / name).touch()
    deadline = time.monotonic() + GATE_BOUND_S
    # A sleep loop in Python: a signal's handler runs right here, in the middle of it.
    while not (gates / f"{name}.go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


class _AtImport(importlib.abc.MetaPathFinder):
    """Calls ``before`` as the import of ``name`` begins and ``after(module)`` once it ran."""

    def __init__(
        self,
        name: str,
        before: Callable[[], None] = lambda: None,
        after: Callable[[ModuleType], None] = lambda module: None,
    ) -> None:
        self.name, self.before, self.after = name, before, after

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once, and not for the lookup below
        self.before()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenCall(spec.loader, self.after)
        return spec


class _ThenCall(importlib.abc.Loader):
    """A loader that runs another's module, then calls ``after(module)``."""

    def __init__(self, loader: importlib.abc.Loader, after: Callable[[ModuleType], None]) -> None:
        self._loader, self._after = loader, after

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._after(module)

    def __getattr__(self, name: str) -> Any:  # resource readers and the like
        return getattr(self._loader, name)


def _gated_wandb(module: ModuleType) -> None:
    init = module.__dict__["init"]

    def gated_init(*args: Any, **kwargs: Any) -> Any:
        _gate("wandb-init")
        run = init(*args, **kwargs)
        _gate("wandb-started")
        return run

    module.__dict__["init"] = gated_init


class _GateInClose:
    """One more backend, whose close() holds the hub's close at gate ``closing``."""

    name = "gate"

    def handle(self, event: object) -> None:
        pass

    def close(self) -> None:
        _gate("closing")


def _patched_run(module: ModuleType) -> None:
    run_ppo = module.__dict__["run_ppo"]
    timeout = os.environ.get("EDGE_CLOSE_TIMEOUT")

    def patched(options: Any, console: Any, **kwargs: Any) -> Any:
        if timeout is not None:
            options = replace(options, close_timeout=float(timeout))
        if "closing" in os.environ.get("EDGE_GATE_AT", ""):
            options = replace(options, backends=(*options.backends, _GateInClose()))
        return run_ppo(options, console, **kwargs)

    module.__dict__["run_ppo"] = patched


def _patched_wandb_backend(module: ModuleType) -> None:
    timeout = os.environ.get("EDGE_WANDB_INIT_TIMEOUT")
    if timeout is not None:
        module.__dict__["WandBBackend"].__init__.__kwdefaults__["init_timeout"] = float(timeout)


def main() -> None:
    """Run ``esper`` with the gates and settings of the environment (see the docstring)."""
    atexit.register(_gate, "exiting")  # registered first, so run last of the exit hooks
    sys.meta_path[:0] = [
        _AtImport("torch", before=lambda: _gate("torch-import")),
        _AtImport("wandb", after=_gated_wandb),
        _AtImport("esper_telemetry.run", after=_patched_run),
        _AtImport("esper_telemetry.backends.wandb", after=_patched_wandb_backend),
    ]
    from esper_telemetry.cli import main as esper

    esper(prog_name="esper")


if __name__ == "__main__":
    main()
