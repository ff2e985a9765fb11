"""The W&B workspace and report: drawn from the keys real runs log, offline, on the chosen axis.

Two runs are read back with wandb's own reader (``wandb leet inspect``) once for the module:
``esper ppo --wandb offline`` with a NaN planted at update 2 (so ``anomaly/lstm_nan`` and
the anomaly table exist), and SB3's RecurrentPPO with the EsperCallback and a WandBBackend.
Only one anomaly type can be planted in one ``esper ppo`` run; the count keys of the
others are checked against :class:`WandbKeys` instead.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
from click.testing import CliRunner
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env

from esper_telemetry import TelemetryHub
from esper_telemetry.analytics import read_events
from esper_telemetry.backends import WandBBackend
from esper_telemetry.backends.wandb_dashboard import (
    anomaly_lines,
    health_workspace,
    panel_keys,
    run_report,
    spec,
)
from esper_telemetry.backends.wandb_keys import (
    DIAGNOSTIC_FIGURES,
    HEALTH_FIGURES,
    PPO_KEYS,
    REPLAY_FIGURES,
    TELEMETRY_FIGURES,
    X_AXES,
    WandbKeys,
    XAxis,
)
from esper_telemetry.cli import main
from esper_telemetry.contracts import AnomalyType, HealthThresholds
from esper_telemetry.integrations.sb3 import EsperCallback
from esper_telemetry.training.envs import NoVelocityObservation
from tests.test_cli_ppo import SMALL, env_for
from tests.wandb_offline import history, inspect_run, inspect_summary, offline_wandb, run_dir_of

STATES = ("policy", "value")
PLANTED = AnomalyType.LSTM_NAN
# A named state's own figure (lstm/<state>/<figure>), not its per-layer detail.
STATE_KEY = re.compile(r"lstm/(policy|value)/[a-z0-9_]+")
#: What esper ppo logs of each named state: its figures, diagnostics and replay check.
STATE_FIGURES = (*HEALTH_FIGURES, *DIAGNOSTIC_FIGURES, *REPLAY_FIGURES)
CUSTOM = HealthThresholds(vanishing_rms=1e-4, warning_rms=2.5, critical_rms=7.25)


@dataclass(frozen=True)
class Logged:
    """What one offline W&B run holds: every history and summary key."""

    keys: frozenset[str]
    run_dir: Path | None = None


def logged_keys(wandb_run: Path) -> frozenset[str]:
    rows = history(inspect_run(wandb_run))
    summary = inspect_summary(wandb_run)["summary"]
    return frozenset(k for row in rows for k in row) | frozenset(summary)


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory: pytest.TempPathFactory) -> Logged:
    """``esper ppo --diagnostics`` offline, 4 updates, NaN planted in the policy state at
    update 2."""
    tmp = tmp_path_factory.mktemp("dash-ppo")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "esper_telemetry.cli", "ppo"),
            *("--run-dir", str(tmp / "runs"), "--run-id", "dash"),
            *("--episodes", "4", "--inject-fault", "nan@2", "--wandb", "offline", *SMALL),
            "--diagnostics",
        ],
        capture_output=True,
        text=True,
        env=env_for(tmp),
        cwd=tmp,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    run_dir = tmp / "runs" / "dash"
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    return Logged(logged_keys(wandb_run), run_dir)


@pytest.fixture(scope="module")
def sb3_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    """RecurrentPPO (a critic LSTM, SB3's default) for 3 updates, EsperCallback measuring
    the diagnostics, WandBBackend."""
    root = tmp_path_factory.mktemp("dash-sb3")
    with pytest.MonkeyPatch.context() as mp, offline_wandb(root, mp) as wandb_dir:
        model = RecurrentPPO(
            "MlpLstmPolicy",
            make_vec_env(lambda: NoVelocityObservation(gym.make("CartPole-v1")), 2, seed=0),
            n_steps=16,
            batch_size=32,
            n_epochs=1,
            seed=0,
            device="cpu",
            policy_kwargs={"lstm_hidden_size": 8, "net_arch": {"pi": [8], "vf": [8]}},
        )
        with TelemetryHub("dash-sb3") as hub:
            hub.subscribe(WandBBackend("esper-dash", dir=wandb_dir))
            model.learn(3 * 32, callback=EsperCallback(hub, diagnostics=True))
        yield Logged(logged_keys(run_dir_of(wandb_dir, "dash-sb3")))


def drawn(x_axis: XAxis = "update", *, report: bool = False) -> set[str]:
    keys = WandbKeys(x_axis=x_axis)
    if report:
        return panel_keys(spec(run_report("e", "p", "r", states=STATES, keys=keys)))
    return panel_keys(spec(health_workspace("e", "p", states=STATES, keys=keys)))


def anomaly_keys(keys: WandbKeys, *, but: AnomalyType | None = None) -> set[str]:
    return {keys.anomaly_count(t) for t in AnomalyType if t is not but}


# -- the keys drawn are the keys logged ----------------------------------------------------------


@pytest.mark.parametrize("report", [False, True], ids=["workspace", "report"])
@pytest.mark.parametrize("x_axis", X_AXES)
def test_every_key_drawn_is_one_esper_ppo_logged(
    ppo_run: Logged, x_axis: XAxis, report: bool
) -> None:
    """Every key the panels name was logged by `esper ppo`, but the counts of the anomaly
    types that did not happen (the NaN one did)."""
    assert drawn(x_axis, report=report) - ppo_run.keys == anomaly_keys(WandbKeys(), but=PLANTED)


@pytest.mark.parametrize("report", [False, True], ids=["workspace", "report"])
def test_every_state_figure_esper_ppo_logged_is_drawn(ppo_run: Logged, report: bool) -> None:
    """All 12 figures, the 4 diagnostics and the 3 replay figures of both states the run
    logged (lstm/<state>/<figure>) have a panel."""
    figures = {k for k in ppo_run.keys if STATE_KEY.fullmatch(k)}
    assert len(figures) == 2 * len(STATE_FIGURES)
    assert figures <= drawn(report=report)


@pytest.mark.parametrize("x_axis", X_AXES)
def test_every_key_drawn_is_one_the_sb3_callback_logged(sb3_run: Logged, x_axis: XAxis) -> None:
    """Every key the workspace names was logged by RecurrentPPO's run, but the anomaly
    keys (it had none), ppo/grad_norm (SB3 logs no gradient norm) and the replay drift
    (SB3's buffer holds no per-step output to drift from)."""
    keys = WandbKeys()
    expected = anomaly_keys(keys) | {keys.anomaly_table, keys.ppo("grad_norm")}
    expected |= {keys.health("replay_drift", state=s) for s in STATES}
    assert drawn(x_axis) - sb3_run.keys == expected


def test_every_state_figure_the_sb3_callback_logged_is_drawn(sb3_run: Logged) -> None:
    """Both states of RecurrentPPO (policy, and value from its critic LSTM) are drawn whole:
    every figure but the replay drift."""
    figures = {k for k in sb3_run.keys if STATE_KEY.fullmatch(k)}
    assert len(figures) == 2 * (len(STATE_FIGURES) - 1)
    assert figures <= drawn()


# -- the sections ------------------------------------------------------------------------------


def section_keys(workspace_spec: dict[str, Any]) -> dict[str, set[str]]:
    sections = workspace_spec["spec"]["section"]["panelBankConfig"]["sections"]
    return {s["name"]: panel_keys(s) for s in sections}


def test_sections_draw_each_group_of_the_layout_through_wandb_keys() -> None:
    """Health: the 12 figures of each state; anomalies: one count per type and the table;
    PPO: every ppo/ key; telemetry: its four keys; every section on the x-axis key."""
    keys = WandbKeys(prefix="esper/run", x_axis="env_steps")
    got = section_keys(spec(health_workspace("e", "p", states=("policy", "critic"), keys=keys)))
    x = {keys.x_key}
    assert got == {
        "LSTM health": x
        | {keys.health(f, state=s) for s in ("policy", "critic") for f in STATE_FIGURES},
        "Anomalies": x | anomaly_keys(keys) | {keys.anomaly_table},
        "PPO": x | {keys.ppo(stat) for stat in PPO_KEYS},
        "Telemetry": x | {keys.telemetry(f) for f in TELEMETRY_FIGURES},
    }


def test_only_the_groups_the_layout_logs_get_a_section() -> None:
    """A layout of health alone (a run shared with SB3's logger) gets the health section."""
    keys = WandbKeys(groups=("health",))
    assert list(section_keys(spec(health_workspace("e", "p", keys=keys)))) == ["LSTM health"]


@pytest.mark.parametrize("x_axis", X_AXES)
def test_every_chart_and_the_workspace_use_the_chosen_x_axis(x_axis: XAxis) -> None:
    """The workspace's x-axis setting and every line plot's x are keys.x_key."""
    workspace = spec(health_workspace("e", "p", keys=WandbKeys(x_axis=x_axis)))
    assert workspace["spec"]["section"]["settings"]["xAxis"] == x_axis
    assert line_plot_x_axes(workspace) == {x_axis}


def test_a_run_group_filters_the_runset_to_that_group() -> None:
    """--run-group: the run set keeps runs whose W&B group is exactly G (quotes and all)."""
    group = """sweep "a" 'b'"""
    workspace = spec(health_workspace("e", "p", run_group=group))
    (runset,) = workspace["spec"]["section"]["runSets"]
    assert runset["filters"]["filters"] == [
        {"key": {"section": "run", "name": "group"}, "op": "=", "value": group, "disabled": False}
    ]


# -- thresholds --------------------------------------------------------------------------------


def threshold_lines(dashboard_spec: dict[str, Any]) -> dict[str, tuple[list[float], str]]:
    """Each line plot's title words after the state, with its constant lines and title."""
    return {
        p["config"]["metrics"][0].rsplit("/", 1)[1]: (
            [float(e) for e in p["config"].get("expressions", [])],
            p["config"]["chartTitle"],
        )
        for p in line_plots(dashboard_spec)
        if p["config"]["metrics"][0].startswith("lstm/policy/")
    }


@pytest.mark.parametrize(
    ("given", "expected"), [(None, HealthThresholds()), (CUSTOM, CUSTOM)], ids=["default", "custom"]
)
@pytest.mark.parametrize("report", [False, True], ids=["workspace", "report"])
def test_threshold_lines_are_the_thresholds_in_force(
    given: HealthThresholds | None, expected: HealthThresholds, report: bool
) -> None:
    """h and c RMS: vanishing, warning and critical lines, and in the title; the per-env
    RMS max: the critical line; every other chart: none."""
    built = (
        run_report("e", "p", "r", thresholds=given)
        if report
        else health_workspace("e", "p", thresholds=given)
    )
    lines = threshold_lines(spec(built))
    t = expected
    rms = [t.vanishing_rms, t.warning_rms, t.critical_rms]
    named = (
        f"(vanishing {t.vanishing_rms:g}, warning {t.warning_rms:g}, critical {t.critical_rms:g})"
    )
    assert lines == {
        "h_rms": (rms, f"policy h RMS {named}"),
        "c_rms": (rms, f"policy c RMS {named}"),
        "h_env_rms_max": ([t.critical_rms], f"policy env RMS max (critical {t.critical_rms:g})"),
        "h_env_rms_mean": ([], "policy env RMS mean"),
        "h_max": ([], "policy max |h|, max |c|"),
        "h_l2_total": ([], "policy L2 norm of h, c"),
        "has_nan": ([], "policy NaN, Inf (1: present)"),
        "h_saturation_frac": ([], "policy saturated fraction of h, c"),
        "c_growth_ratio": (
            [t.c_runaway_ratio],
            f"policy c growth ratio (runaway {t.c_runaway_ratio:g})",
        ),
        "dormant_frac": (
            [t.dormant_frac],
            f"policy dormant fraction of units (threshold {t.dormant_frac:g})",
        ),
        "replay_max_abs_diff": (
            [t.replay_tolerance("float32")],
            f"policy replay max |diff| (float32 tolerance {t.replay_tolerance('float32'):g})",
        ),
        "replay_mismatched": ([], "policy replay mismatched steps"),
        "replay_drift": ([t.replay_drift], f"policy replay drift (threshold {t.replay_drift:g})"),
    }


# -- the report --------------------------------------------------------------------------------


def test_the_report_shows_one_run_of_its_project() -> None:
    """Every panel grid's run set is the run (W&B's ID filter) in entity/project, named
    offline; the title names the run."""
    report = spec(run_report("team", "proj", "run-7"))
    runsets = [rs for node in walk(report) for rs in node.get("runSets", [])]
    assert len(runsets) == 4
    for runset in runsets:
        assert runset["project"] == {"entityName": "team", "name": "proj"}
        assert runset["filters"]["filters"] == [
            {
                "key": {"section": "run", "name": "name"},
                "op": "=",
                "value": "run-7",
                "disabled": False,
            }
        ]
    assert report["displayName"] == "esper: run run-7"


def test_the_report_names_the_anomalies_or_says_there_were_none(ppo_run: Logged) -> None:
    """The run's anomalies, read from its run directory, one list item each; none: a line
    saying so."""
    assert ppo_run.run_dir is not None
    lines = anomaly_lines(read_events(ppo_run.run_dir))
    assert lines == [
        f"update {u}: lstm_nan in policy (critical), observed nan — policy: LSTM state holds NaN"
        for u in (2, 3)
    ]
    assert anomaly_text(spec(run_report("e", "p", "r", anomalies=lines))) == lines
    assert anomaly_text(spec(run_report("e", "p", "r"))) == [
        "No anomalies were recorded in this run."
    ]


def anomaly_text(report_spec: dict[str, Any]) -> list[str]:
    """The text of the block after the "Anomalies" heading."""
    blocks = report_spec["spec"]["blocks"]
    (at,) = [i for i, b in enumerate(blocks) if b["type"] == "heading" and text(b) == "Anomalies"]
    after = blocks[at + 1]
    if after["type"] == "list":
        return [text(item) for item in after["children"]]
    return [text(after)]


# -- the CLI -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "own"),
    [("workspace", {"--run-group", "--name"}), ("report", {"--run", "--run-dir"})],
)
def test_help_lists_every_option(command: str, own: set[str]) -> None:
    """esper wandb --help names both commands; each command's help names its options."""
    group = CliRunner().invoke(main, ["wandb", "--help"])
    assert re.findall(r"^  (\w+)", group.output.split("Commands:")[1], re.M) == [
        "backfill",
        "report",
        "workspace",
    ]
    result = CliRunner().invoke(main, ["wandb", command, "--help"])
    assert result.exit_code == 0
    shared = {"--entity", "--project", "--state", "--x-axis", "--prefix", "--print-spec"}
    thresholds = {"--vanishing-rms", "--warning-rms", "--critical-rms"}
    options = set(re.findall(r"^  (--[a-z-]+)", result.output, re.M))
    assert options == shared | thresholds | own


SITE = """\
import os, socket
def _note(what):
    with open(os.environ["ESPER_NET_LOG"], "a") as f:
        f.write(what + "\\n")
_note("loaded")
def _refused(name):
    def refuse(*args, **kwargs):
        _note(f"{name} {args!r}")
        raise OSError(f"{name}: no network in this test")
    return refuse
socket.socket.connect = _refused("socket.connect")
socket.socket.connect_ex = _refused("socket.connect_ex")
socket.create_connection = _refused("socket.create_connection")
"""


def esper_offline(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """``esper *args`` with every socket connection refused and recorded; the record."""
    site = tmp / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE)
    env = env_for(tmp)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    env["ESPER_NET_LOG"] = str(tmp / "net.log")
    result = subprocess.run(
        [sys.executable, "-m", "esper_telemetry.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=120,
    )
    return result, (tmp / "net.log").read_text().splitlines()


@pytest.mark.parametrize("command", ["workspace", "report"])
def test_print_spec_contacts_nothing_and_uses_the_chosen_x_axis(
    tmp_path: Path, ppo_run: Logged, command: str
) -> None:
    """--print-spec: JSON on stdout, every chart on env_steps, no connection attempted (not
    even to W&B's local service); the report lists the run directory's anomalies."""
    extra = {"report": ["--run", "dash", "--run-dir", str(ppo_run.run_dir)], "workspace": []}
    result, attempts = esper_offline(
        tmp_path,
        *("wandb", command, "--entity", "e", "--project", "p"),
        *("--x-axis", "env_steps", "--print-spec", *extra[command]),
    )
    assert result.returncode == 0, result.stderr
    assert attempts == ["loaded"]  # the guard was installed, and nothing was tried
    printed = json.loads(result.stdout)
    assert line_plot_x_axes(printed) == {"env_steps"}
    if command == "workspace":
        assert printed["spec"]["section"]["settings"]["xAxis"] == "env_steps"
    else:
        assert [line.split(" — ")[0] for line in anomaly_text(printed)] == [
            "update 2: lstm_nan in policy (critical), observed nan",
            "update 3: lstm_nan in policy (critical), observed nan",
        ]


def test_saving_without_credentials_fails_in_one_line(tmp_path: Path) -> None:
    """No --print-spec and no `wandb login`: exit 1, one line saying what it needs."""
    result, _ = esper_offline(tmp_path, "wandb", "workspace", "--entity", "e", "--project", "p")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: could not save the workspace to W&B (")
    assert line.endswith(
        "it needs `wandb login` (or WANDB_API_KEY) and a connection, or use --print-spec"
    )


@pytest.mark.parametrize(
    ("command", "args", "hint"),
    [
        ("workspace", ["--x-axis", "nope"], "'--x-axis'"),
        ("workspace", ["--prefix", "no spaces"], "'--prefix'"),
        ("workspace", ["--entity", ""], "'--entity'"),
        ("workspace", ["--project", "a/b"], "'--project'"),
        ("workspace", ["--state", "two words"], "'--state'"),
        ("workspace", ["--run-group", ""], "'--run-group'"),
        ("workspace", ["--name", "rocket 🚀"], "'--name'"),
        ("workspace", ["--warning-rms", "20"], "--vanishing-rms / --warning-rms / --critical-rms"),
        ("report", ["--run", "a/b"], "'--run'"),
        ("report", ["--entity", " "], "'--entity'"),
    ],
)
def test_bad_input_is_refused_in_one_line_naming_the_option(
    command: str, args: list[str], hint: str
) -> None:
    """Exit 2 and the last line names the option; no traceback, nothing printed as a spec."""
    base = ["wandb", command, "--entity", "e", "--project", "p", "--print-spec"]
    if command == "report":
        base += ["--run", "r"]
    result = CliRunner().invoke(main, [*base, *args])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[-1].startswith(f"Error: Invalid value for {hint}: ")
    assert "Traceback" not in result.output
    assert "{" not in result.output


def test_a_missing_wandb_workspaces_is_named_with_its_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without wandb-workspaces: the command says, in one line, what to install; importing
    the module says the same."""
    monkeypatch.setattr("esper_telemetry.cli.is_installed", lambda module: False)
    result = CliRunner().invoke(main, ["wandb", "workspace", "--entity", "e", "--project", "p"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "Error: esper wandb workspace needs wandb_workspaces: pip install 'esper-telemetry[wandb]'"
    ]
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)
    monkeypatch.delitem(sys.modules, "esper_telemetry.backends.wandb_dashboard")
    with pytest.raises(ImportError, match=re.escape("pip install 'esper-telemetry[wandb]'")):
        importlib.import_module("esper_telemetry.backends.wandb_dashboard")


# -- the Python API's refusals -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: health_workspace("", "p"), "entity must be a W&B user or team name"),
        (lambda: health_workspace("e", "a#b"), "project: W&B names cannot contain #"),
        (lambda: health_workspace("e", "p", states="policy"), "states must be a list"),
        (lambda: health_workspace("e", "p", states=()), "states must name at least one"),
        (lambda: health_workspace("e", "p", run_group="g\n"), "run_group must be"),
        (lambda: run_report("e", "p", "a:b"), "run_id: W&B run ids cannot contain :"),
        (lambda: run_report("e", "p", "r", anomalies="one"), "anomalies must be a list"),
    ],
)
def test_bad_arguments_raise_one_line_naming_the_argument(call: Any, message: str) -> None:
    """Each refusal is a ValueError whose one-line message starts by naming the argument."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}") as info:
        call()
    assert "\n" not in str(info.value)


# -- helpers -----------------------------------------------------------------------------------


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def line_plots(dashboard_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in walk(dashboard_spec) if n.get("viewType") == "Run History Line Plot"]


def line_plot_x_axes(dashboard_spec: dict[str, Any]) -> set[str]:
    return {p["config"]["xAxis"] for p in line_plots(dashboard_spec)}


def text(block: dict[str, Any]) -> str:
    """The plain text of a report block."""
    return "".join(n["text"] for n in walk(block) if isinstance(n.get("text"), str))
