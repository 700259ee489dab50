"""Tests of the highway-env intersection task (custom_envs/intersection.py, spec §5.3 and §7.1)."""

from __future__ import annotations

import csv
import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch

pytest.importorskip(
    "highway_env",
    reason="highway-env is not installed (pip install benchmarl-pow[intersection])",
)

from tensordict import TensorDict  # noqa: E402
from torchrl.envs import SerialEnv  # noqa: E402
from torchrl.envs.utils import check_env_specs  # noqa: E402

import custom_envs.intersection as ix  # noqa: E402
from custom_envs.intersection import (  # noqa: E402
    HighwayIntersectionEnv,
    HighwayTask,
    IntersectionConfig,
    IntersectionEnvFactory,
    IntersectionMetricsCallback,
)

SLOWER, IDLE, FASTER = 0, 1, 2
STRAIGHT = [2, 3, 0, 1]  # destination corner of a car going straight from corner i
FIXED = {"start_positions": [65.0, 65.0, 65.0, 65.0], "destinations": STRAIGHT}


def run_episode(env, policy, max_steps=200):
    """Run one episode with ``policy(t) -> list of 4 actions``; return the stacked step outputs."""
    td = env.reset()
    outs = []
    for t in range(max_steps):
        action = torch.tensor(policy(t), dtype=torch.int64)
        td.set(("agents", "action"), action)
        td = env.step(td)
        outs.append(td["next"].clone())
        if td["next", "done"].item():
            break
        td = td["next"]
    return torch.stack(outs)


def episode_return(traj) -> float:
    return traj["agents", "reward"][:, 0, 0].sum().item()


# ------------------------------------------------------------------------------------ specs
def test_specs_and_shapes():
    env = HighwayIntersectionEnv(seed=0)
    check_env_specs(env, seed=0)
    td = env.reset()
    assert td["agents", "observation"].shape == (4, 30)
    assert td["agents", "observation"].dtype == torch.float32
    assert td["agents", "action_mask"].shape == (4, 3) and td["agents", "action_mask"].all()
    assert td["agents", "action_mask"].dtype == torch.bool
    assert td["state"].shape == (60,) and td["state"].dtype == torch.float32
    for key in ("done", "terminated", "truncated"):
        assert td[key].shape == (1,) and td[key].dtype == torch.bool
    for key in ("collision", "all_arrived", "time_out", "win"):
        assert td["info", key].shape == (1,) and td["info", key].dtype == torch.bool
    action_spec = env.full_action_spec["agents", "action"]
    assert action_spec.shape == (4,) and action_spec.space.n == 3
    assert env.full_reward_spec["agents", "reward"].shape == (4, 1)
    assert env.max_steps == 100


def test_observation_layout_and_state():
    env = HighwayIntersectionEnv(seed=1)
    td = env.reset()
    obs = td["agents", "observation"].numpy().astype(np.float64)
    vehicles = env.sim.controlled_vehicles
    rows = np.array(
        [
            [*v.position, v.speed * np.cos(v.heading), v.speed * np.sin(v.heading), v.heading]
            for v in vehicles
        ]
    )
    for i in range(4):
        np.testing.assert_allclose(obs[i, :5], rows[i], rtol=1e-5, atol=1e-4)
        others = obs[i, 5:20].reshape(3, 5)
        # other rows are relative to row 0, sorted by Euclidean distance
        dist = np.linalg.norm(others[:, :2], axis=1)
        assert np.all(np.diff(dist) >= -1e-4)
        absolute = others + rows[i]
        for row in absolute:
            assert np.min(np.abs(rows - row).sum(1)) < 1e-3
        # route points at 10 m/s on the straight approach: 2, 4, ..., 10 m ahead along the lane
        route = obs[i, 20:30].reshape(5, 2)
        np.testing.assert_allclose(np.linalg.norm(route, axis=1), [2, 4, 6, 8, 10], atol=1e-3)
        heading = np.array([np.cos(rows[i, 4]), np.sin(rows[i, 4])])
        assert np.all(route @ heading > 0)
    state = td["state"].numpy().reshape(4, 15)
    np.testing.assert_allclose(state[:, :5], obs[:, :5])
    np.testing.assert_allclose(state[:, 5:], obs[:, 20:30])


