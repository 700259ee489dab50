"""SMAX (JaxMARL) as a batched TorchRL env and BenchMARL task; skipped without the ``smax`` extra.

XLA compiles the reset and step once per config and batch size (several seconds each), so the tests
share one env config and a few batch sizes.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch

from custom_envs.predator_prey import random_available_actions
from custom_envs.smax import SMAX_MAPS, STOP, SmaxTask

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jaxmarl") is None,
    reason='the `smax` extra (jaxmarl) is not installed: pip install ".[smax]"',
)

CONFIG = dict(
    map_name="3s_vs_5z",
    max_steps=100,
    won_battle_bonus=1.0,
    walls_cause_death=True,
    see_enemy_actions=True,
    attack_mode="closest",
)


def make_env(num_envs: int = 8, seed: int = 0, **changes):
    from custom_envs.smax import SmaxEnv

    return SmaxEnv(num_envs, seed=seed, **{**CONFIG, **changes})


def test_every_map_is_registered_and_its_yaml_loads():
    from benchmarl.environments import task_config_registry

    for name in SMAX_MAPS:
        task = task_config_registry[f"smax/{name}"]
        assert task is SmaxTask[name.upper()]
        loaded = task.get_from_yaml()
        assert loaded.config["map_name"] == name
        assert loaded.env_name() == "smax"


def test_specs_and_layout():
    from torchrl.envs.utils import check_env_specs

    env = make_env()
    check_env_specs(env)
    td = env.reset()
    assert (env.n_agents, env.n_enemies, env.n_actions) == (3, 5, 10)
    assert td["agents", "observation"].shape == (8, 3, env.obs_dim)
    assert td["agents", "action_mask"].shape == (8, 3, 10)
    assert td["state"].shape == (8, env.state_dim)
    for key in ("battle_won", "episode_limit", "dead_allies", "dead_enemies"):
        assert td["info", key].shape == (8,)


def test_random_battles_masks_termination_and_win_flags():
    env = make_env(num_envs=8, seed=1)
    gen = torch.Generator().manual_seed(0)
    td = env.reset()
    masks, ended, saw_dead = [], 0, False
    for _ in range(150):
        mask = td["agents", "action_mask"]
        masks.append(mask.clone())
        # every unit can always stop; a dead one can only stop
        assert mask[..., STOP].all()
        single = mask.sum(-1) == 1
        saw_dead |= bool(single.any())
        td["agents", "action"] = random_available_actions(mask, gen)
        td, nxt = env.step_and_maybe_reset(td)
        done = td["next", "done"].squeeze(-1)
        info = td["next", "info"]
        term = td["next", "terminated"].squeeze(-1)
        trunc = td["next", "truncated"].squeeze(-1)
        assert torch.equal(done, term | trunc) and not (term & trunc).any()
        assert torch.equal(info["episode_limit"], trunc)
        assert not (info["battle_won"] & ~term).any()  # a win ends the battle
        assert ((info["dead_allies"] == 3) | (info["dead_enemies"] == 5))[term].all()
        ended += int(done.sum())
        td = nxt
    assert ended > 0 and saw_dead
    assert not all(torch.equal(masks[0], m) for m in masks[1:])


def test_same_seed_same_battles_and_partial_reset():
    def play(seed: int) -> torch.Tensor:
        env, gen = make_env(seed=seed), torch.Generator().manual_seed(3)
        td, states = env.reset(), []
        for _ in range(5):
            td["agents", "action"] = random_available_actions(td["agents", "action_mask"], gen)
            td, td_next = env.step_and_maybe_reset(td)
            states.append(td["next", "state"])
            td = td_next
        return torch.stack(states)

    assert torch.equal(play(4), play(4))
    assert not torch.equal(play(4), play(5))

    env = make_env()
    td = env.reset()
    td["agents", "action"] = torch.full((8, 3), STOP)
    out = env.step(td)["next"]
    before = out["state"].clone()
    out["_reset"] = torch.zeros(8, 1, dtype=torch.bool)
    out["_reset"][2] = True
    after = env.reset(out)["state"]
    keep = torch.arange(8) != 2
    assert torch.equal(after[keep], before[keep]) and not torch.equal(after[2], before[2])


def _count_reset_calls(env) -> list[int]:
    """Count the env's calls of the jitted reset (the fused partial resets make none)."""
    import dataclasses

    calls, reset_fn = [0], env._fns.reset_fn

    def counted(*args):
        calls[0] += 1
        return reset_fn(*args)

    env._fns = dataclasses.replace(env._fns, reset_fn=counted)
    return calls


