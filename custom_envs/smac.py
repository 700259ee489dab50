"""SMAC v1 maps (the paper's SMAC benchmark) as BenchMARL tasks ``smac/<map>``.

The maps run in StarCraft II 4.10 through the ``smacv2`` package (which also plays the SMAC v1
maps) and TorchRL's ``SMACv2Env`` wrapper with ``capability_config=None``, so the spec layout, the
action masks and the logged ``win_rate`` are those of BenchMARL's ``smacv2/*`` tasks (whose
:class:`~benchmarl.environments.smacv2.common.Smacv2Class` this task class extends). The settings
are the paper's (pow_spec.md §5.4): difficulty 7, step_mul 8, shaped positive rewards scaled to 20,
no last actions in observations, last actions in the state.

Needs the ``smacv2`` package, StarCraft II and the SMAC maps in ``$SC2PATH/Maps/SMAC_Maps``; see the
README section "StarCraft". Nothing here imports ``smacv2`` until an env is built.

TorchRL's wrapper reports a time-out (``info.episode_limit``) as ``terminated``; PyMARL, which the
paper used, bootstraps time-outs. Both task classes here therefore add
:class:`EpisodeLimitTruncation`, which turns a time-out into ``truncated`` (``terminated`` False).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any, Optional

import torch
from benchmarl.environments.smacv2.common import Smacv2Class
from tensordict import TensorDictBase
from torchrl.data import Composite
from torchrl.envs import EnvBase, Transform

from custom_envs.common import task_enum

__all__ = [
    "SMAC_MAPS",
    "EpisodeLimitTruncation",
    "PaperSmacv2Class",
    "SmacClass",
    "SmacConfig",
    "SmacTask",
    "Smacv2PaperConfig",
    "Smacv2PaperTask",
]

#: SMAC v1 maps of the paper (Fig. 4 names 3s_vs_5z, corridor and MMM2; the others are SMAC's
#: usual hard and super-hard maps).
SMAC_MAPS = ("3s_vs_5z", "2s3z", "corridor", "mmm2", "6h_vs_8z", "3s5z_vs_3s6z")


@dataclasses.dataclass
class SmacConfig:
    """Arguments of smacv2's ``StarCraft2Env`` for a SMAC v1 map (pow_spec.md §5.4)."""

    map_name: str
    difficulty: str
    game_version: str | None
    step_mul: int
    move_amount: int
    continuing_episode: bool
    reward_sparse: bool
    reward_only_positive: bool
    reward_scale: bool
    reward_scale_rate: float
    reward_death_value: float
    reward_win: float
    reward_defeat: float
    reward_negative_scale: float
    obs_all_health: bool
    obs_own_health: bool
    obs_last_action: bool
    obs_pathing_grid: bool
    obs_terrain_height: bool
    obs_timestep_number: bool
    obs_instead_of_state: bool
    state_last_action: bool
    state_timestep_number: bool
    heuristic_ai: bool
    debug: bool

    def __post_init__(self) -> None:
        if not isinstance(self.map_name, str) or not self.map_name:
            raise ValueError("smac config: 'map_name' must be a SMAC map name")
        if str(self.difficulty) not in "123456789A" or len(str(self.difficulty)) != 1:
            raise ValueError("smac config: 'difficulty' must be one of '1'..'9', 'A'")
        self.difficulty = str(self.difficulty)


class EpisodeLimitTruncation(Transform):
    """SMAC time-outs as truncations, as PyMARL treats them.

    TorchRL's ``SMACv2Env`` sets ``terminated`` = ``done`` at every episode end. This transform sets
    ``terminated`` False and a new ``truncated`` key True where the episode ended at its limit
    (``("info", "episode_limit")``), so that the last step of a timed-out episode is bootstrapped.
    Shapes: ``done``/``terminated``/``truncated`` ``[*B, 1]``, ``episode_limit`` ``[*B]``.
    """

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        done = next_tensordict.get("done")
        limit = next_tensordict.get(("info", "episode_limit")).reshape(done.shape) & done
        next_tensordict.set("terminated", next_tensordict.get("terminated") & ~limit)
        next_tensordict.set("truncated", limit)
        return next_tensordict

    def _reset(
        self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase
    ) -> TensorDictBase:
        done = tensordict_reset.get("done", None)
        if done is not None and "truncated" not in tensordict_reset.keys():
            tensordict_reset.set("truncated", torch.zeros_like(done))
        return tensordict_reset

    def transform_done_spec(self, done_spec: Composite) -> Composite:
        if "truncated" not in done_spec.keys():
            done_spec["truncated"] = done_spec["done"].clone()
        return done_spec


