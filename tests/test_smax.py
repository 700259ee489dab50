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
