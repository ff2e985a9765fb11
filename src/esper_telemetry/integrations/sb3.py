"""Stable-Baselines3: one ``PPO_UPDATE_COMPLETED`` per PPO update of ``model.learn()``.

::

    from esper_telemetry.integrations.sb3 import EsperCallback

    hub.subscribe(AnomalyEscalator(halt_on="critical"), mode="inline")
    model = RecurrentPPO("MlpLstmPolicy", env)  # sb3-contrib; or stable_baselines3.PPO
    model.learn(100_000, callback=EsperCallback(hub))

Each ``learn()`` call is one run block (:meth:`TelemetryHub.run`): ``RUN_STARTED`` with
the model's hyper-parameters, one ``PPO_UPDATE_COMPLETED`` per ``train()`` call, then
``RUN_FINISHED`` saying how it ended: ``completed``; ``halted`` when a subscriber asked
for a halt (``learn()`` then returns normally); ``failed`` by an exception and
``interrupted`` by Ctrl-C (both raised again).

Where each value comes from
---------------------------
SB3 records an update's statistics in ``model.logger`` inside ``train()``; the callback
reads ``model.logger.name_to_value`` right after ``train()`` returns, before anything
dumps or overwrites them.

=====================  =================================================================
field                  source
=====================  =================================================================
policy_loss            ``train/policy_gradient_loss``
value_loss             ``train/value_loss``
entropy                ``-train/entropy_loss`` (SB3 logs the entropy *loss*: -entropy)
approx_kl              ``train/approx_kl`` (SB3: the mean over the last epoch's minibatches)
clip_fraction          ``train/clip_fraction``
explained_variance     ``train/explained_variance``
learning_rate          ``train/learning_rate`` (the rate this update used)
extra                  every other ``train/`` scalar, prefix dropped: ``clip_range``,
                       ``loss`` (the last minibatch's total loss), ``n_updates``, and
                       ``clip_range_vf`` and ``std`` when SB3 logs them
env_steps              ``model.num_timesteps``
episode_return_mean    the mean ``"r"`` of ``model.ep_info_buffer``, as SB3's
                       ``rollout/ep_rew_mean`` (episodes seen by a ``Monitor``, which
                       ``make_vec_env`` adds); NaN before the first finished episode
episode_return_window  ``model.ep_info_buffer.maxlen`` (``stats_window_size``: 100)
recurrent_health       RecurrentPPO only: ``policy`` (the primary state) from
                       ``model._last_lstm_states.pi``, and ``value`` from ``.vf`` when
                       the critic has an LSTM of its own (with ``shared_lstm`` or
                       ``enable_critic_lstm=False``, ``.vf`` repeats ``.pi``: left out)
=====================  =================================================================

The states measured are the ones the rollout ended with, which the next rollout starts
from; ``train()`` does not change them (it replays the states the rollout buffer
stored). Plain PPO has no recurrent state: its events carry no health.

``RUN_STARTED``'s config holds the algorithm and policy class, ``learning_rate``,
``n_steps``, ``batch_size``, ``n_epochs``, ``gamma``, ``gae_lambda``, ``clip_range``,
``ent_coef``, ``vf_coef``, ``max_grad_norm`` and the other settings of PPO,
``policy_kwargs``, the LSTM sizes (RecurrentPPO), ``n_envs``, ``seed``, ``device``, and
``learn()``'s ``total_timesteps``, ``reset_num_timesteps`` and ``log_interval``. A
schedule (``learning_rate``, ``clip_range``) is recorded as its value at SB3's current
progress, with ``<name>_schedule: true`` beside it.

SB3 does not expose the gradient norm (``train()`` drops what ``clip_grad_norm_``
returns), so ``grad_norm`` is None; nor per-minibatch or per-epoch figures (only the
means above), nor the hidden states inside a rollout (only the last ones).

How it hooks into ``learn()``
-----------------------------
SB3 calls no callback after ``train()``, and ``learn()`` ignores what
``on_rollout_start`` returns: a halt seen there could not keep the next rollout from a
forward pass with NaN weights or states. So while ``learn()`` runs, the callback wraps
four methods of the model instance (never its class), and puts them back when it ends:

- ``train``: for RecurrentPPO (unless the level is OFF), first replays the rollout
  buffer as ``train()`` will read it and compares it with what the rollout stored (the
  replay check, ``PPOUpdatePayload.replay``: log-probs for ``policy``, a critic LSTM's
  values for ``value``; numpy's random state is restored, so training is unchanged);
  then publishes the update right after ``train()`` returns;
- ``collect_rollouts``: once a halt was requested, returns False without collecting, so
  ``learn()`` stops and calls ``on_training_end`` (``on_step`` returns False as well, for
  a halt requested while a rollout runs);
- ``collect_rollouts``, ``train`` and ``dump_logs``: an exception leaving one of them ends
  the run ``failed`` (Ctrl-C: ``interrupted``) on its way out of ``learn()``, except
  ``TrainingHalted`` (another callback calling ``hub.raise_if_halted()``), which becomes
  a halt as above and never leaves ``learn()``;
- ``_excluded_save_params``: keeps the wrappers out of ``model.save()``, so a
  ``CheckpointCallback`` saving during ``learn()`` saves the model as it is.

An exception raised where nothing is wrapped (another callback's ``on_training_start``
after this one, a Ctrl-C between two of these calls) leaves the run open; it is ended
``failed`` when the model next runs ``learn()``.

The update index and several ``learn()`` calls
----------------------------------------------
Updates are numbered from ``hub.first_update`` (0 in a new run) and the count goes on
across the ``learn()`` calls made with the same callback, with or without
``reset_num_timesteps``: a hub is one run (one run id, one W&B run, one
``events.jsonl``), whose update index never repeats. Each ``learn()`` is a run block of
its own, with the hyper-parameters it ran with (its ``RUN_STARTED``, like any that
:meth:`TelemetryHub.run` emits, has the envelope update ``hub.first_update``);
``env_steps`` follows SB3's ``num_timesteps``, which ``reset_num_timesteps=True`` sets
back to 0. Pass the same callback to every ``learn()`` on a hub (a new callback counts
from ``hub.first_update`` again); for a new run, make a new hub and a new callback.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any, Final

import numpy as np
from pydantic import ValidationError

try:
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
    from stable_baselines3.common.utils import safe_mean
except ImportError as err:  # pragma: no cover - exercised in a test that hides sb3
    from esper_telemetry._extras import missing_message

    raise ImportError(
        missing_message("esper_telemetry.integrations.sb3", "stable_baselines3"),
        name="stable_baselines3",
    ) from err

from esper_telemetry.contracts import (
    PPO_STATISTICS,
    HealthThresholds,
    ReplayConsistency,
    RunStartedPayload,
    TelemetryLevel,
)
from esper_telemetry.errors import TrainingHalted
from esper_telemetry.hub import TelemetryHub, redact_secrets
from esper_telemetry.telemetry.emitters import LSTMHealth, emit_ppo_update_event
from esper_telemetry.telemetry.lstm_health import compute_recurrent_health
from esper_telemetry.telemetry.replay import check_replay

_logger = logging.getLogger("esper_telemetry.integrations.sb3")

__all__ = ["EsperCallback"]

#: The model's methods wrapped while learn() runs (see the module docstring).
_WRAPPED: Final = ("train", "collect_rollouts", "dump_logs", "_excluded_save_params")

#: SB3's logger keys for the statistics the payload has fields for.
_FIELDS: Final = {
    "train/policy_gradient_loss": "policy_loss",
    "train/value_loss": "value_loss",
    "train/approx_kl": "approx_kl",
    "train/clip_fraction": "clip_fraction",
    "train/explained_variance": "explained_variance",
    "train/learning_rate": "learning_rate",
}
_REQUIRED_KEYS: Final = ("train/policy_gradient_loss", "train/value_loss", "train/entropy_loss")

#: Plain hyper-parameters copied into RUN_STARTED's config when the model has them.
_HYPERPARAMETERS: Final = (
    "n_steps",
    "batch_size",
    "n_epochs",
    "gamma",
    "gae_lambda",
    "ent_coef",
    "vf_coef",
    "max_grad_norm",
    "normalize_advantage",
    "target_kl",
    "use_sde",
    "sde_sample_freq",
    "n_envs",
    "seed",
)


class EsperCallback(BaseCallback):
    """Publishes each PPO update of ``learn()`` on a hub, and stops ``learn()`` on a halt.

    For ``stable_baselines3.PPO`` and sb3-contrib's ``RecurrentPPO`` (any SB3
    on-policy algorithm that logs PPO's ``train/`` statistics). See the module
    docstring for where each value comes from and how ``learn()`` is hooked.

    Args:
        hub: The hub to publish on; it is not closed at the end of ``learn()``.
        thresholds: The health rule deciding which updates carry per-env detail (the
            anomaly detector's); the default rule if None.
        config: More configuration for ``RUN_STARTED``, merged over the model's
            hyper-parameters (a key in both: this one wins). JSON values.
        description: Free text for ``RUN_STARTED`` (shown next to the run).
        diagnostics: Measure the states' saturation, cell growth and dormancy
            (``RecurrentDiagnostics``) at every update; without it, only at DEBUG level
            (an anomaly raises it). The steps since each env's last reset are counted
            from the ``dones`` SB3 passes to every step.
        verbose: SB3's callback verbosity (unused).

    Raises:
        TypeError: ``hub`` is not a TelemetryHub, ``thresholds`` not HealthThresholds,
            or (at the start of ``learn()``) the model is not an on-policy algorithm.
        ValueError: ``config`` holds a value that is not JSON, or ``description`` is not
            text (checked here, not at ``learn()``).
        RuntimeError: (at the start of ``learn()``) it is the second EsperCallback of
            that ``learn()``, which would publish every update twice (the first one's run
            then ends ``failed``).
    """

    def __init__(
        self,
        hub: TelemetryHub,
        *,
        thresholds: HealthThresholds | None = None,
        config: Mapping[str, Any] | None = None,
        description: str = "",
        diagnostics: bool = False,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose=verbose)
        if not isinstance(diagnostics, bool):
            raise TypeError(f"diagnostics must be True or False, got {diagnostics!r:.40}")
        if not isinstance(hub, TelemetryHub):
            raise TypeError(f"hub must be a TelemetryHub, got {type(hub).__name__}")
        if thresholds is not None and not isinstance(thresholds, HealthThresholds):
            raise TypeError(
                f"thresholds must be a HealthThresholds or None, got {type(thresholds).__name__}"
            )
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping or None, got {type(config).__name__}")
        try:  # a bad config fails here, not once learn() has begun
            RunStartedPayload(config=dict(config or {}), description=description)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(map(str, error["loc"]))
            # Not quoting the value: a config may hold a secret (the contract redacts it).
            raise ValueError(f"{where}: {error['msg']}") from None
        self.hub = hub
        self.thresholds = thresholds
        self.config = dict(config or {})
        self.description = description
        self._next_update: int | None = None  # set at the first learn()
        self._run: ExitStack | None = None  # the open run block of the learn() under way
        self._learn_started: float | None = None  # model.start_time of that learn()
        self._originals: dict[str, Callable[..., Any]] = {}
        self._saved: dict[str, object] = {}  # instance attributes the wrappers replaced
        self._replay_works = True  # False once the replay check failed (it is then off)
        self.diagnostics = diagnostics
        self._since: np.ndarray | None = None  # per env: steps since its state was zeroed
        self._starts: np.ndarray | None = None  # per env: its state is zeroed next step

    @property
    def next_update(self) -> int | None:
        """The index the next PPO update gets; None before the first ``learn()``."""
        return self._next_update

    # -- SB3's callback hooks ---------------------------------------------------------------

    def _on_training_start(self) -> None:
        model = self.model
        if not isinstance(model, OnPolicyAlgorithm):
            raise TypeError(
                "EsperCallback publishes PPO updates: it needs an on-policy algorithm "
                "(stable_baselines3.PPO, sb3_contrib.RecurrentPPO), got "
                f"{type(model).__name__}"
            )
        if self._run is not None:  # the last learn() ended where this callback could not see
            self._abandon()
        config = {**_hyperparameters(model, self.locals), **self.config}
        self._wrap(model)
        try:
            run = ExitStack()
            run.enter_context(self.hub.run(config=config, description=self.description))
        except BaseException:
            self._unwrap()
            raise
        self._run = run
        if self._next_update is None:
            self._next_update = self.hub.first_update
        starts = getattr(model, "_last_episode_starts", None)
        if starts is not None:  # a state zeroed at its next step, or carried on
            self._starts = np.asarray(starts, dtype=bool).copy()
            if self._since is None or self._since.shape != self._starts.shape:
                self._since = np.zeros(self._starts.shape, dtype=np.int64)

    def _on_step(self) -> bool:
        # Each env step: the state of an env whose episode began was zeroed, then ran once.
        if self._since is not None and self._starts is not None:
            self._since = np.where(self._starts, 1, self._since + 1)
            dones = self.locals.get("dones")
            if dones is not None:
                self._starts = np.asarray(dones, dtype=bool).copy()
        # A halt asked for while a rollout runs (e.g. from another thread) stops it here.
        return self.hub.halted is None

    def _on_training_end(self) -> None:
        self._end(self.hub.halted)

    # -- the wrapped methods ------------------------------------------------------------------

    def _train(self, *args: Any, **kwargs: Any) -> None:
        if not self._live():
            return self._learner.train(*args, **kwargs)  # put back by _live
        with self._guard():
            replay = self._replay_check()
            self._originals["train"](*args, **kwargs)
            self._publish(replay)
        return None

    def _replay_check(self) -> dict[str, ReplayConsistency] | None:
        """RecurrentPPO's training pass replayed once before ``train()`` (see the module
        docstring); None for plain PPO, at level OFF, and once the check has failed."""
        model = self._learner
        if (
            not self._replay_works
            or self.hub.level is TelemetryLevel.OFF
            or getattr(model, "_last_lstm_states", None) is None
        ):
            return None
        try:
            return _replay_check(model, self.thresholds)
        except Exception as exc:  # never let the check break training: say so, once
            self._replay_works = False
            _logger.warning(
                "esper: the replay check of RecurrentPPO's rollout buffer failed and is off "
                "for the rest of this callback: %s: %s",
                type(exc).__name__,
                redact_secrets(str(exc)),
            )
            return None

    def _collect_rollouts(self, *args: Any, **kwargs: Any) -> bool:
        if not self._live():
            return self._learner.collect_rollouts(*args, **kwargs)
        with self._guard():
            if self.hub.halted is None:
                return bool(self._originals["collect_rollouts"](*args, **kwargs))
        return False  # halted: learn() stops before this rollout's first forward pass

    def _dump_logs(self, *args: Any, **kwargs: Any) -> None:
        if not self._live():
            return self._learner.dump_logs(*args, **kwargs)
        with self._guard():
            self._originals["dump_logs"](*args, **kwargs)
        return None

    def _excluded_save_params(self) -> list[str]:
        return [*self._originals["_excluded_save_params"](), *_WRAPPED]

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Around a wrapped call: a ``TrainingHalted`` becomes the hub's halt request
        (``learn()`` then stops before the next rollout, and no exception escapes it);
        any other exception ends the run on its way out."""
        try:
            yield
        except TrainingHalted as halt:
            self.hub.request_halt(halt.reason, update=halt.update)  # the first one wins
        except BaseException as exc:
            self._end(exc)
            raise

    @property
    def _learner(self) -> OnPolicyAlgorithm:
        model = self.model
        assert isinstance(model, OnPolicyAlgorithm)  # checked by _on_training_start
        return model

    # -- publishing ---------------------------------------------------------------------------

    def _publish(self, replay: Mapping[str, ReplayConsistency] | None) -> None:
        """Emit the update ``train()`` just made, from what SB3 recorded during it, with
        the replay check made before it."""
        model = self._learner
        assert self._next_update is not None  # set by _on_training_start
        update, self._next_update = self._next_update, self._next_update + 1
        episodes = model.ep_info_buffer
        assert episodes is not None  # made by learn()'s _setup_learn
        emit_ppo_update_event(
            self.hub,
            update=update,
            metrics=_train_metrics(model.logger.name_to_value, type(model).__name__),
            recurrent_health=_recurrent_health(
                model,
                diagnostics=self.diagnostics or self.hub.level >= TelemetryLevel.DEBUG,
                steps_since_reset=self._since,
                thresholds=self.thresholds,
            ),
            env_steps=int(model.num_timesteps),
            # SB3's own mean (rollout/ep_rew_mean); NaN before the first episode.
            episode_return_mean=safe_mean([info["r"] for info in episodes]),
            episode_return_window=episodes.maxlen,
            thresholds=self.thresholds,
            replay=replay,
        )

    # -- the run and the wrappers -------------------------------------------------------------

    def _end(self, exc: BaseException | None) -> None:
        """Put the model back and end the run block with how ``learn()`` ended: None
        (completed), a ``TrainingHalted`` (halted) or the exception leaving it."""
        run, self._run = self._run, None
        self._unwrap()
        if run is None:
            return
        if exc is None:
            run.close()
        else:
            run.__exit__(type(exc), exc, exc.__traceback__)

    def _live(self) -> bool:
        """True inside the ``learn()`` this callback started in; else (that ``learn()``
        ended unseen and another runs) end that run and put the model back."""
        if self._run is not None and self.model.start_time == self._learn_started:
            return True
        self._abandon()
        return False

    def _abandon(self) -> None:
        self._end(
            RuntimeError(
                "learn() ended without reaching on_training_end or an EsperCallback "
                "wrapper: an exception outside the calls it wraps (see "
                "esper_telemetry.integrations.sb3)"
            )
        )

    def _wrap(self, model: OnPolicyAlgorithm) -> None:
        current = vars(model)
        for name in _WRAPPED:
            owner = getattr(current.get(name), "__self__", None)
            if isinstance(owner, EsperCallback) and owner is not self:
                if owner._run is None or owner._learn_started != model.start_time:
                    owner._abandon()  # left behind by a learn() that ended unseen
                    continue
                error = RuntimeError(
                    "this learn() has two EsperCallbacks, which would publish every update "
                    "twice; pass one (for several destinations: one hub, several backends)"
                )
                owner._end(error)
                raise error
        self._saved = {name: current[name] for name in _WRAPPED if name in current}
        self._originals = {name: getattr(model, name) for name in _WRAPPED if hasattr(model, name)}
        wrappers: dict[str, Callable[..., Any]] = {
            "train": self._train,
            "collect_rollouts": self._collect_rollouts,
            "dump_logs": self._dump_logs,
            "_excluded_save_params": self._excluded_save_params,
        }
        for name in self._originals:
            setattr(model, name, wrappers[name])
        self._learn_started = model.start_time

    def _unwrap(self) -> None:
        if not self._originals:
            return
        current = vars(self.model)
        for name in self._originals:
            if name in self._saved:
                current[name] = self._saved[name]
            else:
                current.pop(name, None)
        self._originals, self._saved = {}, {}


