"""Secrets never leave the hub: planted, then searched for in every byte a run produced.

Planted: every token shape the redaction rule knows (``SHAPES``), every config key that
names a secret (``SECRET_KEYS``), secret-shaped config keys, the values of secret
environment variables, a backend's exception text, metric names and run ids. Searched:
every file under the test's directory (the run, W&B's run folder and its debug logs,
W&B's home, cache, config and data folders), every file *name* and path there, stdout,
stderr and the log records. None may appear anywhere (see docs/reliability.md).
"""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import pytest
from rich.console import Console

from esper_telemetry import TelemetryHub, emit_ppo_update_event
from esper_telemetry.analytics import read_events
from esper_telemetry.backends import (
    AnalyticsCollector,
    AnomalyEscalator,
    StructlogBackend,
    WandBBackend,
)
from esper_telemetry.contracts import (
    Anomaly,
    AnomalyDetected,
    AnomalyDetectedPayload,
    AnomalyType,
    EventBase,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    RunFinished,
    RunFinishedPayload,
    RunLayout,
    RunStarted,
    RunStartedPayload,
    Severity,
    TelemetryEvent,
    TelemetryLevel,
    TelemetryLevelChanged,
)
from esper_telemetry.hub import REDACTED, redact_secrets
from esper_telemetry.run import RunOptions, run_ppo
from esper_telemetry.training import PPOConfig
from tests.faulty_lstm import PPO_STATS, FaultyLSTM
from tests.reliability.children import SMALL, child_env, esper_ppo, finish, start
from tests.wandb_offline import offline_wandb

#: One planted value per token shape: (shape, the text planted, the part that must not leak).
SHAPES: dict[str, tuple[str, str]] = {
    "wandb_v1": ("wandb_v1_PlantedWandbV1Key0123456789abcdef",) * 2,
    "hex40": ("c0ffee00" * 5,) * 2,
    "hf": ("hf_PlantedHuggingFaceTok0123456789",) * 2,
    "ghp": ("ghp_PlantedGitHubToken0123456789abcdefgh",) * 2,
    "github_pat": ("github_pat_11PLANTED0123456789_abcdefghijklmnop",) * 2,
    "sk": ("sk-proj-PlantedOpenAiKey0123456789",) * 2,
    "stripe": ("sk_live_PlantedStripe0123456789",) * 2,
    "aws": ("AKIAPLANTED00EXAMPLE",) * 2,
    "google": ("AIzaPlantedGoogleKey0123456789abcdefghi",) * 2,
    "slack": ("xoxb-000000000000-PlantedSlackToken",) * 2,
    "jwt": ("eyJhbGciOiJIUzI1NiJ9.eyJwbGFudGVkIjoxfQ.PlantedJwtSignature",) * 2,
    "bearer": ("curl -H 'Authorization: Bearer PlantedBearerTok42'", "PlantedBearerTok42"),
    "basic": ("sent Basic UGxhbnRlZEJhc2ljOjQy to the proxy", "UGxhbnRlZEJhc2ljOjQy"),
    "assignment": ("connect failed: password=PlantedAssignPw42", "PlantedAssignPw42"),
    "url": ("postgres://esper:PlantedUrlPassw0rd@db.example/runs", "PlantedUrlPassw0rd"),
    "pem": ("-----BEGIN PRIVATE KEY-----\nMIIPlantedPemBody42\n", "MIIPlantedPemBody42"),
}
#: Config keys that name a secret, each with a value of no particular shape.
SECRET_KEYS = (
    "authorization",
    "Authorization",
    "passwd",
    "pwd",
    "credentials",
    "auth",
    "bearer",
    "cookie",
    "private_key",
    "access_key",
    "api_key",
    "HF_TOKEN",
    "client_secret",
    "db_password",
    "dbPass",
    "sentry_dsn",
    "keyboard",
)
CONFIG_SECRETS = {key: f"planted-value-of-{key}" for key in SECRET_KEYS}
#: Config keys that are themselves secrets.
SHAPED_KEYS = ("ghp_PlantedKeyThatIsAToken0123456789ab", "d15ea5e0" * 5)
#: Secret environment variables (not token-shaped: caught as environment values).
ENV_SECRETS = {
    "WANDB_API_KEY": "planted-WandbApiKey-NotHex-zyxwvutsrqponmlk",
    "HF_TOKEN": "Planted-Env-Hf-Token-42",
    "AWS_SECRET_ACCESS_KEY": "Planted/Env+AwsSecret0123456789abcdEFGH",
}
#: Not a secret: planted next to them, it must arrive everywhere (the search can see).
CANARY = "planted-canary-not-a-secret"
#: What a failing backend's exception says.
ERROR_SECRET = "ghp_PlantedInABackendError0123456789ab"

