"""Registries and Hydra: every yaml of conf/ composes against its schema, unknown keys fail."""

from pathlib import Path

import pytest
from benchmarl.algorithms import algorithm_config_registry
from benchmarl.environments import task_config_registry
from benchmarl.experiment import ExperimentConfig
from benchmarl.hydra_config import (
    load_algorithm_config_from_hydra,
    load_experiment_config_from_hydra,
    load_task_config_from_hydra,
)
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from benchmarl_pow.algorithms import ALGORITHMS
from benchmarl_pow.episodes.experiment import EpisodeExperimentConfig

CONF = Path(__file__).resolve().parent.parent / "conf"
ALGORITHM_YAMLS = sorted(p.stem for p in (CONF / "algorithm").glob("*.yaml"))
TASK_YAMLS = sorted(
    f"{p.parent.name}/{p.stem}" for p in (CONF / "task").glob("*/*.yaml")
)
EXPERIMENT_YAMLS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _compose(*overrides):
    with initialize_config_module(config_module="benchmarl_pow.conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def test_every_algorithm_has_a_yaml_and_is_registered():
    assert set(ALGORITHM_YAMLS) == set(ALGORITHMS)
    for name, config_class in ALGORITHMS.items():
        assert algorithm_config_registry[name] is config_class
        assert isinstance(config_class.get_from_yaml(), config_class)  # Python API finds our yaml


@pytest.mark.parametrize("name", ALGORITHM_YAMLS)
def test_algorithm_yaml_composes_to_its_dataclass(name):
    cfg = _compose(f"algorithm={name}", "task=matrix_game/nonmonotonic")
    assert isinstance(load_algorithm_config_from_hydra(cfg.algorithm), ALGORITHMS[name])


@pytest.mark.parametrize("task", TASK_YAMLS)
def test_task_yaml_composes_and_validates(task):
    assert task in task_config_registry
    cfg = _compose("algorithm=qmix_lambda", f"task={task}")
    task_class = load_task_config_from_hydra(cfg.task, task)
    assert task_class.name.lower() == task.split("/")[1]
    # the Python API reads the same yaml
    assert task_config_registry[task].get_from_yaml().config == task_class.config


@pytest.mark.parametrize("experiment", EXPERIMENT_YAMLS)
def test_experiment_presets_compose_and_validate(experiment):
    cfg = _compose(f"experiment={experiment}", "algorithm=qmix_lambda", "task=matrix_game/nonmonotonic")
    config = load_experiment_config_from_hydra(cfg.experiment)
    assert isinstance(config, ExperimentConfig)
    if cfg.regime.name == "episodes":  # intervals count real frames: no multiple-of rule
        config = EpisodeExperimentConfig.of(config)
    config.validate(on_policy=False)
    assert config.loggers == ["csv"]


@pytest.mark.parametrize("experiment", ["pymarl2", "intersection"])
def test_long_run_presets_checkpoint_and_keep_few(experiment):
    """The paper's long runs checkpoint by default (an interruption loses a few minutes of one
    core at most) and keep a bounded number of checkpoints."""
    cfg = _compose(f"experiment={experiment}", "algorithm=pow_qmix", "task=predator_prey/punish_4")
    assert 0 < cfg.experiment.checkpoint_interval <= 32_000
    assert cfg.experiment.keep_checkpoints_num == 2


def test_benchmarl_configs_still_resolve():
    cfg = _compose("algorithm=qmix", "task=vmas/balance", "model=layers/gru", "experiment=base_experiment")
    assert cfg.algorithm.mixing_embed_dim == 32
    assert cfg.model.hidden_size > 0
    assert "n_agents" in cfg.task


@pytest.mark.parametrize(
    "override",
    ["algorithm.bogus=1", "task.bogus=1", "experiment.bogus=1"],
)
def test_unknown_keys_are_rejected(override):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        _compose("algorithm=pow_qmix", "task=matrix_game/nonmonotonic", override)


def test_wrongly_typed_values_are_rejected():
    with pytest.raises(ConfigCompositionException):
        _compose("algorithm=pow_qmix", "task=matrix_game/nonmonotonic", "algorithm.recognition_updates=many")
    with pytest.raises(ConfigCompositionException):
        _compose("algorithm=pow_qmix", "task=matrix_game/nonmonotonic", "task.payoff=3")
