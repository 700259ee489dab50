"""The batched one-step matrix game: specs, rewards, masks and config validation."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs

from custom_envs.matrix_game import (
    NONMONOTONIC_PAYOFF,
    MatrixGameConfig,
    MatrixGameEnv,
    MatrixGameTask,
    validate_payoff,
)


def test_check_env_specs():
    check_env_specs(MatrixGameEnv(num_envs=5))
    check_env_specs(MatrixGameEnv(num_envs=3, unavailable_actions=[[0], [1, 2]]))


def test_reward_equals_payoff_for_every_joint_action_in_one_batch():
    env = MatrixGameEnv(num_envs=9)
    td = env.reset()
    joint = torch.cartesian_prod(torch.arange(3), torch.arange(3))  # 9 different joint actions
    td.set(("agents", "action"), joint)
    out = env.step(td)["next"]
    payoff = torch.tensor(NONMONOTONIC_PAYOFF)
    expected = payoff[joint[:, 0], joint[:, 1]]
    reward = out.get(("agents", "reward"))
    assert reward.shape == (9, 2, 1)
    assert torch.equal(reward[:, 0, 0], expected)
    assert torch.equal(reward[:, 1, 0], expected)  # shared team reward
    assert out.get("terminated").all() and out.get("done").all()
    assert not out.get("truncated").any()


def test_observation_and_state_follow_the_step_counter():
    env = MatrixGameEnv(num_envs=2)
    td = env.reset()
    assert torch.equal(td.get("state"), torch.tensor([[1.0, 0.0]] * 2))
    obs = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]])  # step one-hot + agent id
    assert torch.equal(td.get(("agents", "observation")), obs.expand(2, 2, 4))
    plain = MatrixGameEnv(num_envs=2, observe_agent_id=False).reset()
    assert torch.equal(plain.get(("agents", "observation")), torch.tensor([[[1.0, 0.0]] * 2] * 2))
    td.set(("agents", "action"), torch.zeros(2, 2, dtype=torch.long))
    nxt = env.step(td)["next"]
    assert torch.equal(nxt.get("state"), torch.tensor([[0.0, 1.0]] * 2))


def test_action_mask_and_masked_random_actions():
    env = MatrixGameEnv(num_envs=64, unavailable_actions=[[0], [1, 2]])
    td = env.reset()
    mask = td.get(("agents", "action_mask"))
    assert mask[:, 0].tolist() == [[False, True, True]] * 64
    assert mask[:, 1].tolist() == [[True, False, False]] * 64
    actions = env.rollout(1).get(("agents", "action"))
    assert (actions[..., 0] != 0).all() and (actions[..., 1] == 0).all()


def test_taking_an_unavailable_action_is_an_error():
    env = MatrixGameEnv(num_envs=1, unavailable_actions=[[0], []])
    td = env.reset()
    td.set(("agents", "action"), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="unavailable action"):
        env.step(td)


@pytest.mark.parametrize(
    "payoff, message",
    [
        ([[1.0, 2.0], [3.0]], "square"),
        ([[1.0]], "at least 2x2"),
        ([[1.0, float("nan")], [0.0, 1.0]], "not finite"),
        ([[1.0, float("inf")], [0.0, 1.0]], "not finite"),
        ([[1.0, "x"], [0.0, 1.0]], "not a number"),
        ("abc", "square list"),
    ],
)
def test_payoff_validation_errors_are_clear(payoff, message):
    with pytest.raises(ValueError, match=message):
        validate_payoff(payoff)
    with pytest.raises(ValueError, match=message):
        MatrixGameConfig(payoff=payoff)


def test_unavailable_actions_validation():
    with pytest.raises(ValueError, match="outside"):
        MatrixGameConfig(unavailable_actions=[[3], []])
    with pytest.raises(ValueError, match="no available action"):
        MatrixGameConfig(unavailable_actions=[[0, 1, 2], []])
    with pytest.raises(ValueError, match="one list per agent"):
        MatrixGameConfig(unavailable_actions=[[0]])


def test_tasks_load_from_yaml_and_build_batched_envs():
    for member in MatrixGameTask:
        task = member.get_from_yaml()
        env = task.get_env_fun(num_envs=4, continuous_actions=False, seed=0, device="cpu")()
        assert env.batch_size == (4,)
        assert len(task.config["payoff"]) == 3
    with pytest.raises(ValueError, match="Unknown config key"):
        MatrixGameTask.NONMONOTONIC.get_task({"payoff": NONMONOTONIC_PAYOFF, "bogus": 1})


def test_custom_payoff_through_the_task():
    task = MatrixGameTask.NONMONOTONIC.get_task({"payoff": [[1.0, 0.0], [0.0, 2.0]]})
    env = task.get_env_fun(num_envs=2, continuous_actions=False, seed=0, device="cpu")()
    td = env.reset()
    td.set(("agents", "action"), torch.tensor([[1, 1], [0, 1]]))
    assert env.step(td)["next", "agents", "reward"][:, 0, 0].tolist() == [2.0, 0.0]
    assert isinstance(td, TensorDict)