ALL_SECRETS = (
    *(leaked for _, leaked in SHAPES.values()),
    *CONFIG_SECRETS.values(),
    *SHAPED_KEYS,
    *ENV_SECRETS.values(),
    ERROR_SECRET,
)


def leaks(root: Path, *texts: str) -> list[tuple[str, str]]:
    """(where, secret) for every planted secret in a file, a file's path or a text."""
    found = []
    for path in sorted(root.rglob("*")):
        where = str(path.relative_to(root))
        found += [(f"path {where}", s) for s in ALL_SECRETS if s in where]
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [(where, s) for s in ALL_SECRETS if s.encode() in data]
    for i, text in enumerate(texts):
        found += [(f"text {i}", s) for s in ALL_SECRETS if s in text]
    return found


#: Files every offline run leaves, W&B's own among them (all searched).
RUN_FILES = (
    "events.jsonl",
    "log.jsonl",
    "run-*.wandb",
    "debug.log",
    "debug-internal.log",
    "core-debug-*.log",
)


def searched(root: Path) -> list[str]:
    """Which of ``RUN_FILES`` are under ``root`` (a search that found no W&B file would
    prove nothing)."""
    return [name for name in RUN_FILES if any(p.is_file() for p in root.rglob(name))]


# -- the rule, one shape at a time ------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_each_token_shape_is_redacted_in_free_text(shape: str) -> None:
    """A string holding one token shape becomes the marker, wherever it is nested."""
    planted, _ = SHAPES[shape]
    text = f"note: {planted} (end)"
    assert redact_secrets({"a": [text, {"b": (text,)}], "c": text}) == {
        "a": [REDACTED, {"b": [REDACTED]}],
        "c": REDACTED,
    }


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_each_secret_key_hides_its_value_at_any_depth(key: str) -> None:
    """A key that names a secret hides its value, a number or a mapping as well."""
    assert redact_secrets({"lr": 0.1, "x": [{key: "v"}], "y": {key: {"z": 1}}, key: 7}) == {
        "lr": 0.1,
        "x": [{key: REDACTED}],
        "y": {key: REDACTED},
        key: REDACTED,
    }


def test_harmless_keys_and_text_are_kept() -> None:
    """Look-alikes of the rule pass through: author, passes, credit, patience, prose."""
    config = {
        "author": "ada",
        "authority": "x",
        "n_passes": 3,
        "credit_assignment": "gae",
        "patience": 5,
        "env": "CartPoleNoVel-v1",
        "note": "Basic settings; task-learning-rate-schedule; bearer of news; hf_hub",
        "url": "https://example.com/a@b",
        "ids": ["0123456789abcdef", "run-7"],
    }
    assert redact_secrets(config) == config


def test_a_secret_shaped_key_is_replaced_by_the_marker() -> None:
    """A mapping key that is a secret is renamed ([REDACTED], [REDACTED]#2) with its value."""
    config = {SHAPED_KEYS[0]: 1, "lr": 0.1, SHAPED_KEYS[1]: {"x": 2}}
    assert redact_secrets(config) == {REDACTED: REDACTED, "lr": 0.1, f"{REDACTED}#2": REDACTED}


def test_values_of_secret_environment_variables_are_redacted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Text holding the value of a secret-named variable is redacted; short values, paths
    and plain words under such names (TOKENIZERS_PARALLELISM=false) are not secrets."""
    for name, value in ENV_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/ssh-agent.sock")
    monkeypatch.setenv("KEYRING_BACKEND", "subprocess")
    texts = [f"uses {v}" for v in ENV_SECRETS.values()]
    harmless = ["parallelism false", "at /tmp/ssh-agent.sock", "a subprocess"]
    assert redact_secrets([*texts, *harmless]) == [REDACTED] * len(texts) + harmless


# -- run ids and metric names: refused where they enter ---------------------------------------


@pytest.mark.parametrize("shape", ["hex40", "wandb_v1", "hf", "ghp", "github_pat", "aws", "sk"])
def test_a_secret_shaped_run_id_is_refused_without_repeating_it(shape: str) -> None:
    """TelemetryHub(run_id=<a token>) raises one line naming the shape, not the token."""
    run_id, _ = SHAPES[shape]
    with pytest.raises(ValueError, match=r"^run_id was refused: it holds .+; choose") as info:
        TelemetryHub(run_id)
    assert (run_id in str(info.value), "\n" in str(info.value)) == (False, False)


def test_a_run_id_holding_a_secret_environment_value_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run id equal to the value of HF_TOKEN is refused, not echoed."""
    monkeypatch.setenv("HF_TOKEN", "PlantedRunIdToken42")
    with pytest.raises(ValueError, match="secret environment variable") as info:
        TelemetryHub("PlantedRunIdToken42")
    assert "PlantedRunIdToken42" not in str(info.value)


