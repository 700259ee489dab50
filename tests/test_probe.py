"""The predator-prey mechanism probe (benchmarl_pow/probe.py) on freshly built experiments."""

from __future__ import annotations

import json

import pytest

from benchmarl_pow.compose import compose_experiment
from benchmarl_pow.probe import (
    PROBE_JSONL,
    PredatorPreyProbe,
    probe_scenes,
    probe_values,
    read_probe,
)
from custom_envs.predator_prey import CATCH, PredatorPreyEnv

CONFIG = dict(
    miscapture_punishment=-4.0, grid_size=10, n_agents=8, n_prey=8, obs_radius=2, episode_limit=200
)


def test_scenes_isolate_the_stag() -> None:
    env = PredatorPreyEnv(num_envs=1, seed=0, **CONFIG)
    pair, lone = probe_scenes(CONFIG)
    for scene in (pair, lone):
        td = env.set_positions(scene.agent_pos, scene.prey_pos)
        mask = td.get(("agents", "action_mask"))[0]  # [n, 6]
        # only the scene agents may catch; everybody else sees no stag
        assert mask[:, CATCH].nonzero().flatten().tolist() == scene.scene_agents
        obs = td.get(("agents", "observation"))[0].view(8, 25, 3)
        assert obs[len(scene.scene_agents) + (scene is lone) :, :, 1].sum() == 0


@pytest.mark.parametrize(
    "algorithm, model",
    [
        ("pow_qmix", "layers/mlp"),
        ("pow_qmix", "rnn_agent"),
        ("qplex", "layers/mlp"),
        ("resq", "layers/mlp"),
    ],
)
def test_probe_values(tmp_path, algorithm: str, model: str) -> None:
    experiment = compose_experiment(
        [
            f"algorithm={algorithm}",
            "task=predator_prey/punish_4",
            "experiment=smoke",
            f"model={model}",
            "experiment.loggers=[]",
        ],
        save_folder=tmp_path,
    )
    assert any(isinstance(c, PredatorPreyProbe) for c in experiment.callbacks)
    env = PredatorPreyEnv(num_envs=1, seed=0, **CONFIG)
    agent_inputs = getattr(experiment.algorithm, "agent_inputs", None)
    result = probe_values(
        experiment.losses["agents"],
        env,
        None,
        agent_inputs("agents") if agent_inputs else None,
    )
    pair = result["pair_at_stag"]["joint_actions"]
    assert pair["both catch"]["reward"] == 10.0
    assert pair["0 catches, 1 stays"]["reward"] == -4.0
    assert pair["both stay"]["reward"] == 0.0
    assert result["lone_at_stag"]["joint_actions"]["catch"]["reward"] == -4.0
    pow_keys = ("Q_r", "lambda_delta_q") if algorithm == "pow_qmix" else ()
    central = ("Q_star",) if algorithm != "qplex" else ()
    for row in pair.values():
        for key in ("Q_tot", *central, *pow_keys):
            assert isinstance(row[key], float)
        if algorithm == "pow_qmix":
            assert isinstance(row["in_A_r"], bool)
            assert row["lambda_delta_q"] <= 1e-6
            # the greedy joint action is always in A_r (λΔQ = 0 there)
            if row["is_greedy"]:
                assert row["in_A_r"]
        else:
            assert "Q_r" not in row
    assert len(result["pair_at_stag"]["Q_i"]) == 2


def test_probe_callback_writes_jsonl(tmp_path) -> None:
    experiment = compose_experiment(
        [
            "algorithm=pow_qmix",
            "task=predator_prey/punish_4",
            "experiment=smoke",
            "experiment.loggers=[]",
            "experiment.max_n_iters=1",
        ],
        save_folder=tmp_path,
    )
    experiment.run()
    path = experiment.folder_name / PROBE_JSONL
    records = read_probe(path)
    assert len(records) >= 1
    assert records[-1]["frames"] == 20
    assert set(records[-1]["scenes"]) == {"pair_at_stag", "lone_at_stag"}
    json.dumps(records)  # plain JSON values


def test_probe_skips_other_losses(tmp_path) -> None:
    experiment = compose_experiment(
        [
            "algorithm=qmix",
            "task=predator_prey/punish_4",
            "experiment=smoke",
            "experiment.loggers=[]",
            "experiment.max_n_iters=1",
        ],
        save_folder=tmp_path,
    )
    experiment.run()
    assert not (experiment.folder_name / PROBE_JSONL).exists()