# -- reading the model -------------------------------------------------------------------------


def _train_metrics(logged: Mapping[str, Any], algorithm: str) -> dict[str, float]:
    """The statistics of the update ``train()`` just made, from SB3's logger."""
    missing = [key for key in _REQUIRED_KEYS if _number(logged.get(key)) is None]
    if missing:
        raise RuntimeError(
            f"{algorithm}.train() recorded no {', '.join(missing)} in model.logger: "
            "EsperCallback reads PPO's statistics from there (stable_baselines3.PPO, "
            "sb3_contrib.RecurrentPPO)"
        )
    metrics: dict[str, float] = {}
    for key, value in logged.items():
        number = _number(value)
        if not key.startswith("train/") or number is None:
            continue
        if key == "train/entropy_loss":
            metrics["entropy"] = -number
        elif key in _FIELDS:
            metrics[_FIELDS[key]] = number
        else:
            name = key.removeprefix("train/")
            # A name the payload reserves keeps its prefix: extra never shadows a field.
            reserved = name in PPO_STATISTICS or name == "env_steps" or name.startswith("lstm_")
            metrics[key if reserved else name] = number
    return metrics


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):  # numpy scalars included
        return float(value)
    if isinstance(value, np.ndarray) and value.size == 1 and np.issubdtype(value.dtype, np.number):
        return float(value.item())
    return None