def test_a_bad_run_id_is_echoed_redacted() -> None:
    """A run id refused for its characters is quoted, unless it holds a secret."""
    with pytest.raises(ValueError, match=r"got 'a b'; use 'a-b' instead$"):
        TelemetryHub("a b")
    with pytest.raises(ValueError, match=r"got \[REDACTED\]$"):
        TelemetryHub(b"ghp_PlantedGitHubToken0123456789abcdefgh")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("api_key", r"^metrics: 'api_key' names a secret \('key'\); .* rename it$"),
        ("authorization", r"^metrics: 'authorization' names a secret \('auth'\)"),
        (SHAPES["ghp"][0], r"^metrics: a key holds a GitHub token .*; metric names reach"),
        (SHAPES["hex40"][0], r"^metrics: a key holds 40 or more hex digits"),
        ("loss/" + SHAPES["jwt"][0], r"^metrics: a key holds a JSON Web Token"),
    ],
)
def test_a_secret_metric_name_is_refused_and_nothing_is_published(key: str, message: str) -> None:
    """A metric name (an `extra` key) that names or holds a secret: one ValueError that
    does not repeat a token, and no subscriber sees anything."""
    seen: list[TelemetryEvent] = []
    with TelemetryHub("metric-names") as hub:
        hub.subscribe(seen.append, mode="inline")
        with pytest.raises(ValueError, match=message) as info:
            emit_ppo_update_event(hub, update=0, metrics={**PPO_STATS, "fps": 1.0, key: 2.0})
    assert (seen, SHAPES["ghp"][0] in str(info.value), "\n" in str(info.value)) == (
        [],
        False,
        False,
    )


def test_a_secret_metric_name_is_refused_even_when_its_value_is_bad() -> None:
    """The name check comes first: the "must be a real number" message cannot echo it."""
    token = SHAPES["hf"][0]
    with TelemetryHub("bad-value") as hub, pytest.raises(ValueError, match=r"^metrics") as info:
        emit_ppo_update_event(hub, update=0, metrics={**PPO_STATS, token: "x"})
    assert str(info.value).startswith("metrics: a key holds a Hugging Face token")
    assert token not in str(info.value)


def hand_built(field: str, key: str) -> EventBase:
    if field == "extra":
        payload = PPOUpdatePayload(policy_loss=0.1, value_loss=0.5, entropy=0.7, extra={key: 1.0})
        return PPOUpdateCompleted(update=0, payload=payload)
    summary = RunFinishedPayload(status="completed", summary={"mean_return": 1.0, key: 2.0})
    return RunFinished(update=0, payload=summary)


@pytest.mark.parametrize("field", ["extra", "summary"])
@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("hf_token", r"'hf_token' names a secret \('token'\); .* rename it$"),
        (SHAPES["ghp"][0], r"a key holds a GitHub token .*; metric names reach"),
        (SHAPES["wandb_v1"][0], r"a key holds a W&B API key"),
    ],
)
def test_a_hand_built_event_with_a_secret_metric_name_is_refused_by_the_hub(
    field: str, key: str, message: str
) -> None:
    """An event built without the emitter (its ``extra`` or a RUN_FINISHED ``summary``)
    is held to the emitter's rule at ``hub.emit``: one ValueError naming the field, no
    token repeated, nothing published."""
    seen: list[TelemetryEvent] = []
    with TelemetryHub("hand-built") as hub:
        hub.subscribe(seen.append, mode="inline")
        with pytest.raises(ValueError, match=f"^{field}: {message}") as info:
            hub.emit(hand_built(field, key))
    assert (seen, SHAPES["ghp"][0] in str(info.value)) == ([], False)


# -- whole runs, every backend, every file -------------------------------------------------------


class FailsWithASecret:
    """A backend whose exception text carries a token (as a refused upload might)."""

    name = "leaky-backend"

    def __init__(self, on: type[EventBase] = AnomalyDetected) -> None:
        self.on = on

    def handle(self, event: TelemetryEvent) -> None:
        if isinstance(event, self.on):
            raise RuntimeError(f"upload refused for token {ERROR_SECRET}")


