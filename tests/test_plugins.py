"""Backend plugins: built and installed into temporary folders, driven through real `esper`.

Each plugin package is built from its sources by pip (``--no-deps --no-build-isolation``,
offline) into a folder of its own, which the child processes find on ``PYTHONPATH``:
the example plugin of ``backends/``, and three small packages written here — one whose
entry point names a module that does not exist, one whose factory raises, one whose
backend raises on every event.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import MappingProxyType

import pytest
from rich.console import Console

import esper_telemetry
from esper_telemetry._rank import _rank_options, write_spec
from esper_telemetry.analytics import read_events
from esper_telemetry.contracts import RunFinished, TelemetryEvent
from esper_telemetry.hub import Backend, TelemetryHub
from esper_telemetry.plugins import BUILT_IN, BackendSpec, PluginError, load
from esper_telemetry.run import RunOptions, run_ppo
from esper_telemetry.training import PPOConfig

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(esper_telemetry.__file__).resolve().parents[1]
#: Builds and installs a package from its folder, offline, with the setuptools at hand.
PIP_INSTALL = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
PIP_INSTALL += ["--no-build-isolation", "--no-index"]
SMALL = ("--envs", "2", "--episode-length", "8", "--hidden", "16", "--no-progress")


def install(package: Path, site: Path) -> Path:
    """Build ``package`` (a copy of it: pip builds in place) and install it into ``site``."""
    copy = site.parent / f"{site.name}-source"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [*PIP_INSTALL, "--target", str(site), str(copy)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return site


def write_package(where: Path, name: str, entry_points: dict[str, str], code: str) -> Path:
    """A one-module package ``name`` registering ``entry_points`` as backend plugins."""
    module = name.replace("-", "_")
    (where / "src" / module).mkdir(parents=True)
    (where / "src" / module / "__init__.py").write_text(textwrap.dedent(code))
    eps = "\n".join(f'{k} = "{v}"' for k, v in entry_points.items())
    (where / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["setuptools>=70.1"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{name}"
            version = "0.0.1"

            [project.entry-points."esper_telemetry.backends"]
            """
        )
        + eps
        + '\n\n[tool.setuptools.packages.find]\nwhere = ["src"]\n'
    )
    return where


BROKEN = '''
def make_refusing(**options):
    """Never builds: its factory raises."""
    raise ValueError("the refusing plugin refuses")


class Stubborn:
    def on_subscribe(self, hub):
        raise RuntimeError(f"will not start in run {hub.run_id}")

    def handle(self, event):
        pass


def make_stubborn():
    """Builds, then refuses to start."""
    return Stubborn()
'''

FAULTY = '''
def make_faulty():
    """Raises on every event it is given."""
    def handle(event):
        raise RuntimeError(f"faulty cannot handle {event.event_type.value}")
    return handle
'''


