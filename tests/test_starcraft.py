"""The StarCraft path: preflight, the paper's regime for SMAC-family tasks, the fake SMACv2 env
driving every algorithm, and (only where StarCraft II is installed) the real tasks."""

from __future__ import annotations

import csv
import importlib
import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torchrl.envs.utils import check_env_specs

from benchmarl_pow import starcraft
from benchmarl_pow.algorithms import ALGORITHMS
from benchmarl_pow.algorithms.common import task_preset
from benchmarl_pow.compose import compose_config, compose_experiment
from custom_envs import FakeSmacv2Env
from custom_envs.fake_smacv2 import ATTACK_OFFSET, NOOP, STOP, FakeSmacv2Class
from custom_envs.predator_prey import random_available_actions

FAKE_TASK = "fake_smacv2/battle_5_vs_5"
FAKE_CONFIG = dict(
    n_agents=5,
    n_enemies=5,
    map_size=6,
    attack_range=2,
    episode_limit=20,
    agent_damage=0.5,
    enemy_damage=0.25,
    enemy_hit_prob=0.3,
)
#: every algorithm of the project, and BenchMARL's own QMIX and VDN
ALL_ALGORITHMS = [*ALGORITHMS, "qmix", "vdn"]


# --------------------------------------------------------------------------------------------------
# Preflight
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def no_starcraft(tmp_path, monkeypatch):
    """Neither the smacv2 package nor the game: SC2PATH is an empty folder."""
    monkeypatch.setenv("SC2PATH", str(tmp_path / "sc2"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        starcraft.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "smacv2" else real_find_spec(name, *a),
    )


def test_preflight_message_names_what_is_missing_and_what_to_do(no_starcraft):
    message = starcraft.starcraft_problem("smacv2/protoss_5_vs_5")
    assert message is not None
    for words in (
        "smacv2 Python package",
        "StarCraft II",
        "$SC2PATH",
        "pip install git+https://github.com/oxwhirl/smacv2",
        "4.10",
        "~/StarCraftII",
        "smax/3s_vs_5z",
    ):
        assert words in message, words
    assert len(message.splitlines()) <= 6
    assert starcraft.starcraft_problem("smac/3s_vs_5z") is not None


def test_preflight_names_missing_maps_once_the_game_is_there(tmp_path, monkeypatch):
    (tmp_path / "Versions").mkdir()
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    monkeypatch.setattr(starcraft, "smacv2_installed", lambda: True)
    message = starcraft.starcraft_problem("smac/3s_vs_5z")
    assert "SMAC maps" in message and "SMAC_Maps.zip" in message
    assert "pip install git+" not in message and "4.10" not in message


def test_preflight_passes_when_package_and_game_exist(tmp_path, monkeypatch):
    (tmp_path / "Versions").mkdir()
    (tmp_path / "Maps" / "SMAC_Maps").mkdir(parents=True)
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    monkeypatch.setattr(starcraft, "smacv2_installed", lambda: True)
    assert starcraft.starcraft_problem("smacv2/zerg_5_vs_5") is None
    real_import = importlib.import_module
    monkeypatch.setattr(
        starcraft.importlib,
        "import_module",
        lambda name, *a: object() if name == "smacv2" else real_import(name, *a),
    )
    assert starcraft.starcraft_available() == (True, "")


def test_preflight_only_the_game_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    monkeypatch.setattr(starcraft, "smacv2_installed", lambda: True)
    message = starcraft.starcraft_problem("smacv2/zerg_5_vs_5")
    assert "StarCraft II game" in message and "pip install git+" not in message


@pytest.mark.parametrize(
    "task", ["vmas/balance", "matrix_game/nonmonotonic", "smax/3s_vs_5z", FAKE_TASK]
)
def test_preflight_ignores_starcraft_free_tasks(task, no_starcraft):
    assert starcraft.starcraft_problem(task) is None


def test_prepare_cli_exits_with_the_message(no_starcraft, capsys):
    with pytest.raises(SystemExit) as stop:
        starcraft.prepare_cli(["algorithm=pow_qmix", "task=smacv2/protoss_5_vs_5"])
    assert stop.value.code == 1
    assert "needs StarCraft II" in capsys.readouterr().err
    # Hydra's information flags build nothing, so they pass
    assert starcraft.prepare_cli(["--cfg", "job", "task=smacv2/protoss_5_vs_5"])


def test_cli_stops_before_building_anything(run_cli, tmp_path, monkeypatch):
    if starcraft.smacv2_installed():
        pytest.skip("the smacv2 package is installed here; the preflight covers a missing game")
    monkeypatch.setenv("SC2PATH", str(tmp_path / "no_sc2"))
    proc = run_cli("algorithm=pow_qmix", "task=smacv2/protoss_5_vs_5", timeout=120)
    assert proc.returncode == 1
    assert "needs StarCraft II" in proc.stderr and "smax/" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Loaded config" not in proc.stdout and "experiment:" not in proc.stdout
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


# --------------------------------------------------------------------------------------------------
# Regime
# --------------------------------------------------------------------------------------------------
def test_regime_added_for_smac_family_only_without_experiment():
    base = ["algorithm=pow_qmix", "task=smacv2/protoss_5_vs_5"]
    assert starcraft.regime_overrides(base) == [
        "experiment=pymarl2",
        "model=rnn_agent",
        "experiment.max_n_frames=10050000",
        "experiment.evaluation_episodes=32",
        "experiment.checkpoint_interval=200000",
    ]
    assert starcraft.regime_overrides([*base, "experiment=smoke"]) == []
    assert "model=rnn_agent" not in starcraft.regime_overrides([*base, "model=layers/gru"])
    kept = starcraft.regime_overrides([*base, "experiment.max_n_frames=100"])
    assert not any(o.startswith("experiment.max_n_frames") for o in kept)
    assert starcraft.regime_overrides(["algorithm=qmix", "task=vmas/balance"]) == []
    assert starcraft.regime_overrides(["task=smax/3s_vs_5z,smac/2s3z"])[0] == "experiment=pymarl2"
    assert starcraft.regime_overrides(["task=smax/3s_vs_5z,vmas/balance"]) == []


@pytest.mark.parametrize("race", ["protoss", "terran", "zerg"])
def test_smacv2_headline_config_is_the_papers(race):
    overrides = ["algorithm=pow_qmix", f"task=smacv2/{race}_5_vs_5"]
    cfg = compose_config(overrides + starcraft.regime_overrides(overrides))
    task = cfg.task
    assert task.map_name == f"10gen_{race}"
    cap = task.capability_config
    assert (cap.n_units, cap.n_enemies) == (5, 5)
    assert cap.team_gen.dist_type == "weighted_teams"
    assert sorted(cap.team_gen.weights) == [0.1, 0.45, 0.45]
    exception = {"protoss": "colossus", "terran": "medivac", "zerg": "baneling"}[race]
    assert list(cap.team_gen.exception_unit_types) == [exception]
    assert cap.team_gen.unit_types[cap.team_gen.weights.index(0.1)] == exception
    assert cap.start_positions.dist_type == "surrounded_and_reflect"
    assert cap.start_positions.p == 0.5
    assert task.conic_fov is False and task.obs_own_pos is True
    assert task.difficulty == "7" and task.reward_win == 200
    # the paper's regime (pymarl2 preset) and budget
    assert cfg.experiment.lr == pytest.approx(1e-3)
    assert cfg.experiment.exploration_eps_end == pytest.approx(0.05)
    assert cfg.experiment.exploration_anneal_frames == 500_000
    assert cfg.experiment.max_n_frames == 10_050_000
    assert cfg.experiment.evaluation_episodes == 32
    assert cfg.model.name == "rnn_agent"
    assert cfg.algorithm.lmbda == pytest.approx(0.6)


@pytest.mark.parametrize(
    "name", ["3s_vs_5z", "2s3z", "corridor", "mmm2", "6h_vs_8z", "3s5z_vs_3s6z"]
)
def test_smac_v1_maps_are_tasks_with_the_papers_settings(name):
    from benchmarl.environments import task_config_registry

    task = task_config_registry[f"smac/{name}"].get_from_yaml()
    assert task.env_name() == "smac"
    assert task.config["map_name"].lower() == name
    expected = dict(
        difficulty="7",
        step_mul=8,
        reward_win=200,
        reward_only_positive=True,
        reward_scale_rate=20,
        obs_last_action=False,
        state_last_action=True,
    )
    assert {k: task.config[k] for k in expected} == expected
    assert callable(task.get_env_fun(2, False, 0, "cpu"))  # builds nothing before it is called
    overrides = ["algorithm=qmix_lambda", f"task=smac/{name}"]
    cfg = compose_config(overrides + starcraft.regime_overrides(overrides))
    assert cfg.experiment.max_n_frames == 10_050_000 and cfg.model.name == "rnn_agent"


class _TorchrlStyleTimeouts(FakeSmacv2Env):
    """The fake battle with TorchRL's SMACv2Env done keys: no ``truncated``, and ``terminated``
    equal to ``done`` also at time-outs."""

    def _make_specs(self) -> None:
        super()._make_specs()
        del self.full_done_spec["truncated"]

    def _step(self, tensordict):
        out = super()._step(tensordict)
        del out["truncated"]
        out["terminated"] = out["done"].clone()
        return out


def test_episode_limit_truncation_bootstraps_time_outs():
    from torchrl.envs import TransformedEnv

    from custom_envs.smac import EpisodeLimitTruncation, PaperSmacv2Class, SmacClass

    base = _TorchrlStyleTimeouts(4, seed=0, **{**FAKE_CONFIG, "episode_limit": 3})
    env = TransformedEnv(base, EpisodeLimitTruncation())
    assert set(env.full_done_spec.keys()) == {"done", "terminated", "truncated"}
    td = env.reset()
    assert not td["truncated"].any()
    for _ in range(3):
        td["agents", "action"] = torch.full((4, 5), STOP)
        td = env.step(td)
        nxt = td["next"]
        td = nxt
    limit = nxt["info", "episode_limit"]
    assert limit.any()
    assert torch.equal(nxt["truncated"].squeeze(-1), limit)
    assert not (nxt["terminated"].squeeze(-1) & limit).any()
    assert torch.equal(nxt["done"], nxt["terminated"] | nxt["truncated"])
    for task_class in (PaperSmacv2Class, SmacClass):
        transforms = task_class.get_env_transforms(None, base)
        assert [type(t) for t in transforms] == [EpisodeLimitTruncation]


def test_training_through_the_time_out_transform(tmp_path, monkeypatch):
    """The SMAC task classes' transform inside a BenchMARL experiment (on the fake battle with
    TorchRL-style time-outs, since the real game is absent)."""
    from custom_envs.smac import EpisodeLimitTruncation

    def env_fun(self, num_envs, continuous_actions, seed, device):
        config = {**self.config, "episode_limit": 8}
        return lambda: _TorchrlStyleTimeouts(num_envs, seed=seed, device=device, **config)

    monkeypatch.setattr(FakeSmacv2Class, "get_env_fun", env_fun)
    monkeypatch.setattr(
        FakeSmacv2Class, "get_env_transforms", lambda self, env: [EpisodeLimitTruncation()]
    )
    monkeypatch.setattr(FakeSmacv2Class, "max_steps", lambda self, env: 8)
    experiment = compose_experiment(
        [
            "algorithm=pow_qmix",
            f"task={FAKE_TASK}",
            "experiment=smoke",
            "experiment.off_policy_collected_frames_per_batch=40",
            "experiment.evaluation_interval=40",
        ],
        save_folder=tmp_path,
    )
    experiment.run()
    assert experiment.n_iters_performed == 2
    stored = experiment.replay_buffers["agents"][:]
    truncated = stored.get(("next", "truncated"))
    assert truncated.any()
    assert not (stored.get(("next", "terminated")) & truncated).any()


def test_threshold_presets_of_the_smac_family():
    for env in ("smacv2", "smac", "smax"):
        assert task_preset(env, "threshold", None) == 0.05
    assert task_preset("smacv2", "threshold", 0.3) == 0.3


# --------------------------------------------------------------------------------------------------
# Fake SMACv2 environment
# --------------------------------------------------------------------------------------------------
def make_env(num_envs: int = 4, seed: int = 0, **changes) -> FakeSmacv2Env:
    return FakeSmacv2Env(num_envs, seed=seed, **{**FAKE_CONFIG, **changes})


def test_fake_env_specs_match_smacv2_layout():
    env = make_env()
    check_env_specs(env)
    td = env.reset()
    assert td["agents", "observation"].shape == (4, 5, env.obs_dim)
    assert td["agents", "action_mask"].shape == (4, 5, ATTACK_OFFSET + 5)
    assert td["state"].shape == (4, env.state_dim)
    for key in ("battle_won", "episode_limit", "dead_allies", "dead_enemies"):
        assert td["info", key].shape == (4,)
    assert set(env.full_reward_spec.keys()) == {"reward"}  # team reward at the root
    assert env.full_done_spec["done"].shape == (4, 1)


def test_fake_env_masks_change_dead_agents_noop_only_and_battles_end():
    env = make_env(num_envs=16, seed=1)
    td = env.reset()
    masks, saw_dead, won, lost, limit = [], False, 0, 0, 0
    gen = torch.Generator().manual_seed(0)
    for _ in range(120):
        mask = td["agents", "action_mask"]
        masks.append(mask.clone())
        dead = td["agents", "observation"].abs().sum(-1) == 0
        # a dead agent can only no-op; a live one never can, and can always stop
        assert (mask[dead][:, NOOP]).all() and (mask[dead].sum(-1) == 1).all()
        assert not mask[~dead][:, NOOP].any() and mask[~dead][:, STOP].all()
        saw_dead |= bool(dead.any())
        td["agents", "action"] = random_available_actions(mask, gen)
        td, nxt = env.step_and_maybe_reset(td)
        done = td["next", "done"].squeeze(-1)
        info = td["next", "info"]
        won += int(info["battle_won"][done].sum())
        limit += int(info["episode_limit"][done].sum())
        lost += int((done & ~info["battle_won"] & ~info["episode_limit"]).sum())
        # early termination is terminated, time-out truncated
        assert torch.equal(td["next", "terminated"].squeeze(-1), done & ~info["episode_limit"])
        td = nxt
    assert saw_dead and lost > 0 and won + limit > 0
    assert not all(torch.equal(masks[0], m) for m in masks[1:])  # time-varying masks


def test_fake_env_refuses_masked_actions_and_resets_partially():
    env = make_env(num_envs=3)
    td = env.reset()
    td["agents", "action"] = torch.zeros(3, 5, dtype=torch.long)  # no-op: masked for live agents
    with pytest.raises(ValueError, match="cannot perform action 0"):
        env.step(td)
    td["agents", "action"] = torch.full((3, 5), STOP)
    out = env.step(td)["next"]
    state = out["state"].clone()
    out["_reset"] = torch.tensor([[True], [False], [False]])
    out = env.reset(out)
    assert torch.equal(out["state"][1:], state[1:])
    assert env._steps.tolist() == [0, 1, 1]


def test_fake_env_same_seed_same_battles():
    def play(seed):
        env, gen = make_env(seed=seed), torch.Generator().manual_seed(3)
        td, states = env.reset(), []
        for _ in range(30):
            td["agents", "action"] = random_available_actions(td["agents", "action_mask"], gen)
            td, td_next = env.step_and_maybe_reset(td)
            states.append(td["next", "state"])
            td = td_next
        return torch.stack(states)

    assert torch.equal(play(5), play(5))
    assert not torch.equal(play(5), play(6))


def test_fake_log_info_win_rate():
    env = make_env(num_envs=2)
    td = env.reset()
    td["agents", "action"] = torch.full((2, 5), STOP)
    td = env.step(td)
    td["next", "done"] = torch.tensor([[True], [True]])
    td["next", "info", "battle_won"] = torch.tensor([True, False])
    out = FakeSmacv2Class.log_info(td.unsqueeze(0))
    assert out["collection/info/win_rate"] == 0.5
    assert out["collection/info/episode_limit_rate"] == 0.0


# --------------------------------------------------------------------------------------------------
# Every algorithm on the fake SMACv2 task
# --------------------------------------------------------------------------------------------------
def _scalar(folder: str, name: str) -> list[float]:
    files = list(Path(folder).rglob(f"scalars/{name}.csv"))
    assert files, f"{name} was not logged"
    with open(files[0]) as f:
        return [float(row[1]) for row in csv.reader(f)]


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_every_algorithm_on_fake_smacv2(algorithm, tmp_path, monkeypatch):
    """Two smoke iterations; the env raises on any masked action (as SMAC does), so a finished
    run means no masked action was chosen, in collection or evaluation."""
    chosen = []
    original_step = FakeSmacv2Env._step

    def checked_step(self, tensordict):
        action = tensordict.get(("agents", "action"))
        chosen.append(self.action_mask().gather(-1, action.unsqueeze(-1)).all().item())
        return original_step(self, tensordict)

    monkeypatch.setattr(FakeSmacv2Env, "_step", checked_step)
    experiment = compose_experiment(
        [
            f"algorithm={algorithm}",
            f"task={FAKE_TASK}",
            "experiment=smoke",
            # 20 steps per env and iteration = the episode limit: every env ends an episode
            "experiment.off_policy_collected_frames_per_batch=40",
            "experiment.evaluation_interval=40",
        ],
        save_folder=tmp_path,
    )
    experiment.run()
    assert experiment.n_iters_performed == 2
    assert chosen and all(chosen)
    win_rate = _scalar(experiment.folder_name, "collection_info_win_rate")
    assert len(win_rate) == 2 and all(0.0 <= v <= 1.0 for v in win_rate)
    returns = _scalar(experiment.folder_name, "collection_reward_episode_reward_mean")
    assert returns and all(math.isfinite(v) for v in returns)
    eval_win_rate = _scalar(experiment.folder_name, "eval_info_win_rate")
    assert eval_win_rate and all(0.0 <= v <= 1.0 for v in eval_win_rate)
    # the console line of every evaluation carries the same win rate
    lines = (Path(experiment.folder_name) / "evaluations.log").read_text().splitlines()
    assert [float(line.split("win rate ")[1].split()[0]) for line in lines] == pytest.approx(
        eval_win_rate, abs=0.005
    )
    if algorithm.startswith("pow"):
        assert experiment.losses["agents"].rule.threshold == 0.05


def test_pow_qmix_with_the_papers_agent_network_on_fake_smacv2(tmp_path):
    experiment = compose_experiment(
        [
            "algorithm=pow_qmix",
            f"task={FAKE_TASK}",
            "experiment=smoke",
            "model=rnn_agent",
            "experiment.off_policy_collected_frames_per_batch=40",
            "experiment.evaluation_interval=40",
        ],
        save_folder=tmp_path,
    )
    experiment.run()
    assert experiment.n_iters_performed == 2


# --------------------------------------------------------------------------------------------------
# The real game (skipped unless installed)
# --------------------------------------------------------------------------------------------------
_AVAILABLE, _WHY_NOT = starcraft.starcraft_available()


@pytest.mark.skipif(not _AVAILABLE, reason=f"StarCraft II unavailable: {_WHY_NOT}")
@pytest.mark.parametrize("task", ["smacv2/protoss_5_vs_5", "smac/3s_vs_5z"])
@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_real_starcraft_smoke(algorithm, task, tmp_path):
    experiment = compose_experiment(
        [f"algorithm={algorithm}", f"task={task}", "experiment=smoke"],
        save_folder=tmp_path,
    )
    experiment.run()
    assert experiment.n_iters_performed == 2
