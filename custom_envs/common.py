"""Shared plumbing for this project's BenchMARL tasks.

BenchMARL's :class:`~benchmarl.environments.Task` looks for task yamls inside its own package
folder. Our tasks keep their yamls in this project's ``conf/task/<env>/<task>.yaml`` (shipped as the
package data ``benchmarl_pow.conf``), so :class:`ProjectTask` overrides the yaml lookup and validates
the loaded dict against the task's own config dataclass (BenchMARL only type-checks its own tasks).

This module imports nothing from ``benchmarl_pow``: environments know no learning algorithm.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from benchmarl.environments.common import Task, TaskClass
from benchmarl.utils import _read_yaml_config
from tensordict import TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase


def conf_root() -> Path:
    """The folder that holds ``task/<env>/<task>.yaml``.

    In a source checkout (editable install) that is the repository's ``conf/``; in a
    non-editable install it is the ``benchmarl_pow.conf`` package data. The package is located
    with ``find_spec`` so that nothing from ``benchmarl_pow`` is imported here.
    """
    repo_conf = Path(__file__).resolve().parent.parent / "conf"
    if (repo_conf / "task").is_dir():
        return repo_conf
    spec = importlib.util.find_spec("benchmarl_pow")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "conf"
            if (candidate / "task").is_dir():
                return candidate
    raise FileNotFoundError(
        "Could not find the benchmarl-pow config folder (conf/task). Reinstall the package "
        "with `pip install .` or run from a source checkout."
    )


def validate_task_config(config_class: type, task_name: str, config: dict[str, Any]) -> dict:
    """Check ``config`` against the task's dataclass: unknown or missing keys raise early."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(
            f"Unknown config key(s) {unknown} for task '{task_name}'. Known keys: {sorted(fields)}"
        )
    missing = sorted(
        f.name
        for f in dataclasses.fields(config_class)
        if f.name not in config
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    )
    if missing:
        raise ValueError(f"Missing config key(s) {missing} for task '{task_name}'")
    return dataclasses.asdict(config_class(**config))


class ProjectTask(Task):
    """A BenchMARL task enum whose yamls live in this project's ``conf/task`` folder.

    Subclasses implement ``associated_class()`` (the :class:`TaskClass`) and
    ``config_class()`` (the dataclass used both as the Hydra schema and for validation).
    """

    @staticmethod
    def config_class() -> type:
        raise NotImplementedError

    def get_from_yaml(self, path: str | None = None) -> TaskClass:
        """Load this task's config from ``conf/task/<env>/<task>.yaml`` (or ``path``)."""
        task_name = self.name.lower()
        if path is None:
            path = str(conf_root() / "task" / self.env_name() / f"{task_name}.yaml")
        config = _read_yaml_config(path)
        return self.get_task(config=config)

    def get_task(self, config: dict[str, Any] | None = None) -> TaskClass:
        if config is None:
            return self.get_from_yaml()
        config = validate_task_config(
            self.config_class(), f"{self.env_name()}/{self.name.lower()}", dict(config)
        )
        return self.associated_class()(name=self.name, config=config)


def task_enum(
    name: str,
    members: Iterable[str],
    task_class: type[TaskClass],
    config: type,
    module: str,
    doc: str | None = None,
) -> type[ProjectTask]:
    """A :class:`ProjectTask` enum ``name`` with one member per entry of ``members`` (task
    ``<env>/<member>``; member ``MEMBER.upper()``), for task lists given as data (map names that
    start with digits cannot be class attributes). ``module`` is the defining module's
    ``__name__``, so that members pickle; ``doc`` its docstring."""

    class _Task(ProjectTask):
        @staticmethod
        def associated_class() -> type[TaskClass]:
            return task_class

        @staticmethod
        def config_class() -> type:
            return config

    tasks = _Task(name, [(m.upper(), None) for m in members], module=module, qualname=name)
    tasks.__doc__ = doc
    return tasks


