"""Build BenchMARL experiments from our Hydra config tree without the command line.

``compose_experiment(["algorithm=pow_qmix", "task=matrix_game/nonmonotonic",
"experiment=matrix_game"])`` gives the same :class:`~benchmarl.experiment.Experiment` as
``python benchmarl_pow/run.py`` with those overrides; tests and benchmark scripts use it so that
they run exactly what users run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from benchmarl.experiment import Experiment
from benchmarl.experiment.callback import Callback
from benchmarl.hydra_config import load_experiment_from_hydra
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

import benchmarl_pow  # noqa: F401  (registers our algorithms and tasks)
from benchmarl_pow.callbacks import default_callbacks


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """The composed primary config for Hydra ``overrides`` (``key=value`` strings)."""
    with initialize_config_module(config_module="benchmarl_pow.conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def _choice(overrides: Sequence[str], group: str) -> str:
    for item in overrides:
        if item.startswith(f"{group}="):
            return item.split("=", 1)[1]
    raise ValueError(f"no '{group}=...' among the overrides {list(overrides)}")


def compose_experiment(
    overrides: Sequence[str],
    save_folder: str | Path | None = None,
    callbacks: list[Callback] | None = None,
) -> Experiment:
    """An experiment built exactly as the CLI builds it (with the CLI's default callbacks).

    Args:
        overrides: Hydra overrides; must name ``task=<env>/<task>``.
        save_folder: where the run folder goes (default: the experiment preset's, else cwd).
        callbacks: replaces the CLI's default callbacks for the task when given.
    """
    overrides = list(overrides)
    if save_folder is not None:
        Path(save_folder).mkdir(parents=True, exist_ok=True)
        overrides.append(f"experiment.save_folder={Path(save_folder).resolve()}")
    cfg = compose_config(overrides)
    if cfg.get("torch_threads") is not None:
        torch.set_num_threads(int(cfg.torch_threads))
    task_name = _choice(overrides, "task")
    if callbacks is None:
        callbacks = default_callbacks(task_name)
    return load_experiment_from_hydra(cfg, task_name=task_name, callbacks=callbacks)


def matrix_game_overrides(
    algorithm: str, seed: int | str, task: str = "matrix_game/nonmonotonic"
) -> list[str]:
    """The paper's matrix protocol (``experiment=matrix_game``) with loggers, the JSON file and
    evaluation switched off (which changes no training step)."""
    return [
        f"algorithm={algorithm}",
        f"task={task}",
        "experiment=matrix_game",
        f"seed={seed}",
        "experiment.loggers=[]",
        "experiment.create_json=False",
        "experiment.evaluation=False",
    ]


def train_matrix_game(
    algorithm: str,
    seed: int,
    save_folder: str | Path,
    task: str = "matrix_game/nonmonotonic",
    overrides: Sequence[str] = (),
) -> tuple[tuple[int, ...], dict[str, torch.Tensor]]:
    """Train one seed with :func:`matrix_game_overrides` (plus ``overrides``).

    Returns:
        the greedy joint action and the learned per-joint-action tables
        (see :func:`benchmarl_pow.diagnostics.joint_value_tables`).
    """
    from benchmarl_pow.diagnostics import (
        agent_action_values,
        greedy_joint_action,
        joint_value_tables,
    )

    experiment = compose_experiment(
        [*matrix_game_overrides(algorithm, seed, task), *overrides],
        save_folder=save_folder,
        callbacks=[],
    )
    experiment.run()
    td = agent_action_values(experiment)
    return greedy_joint_action(experiment, td), joint_value_tables(experiment, td)
