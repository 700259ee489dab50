"""Registration of this project's algorithms and tasks into BenchMARL (shared/spec/stack.md §2).

BenchMARL has no plugin API. It resolves names through two module-level dicts
(``algorithm_config_registry`` and ``task_config_registry``) and stores the Hydra schemas of its
own classes once, at import. An outside package therefore adds its entries to those dicts and
stores its own schemas in Hydra's ``ConfigStore`` (group ``algorithm``: ``<name>_config``;
group ``task``: ``<env>_<task>_config``), which is what the yamls' ``defaults`` name.
"""

from __future__ import annotations

from benchmarl.algorithms import algorithm_config_registry
from benchmarl.environments import task_config_registry
from hydra.core.config_store import ConfigStore

from benchmarl_pow.algorithms import ALGORITHMS
from benchmarl_pow.episodes import RegimeConfig
from benchmarl_pow.models import register_models
from custom_envs import TASKS


def register() -> None:
    """Add our algorithms, models and tasks to BenchMARL's registries and store their schemas.

    Idempotent: calling it again re-stores the same entries.
    """
    store = ConfigStore.instance()
    store.store(name="regime_config", group="regime", node=RegimeConfig)
    register_models()
    for name, config_class in ALGORITHMS.items():
        algorithm_config_registry[name] = config_class
        store.store(name=f"{name}_config", group="algorithm", node=config_class)
    for task_enum in TASKS:
        env_name = task_enum.env_name()
        for member in task_enum:
            task_name = member.name.lower()
            task_config_registry[f"{env_name}/{task_name}"] = member
            store.store(
                name=f"{env_name}_{task_name}_config",
                group="task",
                node=task_enum.config_class(),
            )
