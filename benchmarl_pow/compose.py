"""Build BenchMARL experiments from our Hydra config tree without the command line.

``compose_experiment(["algorithm=pow_qmix", "task=matrix_game/nonmonotonic",
"experiment=matrix_game"])`` gives the same :class:`~benchmarl.experiment.Experiment` as
``python benchmarl_pow/run.py`` with those overrides; tests and benchmark scripts use it so that
they run exactly what users run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from benchmarl.experiment import Experiment, ExperimentConfig
from benchmarl.experiment.callback import Callback
from benchmarl.hydra_config import (
    load_algorithm_config_from_hydra,
    load_experiment_config_from_hydra,
    load_model_config_from_hydra,
    load_task_config_from_hydra,
)
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

import benchmarl_pow  # noqa: F401  (registers our algorithms and tasks)
from benchmarl_pow.callbacks import default_callbacks
from benchmarl_pow.episodes import EpisodeExperiment, RegimeConfig
from benchmarl_pow.frames_experiment import FramesExperiment
from benchmarl_pow.validation import (
    ConfigError,
    FiniteTrainingGuard,
    check_choice,
    check_experiment_config,
    check_overrides,
    choices_from_overrides,
    validate_config,
)


def build_experiment(
    cfg: DictConfig, task_name: str, callbacks: list[Callback] | None = None
) -> Experiment:
    """The experiment for a composed config: what ``run.py`` and :func:`compose_experiment` run.

    For the frame-counted regime a :class:`~benchmarl_pow.frames_experiment.FramesExperiment`
    (what BenchMARL's ``load_experiment_from_hydra`` builds, with checkpoints that resume
    exactly); with ``regime=episodes`` (``experiment=pymarl2``) an
    :class:`~benchmarl_pow.episodes.EpisodeExperiment` (PyMARL2's episode schedule).
    """
    # first, so that no callback writes tables from networks that became non-finite
    callbacks = [FiniteTrainingGuard(), *(callbacks or [])]
    regime = load_regime_config(cfg)
    experiment_class = EpisodeExperiment if regime.episodic else FramesExperiment
    return experiment_class(
        task=load_task_config_from_hydra(cfg.task, task_name),
        algorithm_config=load_algorithm_config_from_hydra(cfg.algorithm),
        model_config=load_model_config_from_hydra(cfg.model),
        critic_model_config=load_model_config_from_hydra(cfg.critic_model),
        seed=cfg.seed,
        config=load_experiment_config_from_hydra(cfg.experiment),
        callbacks=callbacks,
        regime=regime,
    )


def load_regime_config(cfg: DictConfig) -> RegimeConfig:
    """The ``regime`` group of a composed config (``frames`` when absent)."""
    if cfg.get("regime") is None:
        return RegimeConfig()
    return RegimeConfig(**OmegaConf.to_container(cfg.regime, resolve=True))


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """The composed primary config for Hydra ``overrides`` (``key=value`` strings)."""
    with initialize_config_module(config_module="benchmarl_pow.conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def experiment_config(preset: str = "base", **overrides: Any) -> ExperimentConfig:
    """BenchMARL's :class:`~benchmarl.experiment.ExperimentConfig` from this project's preset
    ``conf/experiment/<preset>.yaml`` (``base``, ``matrix_game``, ``smoke``, ...), for the Python
    API and ``Benchmark``; keyword arguments override keys (``max_n_iters=5``).

    Unlike ``ExperimentConfig.get_from_yaml()`` (BenchMARL's base experiment: wandb logger, render
    on, 3M frames) the presets run on this project's install. Invalid values raise
    :class:`~benchmarl_pow.validation.ConfigError`.
    """
    check_choice("experiment", preset)
    cfg = compose_config(["algorithm=qmix", "task=matrix_game/nonmonotonic", f"experiment={preset}"])
    config = OmegaConf.to_object(cfg.experiment)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ConfigError(key, value, "not a key of ExperimentConfig")
        setattr(config, key, value)
    check_experiment_config(config)
    return config


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

    Raises:
        benchmarl_pow.validation.ConfigError: an unknown name or an invalid value, before
            anything is built.
    """
    overrides = list(overrides)
    if save_folder is not None:
        Path(save_folder).mkdir(parents=True, exist_ok=True)
        overrides.append(f"experiment.save_folder={Path(save_folder).resolve()}")
    check_overrides(overrides)
    cfg = compose_config(overrides)
    validate_config(cfg, choices_from_overrides(overrides))
    if cfg.get("torch_threads") is not None:
        torch.set_num_threads(int(cfg.torch_threads))
    task_name = _choice(overrides, "task")
    if callbacks is None:
        callbacks = default_callbacks(task_name)
    return build_experiment(cfg, task_name, callbacks)


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
