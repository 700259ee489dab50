"""Every algorithm of the family trains for a few iterations, with MLP and GRU models, on a matrix
game with masked actions and on a VMAS discrete task, with finite losses and honoured masks."""

import math

import pytest
import torch
from benchmarl.algorithms import algorithm_config_registry
from benchmarl.environments import VmasTask
from benchmarl.experiment import Experiment, ExperimentConfig
from benchmarl.models import GruConfig, MlpConfig

from benchmarl_pow.algorithms import ALGORITHMS
from custom_envs import MatrixGameTask


def tiny_config(tmp_path, **overrides) -> ExperimentConfig:
    config = ExperimentConfig.get_from_yaml()
    settings = dict(
        loggers=[], create_json=False, render=False, evaluation=False, save_folder=str(tmp_path),
        max_n_iters=3, max_n_frames=None, off_policy_n_envs_per_worker=4,
        off_policy_collected_frames_per_batch=16, off_policy_n_optimizer_steps=2,
        off_policy_train_batch_size=16, off_policy_memory_size=256, lr=1e-3,
        exploration_eps_init=1.0, exploration_eps_end=1.0,
    )
    settings.update(overrides)
    for key, value in settings.items():
        setattr(config, key, value)
    return config


def small_model(kind: str):
    if kind == "gru":
        model = GruConfig.get_from_yaml()
        model.hidden_size = 16
        model.mlp_num_cells = [16]
        return model
    model = MlpConfig.get_from_yaml()
    model.num_cells = [16]
    return model


class LossRecorder:
    """Collects every training value our losses return."""

    def __init__(self):
        self.values = []

    def __call__(self, experiment):
        for group in experiment.group_map:
            loss = experiment.losses[group]
            original = loss.forward

            def forward(td, _original=original):
                out = _original(td)
                self.values.append({k: float(v.detach()) for k, v in out.items()})
                return out

            loss.forward = forward


def train(algorithm: str, task, model: str, tmp_path, **overrides) -> tuple[Experiment, list]:
    algo = algorithm_config_registry[algorithm].get_from_yaml()
    experiment = Experiment(
        task=task, algorithm_config=algo, model_config=small_model(model), seed=0,
        config=tiny_config(tmp_path, **overrides),
    )
    recorder = LossRecorder()
    recorder(experiment)
    experiment.run()
    return experiment, recorder.values


def assert_finite(values):
    assert values, "the loss was never called"
    for record in values:
        for key, value in record.items():
            assert math.isfinite(value), f"{key} = {value}"


@pytest.mark.parametrize("model", ["mlp", "gru"])
@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_trains_on_a_masked_matrix_game(algorithm, model, tmp_path):
    task = MatrixGameTask.NONMONOTONIC.get_task(
        {"payoff": [[8.0, -12.0, -12.0], [-12.0, 0.0, 0.0], [-12.0, 0.0, 7.9]],
         "unavailable_actions": [[0], [2]]}
    )
    experiment, values = train(algorithm, task, model, tmp_path)
    assert_finite(values)
    assert "loss" in values[-1]
    # masked actions were never taken, and the greedy policy avoids them too
    buffer = experiment.replay_buffers["agents"]
    actions = buffer[: len(buffer)].get(("agents", "action"))
    assert (actions[..., 0] != 0).all() and (actions[..., 1] != 2).all()
    td = experiment.test_env.reset()
    with torch.no_grad():
        greedy = experiment.algorithm.get_policy_for_loss("agents")(td)["agents", "action"]
    assert (greedy[..., 0] != 0).all() and (greedy[..., 1] != 2).all()


@pytest.mark.parametrize("model", ["mlp", "gru"])
@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_trains_on_a_vmas_discrete_task(algorithm, model, tmp_path):
    task = VmasTask.BALANCE.get_from_yaml()
    task.config["max_steps"] = 8
    task.config["n_agents"] = 2
    experiment, values = train(
        algorithm, task, model, tmp_path, max_n_iters=2, off_policy_collected_frames_per_batch=32
    )
    assert not experiment.continuous_actions
    assert_finite(values)
    if ALGORITHMS[algorithm].registry_name.startswith("pow"):
        assert "td_error_recognition" in values[-1] and "fraction_in_recognition_set" in values[-1]