def test_route_points_follow_the_turn():
    """During a left turn the 1-s route point stays about speed x 1 s ahead (never backwards)."""
    config = {"destinations": [1, 2, 3, 0], "start_positions": [65.0, 40.0, 20.0, 5.0]}
    env = HighwayIntersectionEnv(config=config, seed=0)
    traj = run_episode(env, lambda t: [IDLE, SLOWER, SLOWER, SLOWER], max_steps=40)
    for t in range(traj.shape[0]):
        route = traj["agents", "observation"][t, 0, 20:30].reshape(5, 2).numpy()
        norms = np.linalg.norm(route, axis=1)
        assert np.all(np.diff(norms) > 0)
        assert 9.0 < norms[-1] <= 10.01
    assert env.sim.controlled_vehicles[0].lane_index == ("il1", "o1", 0)


# ------------------------------------------------------------------------------------ reward
def test_step_reward_is_minus_one():
    env = HighwayIntersectionEnv(seed=0)
    env.reset()
    td = env.rand_step(env.reset())
    assert torch.all(td["next", "agents", "reward"] == -1.0)
    assert not td["next", "done"].item()


def test_crash_at_full_speed():
    env = HighwayIntersectionEnv(config=FIXED, seed=0)
    traj = run_episode(env, lambda t: [FASTER] * 4)
    last = traj[-1]
    assert traj.shape[0] < 100
    assert last["info", "collision"].item() and not last["info", "win"].item()
    assert last["terminated"].item() and not last["truncated"].item()
    assert torch.all(last["agents", "reward"] == -100.0)
    assert torch.all(traj["agents", "reward"][:-1] == -1.0)
    k = traj.shape[0]
    assert episode_return(traj) == pytest.approx(-(k - 1) - 100)


def test_staggered_speeds_all_arrive():
    env = HighwayIntersectionEnv(config=FIXED, seed=0)
    # cars 0 and 2 cross first (opposite straight lanes do not conflict), 1 and 3 wait
    traj = run_episode(env, lambda t: [FASTER, SLOWER, FASTER, SLOWER] if t < 30 else [FASTER] * 4)
    last = traj[-1]
    k = traj.shape[0]
    assert k < 100
    assert last["info", "all_arrived"].item() and last["info", "win"].item()
    assert not last["info", "collision"].item() and not last["info", "time_out"].item()
    assert last["terminated"].item() and not last["truncated"].item()
    assert torch.all(last["agents", "reward"] == 99.0)
    assert episode_return(traj) == pytest.approx(-(k - 1) + 99)
    assert not traj["done"][:-1].any()


def test_time_out_is_truncation_at_100_steps():
    env = HighwayIntersectionEnv(seed=3)
    traj = run_episode(env, lambda t: [SLOWER] * 4)
    last = traj[-1]
    assert traj.shape[0] == 100
    assert last["truncated"].item() and last["done"].item() and not last["terminated"].item()
    assert last["info", "time_out"].item() and not last["info", "win"].item()
    assert episode_return(traj) == pytest.approx(-100.0)


def test_rewards_and_timing_are_configurable():
    config = dataclasses.asdict(IntersectionConfig())
    config.update(duration=2.0, step_reward=-0.5)
    env = HighwayIntersectionEnv(config=config, seed=0)
    traj = run_episode(env, lambda t: [SLOWER] * 4)
    assert traj.shape[0] == 10
    assert torch.all(traj["agents", "reward"] == -0.5)


# ------------------------------------------------------------------------------------ seeding
def _random_episode(env, seed_actions=0):
    gen = np.random.default_rng(seed_actions)
    return run_episode(env, lambda t: gen.integers(0, 3, 4).tolist())


def test_same_seed_same_episode():
    a = _random_episode(HighwayIntersectionEnv(seed=7))
    b = _random_episode(HighwayIntersectionEnv(seed=7))
    c = _random_episode(HighwayIntersectionEnv(seed=8))
    assert a.shape == b.shape
    assert torch.equal(a["agents", "observation"], b["agents", "observation"])
    assert not torch.equal(a["agents", "observation"][0], c["agents", "observation"][0])
    # set_seed reseeds the next reset
    env = HighwayIntersectionEnv(seed=0)
    env.set_seed(7)
    assert torch.equal(_random_episode(env)["agents", "observation"], a["agents", "observation"])


