"""Exact resume in the paper's regime: N iterations straight == N/2, checkpoint, resume, N/2.

Same seed on CPU: identical parameters, identical logged returns, identical files (no duplicated
rows, no lost evaluations), including a run that was interrupted after its checkpoint had been
written (so the resumed run must rewind the rows logged past it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from resume_helpers import assert_same_run_files, json_returns, run_files

from benchmarl_pow.compose import compose_experiment
from benchmarl_pow.episodes import EpisodeExperiment
from benchmarl_pow.resume import load_run
from benchmarl_pow.validation import ConfigError

OVERRIDES = [
    "algorithm=pow_qmix",
    "task=predator_prey/punish_4",
    "experiment=pymarl2",
    "task.grid_size=5",
    "task.n_agents=3",
    "task.n_prey=2",
    "task.episode_limit=12",
    "experiment.off_policy_n_envs_per_worker=4",
    "regime.buffer_episodes=16",
    "regime.batch_episodes=4",
    "regime.start_training_episodes=8",
    "regime.target_update_episodes=8",
    "algorithm.no_weighted_steps=30",
    "experiment.exploration_anneal_frames=200",
    "experiment.evaluation_interval=40",
    "experiment.evaluation_episodes=2",
    "experiment.loggers=[csv]",
    "experiment.create_json=True",
    "experiment.checkpoint_interval=1",  # a checkpoint after every iteration
    "experiment.keep_checkpoints_num=null",
    "experiment.max_n_frames=null",
]


def _params(experiment) -> list[torch.Tensor]:
    return [p.detach().clone() for p in experiment.losses["agents"].parameters()]


def test_resume_continues_exactly(tmp_path):
    straight = compose_experiment(
        [*OVERRIDES, "experiment.max_n_iters=6"], save_folder=tmp_path / "a", callbacks=[]
    )
    straight.run()
    folder_a = Path(straight.folder_name)

    # An interrupted twin: the same run killed after 5 iterations whose last checkpoint was
    # written after iteration 3 (its later saves never happen), so rows 4 and 5 are logged past it.
    twin = compose_experiment(
        [*OVERRIDES, "experiment.max_n_iters=5"], save_folder=tmp_path / "b", callbacks=[]
    )
    save, saved_iterations = twin._save_experiment, []

    def save_until_the_third() -> None:
        if len(saved_iterations) < 3:
            saved_iterations.append(twin.n_iters_performed)
            save()

    twin._save_experiment = save_until_the_third
    twin.run()
    folder_b = Path(twin.folder_name)
    checkpoints = sorted(
        (folder_b / "checkpoints").glob("checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[1])
    )
    assert len(checkpoints) == 3
    third = checkpoints[2]

    resumed = EpisodeExperiment.reload_from_file(
        str(third), experiment_patch={"max_n_iters": 6}
    )
    assert resumed.n_iters_performed == 3
    resumed.run()

    assert resumed.total_frames == straight.total_frames
    assert resumed.episodes == straight.episodes
    for p, q in zip(_params(straight), _params(resumed)):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert_same_run_files(folder_a, folder_b)
    assert len(json_returns(folder_a)) >= 3
    rows = next(folder_b.rglob("scalars/counters_iter.csv")).read_text().split()
    assert len(rows) == 6
    # the newest checkpoint has its replay dump beside it, older ones none (gigabytes each)
    saved = sorted(
        (folder_b / "checkpoints").glob("*.pt"), key=lambda p: int(p.stem.split("_")[1])
    )
    assert [EpisodeExperiment.buffer_dir(c).is_dir() for c in saved] == [False] * (
        len(saved) - 1
    ) + [True]
    assert not list((folder_b / "checkpoints").glob("*.partial"))
    # the resume entry point rebuilds the episode regime from the run folder
    again = load_run(str(saved[-1]), experiment_patch={"max_n_iters": 8})
    assert isinstance(again, EpisodeExperiment) and again.n_iters_performed == 6
    assert len(again.replay_buffers["agents"]) == min(again.episodes, 16) > 0
    again.close()

    # an older checkpoint whose replay dump was cut short is refused before the run folder's
    # files are rewound to it, even loaded directly (not through resume or validate_config)
    older = saved[-3]
    cut = EpisodeExperiment.buffer_dir(older)
    shutil.copytree(EpisodeExperiment.buffer_dir(saved[-1]), cut)
    for metadata in cut.rglob("buffer_metadata.json"):
        metadata.unlink()
    before = run_files(folder_b)
    with pytest.raises(ConfigError, match="incomplete"):
        EpisodeExperiment.reload_from_file(str(older))
    assert run_files(folder_b) == before
    shutil.rmtree(tmp_path, ignore_errors=True)