def smac_layout_specs(
    group: str,
    batch: int,
    n_agents: int,
    n_actions: int,
    device: Any,
    obs_dim: int,
    state_dim: int,
) -> tuple[Composite, Composite, Composite, Composite]:
    """The observation, action, reward and done specs of a batched env laid out like BenchMARL's
    ``smacv2`` tasks: ``(group, "observation")`` ``[B, n, obs_dim]`` and boolean
    ``(group, "action_mask")`` ``[B, n, n_actions]``, a root ``state`` ``[B, state_dim]`` and a
    root ``info`` (``battle_won``, ``episode_limit`` flags, ``dead_allies``, ``dead_enemies``
    counts, ``[B]``); categorical ``(group, "action")`` ``[B, n]``, a root team reward ``[B, 1]``
    and root ``done``/``terminated``/``truncated`` ``[B, 1]``."""

    def flag(*shape: int) -> Categorical:
        return Categorical(n=2, shape=shape, dtype=torch.bool, device=device)

    def count() -> Unbounded:
        return Unbounded(shape=(batch,), dtype=torch.long, device=device)

    observation = Composite(
        {
            group: Composite(
                {
                    "observation": Unbounded(shape=(batch, n_agents, obs_dim), device=device),
                    "action_mask": flag(batch, n_agents, n_actions),
                },
                shape=(batch, n_agents),
                device=device,
            ),
            "state": Unbounded(shape=(batch, state_dim), device=device),
            "info": Composite(
                {
                    "battle_won": flag(batch),
                    "episode_limit": flag(batch),
                    "dead_allies": count(),
                    "dead_enemies": count(),
                },
                shape=(batch,),
                device=device,
            ),
        },
        shape=(batch,),
        device=device,
    )
    action = Composite(
        {
            group: Composite(
                {"action": Categorical(n=n_actions, shape=(batch, n_agents), dtype=torch.long, device=device)},
                shape=(batch, n_agents),
                device=device,
            )
        },
        shape=(batch,),
        device=device,
    )
    reward = Composite({"reward": Unbounded(shape=(batch, 1), device=device)}, shape=(batch,), device=device)
    done = Composite(
        {
            key: Categorical(n=2, shape=(batch, 1), dtype=torch.bool, device=device)
            for key in ("done", "terminated", "truncated")
        },
        shape=(batch,),
        device=device,
    )
    return observation, action, reward, done


class SmacLayoutEnv:
    """Mixin of a batched :class:`EnvBase` laid out like BenchMARL's ``smacv2`` tasks: sets the
    specs of :func:`smac_layout_specs` from the env's ``group``, ``num_envs``, ``n_agents``,
    ``n_actions``, ``obs_dim``, ``state_dim`` and ``device``."""

    def set_smac_layout_specs(self) -> None:
        (
            self.full_observation_spec,
            self.full_action_spec,
            self.full_reward_spec,
            self.full_done_spec,
        ) = smac_layout_specs(
            self.group,
            self.num_envs,
            self.n_agents,
            self.n_actions,
            self.device,
            obs_dim=self.obs_dim,
            state_dim=self.state_dim,
        )


class SmacLayoutClass(TaskClass):
    """Spec split and metrics shared by tasks laid out like BenchMARL's ``smacv2`` tasks.

    The env has one agent group ``"agents"`` with ``observation`` and ``action_mask``, a root
    ``state`` and a root ``info`` with ``battle_won`` and ``episode_limit`` flags, and discrete
    actions. Subclasses give ``get_env_fun``, ``max_steps``, ``group_map`` and ``env_name``.
    """

    group = "agents"

    def supports_continuous_actions(self) -> bool:
        return False

    def supports_discrete_actions(self) -> bool:
        return True

    def has_render(self, env: EnvBase) -> bool:
        return False

    def _obs_spec(self, env: EnvBase, *drop: Any) -> Composite:
        spec = env.full_observation_spec_unbatched.clone()
        for key in drop:
            del spec[key]
        return spec

    def observation_spec(self, env: EnvBase) -> Composite:
        return self._obs_spec(env, "info", "state", (self.group, "action_mask"))

    def action_mask_spec(self, env: EnvBase) -> Composite | None:
        return self._obs_spec(env, "info", "state", (self.group, "observation"))

    def state_spec(self, env: EnvBase) -> Composite | None:
        return self._obs_spec(env, "info", self.group)

    def info_spec(self, env: EnvBase) -> Composite | None:
        return self._obs_spec(env, "state", self.group)

    def action_spec(self, env: EnvBase) -> Composite:
        return env.full_action_spec_unbatched

    @staticmethod
    def log_info(batch: TensorDictBase) -> dict[str, float]:
        """Win and time-out rates over the episodes that ended in ``batch`` (NaN if none did);
        the same keys as BenchMARL's ``smacv2`` tasks."""
        done = batch.get(("next", "done")).squeeze(-1)
        info = batch.get(("next", "info"))
        return {
            "collection/info/win_rate": info.get("battle_won")[done].float().mean().item(),
            "collection/info/episode_limit_rate": info.get("episode_limit")[done]
            .float()
            .mean()
            .item(),
        }