def test_serial_env_workers_get_different_episodes():
    task = HighwayTask.INTERSECTION.get_from_yaml()
    env_fun = task.get_env_fun(num_envs=2, continuous_actions=False, seed=0, device="cpu")
    env = SerialEnv(2, env_fun)
    try:
        obs = env.reset()["agents", "observation"]
        assert not torch.equal(obs[0], obs[1])
        # explicit TorchRL seeding also separates the workers, reproducibly
        env.set_seed(11)
        first = env.reset()["agents", "observation"]
        env.set_seed(11)
        again = env.reset()["agents", "observation"]
        assert not torch.equal(first[0], first[1])
        assert torch.equal(first, again)
    finally:
        env.close()


@pytest.mark.slow
def test_parallel_env_workers_get_different_episodes():
    """BenchMARL's parallel collection: spawn workers get seeds seed+1, seed+2 (as SerialEnv's)."""
    from torchrl.envs import ParallelEnv

    task = HighwayTask.INTERSECTION.get_from_yaml()
    obs = {}
    for cls in (SerialEnv, ParallelEnv):
        env = cls(2, task.get_env_fun(num_envs=2, continuous_actions=False, seed=0, device="cpu"))
        try:
            obs[cls] = env.reset()["agents", "observation"].clone()
        finally:
            env.close()
    assert not torch.equal(obs[ParallelEnv][0], obs[ParallelEnv][1])
    assert torch.equal(obs[ParallelEnv], obs[SerialEnv])


@pytest.mark.parametrize("n_vehicles", [2, 6])
def test_other_vehicle_counts(n_vehicles):
    env = HighwayIntersectionEnv(config={"n_vehicles": n_vehicles}, seed=0)
    check_env_specs(env, seed=0)
    td = env.reset()
    assert td["agents", "observation"].shape == (n_vehicles, 5 * n_vehicles + 10)
    assert td["state"].shape == (15 * n_vehicles,)


def test_factory_seeds_per_copy():
    factory = IntersectionEnvFactory(config={}, seed=5)
    # in-process calls count up (SerialEnv); pickled copies take the next index (ParallelEnv/spawn)
    assert factory.next_seed() == 5
    copies = [pickle.loads(pickle.dumps(factory)) for _ in range(2)]
    assert [c.next_seed() for c in copies] == [6, 7]
    assert factory.next_seed() == 8
    assert IntersectionEnvFactory(config={}, seed=None).next_seed() is None


# ------------------------------------------------------------------------------------ config
def test_yaml_matches_defaults():
    task = HighwayTask.INTERSECTION.get_from_yaml()
    assert task.config == dataclasses.asdict(IntersectionConfig())
    assert task.env_name() == "highway"
    assert task.max_steps(None) == 100
    assert task.group_map(None) == {"agents": [f"agent_{i}" for i in range(4)]}
    assert task.supports_discrete_actions() and not task.supports_continuous_actions()


@pytest.mark.parametrize(
    "key,value",
    [
        ("n_vehicles", 0),
        ("policy_frequency", 0),
        ("simulation_frequency", 7),
        ("duration", -1.0),
        ("target_speeds", [0.0, 2.0, 5.0]),
        ("destinations", [0, 1, 2, 3]),
        ("start_positions", [10.0]),
    ],
)
def test_config_errors_name_key_and_value(key, value):
    with pytest.raises(ValueError, match=key) as info:
        IntersectionConfig(**{key: value})
    assert repr(value) in str(info.value)


def test_unknown_key_rejected():
    with pytest.raises(ValueError, match="not_a_key"):
        HighwayTask.INTERSECTION.get_task(
            {**dataclasses.asdict(IntersectionConfig()), "not_a_key": 1}
        )


def test_missing_highway_env_gives_install_hint(monkeypatch):
    def fail(name, *args, **kwargs):
        raise ImportError("No module named 'highway_env'")

    monkeypatch.setattr(ix.importlib, "import_module", fail)
    with pytest.raises(ImportError, match=r"benchmarl-pow\[intersection\]"):
        HighwayTask.INTERSECTION.get_from_yaml().get_env_fun(1, False, 0, "cpu")


