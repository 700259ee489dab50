"""JaxMARL's SMAX (a StarCraft-free SMAC) as a batched TorchRL environment.

SMAX re-implements SMAC-style micromanagement battles in JAX. This module wraps JaxMARL's
``HeuristicEnemySMAX`` (the allies learn; the enemies follow JaxMARL's built-in heuristic, as SMAC's
built-in AI) for ``num_envs`` battles at once: reset and step are ``jax.jit``-compiled functions of
``jax.vmap``-ed JaxMARL calls, and tensors cross between JAX and torch through DLPack (no copies
on CPU, no Python loop over environments). Needs the optional extra ``smax`` (``pip install
".[smax]"``, which installs ``jaxmarl`` with CPU JAX); importing this module does not import JAX.

SMAX is not SMAC: unit statistics, the physics and the enemy heuristic differ from StarCraft II, the
maps are a subset (no corridor, no MMM2), rewards are on a smaller scale (the enemy health removed,
as a fraction of the enemy team's, plus ``won_battle_bonus`` = 1 for a win) and episodes are cut at
``max_steps`` (JaxMARL's default 100). Results on ``smax/*`` are not the paper's numbers.

TensorDict layout (batch size ``[B]`` = ``[num_envs]``; ``n`` allies, ``m`` enemies):

* ``("agents", "action")``: int64 ``[B, n]`` in ``0..4 + m``: moves north/east/south/west (0-3),
  stop (4, the only action of a dead unit), attack enemy ``j`` (``5 + j``, while in range);
* ``("agents", "observation")``: float32 ``[B, n, obs_dim]`` (JaxMARL's unit-list observation);
* ``("agents", "action_mask")``: bool ``[B, n, 5 + m]``;
* ``"state"``: float32 ``[B, state_dim]`` (JaxMARL's world state);
* ``"reward"``: float32 ``[B, 1]`` (the allies' team reward, at the root as in SMACv2);
* ``"done"``, ``"terminated"``, ``"truncated"``: bool ``[B, 1]`` (terminated when a team is wiped
  out, truncated at ``max_steps``);
* ``("info", k)``: ``battle_won``, ``episode_limit`` (bool ``[B]``), ``dead_allies``,
  ``dead_enemies`` (int64 ``[B]``), as ``torchrl.envs.SMACv2Env``.

Seeding: the env owns a JAX PRNG key (``seed``/:meth:`set_seed`); every step and reset splits it,
so the same seed and the same actions give the same battles.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import importlib.util
import logging
import sys
from collections.abc import Callable
from typing import Any

import torch
from benchmarl.environments.common import TaskClass
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from custom_envs.common import ProjectTask, SmacLayoutClass, smac_layout_specs

__all__ = [
    "SMAX_MAPS",
    "SmaxClass",
    "SmaxConfig",
    "SmaxEnv",
    "SmaxTask",
    "require_jaxmarl",
]

#: The SMAX maps registered as ``smax/<map>`` tasks.
SMAX_MAPS = ("3s_vs_5z", "2s3z", "6h_vs_8z", "3s5z_vs_3s6z", "smacv2_5_units")
STOP = 4
N_MOVEMENT_ACTIONS = 5


def require_jaxmarl() -> None:
    """Raise a short ImportError naming the extra when ``jaxmarl`` is not installed."""
    if importlib.util.find_spec("jaxmarl") is None:
        raise ImportError(
            'smax/* tasks need JaxMARL (CPU JAX): pip install ".[smax]" (or pip install jaxmarl)'
        )


def _import_jax():
    """Import JAX and JaxMARL's SMAX (JaxMARL prints two lines on import; they are swallowed)."""
    require_jaxmarl()
    # JAX logs at INFO that it found no TPU; Hydra's logging config would show it
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    import jax

    # JaxMARL's package import prints two lines and rebinds sys.stdout: silence, then restore.
    stdout, stderr, saved_print = sys.stdout, sys.stderr, builtins.print
    builtins.print = lambda *args, **kwargs: None
    try:
        from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario
    finally:
        builtins.print = saved_print
        sys.stdout, sys.stderr = stdout, stderr
    return jax, HeuristicEnemySMAX, map_name_to_scenario