def plant_everything(hub: TelemetryHub) -> None:
    """Emit a run carrying every planted secret, in every free-text field and the config;
    try every refused metric name."""
    shapes = [planted for planted, _ in SHAPES.values()]
    config = {
        "lr": 3e-4,
        "canary": CANARY,
        **CONFIG_SECRETS,
        **dict.fromkeys(SHAPED_KEYS, 1),
        "notes": {shape: planted for shape, (planted, _) in SHAPES.items()},
        "nested": [{"access_token": "planted-access-token-in-a-list"}, shapes],
        "env": [f"the key is {v}" for v in ENV_SECRETS.values()],
    }
    described = f"{shapes[0]} and {ENV_SECRETS['WANDB_API_KEY']}"
    hub.emit(RunStarted(update=0, payload=RunStartedPayload(config=config, description=described)))
    FaultyLSTM(hub).update(0)
    for k, text in enumerate([*shapes, *ENV_SECRETS.values()], start=1):
        anomaly = Anomaly(
            type=AnomalyType.LSTM_NAN, severity=Severity.WARNING, observed=1.0, message=text
        )
        hub.emit(AnomalyDetected(update=k, payload=AnomalyDetectedPayload(anomaly=anomaly)))
        level = TelemetryLevel.DEBUG if k % 2 else TelemetryLevel.NORMAL
        hub.set_level(level, reason=f"because {text}")
    for key in ("api_key", SHAPES["ghp"][0]):
        with pytest.raises(ValueError, match=r"^metrics: "):
            emit_ppo_update_event(hub, update=30, metrics={**PPO_STATS, key: 1.0})
    hub.flush()  # the failing backend's last_error is in the stats below
    finished = RunFinishedPayload(status="failed", message=shapes[-1], hub_stats=hub.stats())
    hub.emit(RunFinished(update=30, payload=finished))


def free_texts(events: list[TelemetryEvent]) -> list[object]:
    """Every planted free-text field as read back (checking the config on the way)."""
    texts: list[object] = []
    for event in events:
        match event:
            case RunStarted(payload=p):
                got = p.model_dump(mode="json")
                texts.append(got["description"])
                assert got["config"] == {
                    "lr": 3e-4,
                    "canary": CANARY,
                    **dict.fromkeys(CONFIG_SECRETS, REDACTED),
                    REDACTED: REDACTED,
                    f"{REDACTED}#2": REDACTED,
                    "notes": dict.fromkeys(SHAPES, REDACTED),
                    "nested": [{"access_token": REDACTED}, [REDACTED] * len(SHAPES)],
                    "env": [REDACTED] * len(ENV_SECRETS),
                }
            case AnomalyDetected(payload=p):
                texts.append(p.anomaly.message)
            case TelemetryLevelChanged(payload=p):
                texts.append(p.reason)
            case RunFinished(payload=p):
                texts.append(p.message)
                assert p.hub_stats is not None
                texts += [s.last_error for s in p.hub_stats.subscribers if s.last_error]
    return texts