@pytest.fixture(scope="session")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders each holding installed plugins: example, broken (two bad ones), faulty."""
    base = tmp_path_factory.mktemp("plugins")
    broken = write_package(
        base / "broken-package",
        "esper-broken-plugin",
        {
            "broken": "esper_broken_plugin.not_there:make",
            "refusing": "esper_broken_plugin:make_refusing",
            "stubborn": "esper_broken_plugin:make_stubborn",
        },
        BROKEN,
    )
    faulty = write_package(
        base / "faulty-package",
        "esper-faulty-plugin",
        {"faulty": "esper_faulty_plugin:make_faulty"},
        FAULTY,
    )
    return {
        "example": install(ROOT / "backends" / "esper-example-plugin", base / "example"),
        "broken": install(broken, base / "broken"),
        "faulty": install(faulty, base / "faulty"),
    }


def run_esper(
    tmp: Path, sites: list[Path], *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """``esper ARGS`` in a child whose path holds the plugin folders, then esper's source."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        PYTHONPATH=os.pathsep.join([*map(str, sites), str(SRC)]),
        WANDB_MODE="offline",
        HOME=str(tmp / "home"),
        OMP_NUM_THREADS="1",
    )
    return subprocess.run(
        [sys.executable, "-m", "esper_telemetry.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=timeout,
    )


def ppo(tmp: Path, sites: list[Path], *args: str) -> subprocess.CompletedProcess[str]:
    """A two-update ``esper ppo`` without W&B into ``tmp/runs/RUN_ID``."""
    runs = str(tmp / "runs")
    return run_esper(tmp, sites, "ppo", "--run-dir", runs, "--episodes", "2", *SMALL, *args)


def kinds_in(path: Path) -> list[tuple[str, int]]:
    """The (event type, update) of every line the example plugin wrote."""
    return [(d["event_type"], d["update"]) for d in map(json.loads, path.read_text().splitlines())]


def kinds_of_run(run_dir: Path) -> list[tuple[str, int]]:
    return [(e.event_type.value, e.update) for e in read_events(run_dir)]


def test_backends_lists_the_built_in_ones_and_every_installed_plugin(
    tmp_path: Path, sites: dict[str, Path]
) -> None:
    """One line each: built-in backends from the table, plugins with their package and
    docstring; one that cannot be imported with its error. Exit 0."""
    result = run_esper(tmp_path, [sites["example"], sites["broken"]], "backends")
    assert result.returncode == 0, result.stderr
    rows = [line.split(None, 1) for line in result.stdout.splitlines()]
    assert [name for name, _ in rows] == [
        *(b.name for b in BUILT_IN),
        "broken",
        "example",
        "refusing",
        "stubborn",
    ]
    described = {name: " ".join(rest.split()) for name, rest in rows}
    assert described["analytics"] == "built-in the append-only events.jsonl of the run (always on)"
    assert described["example"] == (
        "plugin (esper-example-plugin 0.1.0) Writes each event's type and update as a JSON "
        "line to the file named by path."
    )
    assert described["broken"] == (
        "plugin (esper-broken-plugin 0.0.1) cannot load: ModuleNotFoundError: No module "
        "named 'esper_broken_plugin.not_there'"
    )
    assert described["refusing"] == (
        "plugin (esper-broken-plugin 0.0.1) Never builds: its factory raises."
    )
    assert result.stderr == ""


def test_a_backend_asked_for_gets_every_event_of_the_run(
    tmp_path: Path, sites: dict[str, Path]
) -> None:
    """--backend example:path=FILE: the plugin's file holds every event the analytics log
    holds, in order; the summary counts it like any backend. W&B offline on."""
    out = tmp_path / "plugin.jsonl"
    result = ppo(
        tmp_path, [sites["example"]], "--run-id", "asked", "--backend", f"example:path={out}"
    )
    assert result.returncode == 0, result.stderr
    events = kinds_of_run(tmp_path / "runs" / "asked")
    assert events[0] == ("RUN_STARTED", 0)
    assert events[-1] == ("RUN_FINISHED", 1)
    assert kinds_in(out) == events
    assert re.search(r"^  example +delivered 4, failed 0, dropped 0$", result.stdout, re.M)
    assert not (tmp_path / "esper-example-events.jsonl").exists()  # not loaded twice


def test_installed_plugins_are_loaded_with_no_options_unless_no_plugins(
    tmp_path: Path, sites: dict[str, Path]
) -> None:
    """Without --backend the example plugin is loaded with its defaults (it writes into
    the current folder); with --no-plugins it is not loaded at all."""
    default = tmp_path / "esper-example-events.jsonl"
    first = ppo(tmp_path, [sites["example"]], "--run-id", "auto", "--wandb", "disabled")
    assert first.returncode == 0, first.stderr
    assert kinds_in(default) == kinds_of_run(tmp_path / "runs" / "auto")
    default.unlink()
    second = ppo(
        tmp_path, [sites["example"]], "--run-id", "none", "--wandb", "disabled", "--no-plugins"
    )
    assert second.returncode == 0, second.stderr
    assert not default.exists()
    assert "example" not in second.stdout


@pytest.mark.parametrize(
    ("spec", "line"),
    [
        ("nosuch", "esper ppo: --backend nosuch: no such plugin is installed (esper backends "),
        ("example:colour=red", "esper ppo: --backend example: could not be built (TypeError: "),
        ("refusing", "esper ppo: --backend refusing: could not be built (ValueError: the "),
        ("broken", "esper ppo: --backend broken: could not be imported (ModuleNotFoundError: "),
        ("wandb", "esper ppo: --backend wandb: is a built-in backend, set by its own esper ppo"),
        ("stubborn", "esper ppo: --backend stubborn: refused to start: will not start in run "),
        ("example:path", "Error: --backend example: option 'path' needs a value (key=value)"),
    ],
)
def test_a_backend_asked_for_that_fails_stops_the_run_before_training(
    tmp_path: Path, sites: dict[str, Path], spec: str, line: str
) -> None:
    """Exit 2 with one line naming --backend, the plugin and its error; nothing trained,
    no run directory left, and nothing of the run is left."""
    result = ppo(
        tmp_path, [sites["example"], sites["broken"]], "--run-id", "refused", "--backend", spec
    )
    assert result.returncode == 2, result.stderr
    errors = [x for x in result.stderr.splitlines() if x.startswith(("esper ppo:", "Error:"))]
    assert len(errors) == 1
    assert errors[0].startswith(line)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "refused").exists()