def test_fused_reset_equals_unfused_path():
    """The partial reset fused into the step gives what the separate reset gives, bit for bit:
    same seed and actions, same data (steps, resets, battles stepped on after their end)."""
    fused, unfused = make_env(seed=6), make_env(seed=6, fuse_reset=False)
    fused_calls, unfused_calls = _count_reset_calls(fused), _count_reset_calls(unfused)
    gen = torch.Generator().manual_seed(1)
    tds = [fused.reset(), unfused.reset()]
    assert torch.equal(tds[0]["agents", "observation"], tds[1]["agents", "observation"])
    partial_resets, merged_checked = 0, False
    for t in range(160):
        action = random_available_actions(tds[0]["agents", "action_mask"], gen)
        if 100 <= t < 105:  # step on without resetting the finished battles, then reset them
            for i, env in enumerate((fused, unfused)):
                tds[i]["agents", "action"] = action.clone()
                tds[i] = env.step(tds[i])
            assert (tds[0] == tds[1]).all()
            for i in range(2):
                tds[i] = tds[i]["next"].clone()
                tds[i]["_reset"] = tds[i]["done"].clone()
            if t == 104 and tds[0]["_reset"].any():
                tds = [fused.reset(tds[0]), unfused.reset(tds[1])]
            continue
        outs = []
        for i, env in enumerate((fused, unfused)):
            tds[i]["agents", "action"] = action.clone()
            out, tds[i] = env.step_and_maybe_reset(tds[i])
            outs.append(out)
        assert (outs[0] == outs[1]).all() and (tds[0] == tds[1]).all()
        partial_resets += bool(outs[0]["next", "done"].any())
        if partial_resets == 5 and not merged_checked and fused._jx.apply:
            # a reset of other battles right after a fused one (which the next call puts in)
            merged_checked = True
            for i, env in enumerate((fused, unfused)):
                tds[i]["_reset"] = torch.arange(8).unsqueeze(-1) % 3 == 0
                tds[i] = env.reset(tds[i])
            assert (tds[0] == tds[1]).all()
    assert partial_resets > 10 and merged_checked
    # the fused env re-drew every finished battle inside its steps, except after t = 100..104
    assert unfused_calls[0] >= partial_resets + 2
    assert fused_calls[0] <= 3


def test_partial_reset_redraws_as_a_full_reset_of_the_same_key():
    """A battle re-drawn alone is the battle a full reset draws from the same key (the resets
    re-draw in passes of a fixed vmap width; 16 battles: 2 passes)."""
    full = make_env(num_envs=16, seed=11).reset()
    env = make_env(num_envs=16, seed=12)
    td = env.reset()
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        td["agents", "action"] = random_available_actions(td["agents", "action_mask"], gen)
        td = env.step(td)["next"]
    env.set_seed(11)  # the carried key, as a fresh env seeded 11 starts
    where = torch.zeros(16, 1, dtype=torch.bool)
    where[[0, 5, 12]] = True
    td["_reset"] = where
    out = env.reset(td)
    rows = where.squeeze(-1)
    for key in (("agents", "observation"), ("agents", "action_mask"), "state"):
        assert torch.equal(out[key][rows], full[key][rows]), key
    env.set_seed(11)
    again = env.reset()  # a full reset from the same key: the same battles as the fresh env
    assert (again == full).all()