def test_planted_secrets_reach_no_backend_file_log_line_or_terminal(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every shape, secret key, secret-shaped key and environment secret, planted in the
    config (nested in lists and dicts), the description, anomaly messages, level-change
    reasons, the finish message and a backend's exception, through every backend (W&B
    offline, a console log on stderr): none gets out, and each field arrived redacted."""
    run_dir = tmp_path / "run"
    with offline_wandb(tmp_path, monkeypatch), caplog.at_level(logging.DEBUG):
        for name, value in ENV_SECRETS.items():
            monkeypatch.setenv(name, value)
        hub = TelemetryHub("planted")
        hub.subscribe(AnomalyEscalator(), mode="inline")
        hub.subscribe(WandBBackend("esper-secrets", mode="offline", dir=run_dir))
        hub.subscribe(AnalyticsCollector(run_dir))
        hub.subscribe(StructlogBackend(RunLayout(run_dir).log))
        hub.subscribe(StructlogBackend(stream=sys.stderr, format="console"), name="terminal")
        hub.subscribe(FailsWithASecret())
        plant_everything(hub)
        stats = hub.close(timeout=60)
    captured = capfd.readouterr()
    events = list(read_events(run_dir))
    planted = len(SHAPES) + len(ENV_SECRETS)  # one anomaly and one level change each
    assert [e.event_type.value for e in events] == [
        "RUN_STARTED",
        "PPO_UPDATE_COMPLETED",
        *["ANOMALY_DETECTED", "TELEMETRY_LEVEL_CHANGED"] * planted,
        "RUN_FINISHED",
    ]
    assert {s.name: (s.delivered, s.failed, s.last_error) for s in stats.subscribers} == {
        **dict.fromkeys(
            ["anomaly-escalator", "wandb", "analytics", "structlog", "terminal"],
            (len(events), 0, None),
        ),
        "leaky-backend": (len(events) - planted, planted, f"RuntimeError: {REDACTED}"),
    }
    assert searched(tmp_path) == list(RUN_FILES)
    assert leaks(tmp_path, captured.out, captured.err, caplog.text) == []
    (wandb_file,) = run_dir.rglob("run-*.wandb")
    layout = RunLayout(run_dir)
    files = (layout.events, layout.log, wandb_file)
    assert [CANARY.encode() in f.read_bytes() for f in files] == [True, True, True]
    assert CANARY in captured.err  # the console log
    # Redacted where they were, not dropped.
    assert free_texts(events) == [REDACTED] * (2 + 2 * planted) + [f"RuntimeError: {REDACTED}"]


def test_a_ppo_run_whose_backend_fails_with_a_secret_says_so_without_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """run_ppo (what `esper ppo` runs), W&B offline, secrets in the environment, a backend
    whose every failure names a token: exit 4 naming the backend and its redacted error;
    the token is in no file, RUN_FINISHED, summary, stdout, stderr or log record."""
    console = io.StringIO()
    with offline_wandb(tmp_path, monkeypatch), caplog.at_level(logging.DEBUG):
        for name, value in ENV_SECRETS.items():
            monkeypatch.setenv(name, value)
        options = RunOptions(
            config=PPOConfig(updates=2, envs=2, steps=8, hidden=8),
            run_root=tmp_path / "runs",
            run_id="leaky",
            backends=(FailsWithASecret(on=PPOUpdateCompleted),),
            progress=False,
        )
        outcome = run_ppo(options, Console(file=console, width=200))
    captured = capfd.readouterr()
    said = outcome.message.removeprefix("backend failed to deliver everything: ").split("; ")
    assert (outcome.exit_code, [s for s in said if s.startswith("leaky-backend")]) == (
        4,
        [
            "leaky-backend (lost 2: failed 2, dropped 0, abandoned 0, undelivered 0, "
            f"last error: RuntimeError: {REDACTED})"
        ],
    )
    (finished,) = [
        e for e in read_events(tmp_path / "runs" / "leaky") if isinstance(e, RunFinished)
    ]
    assert finished.payload.hub_stats is not None
    assert [s.last_error for s in finished.payload.hub_stats.subscribers if s.last_error] == [
        f"RuntimeError: {REDACTED}"
    ]
    assert searched(tmp_path) == list(RUN_FILES)
    texts = (console.getvalue(), outcome.message, captured.out, captured.err, caplog.text)
    assert leaks(tmp_path, *texts) == []


def test_the_environment_secrets_reach_no_output_of_esper_ppo(tmp_path: Path) -> None:
    """`esper ppo --wandb offline` with WANDB_API_KEY, HF_TOKEN, a token-shaped
    GITHUB_TOKEN and more set: none is in a file under the run (W&B's debug logs
    included), W&B's home and caches, a file name, stdout or stderr."""
    env = child_env(
        tmp_path,
        **ENV_SECRETS,
        GITHUB_TOKEN=SHAPES["ghp"][0],
        OPENAI_API_KEY=SHAPES["sk"][0],
        DATABASE_URL=SHAPES["url"][0],
    )
    env["WANDB_API_KEY"] = SHAPES["hex40"][0]
    argv = esper_ppo(tmp_path, "secret", "--wandb", "offline", "--episodes", "2", *SMALL)
    proc = start(argv, tmp_path, env=env)
    out, err = finish(proc, timeout=120)
    assert proc.returncode == 0, err
    assert RunLayout(tmp_path / "runs" / "secret").wandb.is_dir()
    assert searched(tmp_path) == list(RUN_FILES)
    assert leaks(tmp_path, out, err) == []


def test_esper_ppo_refuses_a_secret_run_id_in_one_line_and_creates_nothing(
    tmp_path: Path,
) -> None:
    """`esper ppo --run-id <40 hex digits>`: exit 2, one line that does not repeat it, no
    file (the other shapes take the same path: TelemetryHub's check, tested above)."""
    run_id, _ = SHAPES["hex40"]
    proc = start(esper_ppo(tmp_path, run_id, "--episodes", "1", *SMALL), tmp_path)
    out, err = finish(proc, timeout=120)
    assert (proc.returncode, out, len(err.splitlines())) == (2, "", 1), err
    assert err.startswith("esper ppo: --run-id: run_id was refused: it holds ")
    assert not (tmp_path / "runs").exists()
    assert leaks(tmp_path, out, err) == []
