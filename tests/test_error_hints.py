"""Errors that say what to do: the usual first mistakes, each answered with the fix."""

from __future__ import annotations

import pytest
import torch

from esper_telemetry import TelemetryHub, compute_lstm_health, emit_ppo_update_event

PPO = {"policy_loss": 0.1, "value_loss": 0.5, "entropy": 0.7}


def lstm_state() -> tuple[torch.Tensor, torch.Tensor]:
    _, (h, c) = torch.nn.LSTM(3, 4)(torch.zeros(2, 5, 3))
    return h, c


def test_a_pair_of_states_like_sb3s_rnnstates_says_to_pass_one_of_them() -> None:
    both = (lstm_state(), lstm_state())  # what RNNStates(pi=..., vf=...) is: a tuple of pairs
    with pytest.raises(TypeError, match=r"pass one pair, e\.g\. compute_lstm_health\(states\.pi\)"):
        compute_lstm_health(both)  # type: ignore[arg-type]


def test_a_tensor_metric_says_to_call_item() -> None:
    with TelemetryHub("t") as hub, pytest.raises(ValueError, match="got Tensor") as info:
        emit_ppo_update_event(hub, update=0, metrics={**PPO, "policy_loss": torch.tensor(0.1)})
    assert str(info.value).startswith("metrics['policy_loss'] must be a real number, got Tensor")
    assert "pass a host number: metrics['policy_loss'].item()" in str(info.value)


def test_a_raw_state_as_lstm_health_says_to_measure_it_first() -> None:
    with TelemetryHub("t") as hub, pytest.raises(TypeError) as info:
        emit_ppo_update_event(hub, update=0, metrics=PPO, lstm_health=lstm_state())  # type: ignore[arg-type]
    assert str(info.value) == (
        "lstm_health got the raw recurrent state (tensors); pass what compute_lstm_health "
        "returns: lstm_health=compute_lstm_health((h, c)), or track the module with "
        "esper_telemetry.track(policy) and pass tracker="
    )


@pytest.mark.parametrize(
    ("run_id", "use"),
    [("exp/lstm 1", "exp-lstm-1"), ("../escape", "escape"), ("a\\b", "a-b")],
)
def test_a_run_id_that_cannot_name_a_directory_comes_with_one_that_can(
    run_id: str, use: str
) -> None:
    with pytest.raises(ValueError, match=rf"; use '{use}' instead$"):
        TelemetryHub(run_id)
    TelemetryHub(use).close()