@dataclasses.dataclass(frozen=True)
class _Compiled:
    """The JaxMARL env of one config and its jitted, vmapped reset and step functions."""

    env: Any
    reset_fn: Callable
    step_fn: Callable


@functools.cache
def _compiled(
    map_name: str,
    max_steps: int,
    won_battle_bonus: float,
    walls_cause_death: bool,
    see_enemy_actions: bool,
    attack_mode: str,
) -> _Compiled:
    """Build (once per config and process) the jitted functions; XLA compiles them once per
    batch size, so later envs of the same config and size start at once.

    ``reset_fn(key, state | None, where [B] bool) -> (key, state, out)`` resets the battles where
    ``where`` is True (all of them when ``state`` is None); ``step_fn(key, state, action [B, n]
    int32) -> (key, state, out)``. ``out`` holds ``obs [B, n, F]``, ``state [B, S]``,
    ``mask [B, n, A]``, ``dead_allies``/``dead_enemies`` ``[B]`` and, after a step, ``reward``,
    ``won``, ``terminated``, ``truncated`` ``[B]``.
    """
    jax, HeuristicEnemySMAX, map_name_to_scenario = _import_jax()
    jnp = jax.numpy
    try:
        scenario = map_name_to_scenario(map_name)
    except KeyError:
        raise ValueError(f"smax: unknown map_name {map_name!r}") from None
    env = HeuristicEnemySMAX(
        scenario=scenario,
        max_steps=max_steps,
        won_battle_bonus=won_battle_bonus,
        walls_cause_death=walls_cause_death,
        see_enemy_actions=see_enemy_actions,
        attack_mode=attack_mode,
    )
    n, agents = env.num_allies, env.agents

    def outputs(state):
        """Observation ``[n, F]``, world state ``[S]``, mask ``[n, A]``, alive flags of one
        battle."""
        obs = env.get_obs(state)
        avail = env.get_avail_actions(state)
        alive = state.state.unit_alive
        return (
            jnp.stack([obs[a] for a in agents]),
            env.get_world_state(state).astype(jnp.float32),
            jnp.stack([avail[a] for a in agents]).astype(jnp.bool_),
            alive[:n],
            alive[n:],
        )

    def reset_one(key):
        return env.reset(key)[1]

    def step_one(key, state, action):
        _, state, rewards, dones, _ = env.step_env(
            key, state, {a: action[i] for i, a in enumerate(agents)}
        )
        return state, rewards[agents[0]], dones["__all__"]

    def finish(state, reward=None, done=None):
        obs, world, mask, a_alive, e_alive = jax.vmap(outputs)(state)
        out = {
            "obs": obs,
            "state": world,
            "mask": mask,
            "dead_allies": (~a_alive).sum(-1).astype(jnp.int32),
            "dead_enemies": (~e_alive).sum(-1).astype(jnp.int32),
        }
        if reward is not None:
            lost = ~a_alive.any(-1)
            terminated = ~e_alive.any(-1) | lost  # a team wiped out (a draw included)
            out.update(
                reward=reward.astype(jnp.float32),
                won=~e_alive.any(-1) & ~lost,
                terminated=terminated,
                truncated=done & ~terminated,
            )
        return out

    def reset_fn(key, state, where):
        key, sub = jax.random.split(key)
        fresh = jax.vmap(reset_one)(jax.random.split(sub, where.shape[0]))
        if state is not None:

            def select(new, old):
                return jnp.where(where.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

            fresh = jax.tree.map(select, fresh, state)
        return key, fresh, finish(fresh)

    def step_fn(key, state, action):
        key, sub = jax.random.split(key)
        keys = jax.random.split(sub, action.shape[0])
        state, reward, done = jax.vmap(step_one)(keys, state, action)
        return key, state, finish(state, reward, done)

    return _Compiled(env=env, reset_fn=jax.jit(reset_fn), step_fn=jax.jit(step_fn))


def _to_torch(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A JAX array as a torch tensor through DLPack (zero-copy on CPU)."""
    out = torch.from_dlpack(x)
    return out if dtype is None else out.to(dtype)


@dataclasses.dataclass
class SmaxConfig:
    """Configuration of an SMAX task (every key required in the yamls).

    Attributes:
        map_name: a JaxMARL SMAX scenario (``3s_vs_5z``, ``2s3z``, ``6h_vs_8z``,
            ``3s5z_vs_3s6z``, ``smacv2_5_units``, ...).
        max_steps: steps after which an episode is truncated (JaxMARL's default 100).
        won_battle_bonus: reward for a won battle (JaxMARL's default 1.0).
        walls_cause_death: whether units touching the map's edge die (JaxMARL's default True).
        see_enemy_actions: whether observations include the enemies' last actions.
        attack_mode: the enemy heuristic's targeting, ``closest`` or ``random``.
    """

    map_name: str
    max_steps: int
    won_battle_bonus: float
    walls_cause_death: bool
    see_enemy_actions: bool
    attack_mode: str

    def __post_init__(self) -> None:
        if not isinstance(self.map_name, str) or not self.map_name:
            raise ValueError("smax config: 'map_name' must be a non-empty string")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int):
            raise ValueError("smax config: 'max_steps' must be an integer >= 1")
        if self.max_steps < 1:
            raise ValueError("smax config: 'max_steps' must be an integer >= 1")
        if isinstance(self.won_battle_bonus, bool) or not isinstance(
            self.won_battle_bonus, (int, float)
        ):
            raise ValueError("smax config: 'won_battle_bonus' must be a number")
        self.won_battle_bonus = float(self.won_battle_bonus)
        for key in ("walls_cause_death", "see_enemy_actions"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"smax config: '{key}' must be true or false")
        if self.attack_mode not in ("closest", "random"):
            raise ValueError("smax config: 'attack_mode' must be 'closest' or 'random'")


class SmaxEnv(EnvBase):
    """Batched SMAX battles (JaxMARL) as a TorchRL env; see the module docstring.

    Args:
        num_envs: number of battles simulated in parallel (the env's batch size).
        seed: seed of the env's JAX PRNG key (random if ``None``).
        device: torch device of the returned tensors (JAX runs on its default CPU backend).
        **config: the keys of :class:`SmaxConfig`.
    """

    group = "agents"

    def __init__(
        self,
        num_envs: int = 1,
        *,
        seed: int | None = None,
        device: torch.device | str | None = "cpu",
        **config: Any,
    ) -> None:
        cfg = SmaxConfig(**config)
        device = torch.device("cpu" if device is None else device)
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.config = cfg
        self.num_envs = num_envs
        self._jax = _import_jax()[0]
        self._fns = _compiled(**dataclasses.asdict(cfg))
        env = self._fns.env
        self.n_agents, self.n_enemies = env.num_allies, env.num_enemies
        self.n_actions = env.num_ally_actions
        self.obs_dim = int(env.obs_size)
        self.state_dim = int(env.state_size)
        self.episode_limit = cfg.max_steps
        self.group_map = {self.group: [f"ally_{i}" for i in range(self.n_agents)]}
        self._make_specs()
        self._state = None
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        self.set_seed(seed)

    def _set_seed(self, seed: int | None) -> None:
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        self._key = self._jax.random.PRNGKey(int(seed) % (2**32))

    # ------------------------------------------------------------------ specs
    def _make_specs(self) -> None:
        b, n, a, dev = self.num_envs, self.n_agents, self.n_actions, self.device

        def flag(*shape: int) -> Categorical:
            return Categorical(n=2, shape=shape, dtype=torch.bool, device=dev)

        self.full_observation_spec = Composite(
            {
                self.group: Composite(
                    {
                        "observation": Unbounded(shape=(b, n, self.obs_dim), device=dev),
                        "action_mask": flag(b, n, a),
                    },
                    shape=(b, n),
                    device=dev,
                ),
                "state": Unbounded(shape=(b, self.state_dim), device=dev),
                "info": Composite(
                    {
                        "battle_won": flag(b),
                        "episode_limit": flag(b),
                        "dead_allies": Unbounded(shape=(b,), dtype=torch.long, device=dev),
                        "dead_enemies": Unbounded(shape=(b,), dtype=torch.long, device=dev),
                    },
                    shape=(b,),
                    device=dev,
                ),
            },
            shape=(b,),
            device=dev,
        )
        self.full_action_spec, self.full_reward_spec, self.full_done_spec = smac_layout_specs(
            self.group, b, n, a, dev
        )

    # ------------------------------------------------------------------ torch side
    def _tensordict(self, out: dict[str, Any]) -> TensorDict:
        b, n, dev = self.num_envs, self.n_agents, self.device
        mask = _to_torch(out["mask"]).to(dev)
        # random actions drawn from the spec respect the mask (as torchrl's SMACv2 wrapper)
        self.full_action_spec[self.group, "action"].update_mask(mask)
        zeros = torch.zeros(b, dtype=torch.bool, device=dev)
        truncated = _to_torch(out["truncated"]).to(dev) if "truncated" in out else zeros
        td = TensorDict(
            {
                self.group: TensorDict(
                    {"observation": _to_torch(out["obs"]).to(dev), "action_mask": mask},
                    batch_size=(b, n),
                ),
                "state": _to_torch(out["state"]).to(dev),
                "info": TensorDict(
                    {
                        "battle_won": _to_torch(out["won"]).to(dev) if "won" in out else zeros,
                        "episode_limit": truncated,
                        "dead_allies": _to_torch(out["dead_allies"], torch.long).to(dev),
                        "dead_enemies": _to_torch(out["dead_enemies"], torch.long).to(dev),
                    },
                    batch_size=(b,),
                ),
            },
            batch_size=(b,),
            device=dev,
        )
        if "reward" in out:
            terminated = _to_torch(out["terminated"]).to(dev).unsqueeze(-1)
            td.set("reward", _to_torch(out["reward"]).to(dev).unsqueeze(-1))
            td.set("terminated", terminated)
            td.set("truncated", truncated.unsqueeze(-1))
            td.set("done", terminated | truncated.unsqueeze(-1))
        return td

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        jnp = self._jax.numpy
        reset = None if tensordict is None else tensordict.get("_reset", None)
        if reset is None or self._state is None:
            where = jnp.ones((self.num_envs,), dtype=jnp.bool_)
            state = None
        else:
            where = self._jax.dlpack.from_dlpack(reset.reshape(-1).cpu().contiguous())
            state = self._state
        self._key, self._state, out = self._fns.reset_fn(self._key, state, where)
        return self._tensordict(out)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get((self.group, "action")).reshape(self.num_envs, self.n_agents)
        action = self._jax.dlpack.from_dlpack(action.to("cpu", torch.int32).contiguous())
        self._key, self._state, out = self._fns.step_fn(self._key, self._state, action)
        return self._tensordict(out)


class SmaxClass(SmacLayoutClass):
    """BenchMARL task class of SMAX maps (specs split as BenchMARL's ``Smacv2Class``)."""

    def get_env_fun(
        self, num_envs: int, continuous_actions: bool, seed: int | None, device: Any
    ) -> Callable[[], EnvBase]:
        if continuous_actions:
            raise ValueError("smax tasks have discrete actions only")
        require_jaxmarl()
        config = dataclasses.asdict(SmaxConfig(**self.config))
        return lambda: SmaxEnv(num_envs=num_envs, seed=seed, device=device, **config)

    def max_steps(self, env: EnvBase) -> int:
        return int(self.config["max_steps"])

    def group_map(self, env: EnvBase) -> dict[str, list[str]]:
        return env.group_map

    @staticmethod
    def env_name() -> str:
        return "smax"


class _SmaxTaskBase(ProjectTask):
    """Logic of :data:`SmaxTask` (its members are made below: map names start with digits)."""

    @staticmethod
    def associated_class() -> type[TaskClass]:
        return SmaxClass

    @staticmethod
    def config_class() -> type:
        return SmaxConfig


#: SMAX maps of JaxMARL (StarCraft-free SMAC), one member per :data:`SMAX_MAPS` entry
#: (``SmaxTask["3S_VS_5Z"]``; task name ``smax/3s_vs_5z``). Extra ``smax``.
SmaxTask = _SmaxTaskBase(
    "SmaxTask",
    [(name.upper(), None) for name in SMAX_MAPS],
    module=__name__,
    qualname="SmaxTask",
)