def _recurrent_health(
    model: BaseAlgorithm,
    *,
    diagnostics: bool,
    steps_since_reset: np.ndarray | None,
    thresholds: HealthThresholds | None,
) -> Mapping[str, LSTMHealth] | None:
    """RecurrentPPO's last LSTM states, measured in one transfer; None without one."""
    states = getattr(model, "_last_lstm_states", None)
    if states is None:
        return None
    named = {"policy": (states.pi[0], states.pi[1])}
    if getattr(model.policy, "lstm_critic", None) is not None:
        named["value"] = (states.vf[0], states.vf[1])
    steps = None
    if diagnostics and steps_since_reset is not None:
        steps = steps_since_reset.tolist()
        if len(steps) != states.pi[0].shape[1]:
            steps = None  # a batch other than one state per env: no growth ratio
    return compute_recurrent_health(
        named,
        detail=True,
        diagnostics=diagnostics,
        steps_since_reset=steps,
        thresholds=thresholds,
    )


def _replay_check(
    model: OnPolicyAlgorithm, thresholds: HealthThresholds | None
) -> dict[str, ReplayConsistency]:
    """Replay RecurrentPPO's rollout buffer as ``train()`` will, before its first step.

    The buffer's own sequencing (``_get_samples`` over every index in order: sequences cut
    at episode starts, padded, each begun from the state the buffer stored for its first
    step) and the policy's ``evaluate_actions``, without gradient, in training mode; the
    log-probs must equal the rollout's (``policy``), and so must the values when the
    critic has an LSTM of its own (``value``). numpy's global random state is saved and
    restored around the buffer's ``get``, so ``train()`` draws the same minibatches.
    """
    import torch

    buffer: Any = model.rollout_buffer
    policy: Any = model.policy
    steps, envs = buffer.buffer_size, buffer.n_envs
    if not buffer.generator_ready:  # get() lays the buffer out env-major, once
        saved = np.random.get_state()
        try:
            next(iter(buffer.get(steps * envs)))
        finally:
            np.random.set_state(saved)
    env_change = np.zeros((steps, envs))
    env_change[0, :] = 1.0
    samples = buffer._get_samples(np.arange(steps * envs), buffer.swap_and_flatten(env_change))
    actions = samples.actions
    if hasattr(model.action_space, "n"):  # Discrete: stored as floats, as train() converts
        actions = actions.long().flatten()
    mode = policy.training
    policy.set_training_mode(True)
    try:
        with torch.no_grad():
            values, log_prob, _ = policy.evaluate_actions(
                samples.observations, actions, samples.lstm_states, samples.episode_starts
            )
    finally:
        policy.set_training_mode(mode)
    real = samples.mask > 1e-8

    def by_step(x: Any) -> Any:  # the real entries, env-major, as [steps, envs]
        return x.flatten()[real].reshape(envs, steps).T

    found = {
        "policy": check_replay(
            by_step(samples.old_log_prob), by_step(log_prob), thresholds=thresholds
        )
    }
    if getattr(policy, "lstm_critic", None) is not None:
        found["value"] = check_replay(
            by_step(samples.old_values), by_step(values), thresholds=thresholds
        )
    return found