def test_step_is_jaxmarls_step_env():
    """The step (the enemies' observations carried from the previous output, not recomputed)
    gives JaxMARL's ``HeuristicEnemySMAX.step_env`` state, observations, reward and done."""
    import jax
    import numpy as np
    from torchrl.envs.utils import step_mdp

    env = make_env(seed=9)
    jaxmarl_env, read_row = env._fns.env, env._fns.read_row
    agents, enemies = jaxmarl_env.agents, jaxmarl_env.enemy_agents

    @jax.jit
    def reference(key, state, action):
        def one(key, state, action):
            obs, state, reward, done, _ = jaxmarl_env.step_env(
                key, state, {a: action[i] for i, a in enumerate(agents)}
            )
            unit_obs = jaxmarl_env._env.get_obs_unit_list(state.state)
            return (
                state,
                jax.numpy.stack([obs[a] for a in agents]),
                jax.numpy.stack([unit_obs[a] for a in enemies]),
                reward[agents[0]],
                done["__all__"],
            )

        _, sub = jax.random.split(key)  # as the env's step splits its key
        return jax.vmap(one)(jax.random.split(sub, action.shape[0]), state, action)

    gen = torch.Generator().manual_seed(4)
    td, ended = env.reset(), 0
    for _ in range(60):
        action = random_available_actions(td["agents", "action_mask"], gen)
        td["agents", "action"] = action
        env._merge()  # put a fused partial reset that TorchRL took into the carried row
        ref_state, ref_obs, ref_eobs, ref_reward, ref_done = reference(
            *read_row(env._jx.row, 8)[:2], jax.numpy.asarray(action.numpy(), dtype="int32")
        )
        td = env.step(td)
        _, state, eobs = read_row(env._jx.row, 8)
        for ref, ours in zip(jax.tree.leaves(ref_state), jax.tree.leaves(state)):
            assert np.array_equal(np.asarray(ref), np.asarray(ours))
        assert np.array_equal(np.asarray(ref_eobs), np.asarray(eobs))
        nxt = td["next"]
        assert np.array_equal(np.asarray(ref_obs), nxt["agents", "observation"].numpy())
        assert np.array_equal(np.asarray(ref_reward), nxt["reward"].squeeze(-1).numpy())
        assert np.array_equal(np.asarray(ref_done), nxt["done"].squeeze(-1).numpy())
        ended += int(nxt["done"].sum())
        td = env.maybe_reset(step_mdp(td))
    assert ended > 0


def _scalar(folder: str, name: str) -> list[float]:
    files = list(Path(folder).rglob(f"scalars/{name}.csv"))
    assert files, f"{name} was not logged"
    with open(files[0]) as f:
        return [float(row[1]) for row in csv.reader(f)]


@pytest.mark.parametrize("algorithm", ["pow_qmix", "qmix_lambda"])
def test_training_smoke_logs_win_rate(algorithm, tmp_path):
    from benchmarl_pow.compose import compose_experiment

    experiment = compose_experiment(
        [
            f"algorithm={algorithm}",
            "task=smax/3s_vs_5z",
            "experiment=smoke",
            # 8 envs x 100 steps: every env ends at least one battle per iteration
            "experiment.off_policy_n_envs_per_worker=8",
            "experiment.off_policy_collected_frames_per_batch=800",
            "experiment.evaluation_interval=800",
            "experiment.evaluation_episodes=8",
        ],
        save_folder=tmp_path,
    )
    experiment.run()
    assert experiment.n_iters_performed == 2
    win_rate = _scalar(experiment.folder_name, "collection_info_win_rate")
    assert len(win_rate) == 2 and all(0.0 <= v <= 1.0 for v in win_rate)
    if algorithm == "pow_qmix":
        assert experiment.losses["agents"].rule.threshold == 0.05