# ------------------------------------------------------------------------------------ metrics / render
def test_log_info_rates():
    env = HighwayIntersectionEnv(seed=0)
    batch = env.rollout(300, break_when_any_done=False)
    out = HighwayTask.INTERSECTION.associated_class().log_info(batch)
    done = batch["next", "done"].squeeze(-1)
    assert set(out) == {
        "collection/info/win_rate",
        "collection/info/collision_rate",
        "collection/info/time_out_rate",
        "collection/info/all_arrived_rate",
    }
    win = batch["next", "info", "win"][done].float().mean().item()
    assert out["collection/info/win_rate"] == pytest.approx(win)
    total = (
        out["collection/info/collision_rate"]
        + out["collection/info/time_out_rate"]
        + out["collection/info/all_arrived_rate"]
    )
    assert total >= 1.0 - 1e-6  # every ended episode ended for at least one reason
    empty = TensorDict({"next": {"done": torch.zeros(3, 1, dtype=torch.bool)}}, batch_size=[3])
    assert HighwayTask.INTERSECTION.associated_class().log_info(empty) == {}


def test_render_rgb_array():
    env = HighwayIntersectionEnv(seed=0)
    env.reset()
    frame = HighwayTask.INTERSECTION.associated_class().render_callback(None, env, None)
    assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.std() > 0


# ------------------------------------------------------------------------------------ BenchMARL
def _experiment_config(tmp_path, **overrides):
    from benchmarl.experiment import ExperimentConfig

    config = ExperimentConfig.get_from_yaml()
    config.loggers = []
    config.create_json = False
    config.render = False
    config.evaluation = False
    config.sampling_device = config.train_device = config.buffer_device = "cpu"
    config.off_policy_collected_frames_per_batch = 100
    config.off_policy_n_envs_per_worker = 2
    config.off_policy_n_optimizer_steps = 1
    config.off_policy_train_batch_size = 32
    config.off_policy_init_random_frames = 0
    config.max_n_iters = 2
    config.max_n_frames = None
    config.checkpoint_interval = 0
    config.checkpoint_at_end = False
    config.save_folder = str(tmp_path)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_benchmarl_qmix_smoke(tmp_path):
    from benchmarl.algorithms import QmixConfig
    from benchmarl.experiment import Experiment
    from benchmarl.models.mlp import MlpConfig

    experiment = Experiment(
        task=HighwayTask.INTERSECTION.get_from_yaml(),
        algorithm_config=QmixConfig.get_from_yaml(),
        model_config=MlpConfig.get_from_yaml(),
        seed=0,
        config=_experiment_config(tmp_path),
    )
    experiment.run()
    assert experiment.n_iters_performed == 2
    assert experiment.total_frames == 200


def test_benchmarl_evaluation_logs_win_rate(tmp_path):
    """CSV scalars and the evaluation JSON carry the win rate (with IntersectionMetricsCallback)."""
    from benchmarl.algorithms import QmixConfig
    from benchmarl.experiment import Experiment
    from benchmarl.models.mlp import MlpConfig

    config = _experiment_config(
        tmp_path,
        loggers=["csv"],
        create_json=True,
        evaluation=True,
        evaluation_interval=100,
        evaluation_episodes=2,
        max_n_iters=1,
    )
    experiment = Experiment(
        task=HighwayTask.INTERSECTION.get_from_yaml(),
        algorithm_config=QmixConfig.get_from_yaml(),
        model_config=MlpConfig.get_from_yaml(),
        seed=0,
        config=config,
        callbacks=[IntersectionMetricsCallback()],
    )
    experiment.run()
    folder = experiment.folder_name
    data = json.loads(next(folder.glob("*.json")).read_text())
    run = data["highway"]["intersection"]["qmix"]["seed_0"]
    steps = [v for k, v in run.items() if k.startswith("step_")]
    assert steps and all(len(s["win_rate"]) == 2 and len(s["return"]) == 2 for s in steps)
    assert "win_rate" in run["absolute_metrics"]
    scalars = {p.stem for p in folder.rglob("*.csv")}
    assert "eval_info_win_rate" in scalars
    with open(next(p for p in folder.rglob("eval_info_win_rate.csv"))) as f:
        rows = list(csv.reader(f))
    assert rows and 0.0 <= float(rows[-1][-1]) <= 1.0
