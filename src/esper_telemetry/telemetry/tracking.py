"""Track the recurrent layers of a module by forward hooks, instead of passing states.

``track(policy)`` finds every ``nn.LSTM``, ``nn.GRU``, ``nn.RNN``, ``nn.LSTMCell`` and
``nn.GRUCell`` inside ``policy`` and hooks its forward pass. Each hook keeps a reference
to the state the layer returned last (``(h_n, c_n)`` of an LSTM, ``h_n`` of a GRU or
RNN, the cell's output for the cell types), detached: a view sharing the layer's
storage, so no copy is made, nothing leaves the device and no autograd history is kept
alive. ``emit_ppo_update_event(..., tracker=tracker)`` then measures every state at once
(:func:`compute_recurrent_health`, one transfer to the host in all).

"Last" means the latest call: a layer run several times per step (on two inputs, or
once per time step as a cell is) reports the state of its latest call. After a PPO
update that is the state of the training pass's last minibatch unless the trainer runs
the policy again (a rollout step, or the value of the last observation).

>>> import torch
>>> from esper_telemetry.telemetry.tracking import track
>>> policy = torch.nn.ModuleDict({"actor": torch.nn.LSTM(4, 8), "critic": torch.nn.GRU(4, 8)})
>>> with track(policy) as tracker:
...     _ = policy["actor"](torch.zeros(5, 3, 4)), policy["critic"](torch.zeros(5, 3, 4))
...     health = tracker.health()
>>> sorted(health), health["critic"].has_cell
(['actor', 'critic'], False)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload

import torch
from torch import nn

from esper_telemetry.contracts import HealthThresholds, LSTMHealthDetail, LSTMHealthMetrics
from esper_telemetry.contracts.health import check_state_name
from esper_telemetry.telemetry.lstm_health import RecurrentState, compute_recurrent_health

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup
    from torch.utils.hooks import RemovableHandle

#: The layer types ``track`` hooks.
RECURRENT_TYPES: tuple[type[nn.Module], ...] = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell)

_Health = LSTMHealthMetrics | tuple[LSTMHealthMetrics, LSTMHealthDetail]


class Tracker:
    """The latest output state of each tracked recurrent layer, by name.

    Made by :func:`track`. A context manager: leaving the block removes every hook, as
    :meth:`remove` does. The states it holds stay readable after removal.
    """

    def __init__(self, layers: Mapping[str, nn.Module], *, diagnostics: bool = False) -> None:
        self.diagnostics = diagnostics
        """Measure the diagnostics (saturation, c growth, dormancy) at every update; else
        only at DEBUG level (see ``emit_ppo_update_event``)."""
        self._since: list[int] | None = None  # per env: steps since its state was zeroed
        self._latest: dict[str, RecurrentState] = {}
        self._names = tuple(layers)
        self._handles: list[RemovableHandle] = [
            layer.register_forward_hook(self._hook_for(name, layer))
            for name, layer in layers.items()
        ]
        self._types = {name: type(layer).__name__ for name, layer in layers.items()}

    def __repr__(self) -> str:
        layers = ", ".join(f"{n}={t}" for n, t in self._types.items())
        return f"Tracker({layers}{', removed' if self.removed else ''})"

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the tracked layers, in the order ``track`` found them."""
        return self._names

    @property
    def removed(self) -> bool:
        """True once the hooks are removed (:meth:`remove`, or the end of a ``with``)."""
        return not self._handles

    def states(self) -> dict[str, RecurrentState]:
        """The latest state of every tracked layer that has run, by name, in track order.

        An LSTM's is ``(h, c)``, a GRU's or RNN's ``h``, in ``[layers, batch, hidden]``
        (``[batch, hidden]`` for the cell types). These are detached views of the layer's
        own output, not copies.
        """
        return {name: self._latest[name] for name in self._names if name in self._latest}

    @property
    def steps_since_reset(self) -> tuple[int, ...] | None:
        """Per env, the steps its state has run since it was last zeroed, as counted by
        :meth:`count_steps`; None before the first call."""
        return None if self._since is None else tuple(self._since)

    def count_steps(self, episode_starts: Sequence[bool] | torch.Tensor | Any) -> None:
        """Count one env step: call it at every step of the rollout with that step's
        episode starts (True where the env's state is zeroed before the step, as the
        policy's ``done``/``episode_starts`` flags say), so that the diagnostics can give
        ``c_growth_ratio``. A tensor or numpy array of bools, or a sequence of them.

        Raises:
            ValueError: ``episode_starts`` is not one flag per env, or its length changed.
        """
        flags = episode_starts
        if isinstance(flags, torch.Tensor):
            flags = flags.detach().cpu().tolist()
        elif hasattr(flags, "tolist"):  # a numpy array
            flags = flags.tolist()
        if not isinstance(flags, Sequence) or not all(
            isinstance(f, bool | int) and f in (0, 1) for f in flags
        ):
            raise ValueError(
                "episode_starts must be one bool per env (a tensor, an array or a list), got "
                f"{type(episode_starts).__name__}"
            )
        if self._since is not None and len(flags) != len(self._since):
            raise ValueError(
                f"episode_starts: {len(flags)} flags, but earlier steps had {len(self._since)}: "
                "one per env, every step"
            )
        since = self._since or [0] * len(flags)
        self._since = [1 if start else n + 1 for start, n in zip(flags, since, strict=True)]

    @overload
    def health(
        self,
        *,
        detail: Literal[False] = False,
        group: ProcessGroup | None = None,
        diagnostics: bool | None = None,
        thresholds: HealthThresholds | None = None,
    ) -> dict[str, LSTMHealthMetrics]: ...

    @overload
    def health(
        self,
        *,
        detail: Literal[True],
        group: ProcessGroup | None = None,
        diagnostics: bool | None = None,
        thresholds: HealthThresholds | None = None,
    ) -> dict[str, tuple[LSTMHealthMetrics, LSTMHealthDetail]]: ...

    def health(
        self,
        *,
        detail: bool = False,
        group: ProcessGroup | None = None,
        diagnostics: bool | None = None,
        thresholds: HealthThresholds | None = None,
    ) -> dict[str, LSTMHealthMetrics] | dict[str, tuple[LSTMHealthMetrics, LSTMHealthDetail]]:
        """Every held state's health (:func:`compute_recurrent_health`), by name.

        One transfer to the host for all of them. Layers that have not run since
        ``track`` are left out; with ``group``, every rank must hold the same names.
        ``diagnostics`` (None: the tracker's own setting) adds saturation, c growth (for
        the states of one state per env, once :meth:`count_steps` has counted) and
        dormancy, by ``thresholds``.
        """
        states = self.states()
        wanted = self.diagnostics if diagnostics is None else diagnostics
        steps: dict[str, Sequence[int]] | None = None
        if wanted and self._since is not None:
            count = len(self._since)
            steps = {n: self._since for n, s in states.items() if _batch(s) == count}
        options: dict[str, Any] = {
            "group": group,
            "diagnostics": wanted,
            "steps_since_reset": steps,
            "thresholds": thresholds,
        }
        if detail:
            return compute_recurrent_health(states, detail=True, **options)
        return compute_recurrent_health(states, detail=False, **options)

    def remove(self) -> None:
        """Remove every hook (idempotent); the states already held stay."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def _hook_for(self, name: str, layer: nn.Module) -> Any:
        cell = isinstance(layer, nn.LSTMCell | nn.GRUCell)
        latest = self._latest

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            latest[name] = _cell_state(output) if cell else _layer_state(output)

        return hook


def _batch(state: RecurrentState) -> int:
    h = state if isinstance(state, torch.Tensor) else state[0]
    return int(h.shape[-2]) if h.dim() >= 2 else 1


def _layer_state(output: tuple[Any, Any]) -> RecurrentState:
    # nn.LSTM: (out, (h_n, c_n)); nn.GRU, nn.RNN: (out, h_n). out is a PackedSequence for
    # packed input, else a tensor that is 2-D when the input was unbatched: h_n is then
    # [layers, hidden], which compute_recurrent_health would read as [batch, hidden].
    out, state = output
    unbatched = isinstance(out, torch.Tensor) and out.dim() == 2
    if isinstance(state, tuple):
        h, c = state
        assert isinstance(h, torch.Tensor)
        assert isinstance(c, torch.Tensor)
        if unbatched:
            h, c = h.unsqueeze(1), c.unsqueeze(1)
        return h.detach(), c.detach()
    assert isinstance(state, torch.Tensor)
    return (state.unsqueeze(1) if unbatched else state).detach()


def _cell_state(output: Any) -> RecurrentState:
    # nn.LSTMCell: (h, c); nn.GRUCell: h. [batch, hidden], or [hidden] when unbatched.
    if isinstance(output, tuple):
        h, c = output
        assert isinstance(h, torch.Tensor)
        assert isinstance(c, torch.Tensor)
        if h.dim() == 1:
            h, c = h.unsqueeze(0), c.unsqueeze(0)
        return h.detach(), c.detach()
    assert isinstance(output, torch.Tensor)
    return (output.unsqueeze(0) if output.dim() == 1 else output).detach()


def track(
    module: nn.Module,
    *,
    names: Mapping[str, str] | Sequence[str] | None = None,
    diagnostics: bool = False,
) -> Tracker:
    """Hook every recurrent layer inside ``module``; pass the result to the emitter.

    Args:
        module: A ``torch.nn.Module`` holding at least one ``nn.LSTM``, ``nn.GRU``,
            ``nn.RNN``, ``nn.LSTMCell`` or ``nn.GRUCell`` (``module`` itself may be one).
        names: How to name the states. None: by module path (``"encoder.lstm"``; the
            lower-cased class name for ``module`` itself). A mapping from module path to
            name: only those layers are tracked. A sequence: one name per recurrent
            layer, in the order ``module.named_modules()`` finds them.
        diagnostics: Measure saturation, c growth and dormancy at every update (else at
            DEBUG level only); call ``tracker.count_steps(episode_starts)`` at each env
            step for the c growth ratio.

    Returns:
        A :class:`Tracker`; ``with track(policy) as tracker:`` removes its hooks at the
        end of the block, ``tracker.remove()`` at any time.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``, or ``names`` is neither a mapping
            nor a sequence of str.
        ValueError: ``module`` holds no recurrent layer; a path in ``names`` is not a
            recurrent layer of ``module``; a sequence of names has the wrong length; a
            name is not a valid state name or is used twice. Each message says what to
            pass instead.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    found = {path: m for path, m in module.named_modules() if isinstance(m, RECURRENT_TYPES)}
    if not found:
        kinds = ", ".join(f"nn.{t.__name__}" for t in RECURRENT_TYPES)
        raise ValueError(
            f"module: {type(module).__name__} holds no recurrent layer ({kinds}); track the "
            "module that holds the LSTM or GRU, or pass states to emit_ppo_update_event "
            "with recurrent_health="
        )
    if not isinstance(diagnostics, bool):
        raise TypeError(f"diagnostics must be True or False, got {diagnostics!r:.40}")
    return Tracker(_named_layers(module, found, names), diagnostics=diagnostics)


