"""Exact resume in BenchMARL's frame-counted regime: N iterations straight == N/2, checkpoint,
resume, N/2.

Same seed on CPU: identical parameters, optimiser states, replay, logged returns and files (no
duplicated rows, no lost evaluations), including a run interrupted after its checkpoint had been
written (so the resumed run must rewind the rows logged past it). On predator-prey the episodes
(12 steps) span the iteration boundaries (10 steps per env), so the collector's carried
observation and recurrent state and the envs' own state must come back mid-episode.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch
from resume_helpers import assert_same_run_files, json_returns

from benchmarl_pow.compose import compose_experiment
from benchmarl_pow.evaluate import evaluate_checkpoint
from benchmarl_pow.frames_experiment import FramesExperiment
from benchmarl_pow.resume import load_run
from custom_envs import PredatorPreyEnv

COMMON = [
    "experiment=smoke",  # 2 envs, 20 frames per iteration, 1 learner step on 16 frames
    "experiment.loggers=[csv]",
    "experiment.create_json=True",
    "experiment.evaluation_interval=40",
    "experiment.evaluation_episodes=2",
    "experiment.checkpoint_interval=20",  # a checkpoint after every iteration
    "experiment.keep_checkpoints_num=null",
    "experiment.exploration_anneal_frames=100",
    "experiment.soft_target_update=False",
    "experiment.hard_target_update_frequency=3",  # HardUpdate's counter crosses the resume
]
CASES = {
    "pow_qmix-predator_prey": [
        "algorithm=pow_qmix",
        "task=predator_prey/punish_4",
        "model=rnn_agent",
        "task.grid_size=5",
        "task.n_agents=3",
        "task.n_prey=2",
        "task.episode_limit=12",
        "algorithm.no_weighted_steps=70",  # POW's warm-up ends after the resume
    ],
    "qmix-matrix_game": ["algorithm=qmix", "task=matrix_game/nonmonotonic"],
    # a central critic with its own targets, an MLP agent (no recurrent state)
    "cw_qmix-predator_prey": [
        "algorithm=cw_qmix",
        "task=predator_prey/punish_4",
        "task.grid_size=5",
        "task.n_agents=3",
        "task.n_prey=2",
        "task.episode_limit=12",
    ],
    "vdn-matrix_game": ["algorithm=vdn", "task=matrix_game/nonmonotonic"],
}
N = 6


def _state(experiment) -> dict[str, torch.Tensor]:
    """Every tensor that training changes: networks and targets (the loss), exploration, the
    optimisers' moments and the stored replay."""
    out = {f"loss.{k}": v for k, v in experiment.losses["agents"].state_dict().items()
           if torch.is_tensor(v)}
    for name, opt in experiment.optimizers["agents"].items():
        for i, s in enumerate(opt.state_dict()["state"].values()):
            for k, v in s.items():
                out[f"opt.{name}.{i}.{k}"] = torch.as_tensor(v)
    for k, v in experiment.group_policies["agents"][-1].state_dict().items():
        out[f"explore.{k}"] = v
    buffer = experiment.replay_buffers["agents"]
    data = buffer[: len(buffer)]
    for k in data.keys(True, True):
        out[f"buffer.{k}"] = data.get(k)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_resume_continues_exactly(tmp_path, case):
    overrides = [*CASES[case], *COMMON]
    straight = compose_experiment(
        [*overrides, f"experiment.max_n_iters={N}"], save_folder=tmp_path / "a", callbacks=[]
    )
    assert isinstance(straight, FramesExperiment)
    straight.run()
    folder_a = Path(straight.folder_name)

    # An interrupted twin: killed after N - 1 iterations, its last checkpoint written after
    # iteration N / 2 (later saves never happen), so the next rows are logged past it.
    twin = compose_experiment(
        [*overrides, f"experiment.max_n_iters={N - 1}"], save_folder=tmp_path / "b", callbacks=[]
    )
    save, saved = twin._save_experiment, []

    def save_until_half() -> None:
        if len(saved) < N // 2:
            saved.append(twin.n_iters_performed)
            save()

    twin._save_experiment = save_until_half
    twin.run()
    folder_b = Path(twin.folder_name)
    checkpoint = folder_b / "checkpoints" / f"checkpoint_{20 * (N // 2)}.pt"
    assert checkpoint.is_file()
    if "predator_prey" in case:
        # the checkpoint was taken mid-episode: some env had stepped since its last reset
        frames = torch.load(checkpoint, weights_only=True)["resume"]["frames"]
        steps = frames["train_env"]["_extra_state"]["_steps"]
        assert bool((steps > 0).any()), steps

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = load_run(checkpoint, experiment_patch={"max_n_iters": N})
    inexact = [str(w.message) for w in caught if "resume" in str(w.message)]
    assert not inexact  # these envs declare their state: nothing is approximate
    assert isinstance(resumed, FramesExperiment)
    assert resumed.n_iters_performed == N // 2
    resumed.run()

    assert resumed.total_frames == straight.total_frames == 20 * N
    state_a, state_b = _state(straight), _state(resumed)
    assert state_a.keys() == state_b.keys()
    for key, value in state_a.items():
        torch.testing.assert_close(state_b[key], value, rtol=0, atol=0, msg=key)
    assert_same_run_files(folder_a, folder_b)
    assert len(json_returns(folder_a)) == N // 2 + 1  # iteration 0, then every 40 frames
    rows = next(folder_b.rglob("scalars/counters_iter.csv")).read_text().split()
    assert len(rows) == N
    if "predator_prey" in case:  # evaluating with another number of envs ignores their state
        assert evaluate_checkpoint(checkpoint, episodes=3)["episodes"] == 3
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_env_without_state_warns_once_and_restarts_episodes(tmp_path, monkeypatch):
    """An env that does not declare its running state (``get_extra_state``) cannot be put back
    mid-episode: one warning, and the resumed run starts new episodes (with new trajectory ids)."""
    monkeypatch.setattr(PredatorPreyEnv, "get_extra_state", torch.nn.Module.get_extra_state)
    experiment = compose_experiment(
        [*CASES["cw_qmix-predator_prey"], *COMMON, "experiment.max_n_iters=2",
         "experiment.evaluation=False"],
        save_folder=tmp_path, callbacks=[],
    )
    experiment.run()
    checkpoint = Path(experiment.folder_name) / "checkpoints" / "checkpoint_40.pt"
    saved = torch.load(checkpoint, weights_only=True)["resume"]["frames"]
    assert saved["train_env"] is None and saved["test_env"] is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = load_run(checkpoint, experiment_patch={"max_n_iters": 3})
    inexact = [str(w.message) for w in caught if "exact up to" in str(w.message)]
    assert len(inexact) == 1 and "PredatorPreyEnv" in inexact[0], inexact
    traj_ids = resumed.collector._carrier.get(("collector", "traj_ids"))
    assert int(traj_ids.min()) >= saved["traj_id"]  # fresh episodes, fresh ids
    resumed.run()
    assert resumed.n_iters_performed == 3 and resumed.total_frames == 60