def test_plugins_that_fail_to_load_are_reported_and_the_run_goes_on(
    tmp_path: Path, sites: dict[str, Path]
) -> None:
    """Autoloaded: the plugin that cannot be imported, the one whose factory raises and
    the one that refuses to start get one warning line each, by name with the error; the
    run completes without them."""
    result = ppo(
        tmp_path, [sites["example"], sites["broken"]], "--run-id", "goes-on", "--wandb", "disabled"
    )
    assert result.returncode == 0, result.stderr
    warnings = [x for x in result.stderr.splitlines() if x.startswith("warning:")]
    assert warnings == [
        "warning: backend 'broken': could not be imported (ModuleNotFoundError: No module "
        "named 'esper_broken_plugin.not_there'); the run goes on without it (--no-plugins: "
        "load none)",
        "warning: backend 'refusing': could not be built (ValueError: the refusing plugin "
        "refuses); the run goes on without it (--no-plugins: load none)",
        "warning: backend 'stubborn' refused to start (will not start in run goes-on); the "
        "run goes on without it",
    ]
    events = kinds_of_run(tmp_path / "runs" / "goes-on")
    assert events[-1] == ("RUN_FINISHED", 1)
    assert kinds_in(tmp_path / "esper-example-events.jsonl") == events


def test_a_plugin_raising_on_every_event_is_counted_and_training_completes(
    tmp_path: Path, sites: dict[str, Path]
) -> None:
    """The hub isolates it: every update is trained and logged, RUN_FINISHED says
    completed, and the verdict (exit 4) names the plugin with its failures."""
    result = ppo(tmp_path, [sites["faulty"]], "--run-id", "faulty", "--wandb", "disabled")
    assert result.returncode == 4, result.stderr
    events = list(read_events(tmp_path / "runs" / "faulty"))
    assert [e.payload.status for e in events if isinstance(e, RunFinished)] == ["completed"]
    assert [(e.event_type.value, e.update) for e in events][-1] == ("RUN_FINISHED", 1)
    verdict = result.stderr.splitlines()[-1]
    assert verdict.startswith(
        "esper ppo: backend failed to deliver everything: faulty (lost 4: failed 4, "
    )
    assert "last error: RuntimeError: faulty cannot handle RUN_FINISHED" in verdict


def test_ranks_get_the_plugins_of_the_run(tmp_path: Path, sites: dict[str, Path]) -> None:
    """esper ppo --nproc 2: the plugin asked for runs where the logs are written (rank 0)
    and gets the run's events."""
    out = tmp_path / "ranks.jsonl"
    result = ppo(
        tmp_path,
        [sites["example"]],
        *("--run-id", "ranks", "--wandb", "disabled", "--nproc", "2", "--no-plugins"),
        *("--backend", f"example:path={out}"),
    )
    assert result.returncode == 0, result.stderr
    assert kinds_in(out) == kinds_of_run(tmp_path / "runs" / "ranks")


def test_the_rank_spec_carries_the_plugins_and_autoloading(tmp_path: Path) -> None:
    """What a rank reads back is what the launcher was given."""
    plugins = (BackendSpec.parse("example:path=a.jsonl"), BackendSpec.parse("webhook"))
    options = RunOptions(config=PPOConfig(updates=1), plugins=plugins, autoload_plugins=True)
    write_spec(
        tmp_path / "spec.json",
        options,
        world_size=2,
        init_file=tmp_path / "init",
        out_dir=tmp_path,
        fault_rank=None,
    )
    back = _rank_options(json.loads((tmp_path / "spec.json").read_text()), 1)
    assert (back.plugins, back.autoload_plugins) == (plugins, True)