def _named_layers(
    module: nn.Module, found: dict[str, nn.Module], names: object
) -> dict[str, nn.Module]:
    """The layers to track by state name; every name checked, each used once."""
    given: list[str]
    if names is None:
        given = [path or type(module).__name__.lower() for path in found]
        layers = list(found.values())
    elif isinstance(names, Mapping):
        unknown = [p for p in names if p not in found]
        if unknown:
            raise ValueError(
                f"names: {unknown[0]!r} is not a recurrent layer of the module; its recurrent "
                f"layers are {list(found)}"
            )
        given, layers = list(names.values()), [found[path] for path in names]
    elif isinstance(names, Sequence) and not isinstance(names, str):
        if len(names) != len(found):
            raise ValueError(
                f"names: {len(names)} names for {len(found)} recurrent layers {list(found)}; "
                "give one per layer, or a mapping {path: name} to track some of them"
            )
        given, layers = list(names), list(found.values())
    else:
        raise TypeError(
            "names must be None, a mapping {module path: name} or a sequence of names, got "
            f"{type(names).__name__}"
        )
    chosen = {_name(n): layer for n, layer in zip(given, layers, strict=True)}
    if len(chosen) != len(given):
        raise ValueError(f"names: each name must be used once, got {given}")
    return chosen


def _name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"names: a state name must be a str, got {type(name).__name__}")
    try:
        return check_state_name(name)
    except ValueError as exc:
        raise ValueError(f"names: {exc}; pass names= to choose the names") from None