def _hyperparameters(model: OnPolicyAlgorithm, learn: Mapping[str, Any]) -> dict[str, Any]:
    """RUN_STARTED's config: the model's settings and this learn()'s arguments, as JSON.

    A schedule (a callable of SB3's progress_remaining) is recorded as its value now,
    with ``<name>_schedule: true`` beside it.
    """
    progress = float(model._current_progress_remaining)
    config: dict[str, Any] = {
        "algorithm": type(model).__name__,
        "policy_class": type(model.policy).__name__,
    }
    config["learning_rate"], config["learning_rate_schedule"] = _now(model.learning_rate, progress)
    for name in ("clip_range", "clip_range_vf"):
        if hasattr(model, name):
            value = getattr(model, name)
            config[name] = None
            if value is not None:
                config[name], config[f"{name}_schedule"] = _now(value, progress)
    config.update({n: _plain(getattr(model, n)) for n in _HYPERPARAMETERS if hasattr(model, n)})
    config["device"] = str(model.device)
    config["policy_kwargs"] = _plain(model.policy_kwargs)
    config.update(_lstm_settings(model))
    for name in ("total_timesteps", "reset_num_timesteps", "log_interval"):
        if name in learn:
            config[name] = _plain(learn[name])
    return config


def _lstm_settings(model: OnPolicyAlgorithm) -> dict[str, Any]:
    policy = model.policy
    lstm = getattr(policy, "lstm_actor", None)
    if lstm is None:
        return {}
    return {
        "lstm_hidden_size": int(lstm.hidden_size),
        "n_lstm_layers": int(lstm.num_layers),
        "shared_lstm": bool(getattr(policy, "shared_lstm", False)),
        "enable_critic_lstm": getattr(policy, "lstm_critic", None) is not None,
    }


def _now(value: object, progress: float) -> tuple[float, bool]:
    """A setting that may be a schedule: its value at ``progress``, and whether it is one."""
    inner = getattr(value, "value_schedule", value)  # SB3 wraps settings in FloatSchedule
    constant = getattr(inner, "val", inner)  # ... of a ConstantSchedule for a plain number
    if isinstance(constant, numbers.Real):
        return float(constant), False
    if callable(inner):
        return float(inner(progress)), True
    raise TypeError(f"expected a number or a schedule, got {type(value).__name__}")


def _plain(value: object) -> Any:
    """``value`` as JSON: numbers, strings, lists and dicts; a class by its dotted name,
    anything else by its repr."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)