class PaperSmacv2Class(Smacv2Class):
    """BenchMARL's SMACv2 task logic plus :class:`EpisodeLimitTruncation` (time-outs bootstrapped)."""

    def get_env_transforms(self, env: EnvBase) -> list[Transform]:
        return [EpisodeLimitTruncation()]


class SmacClass(PaperSmacv2Class):
    """BenchMARL task class of SMAC v1 maps (BenchMARL's SMACv2 task logic, no capability config)."""

    def get_env_fun(
        self, num_envs: int, continuous_actions: bool, seed: int | None, device: Any
    ) -> Callable[[], EnvBase]:
        if continuous_actions:
            raise ValueError("smac tasks have discrete actions only")
        from torchrl.envs.libs.smacv2 import SMACv2Env

        config = copy.deepcopy(dataclasses.asdict(SmacConfig(**self.config)))
        return lambda: SMACv2Env(
            categorical_actions=True, seed=seed, device=device, capability_config=None, **config
        )

    @staticmethod
    def env_name() -> str:
        return "smac"


SmacTask = task_enum(
    "SmacTask",
    SMAC_MAPS,
    SmacClass,
    SmacConfig,
    __name__,
    doc=(
        'SMAC v1 maps, one member per :data:`SMAC_MAPS` entry (``SmacTask["3S_VS_5Z"]``; task '
        'name ``smac/3s_vs_5z``).'
    ),
)


@dataclasses.dataclass
class Smacv2PaperConfig:
    """Arguments of smacv2's ``StarCraftCapabilityEnvWrapper`` for the paper's SMACv2 5 v 5 tasks
    (pow_spec.md §5.5); the yamls are ``conf/task/smacv2/{protoss,terran,zerg}_5_vs_5.yaml``."""

    map_name: str
    capability_config: Any
    obs_own_pos: bool
    conic_fov: bool
    num_fov_actions: int
    use_unit_ranges: bool
    min_attack_range: int
    obs_all_health: bool
    obs_own_health: bool
    obs_last_action: bool
    obs_pathing_grid: bool
    obs_terrain_height: bool
    obs_timestep_number: bool
    obs_instead_of_state: bool
    state_last_action: bool
    state_timestep_number: bool
    prob_obs_enemy: float
    action_mask: bool
    difficulty: str
    game_version: Optional[str]  # noqa: UP045  (Hydra's structured configs need Optional)
    step_mul: int
    move_amount: int
    continuing_episode: bool
    reward_sparse: bool
    reward_only_positive: bool
    reward_scale: bool
    reward_scale_rate: float
    reward_death_value: float
    reward_win: float
    reward_defeat: float
    reward_negative_scale: float
    heuristic_ai: bool
    debug: bool
    replay_dir: str
    replay_prefix: str

    def __post_init__(self) -> None:
        cap = self.capability_config
        if not isinstance(cap, dict) or not {"n_units", "n_enemies", "team_gen"} <= set(cap):
            raise ValueError(
                "smacv2 config: 'capability_config' needs n_units, n_enemies and team_gen"
            )


Smacv2PaperTask = task_enum(
    "Smacv2PaperTask",
    [f"{race}_5_vs_5" for race in ("protoss", "terran", "zerg")],
    PaperSmacv2Class,
    Smacv2PaperConfig,
    __name__,
    doc=(
        "``smacv2/{protoss,terran,zerg}_5_vs_5`` with the paper's settings. Registered over "
        "BenchMARL's entries of the same names, so the CLI and ``get_from_yaml()`` read the same "
        "yaml; BenchMARL's other ``smacv2/*`` tasks are unchanged."
    ),
)
