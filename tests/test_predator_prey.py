"""Tests of the batched predator-prey (stag hunt) environment and its BenchMARL tasks.

Rules: shared/spec/pow_spec.md section 5.2; constants: section 7.1.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchrl.envs.utils import check_env_specs, step_mdp

from custom_envs.predator_prey import (
    CATCH,
    STAY,
    PredatorPreyClass,
    PredatorPreyConfig,
    PredatorPreyEnv,
    PredatorPreyTask,
    random_available_actions,
)

RIGHT, DOWN, LEFT, UP = 0, 1, 2, 3
MOVES = {RIGHT: (0, 1), DOWN: (1, 0), LEFT: (0, -1), UP: (-1, 0)}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def act(env: PredatorPreyEnv, td, actions) -> torch.Tensor:
    """Step ``env`` from ``td`` with ``actions`` ([n_agents] for every env, or [B, n_agents])."""
    a = torch.as_tensor(actions, dtype=torch.long).expand(env.num_envs, env.n_agents)
    td = td.clone()
    td.set(("agents", "action"), a.clone())
    return env.step(td)["next"]


def obs_index(dr: int, dc: int, ch: int, radius: int = 2) -> int:
    w = 2 * radius + 1
    return ((dr + radius) * w + (dc + radius)) * 3 + ch


def reference_views(env: PredatorPreyEnv) -> dict[str, torch.Tensor]:
    """Observations, state and masks rebuilt from positions with plain Python (spec §5.2)."""
    pos = env.positions()
    b, n, g, r = env.num_envs, env.n_agents, env.grid_size, env.obs_radius
    w = 2 * r + 1
    state = torch.zeros(b, g, g, 3)
    for e in range(b):
        for i in range(n):
            if not pos["frozen"][e, i]:
                rr, cc = pos["agent_pos"][e, i].tolist()
                state[e, rr, cc, 0] = 1
        for j in range(env.n_prey):
            if pos["prey_alive"][e, j]:
                rr, cc = pos["prey_pos"][e, j].tolist()
                state[e, rr, cc, 1] = 1
    padded = torch.nn.functional.pad(state.permute(0, 3, 1, 2), (r, r, r, r)).permute(0, 2, 3, 1)
    obs = torch.zeros(b, n, w * w * 3)
    mask = torch.zeros(b, n, 6, dtype=torch.bool)
    for e in range(b):
        for i in range(n):
            if pos["frozen"][e, i]:
                mask[e, i, STAY] = True
                continue
            rr, cc = pos["agent_pos"][e, i].tolist()
            obs[e, i] = padded[e, rr : rr + w, cc : cc + w].reshape(-1)
            for a, (dr, dc) in MOVES.items():
                mask[e, i, a] = 0 <= rr + dr < g and 0 <= cc + dc < g
            mask[e, i, STAY] = True
            mask[e, i, CATCH] = any(
                0 <= rr + dr < g and 0 <= cc + dc < g and state[e, rr + dr, cc + dc, 1] == 1
                for dr, dc in MOVES.values()
            )
    return {"observation": obs, "state": state.reshape(b, -1), "action_mask": mask}


def assert_matches_reference(env: PredatorPreyEnv, out) -> None:
    ref = reference_views(env)
    assert torch.equal(out["agents", "observation"], ref["observation"])
    assert torch.equal(out["state"], ref["state"])
    assert torch.equal(out["agents", "action_mask"], ref["action_mask"])


# --------------------------------------------------------------------------------------------------
# constants, specs, seeding
# --------------------------------------------------------------------------------------------------
def test_constants_and_shapes():
    env = PredatorPreyEnv(3, seed=0)
    td = env.reset()
    assert env.n_agents == 8 and env.n_prey == 8 and env.episode_limit == 200
    assert td["agents", "observation"].shape == (3, 8, 75)
    assert td["agents", "observation"].dtype == torch.float32
    assert td["agents", "action_mask"].shape == (3, 8, 6)
    assert td["agents", "action_mask"].dtype == torch.bool
    assert td["state"].shape == (3, 300)
    assert env.full_action_spec["agents", "action"].space.n == 6
    assert env.full_action_spec["agents", "action"].shape == (3, 8)
    assert env.full_reward_spec["agents", "reward"].shape == (3, 8, 1)
    for key in ("done", "terminated", "truncated"):
        assert env.full_done_spec[key].shape == (3, 1)
    # reset: 8 agents and 8 stags on distinct cells, everyone sees itself at the window centre
    assert (td["agents", "observation"][..., 36] == 1).all()
    assert (td["state"].view(3, 100, 3).sum(1) == torch.tensor([8.0, 8.0, 0.0])).all()
    assert not td["done"].any()
    assert_matches_reference(env, td)


def test_to_same_device_and_seed_api():
    env = PredatorPreyEnv(2, seed=0)
    assert env.to("cpu") is env
    assert isinstance(env.set_seed(3), int)


def test_check_env_specs():
    check_env_specs(PredatorPreyEnv(4, seed=1, miscapture_punishment=-4.0))
    check_env_specs(PredatorPreyEnv(1, seed=2, obs_radius=1, grid_size=6, n_agents=3, n_prey=2))


def rollout(env: PredatorPreyEnv, steps: int, action_seed: int):
    gen = torch.Generator().manual_seed(action_seed)
    td = env.reset()
    frames = []
    for _ in range(steps):
        td["agents", "action"] = random_available_actions(td["agents", "action_mask"], gen)
        td, td_reset = env.step_and_maybe_reset(td)
        frames.append(td.clone())
        td = td_reset
    return torch.stack(frames, 1)


def test_same_seed_same_trajectory():
    env_a = PredatorPreyEnv(4, seed=123, miscapture_punishment=-4.0, episode_limit=30)
    env_b = PredatorPreyEnv(4, seed=123, miscapture_punishment=-4.0, episode_limit=30)
    a, b = rollout(env_a, 70, 7), rollout(env_b, 70, 7)
    assert (a == b).all()
    # re-seeding the same env reproduces the trajectory too
    env_a.set_seed(123)
    assert (rollout(env_a, 70, 7) == a).all()
    env_c = PredatorPreyEnv(4, seed=124, miscapture_punishment=-4.0, episode_limit=30)
    assert not (rollout(env_c, 70, 7)["next", "state"] == a["next", "state"]).all()


def test_envs_in_a_batch_differ():
    env = PredatorPreyEnv(16, seed=0)
    state = env.reset()["state"]
    assert torch.unique(state, dim=0).shape[0] == 16
    g = torch.Generator().manual_seed(0)
    td = env.reset()
    # identical starts and identical actions: the random orders / prey moves still differ
    td = env.set_positions(env.positions()["agent_pos"][0], env.positions()["prey_pos"][0])
    acts = random_available_actions(td["agents", "action_mask"][:1], g).expand(16, 8)
    for _ in range(3):
        td["agents", "action"] = acts.clone()
        td = step_mdp(env.step(td))
        acts = torch.full((16, 8), STAY)
    assert torch.unique(td["state"], dim=0).shape[0] > 1


def test_partial_reset_only_resets_selected_envs():
    env = PredatorPreyEnv(3, seed=5)
    td = env.reset()
    pos = env.positions()
    # env 2 has a frozen agent and a captured stag, which a reset of env 1 must not touch
    td = env.set_positions(
        pos["agent_pos"][2],
        pos["prey_pos"][2],
        env_ids=[2],
        frozen=[True] + [False] * 7,
        prey_alive=[False] + [True] * 7,
    )
    for _ in range(5):
        td = act(env, td, [STAY] * 8)
    before = env.positions()
    td_in = td.clone()
    td_in.set("_reset", torch.tensor([[False], [True], [False]]))
    out = env.reset(td_in)
    after = env.positions()
    for key in ("agent_pos", "prey_pos", "frozen", "prey_alive"):
        assert torch.equal(before[key][[0, 2]], after[key][[0, 2]])
    assert after["steps"].tolist() == [5, 0, 5]
    assert not torch.equal(before["agent_pos"][1], after["agent_pos"][1])
    assert out["info", "episode_length"].view(-1).tolist() == [5, 0, 5]


def test_reset_distribution_is_uniform_over_cells():
    env = PredatorPreyEnv(2000, seed=3)
    env.reset()
    pos = env.positions()
    cells = pos["agent_pos"][..., 0] * 10 + pos["agent_pos"][..., 1]
    counts = torch.bincount(cells.view(-1), minlength=100).float()
    expected = 2000 * 8 / 100
    assert ((counts - expected).abs() < 5 * expected**0.5).all()
    prey_cells = pos["prey_pos"][..., 0] * 10 + pos["prey_pos"][..., 1]
    both = torch.cat([cells, prey_cells], 1)
    assert all(torch.unique(row).numel() == 16 for row in both)


# --------------------------------------------------------------------------------------------------
# hand-built rules
# --------------------------------------------------------------------------------------------------
def small_env(num_envs=1, n_agents=3, n_prey=2, punishment=-4.0, **kw) -> PredatorPreyEnv:
    return PredatorPreyEnv(
        num_envs,
        seed=0,
        miscapture_punishment=punishment,
        n_agents=n_agents,
        n_prey=n_prey,
        **kw,
    )


def test_capture_freezes_and_removes_catchers():
    env = small_env()
    env.reset()
    # stag at (5,5) between agents 0 (5,4) and 1 (5,6); agent 2 far away; 2nd stag at (9,9)
    td = env.set_positions([[5, 4], [5, 6], [0, 0]], [[5, 5], [9, 9]])
    assert td["agents", "action_mask"][0, 0, CATCH] and td["agents", "action_mask"][0, 1, CATCH]
    assert not td["agents", "action_mask"][0, 2, CATCH]
    out = act(env, td, [CATCH, CATCH, STAY])
    assert out["agents", "reward"].view(-1).tolist() == [10.0, 10.0, 10.0]
    pos = env.positions()
    assert pos["frozen"][0].tolist() == [True, True, False]
    assert pos["prey_alive"][0].tolist() == [False, True]
    assert out["info", "captures"].item() == 1 and out["info", "miscaptures"].item() == 0
    assert out["info", "episode_return"].item() == 10.0
    # frozen agents: all-zero observation, only `stay`, removed from the state
    assert (out["agents", "observation"][0, :2] == 0).all()
    assert out["agents", "action_mask"][0, :2].tolist() == [[False] * 4 + [True, False]] * 2
    state = out["state"].view(10, 10, 3)
    assert state[..., 0].sum() == 1 and state[0, 0, 0] == 1
    assert state[..., 1].sum() == 1 and state[5, 5].sum() == 0
    assert not out["terminated"].item() and not out["done"].item()
    assert_matches_reference(env, out)
    # frozen agents never move again, whatever they are told to do
    out2 = act(env, out, [UP, DOWN, STAY])
    assert env.positions()["agent_pos"][0, :2].tolist() == [[5, 4], [5, 6]]
    assert out2["agents", "reward"].view(-1).tolist() == [0.0] * 3


def test_live_agent_can_enter_cell_of_frozen_agent():
    env = small_env()
    env.reset()
    td = env.set_positions([[5, 4], [5, 6], [4, 4]], [[5, 5], [9, 9]])
    out = act(env, td, [CATCH, CATCH, STAY])
    assert env.positions()["frozen"][0].tolist() == [True, True, False]
    act(env, out, [STAY, STAY, DOWN])
    assert env.positions()["agent_pos"][0, 2].tolist() == [5, 4]


def test_three_catchers_capture_once_and_all_freeze():
    env = small_env(n_agents=4)
    env.reset()
    td = env.set_positions([[5, 4], [5, 6], [4, 5], [0, 0]], [[5, 5], [9, 9]])
    out = act(env, td, [CATCH, CATCH, CATCH, STAY])
    assert out["agents", "reward"][0, 0].item() == 10.0
    assert env.positions()["frozen"][0].tolist() == [True, True, True, False]


def test_miscapture_penalty_once_per_prey():
    env = small_env()
    env.reset()
    # one catcher next to the stag: penalty once, nobody frozen, stag not removed
    td = env.set_positions([[5, 4], [0, 0], [0, 9]], [[5, 5], [9, 9]])
    out = act(env, td, [CATCH, STAY, STAY])
    assert out["agents", "reward"].view(-1).tolist() == [-4.0] * 3
    assert out["info", "miscaptures"].item() == 1 and out["info", "captures"].item() == 0
    assert not env.positions()["frozen"].any() and env.positions()["prey_alive"].all()
    # two stags each with one catcher: the penalty is paid once per stag
    td = env.set_positions([[5, 4], [8, 9], [0, 9]], [[5, 5], [9, 9]])
    out = act(env, td, [CATCH, CATCH, STAY])
    assert out["agents", "reward"][0, 0].item() == -8.0
    assert out["info", "miscaptures"].item() == 2
    # two catchers on one stag and one on the other: +10 and one penalty
    td = env.set_positions([[5, 4], [5, 6], [8, 9]], [[5, 5], [9, 9]])
    out = act(env, td, [CATCH, CATCH, CATCH])
    assert out["agents", "reward"][0, 0].item() == 6.0
    # no penalty in the plain stag hunt, and none for agents that catch next to nothing
    env0 = small_env(punishment=0.0)
    env0.reset()
    td = env0.set_positions([[5, 4], [0, 0], [0, 9]], [[5, 5], [9, 9]])
    assert act(env0, td, [CATCH, CATCH, STAY])["agents", "reward"][0, 0].item() == 0.0
    td = env.set_positions([[5, 3], [0, 0], [0, 9]], [[5, 5], [9, 9]])
    assert act(env, td, [CATCH, CATCH, CATCH])["agents", "reward"][0, 0].item() == 0.0
    # a captured stag is gone: catching next to its old cell is neither a capture nor a penalty
    td = env.set_positions([[5, 4], [5, 6], [0, 9]], [[5, 5], [9, 9]], prey_alive=[False, True])
    out = act(env, td, [CATCH, CATCH, STAY])
    assert out["agents", "reward"][0, 0].item() == 0.0 and not env.positions()["frozen"].any()
    assert out["info", "captures"].item() == 0 and out["info", "miscaptures"].item() == 0


def test_agent_next_to_two_stags_counts_only_until_frozen():
    # stag P1 (5,3) - agent A (5,4) - stag P2 (5,5); B (4,3) is next to P1 only, C (4,5) next to
    # P2 only. Whichever stag acts first is captured by A and its partner; A is then frozen, so
    # the other stag has a single catcher: +10 and one penalty, in every random order.
    env = small_env(num_envs=64, n_agents=3)
    env.reset()
    td = env.set_positions([[5, 4], [4, 3], [4, 5]], [[5, 3], [5, 5]])
    out = act(env, td, [CATCH, CATCH, CATCH])
    assert (out["agents", "reward"] == 6.0).all()
    frozen = env.positions()["frozen"]
    assert frozen[:, 0].all() and (frozen.sum(1) == 2).all()
    first = env.positions()["prey_alive"]
    # both orders happen over 64 envs
    assert (~first[:, 0]).any() and (~first[:, 1]).any()
    assert torch.equal(frozen[:, 1], ~first[:, 0])


def test_blocked_moves():
    env = small_env(num_envs=64, n_agents=4, n_prey=1)
    env.reset()
    # A (2,2) -> right into B (2,3); B moves right into free (2,4): A moves iff B went first
    # C (6,6) -> right into D (6,7); D -> left into C: both always blocked (swap impossible)
    td = env.set_positions([[2, 2], [2, 3], [6, 6], [6, 7]], [[9, 0]])
    act(env, td, [RIGHT, RIGHT, RIGHT, LEFT])
    pos = env.positions()["agent_pos"]
    assert (pos[:, 1] == torch.tensor([2, 4])).all()
    a_moved = (pos[:, 0] == torch.tensor([2, 3])).all(-1)
    a_stayed = (pos[:, 0] == torch.tensor([2, 2])).all(-1)
    assert (a_moved | a_stayed).all() and a_moved.any() and a_stayed.any()
    assert (pos[:, 2] == torch.tensor([6, 6])).all() and (pos[:, 3] == torch.tensor([6, 7])).all()
    # two agents aiming at the same free cell: exactly one gets it
    td = env.set_positions([[4, 4], [4, 6], [0, 0], [0, 9]], [[9, 0]])
    act(env, td, [RIGHT, LEFT, STAY, STAY])
    pos = env.positions()["agent_pos"]
    got = (pos[:, :2] == torch.tensor([4, 5])).all(-1)
    assert (got.sum(1) == 1).all() and got[:, 0].any() and got[:, 1].any()
    # an agent cannot walk into a stag
    td = env.set_positions([[4, 4], [0, 2], [0, 4], [0, 9]], [[4, 5]])
    act(env, td, [RIGHT, STAY, STAY, STAY])
    assert (env.positions()["agent_pos"][:, 0] == torch.tensor([4, 4])).all()


def test_moves_off_the_grid_are_unavailable():
    env = small_env(n_agents=2, n_prey=1)
    env.reset()
    td = env.set_positions([[0, 0], [9, 9]], [[5, 5]])
    mask = td["agents", "action_mask"][0]
    assert mask[0].tolist() == [True, True, False, False, True, False]
    assert mask[1].tolist() == [False, False, True, True, True, False]
    # applying an unavailable move anyway leaves the agent in place
    act(env, td, [LEFT, DOWN])
    assert env.positions()["agent_pos"][0].tolist() == [[0, 0], [9, 9]]
    td = env.set_positions([[0, 5], [5, 0]], [[9, 9]])
    mask = td["agents", "action_mask"][0]
    assert mask[0].tolist() == [True, True, True, False, True, False]
    assert mask[1].tolist() == [True, True, False, True, True, False]


def test_catch_available_only_next_to_a_stag():
    env = small_env(n_agents=3, n_prey=1)
    env.reset()
    td = env.set_positions([[4, 4], [3, 5], [6, 5]], [[4, 5]])  # left of, above, two below
    assert td["agents", "action_mask"][0, :, CATCH].tolist() == [True, True, False]
    td = env.set_positions([[3, 4], [5, 6], [4, 7]], [[4, 5]])  # diagonals, two to the right
    assert not td["agents", "action_mask"][0, :, CATCH].any()


def test_stag_moves_to_a_free_neighbour_or_stays():
    env = small_env(num_envs=200, n_agents=3, n_prey=1)
    env.reset()
    # stag in the corner (0,0) with (0,1) blocked by an agent: it must go to (1,0)
    td = env.set_positions([[0, 1], [5, 5], [7, 7]], [[0, 0]])
    act(env, td, [STAY] * 3)
    assert (env.positions()["prey_pos"][:, 0] == torch.tensor([1, 0])).all()
    # fully boxed in: stays
    td = env.set_positions([[0, 1], [1, 0], [7, 7]], [[0, 0]])
    act(env, td, [STAY] * 3)
    assert (env.positions()["prey_pos"][:, 0] == torch.tensor([0, 0])).all()
    # free in 4 directions: each direction is chosen, none more than chance allows
    td = env.set_positions([[0, 0], [9, 9], [0, 9]], [[5, 5]])
    act(env, td, [STAY] * 3)
    moved = env.positions()["prey_pos"][:, 0] - torch.tensor([5, 5])
    assert (moved.abs().sum(-1) == 1).all()
    counts = torch.unique(moved, dim=0, return_counts=True)[1]
    assert counts.numel() == 4 and (counts > 20).all()


def test_observation_encoding():
    env = small_env(n_agents=3, n_prey=2)
    env.reset()
    td = env.set_positions([[5, 5], [4, 6], [0, 0]], [[7, 3], [5, 9]])
    obs = td["agents", "observation"][0]
    ones = {(i, k) for i, k in (obs == 1).nonzero().tolist()}
    # agent 0 at (5,5): itself at the centre, agent 1 at (-1,+1), stag 0 at (+2,-2), stag 1 is
    # outside the 5x5 window
    assert obs_index(0, 0, 0) == 36
    assert {k for i, k in ones if i == 0} == {36, obs_index(-1, 1, 0), obs_index(2, -2, 1)}
    # agent 1 at (4,6): itself, agent 0 at (+1,-1); stag at (5,9) is 3 columns away
    assert {k for i, k in ones if i == 1} == {36, obs_index(1, -1, 0)}
    # agent 2 in the corner: walls are not observed, only itself
    assert {k for i, k in ones if i == 2} == {36}
    assert_matches_reference(env, td)
    env3 = small_env(n_agents=2, n_prey=1, obs_radius=1)
    env3.reset()
    td = env3.set_positions([[5, 5], [6, 5]], [[4, 4]])
    assert td["agents", "observation"].shape[-1] == 27
    ones = set((td["agents", "observation"][0, 0] == 1).nonzero().view(-1).tolist())
    assert ones == {obs_index(0, 0, 0, 1), obs_index(1, 0, 0, 1), obs_index(-1, -1, 1, 1)}


def test_state_encoding():
    env = small_env(n_agents=2, n_prey=2)
    env.reset()
    td = env.set_positions([[0, 1], [9, 8]], [[3, 7], [9, 9]], prey_alive=[True, False])
    state = td["state"][0]
    assert set(state.nonzero().view(-1).tolist()) == {
        (0 * 10 + 1) * 3 + 0,
        (9 * 10 + 8) * 3 + 0,
        (3 * 10 + 7) * 3 + 1,
    }


def test_termination_and_truncation():
    # every stag captured -> terminated (agents remain)
    env = small_env(n_agents=3, n_prey=1)
    env.reset()
    td = env.set_positions([[5, 4], [5, 6], [0, 0]], [[5, 5]])
    out = act(env, td, [CATCH, CATCH, STAY])
    assert out["terminated"].item() and out["done"].item() and not out["truncated"].item()
    assert not out["info", "episode_limit"].item()
    # every agent frozen with stags left -> terminated
    env = small_env(n_agents=2, n_prey=2)
    env.reset()
    td = env.set_positions([[5, 4], [5, 6]], [[5, 5], [0, 0]])
    out = act(env, td, [CATCH, CATCH])
    assert out["terminated"].item() and env.positions()["prey_alive"][0].tolist() == [False, True]
    # time limit -> truncated, not terminated
    env = small_env(n_agents=2, n_prey=1, episode_limit=200)
    env.reset()
    td = env.set_positions([[0, 0], [9, 9]], [[5, 5]], steps=198)
    out = act(env, td, [STAY, STAY])
    assert not out["done"].item() and out["info", "episode_length"].item() == 199
    out = act(env, out, [STAY, STAY])
    assert out["truncated"].item() and out["done"].item() and not out["terminated"].item()
    assert out["info", "episode_limit"].item() and out["info", "episode_length"].item() == 200
    # a true terminal on the last step is reported as terminated
    td = env.set_positions([[5, 4], [5, 6]], [[5, 5]], steps=199)
    out = act(env, td, [CATCH, CATCH])
    assert out["terminated"].item() and not out["truncated"].item()


def test_max_return_with_eight_agents():
    # four simultaneous pair-captures: 40, all agents frozen, terminated
    env = PredatorPreyEnv(1, seed=0, miscapture_punishment=-5.0)
    env.reset()
    agents = [[0, 0], [0, 2], [2, 0], [2, 2], [4, 0], [4, 2], [6, 0], [6, 2]]
    prey = [[0, 1], [2, 1], [4, 1], [6, 1], [9, 5], [9, 6], [9, 7], [9, 8]]
    td = env.set_positions(agents, prey)
    out = act(env, td, [CATCH] * 8)
    assert out["agents", "reward"][0, 0].item() == 40.0
    assert out["terminated"].item() and env.positions()["frozen"].all()


def test_set_positions_validates():
    env = small_env(n_agents=2, n_prey=1)
    with pytest.raises(ValueError, match="distinct"):
        env.set_positions([[1, 1], [1, 1]], [[5, 5]])
    with pytest.raises(ValueError, match="outside"):
        env.set_positions([[1, 1], [10, 1]], [[5, 5]])
    # a frozen agent may share a cell (it has left the grid)
    env.set_positions([[1, 1], [5, 5]], [[5, 5]], frozen=[False, True])


# --------------------------------------------------------------------------------------------------
# property tests under random play
# --------------------------------------------------------------------------------------------------
def play(env: PredatorPreyEnv, steps: int, seed: int, catch_prob: float) -> None:
    """Random play (biased towards `catch`) with invariant checks at every step."""
    gen = torch.Generator().manual_seed(seed)
    b, n = env.num_envs, env.n_agents
    pen = env.miscapture_punishment
    g = env.grid_size
    td = env.reset()
    prev = env.positions()
    max_return = 10.0 * (n // 2)
    for t in range(steps):
        mask = td["agents", "action_mask"]
        actions = random_available_actions(mask, gen)
        use_catch = mask[..., CATCH] & (torch.rand(b, n, generator=gen) < catch_prob)
        actions = torch.where(use_catch, CATCH, actions)
        td["agents", "action"] = actions
        info_before = td["info"].clone()
        td = env.step(td)
        nxt = td["next"]
        cur = env.positions()
        reward = nxt["agents", "reward"]
        assert (reward == reward[:, :1]).all()
        r = reward[:, 0, 0]
        d_caps = (nxt["info", "captures"] - info_before["captures"]).view(-1)
        d_miss = (nxt["info", "miscaptures"] - info_before["miscaptures"]).view(-1)
        live_before = (~prev["frozen"]).sum(1)
        alive_before = prev["prey_alive"].sum(1)
        assert torch.allclose(r, 10.0 * d_caps + pen * d_miss)
        assert (d_caps >= 0).all() and (d_miss >= 0).all()
        assert (2 * d_caps <= live_before).all() and (d_caps + d_miss <= alive_before).all()
        assert ((r >= pen * alive_before) & (r <= 10.0 * (live_before // 2))).all()
        newly = cur["frozen"] & ~prev["frozen"]
        assert (newly.sum(1) >= 2 * d_caps).all()
        assert (cur["prey_alive"].sum(1) == alive_before - d_caps).all()
        # catchers next to each alive stag before it acted (catching agents do not move)
        catching = (actions == CATCH) & ~prev["frozen"]
        gap = (prev["prey_pos"].unsqueeze(2) - cur["agent_pos"].unsqueeze(1)).abs().sum(-1)
        adjacent = (gap == 1) & catching.unsqueeze(1) & prev["prey_alive"].unsqueeze(2)
        n_adj = adjacent.sum(-1)  # [B, P]
        died = prev["prey_alive"] & ~cur["prey_alive"]
        assert (n_adj[died] >= 2).all()
        assert (d_caps + d_miss <= (n_adj >= 1).sum(1)).all()
        # without an agent next to two stags, nothing depends on the order of the stags
        simple = (adjacent.sum(1) <= 1).all(1)
        assert (d_caps[simple] == (n_adj >= 2).sum(1)[simple]).all()
        assert (d_miss[simple] == (n_adj == 1).sum(1)[simple]).all()
        assert torch.equal(newly[simple], (adjacent & (n_adj >= 2).unsqueeze(-1)).any(1)[simple])
        assert (nxt["info", "episode_return"] <= max_return).all()
        # frozen stays frozen and never moves; dead prey stay dead
        assert (cur["frozen"] >= prev["frozen"]).all()
        assert (cur["prey_alive"] <= prev["prey_alive"]).all()
        assert (cur["agent_pos"][prev["frozen"]] == prev["agent_pos"][prev["frozen"]]).all()
        # moves: one cell in the chosen direction or none; only live agents choosing a move
        delta = cur["agent_pos"] - prev["agent_pos"]
        moved = delta.abs().sum(-1) > 0
        assert (delta.abs().sum(-1) <= 1).all()
        want = torch.tensor([list(MOVES[a]) if a in MOVES else [0, 0] for a in range(6)])
        assert (delta[moved] == want[actions][moved]).all()
        assert not (moved & ((actions >= STAY) | prev["frozen"])).any()
        assert ((cur["prey_pos"] - prev["prey_pos"]).abs().sum(-1) <= 1).all()
        # no two live entities share a cell; everything inside the grid
        for key in ("agent_pos", "prey_pos"):
            assert ((cur[key] >= 0) & (cur[key] < g)).all()
        cells = torch.cat(
            [
                torch.where(
                    cur["frozen"], -1, cur["agent_pos"][..., 0] * g + cur["agent_pos"][..., 1]
                ),
                torch.where(
                    cur["prey_alive"], cur["prey_pos"][..., 0] * g + cur["prey_pos"][..., 1], -1
                ),
            ],
            1,
        )
        for row in cells:
            live_cells = row[row >= 0]
            assert live_cells.unique().numel() == live_cells.numel()
        # flags
        steps_now = nxt["info", "episode_length"].view(-1)
        assert (steps_now <= env.episode_limit).all()
        term = ~cur["prey_alive"].any(1) | cur["frozen"].all(1)
        assert torch.equal(nxt["terminated"].view(-1), term)
        assert torch.equal(nxt["truncated"].view(-1), (steps_now == env.episode_limit) & ~term)
        assert torch.equal(nxt["done"], nxt["terminated"] | nxt["truncated"])
        if t % 7 == 0:
            assert_matches_reference(env, nxt)
        td = step_mdp(td)
        done = nxt["done"].view(-1)
        if done.any():
            td.set("_reset", nxt["done"].clone())
            td = env.reset(td)
            assert (td["info", "episode_length"].view(-1)[done] == 0).all()
        prev = env.positions()


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    catch_prob=st.sampled_from([0.0, 0.5, 0.9]),
    punishment=st.sampled_from([0.0, -4.0, -5.0]),
)
def test_random_play_invariants_default_task(seed, catch_prob, punishment):
    env = PredatorPreyEnv(6, seed=seed, miscapture_punishment=punishment, episode_limit=40)
    play(env, 90, seed, catch_prob)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    grid_size=st.integers(3, 7),
    n_agents=st.integers(1, 5),
    n_prey=st.integers(1, 4),
    obs_radius=st.integers(0, 3),
)
def test_random_play_invariants_other_sizes(seed, grid_size, n_agents, n_prey, obs_radius):
    n_prey = min(n_prey, grid_size * grid_size - n_agents)
    env = PredatorPreyEnv(
        4,
        seed=seed,
        miscapture_punishment=-3.0,
        grid_size=grid_size,
        n_agents=n_agents,
        n_prey=n_prey,
        obs_radius=obs_radius,
        episode_limit=25,
    )
    play(env, 50, seed, 0.7)


def test_wide_window_fallback_matches_reference():
    # radius 5 uses the per-cell observation path instead of the row-code tables
    env = PredatorPreyEnv(2, seed=4, obs_radius=5, grid_size=8, n_agents=3, n_prey=3)
    assert env._row_table is None
    play(env, 20, 4, 0.5)


# --------------------------------------------------------------------------------------------------
# BenchMARL task
# --------------------------------------------------------------------------------------------------
def test_task_presets_load():
    expected = {"STAG_HUNT": 0.0, "PUNISH_4": -4.0, "PUNISH_5": -5.0}
    for member, penalty in expected.items():
        task = PredatorPreyTask[member].get_from_yaml()
        assert isinstance(task, PredatorPreyClass)
        assert task.config == {
            "miscapture_punishment": penalty,
            "grid_size": 10,
            "n_agents": 8,
            "n_prey": 8,
            "obs_radius": 2,
            "episode_limit": 200,
        }
        assert isinstance(task.config["miscapture_punishment"], float)
    assert PredatorPreyTask.env_name() == "predator_prey"
    assert PredatorPreyTask.config_class() is PredatorPreyConfig


def test_task_specs_and_env_fun():
    task = PredatorPreyTask.PUNISH_5.get_from_yaml()
    env = task.get_env_fun(num_envs=3, continuous_actions=False, seed=0, device="cpu")()
    assert env.batch_size == (3,) and env.miscapture_punishment == -5.0
    assert task.supports_discrete_actions() and not task.supports_continuous_actions()
    assert task.max_steps(env) == 200 and task.has_render(env)
    assert task.group_map(env) == {"agents": [f"agent_{i}" for i in range(8)]}
    obs = task.observation_spec(env)
    assert list(obs.keys(True, True)) == [("agents", "observation")]
    assert obs["agents", "observation"].shape == (8, 75)
    mask = task.action_mask_spec(env)
    assert list(mask.keys(True, True)) == [("agents", "action_mask")]
    assert mask["agents", "action_mask"].shape == (8, 6)
    state = task.state_spec(env)
    assert list(state.keys(True, True)) == ["state"] and state["state"].shape == (300,)
    action = task.action_spec(env)
    assert action["agents", "action"].shape == (8,) and action["agents", "action"].space.n == 6
    info = task.info_spec(env)
    assert set(info["info"].keys()) == {
        "episode_return",
        "captures",
        "miscaptures",
        "episode_length",
        "episode_limit",
    }


def bad(**changes):
    config = dict(PredatorPreyTask.PUNISH_4.get_from_yaml().config)
    config.update(changes)
    return config


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"miscapture_punishment": 4.0}, ["miscapture_punishment", "4.0"]),
        ({"miscapture_punishment": "x"}, ["miscapture_punishment", "'x'"]),
        ({"grid_size": 1}, ["grid_size", "1"]),
        ({"grid_size": 10.5}, ["grid_size", "10.5"]),
        ({"n_agents": 0}, ["n_agents", "0"]),
        ({"n_prey": True}, ["n_prey", "True"]),
        ({"obs_radius": -1}, ["obs_radius", "-1"]),
        ({"episode_limit": 0}, ["episode_limit", "0"]),
        ({"n_agents": 60, "n_prey": 41}, ["n_agents", "n_prey", "grid_size"]),
        ({"typo": 1}, ["typo"]),
    ],
)
def test_config_validation(changes, words):
    with pytest.raises(ValueError) as err:
        PredatorPreyTask.PUNISH_4.get_task(config=bad(**changes))
    for word in words:
        assert word in str(err.value)
    if "typo" not in changes:
        with pytest.raises(ValueError):
            PredatorPreyEnv(1, **{k: v for k, v in bad(**changes).items()})


def test_log_info_reports_finished_episodes():
    env = small_env(num_envs=2, n_agents=3, n_prey=1, episode_limit=5)
    env.reset()
    td = env.set_positions([[5, 4], [5, 6], [0, 0]], [[5, 5]])
    td = env.set_positions([[5, 4], [0, 0], [0, 9]], [[5, 5]], env_ids=[1])
    frames = []
    actions = torch.tensor([[CATCH, CATCH, STAY], [CATCH, STAY, STAY]])
    for _ in range(5):
        td["agents", "action"] = actions.clone()
        td, td_next = env.step_and_maybe_reset(td)
        frames.append(td.clone())
        td = td_next
        actions = torch.full((2, 3), STAY)
    batch = torch.stack(frames, 1)
    logs = PredatorPreyClass.log_info(batch)
    # env 0: one capture on step 1 (terminated); env 1: one penalty then time-out after 5 steps;
    # env 0 restarted and did not finish again
    assert logs["collection/info/captures"] == pytest.approx(0.5)
    assert logs["collection/info/miscaptures"] == pytest.approx(0.5)
    assert logs["collection/info/episode_return"] == pytest.approx((10.0 - 4.0) / 2)
    assert logs["collection/info/episode_length"] == pytest.approx(3.0)
    assert logs["collection/info/episode_limit"] == pytest.approx(0.5)


def test_render():
    env = small_env(n_agents=2, n_prey=1)
    env.reset()
    env.set_positions([[0, 0], [9, 9]], [[5, 5]])
    frame = env.render()
    assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8
    assert frame.shape == (160, 160, 3)
    assert tuple(frame[8, 8]) != tuple(frame[8 + 16 * 3, 8])  # agent cell vs empty cell
    assert tuple(frame[5 * 16 + 8, 5 * 16 + 8]) != tuple(frame[8, 8])  # stag vs agent


def test_config_dataclass_is_complete():
    names = [f.name for f in dataclasses.fields(PredatorPreyConfig)]
    assert names == [
        "miscapture_punishment",
        "grid_size",
        "n_agents",
        "n_prey",
        "obs_radius",
        "episode_limit",
    ]


# --------------------------------------------------------------------------------------------------
# BenchMARL smoke test
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["mlp", "gru"])
def test_benchmarl_qmix_smoke(tmp_path, model_name, monkeypatch):
    from benchmarl.algorithms import QmixConfig
    from benchmarl.experiment import Experiment, ExperimentConfig
    from benchmarl.models import GruConfig, MlpConfig

    config = ExperimentConfig.get_from_yaml()
    config.loggers = []
    # BenchMARL only evaluates when it has a logger or writes the json
    config.create_json = model_name == "mlp"
    config.render = model_name == "mlp"
    config.evaluation = model_name == "mlp"
    config.evaluation_interval = 200
    config.evaluation_episodes = 2
    config.off_policy_collected_frames_per_batch = 200
    config.off_policy_n_envs_per_worker = 2
    config.off_policy_n_optimizer_steps = 1
    config.off_policy_train_batch_size = 64
    config.off_policy_memory_size = 1000
    config.max_n_iters = 2
    config.checkpoint_at_end = False
    config.save_folder = str(tmp_path)
    frames = []
    render = PredatorPreyEnv.render

    def counting_render(self, *args, **kwargs):
        frames.append(render(self, *args, **kwargs))
        return frames[-1]

    monkeypatch.setattr(PredatorPreyEnv, "render", counting_render)
    model = MlpConfig.get_from_yaml() if model_name == "mlp" else GruConfig.get_from_yaml()
    model_config = (
        dataclasses.replace(model, num_cells=[16])
        if model_name == "mlp"
        else (dataclasses.replace(model, hidden_size=16, mlp_num_cells=[16]))
    )
    experiment = Experiment(
        task=PredatorPreyTask.PUNISH_4.get_from_yaml(),
        algorithm_config=QmixConfig.get_from_yaml(),
        model_config=model_config,
        critic_model_config=MlpConfig.get_from_yaml(),
        seed=0,
        config=config,
    )
    experiment.run()
    assert experiment.n_iters_performed == 2
    assert experiment.total_frames == 400
    if config.render:  # the evaluation rollout rendered env 0 at every step
        assert len(frames) >= 2 and frames[0].shape == (160, 160, 3)