@pytest.mark.parametrize(
    ("text", "name", "options"),
    [
        ("example", "example", {}),
        ("example:", "example", {}),
        (
            "web.hook-2:url=http://h:80/p?a=b,timeout=2",
            "web.hook-2",
            {"url": "http://h:80/p?a=b", "timeout": "2"},
        ),
        ("x:path=", "x", {"path": ""}),
    ],
)
def test_a_spec_reads_the_name_and_its_options(
    text: str, name: str, options: dict[str, str]
) -> None:
    """NAME[:key=value,...]: values keep their ':' and '=' and may be empty."""
    spec = BackendSpec.parse(text)
    assert (spec.name, dict(spec.options)) == (name, options)
    assert isinstance(spec.options, MappingProxyType)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--backend: '' is not a backend name (letters, digits, '.', '_', '-'); the form"),
        (":a=1", "--backend: '' is not a backend name"),
        ("a b", "--backend: 'a b' is not a backend name"),
        ("x:url", "--backend x: option 'url' needs a value (key=value)"),
        ("x:1k=v", "--backend x: '1k' is not an option name (letters, digits, '_')"),
        ("x:a=1,a=2", "--backend x: option 'a' is given twice"),
    ],
)
def test_a_malformed_spec_is_refused_naming_the_option_not_the_value(
    text: str, message: str
) -> None:
    """One line naming --backend; a value (perhaps a secret) is never quoted."""
    with pytest.raises(ValueError, match=r"^--backend") as caught:
        BackendSpec.parse(text.replace("=1,a=2", "=s3cret,a=2"))
    assert str(caught.value).startswith(message)
    assert "s3cret" not in str(caught.value)


def test_loading_a_plugin_not_installed_raises_an_esper_error() -> None:
    """load() names the plugin and what to run to see the installed ones."""
    with pytest.raises(PluginError) as caught:
        load(BackendSpec("nosuch"))
    assert str(caught.value) == (
        "backend 'nosuch': no such plugin is installed (esper backends lists them)"
    )
    assert caught.value.name == "nosuch"


CLOSING = '''
from pathlib import Path


class Closing:
    def __init__(self, path):
        self.path = Path(path)

    def handle(self, event):
        pass

    def close(self):
        self.path.write_text("closed")


def make(path):
    """Writes 'closed' to path when it is closed."""
    return Closing(path)
'''


@pytest.mark.parametrize("refused", ["own backend", "plugin asked first"])
def test_plugins_built_for_a_run_that_does_not_start_are_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sites: dict[str, Path], refused: str
) -> None:
    """A plugin is built before the built-in backends start; when the run then cannot
    start (one of the caller's backends, or a plugin asked for before it, refuses), the
    plugin that was built but never subscribed is closed all the same."""
    package = write_package(
        tmp_path / "closing-package",
        "esper-closing-plugin",
        {"closing": "esper_closing_plugin:make"},
        CLOSING,
    )
    monkeypatch.syspath_prepend(str(install(package, tmp_path / "closing")))
    monkeypatch.syspath_prepend(str(sites["broken"]))
    marker = tmp_path / "closed.txt"
    closing = BackendSpec("closing", MappingProxyType({"path": str(marker)}))

    class Refusing(Backend):
        def handle(self, event: TelemetryEvent) -> None:
            pass

        def on_subscribe(self, hub: TelemetryHub) -> None:
            raise RuntimeError("refuses to start")

    own = (Refusing(),) if refused == "own backend" else ()
    plugins = (closing,) if own else (BackendSpec("stubborn"), closing)
    options = RunOptions(
        config=PPOConfig(updates=1, envs=2, hidden=16),
        run_root=tmp_path / "runs",
        run_id="not-started",
        wandb="disabled",
        progress=False,
        backends=own,
        plugins=plugins,
    )
    outcome = run_ppo(options, Console(file=io.StringIO()))
    assert outcome.exit_code == 2
    assert marker.read_text() == "closed"
