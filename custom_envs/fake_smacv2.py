"""A tiny StarCraft-free battle with the spec layout of BenchMARL's ``smacv2/*`` tasks.

It exists so that the SMAC/SMACv2 path (state, per-agent observations, action masks that change
over time, dead agents restricted to no-op, ``battle_won`` info, early termination) is exercised by
the test suite on machines without StarCraft II. It is *not* a model of StarCraft.

Rules (pure torch over a batch of ``num_envs`` battles, no Python loop over envs or units):
``n_agents`` allied units and ``n_enemies`` enemy units stand on a ``map_size`` x ``map_size``
grid, allies in the left third, enemies (static) in the right third, all with health 1. Actions
follow SMAC's layout: ``0`` no-op (the only action of a dead unit, unavailable to live ones),
``1`` stop, ``2..5`` move north / south / east / west (masked at the map's edges),
``6 + j`` attack enemy ``j`` (available while enemy ``j`` is alive and within ``attack_range``,
Chebyshev distance). Allies act first (moves, then attacks of ``agent_damage`` each); then every
surviving enemy hits a uniformly random live ally with probability ``enemy_hit_prob``
(``enemy_damage``). The team reward is the enemy health removed, plus 1 per kill and 2 for a win
(all enemies dead). The episode terminates when either side is wiped out and is truncated after
``episode_limit`` steps. Choosing an unavailable action raises ``ValueError``, as SMAC does.

TensorDict layout (batch size ``[B]`` = ``[num_envs]``), as ``torchrl.envs.SMACv2Env`` plus the
``truncated`` key:

* ``("agents", "action")``: int64 ``[B, n_agents]`` in ``0..6 + n_enemies - 1`` (input);
* ``("agents", "observation")``: float32 ``[B, n_agents, 3 + 4 * (n_enemies + n_agents)]``
  (all zeros for a dead agent);
* ``("agents", "action_mask")``: bool ``[B, n_agents, 6 + n_enemies]``;
* ``"state"``: float32 ``[B, 3 * (n_agents + n_enemies) + n_agents * (6 + n_enemies)]``
  (healths and positions, then the allies' last actions one-hot);
* ``"reward"``: float32 ``[B, 1]`` (the team reward, at the root as in SMACv2);
* ``"done"``, ``"terminated"``, ``"truncated"``: bool ``[B, 1]``;
* ``("info", k)``: ``battle_won``, ``episode_limit`` (bool ``[B]``), ``dead_allies``,
  ``dead_enemies`` (int64 ``[B]``).

This module imports nothing from ``benchmarl_pow``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from custom_envs.common import SmacLayoutClass, SmacLayoutEnv, task_enum

__all__ = [
    "ATTACK_OFFSET",
    "NOOP",
    "STOP",
    "FakeSmacv2Class",
    "FakeSmacv2Config",
    "FakeSmacv2Env",
    "FakeSmacv2Task",
]

NOOP, STOP = 0, 1
#: (dx, dy) of actions 2..5: north, south, east, west.
MOVES = ((0, 1), (0, -1), (1, 0), (-1, 0))
ATTACK_OFFSET = 6


@dataclasses.dataclass
class FakeSmacv2Config:
    """Configuration of the fake SMACv2 battle (every key required in the yamls).

    Attributes:
        n_agents: allied (learning) units.
        n_enemies: enemy units.
        map_size: side of the square grid (>= 3).
        attack_range: Chebyshev distance within which an enemy can be attacked.
        episode_limit: steps after which an episode is truncated.
        agent_damage: health an ally's attack removes (enemies start with 1).
        enemy_damage: health an enemy's hit removes (allies start with 1).
        enemy_hit_prob: probability that a live enemy hits someone in a step.
    """

    n_agents: int
    n_enemies: int
    map_size: int
    attack_range: int
    episode_limit: int
    agent_damage: float
    enemy_damage: float
    enemy_hit_prob: float

    def __post_init__(self) -> None:
        for key, minimum in (
            ("n_agents", 1),
            ("n_enemies", 1),
            ("map_size", 3),
            ("attack_range", 0),
            ("episode_limit", 1),
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"fake_smacv2 config: '{key}' must be an integer >= {minimum}")
        for key in ("agent_damage", "enemy_damage", "enemy_hit_prob"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"fake_smacv2 config: '{key}' must be a number >= 0")
            setattr(self, key, float(value))
        if self.enemy_hit_prob > 1:
            raise ValueError("fake_smacv2 config: 'enemy_hit_prob' must be <= 1")


class FakeSmacv2Env(SmacLayoutEnv, EnvBase):
    """Batched fake SMACv2 battle; see the module docstring for rules and layout.

    Args:
        num_envs: number of battles simulated in parallel (the env's batch size).
        seed: seed of the env's own generator (random if ``None``).
        device: torch device of the env and of every tensor it returns.
        **config: the keys of :class:`FakeSmacv2Config`.
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
        cfg = FakeSmacv2Config(**config)
        device = torch.device("cpu" if device is None else device)
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.config = cfg
        self.num_envs = num_envs
        self.n_agents, self.n_enemies = cfg.n_agents, cfg.n_enemies
        self.n_actions = ATTACK_OFFSET + cfg.n_enemies
        self.episode_limit = cfg.episode_limit
        self.obs_dim = 3 + 4 * (cfg.n_enemies + cfg.n_agents)
        self.state_dim = 3 * (cfg.n_agents + cfg.n_enemies) + cfg.n_agents * self.n_actions
        self.group_map = {self.group: [str(i) for i in range(cfg.n_agents)]}
        self._moves = torch.tensor(((0, 0),) * 2 + MOVES, dtype=torch.long, device=device)
        self.set_smac_layout_specs()
        b, n, m = num_envs, self.n_agents, self.n_enemies
        self._a_pos = torch.zeros(b, n, 2, dtype=torch.long, device=device)
        self._e_pos = torch.zeros(b, m, 2, dtype=torch.long, device=device)
        self._a_hp = torch.zeros(b, n, device=device)
        self._e_hp = torch.zeros(b, m, device=device)
        self._last_action = torch.zeros(b, n, dtype=torch.long, device=device)
        self._steps = torch.zeros(b, dtype=torch.long, device=device)
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        self.set_seed(seed)

    def _set_seed(self, seed: int | None) -> None:
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        self.rng = torch.Generator(device=self.device)
        self.rng.manual_seed(int(seed))

    # ------------------------------------------------------------------ observations
    def action_mask(self) -> torch.Tensor:
        """Available actions, bool ``[B, n_agents, n_actions]``."""
        size = self.config.map_size
        alive = self._a_hp > 0  # [B, n]
        target = self._a_pos.unsqueeze(2) + self._moves  # [B, n, 6, 2]
        inside = ((target >= 0) & (target < size)).all(-1)  # [B, n, 6]
        inside[..., NOOP] = False
        dist = (self._a_pos.unsqueeze(2) - self._e_pos.unsqueeze(1)).abs().amax(-1)  # [B, n, m]
        attack = (dist <= self.config.attack_range) & (self._e_hp > 0).unsqueeze(1)
        mask = torch.cat([inside, attack], dim=-1) & alive.unsqueeze(-1)
        mask[..., NOOP] = ~alive
        return mask

    def _observe(self, reward: torch.Tensor | None = None, won=None, limit=None, term=None):
        b, n, size = self.num_envs, self.n_agents, float(self.config.map_size)
        alive = self._a_hp > 0
        mask = self.action_mask()
        # as torchrl's SMACv2 wrapper: random actions drawn from the spec respect the mask
        self.full_action_spec[self.group, "action"].update_mask(mask)
        a_xy, e_xy = self._a_pos.float() / size, self._e_pos.float() / size
        rel_e = e_xy.unsqueeze(1) - a_xy.unsqueeze(2)  # [B, n, m, 2]
        e_visible = mask[..., ATTACK_OFFSET:].float().unsqueeze(-1)
        e_hp = self._e_hp.unsqueeze(1).expand(b, n, -1).unsqueeze(-1)
        enemy_feats = torch.cat([e_visible, rel_e, e_hp], -1).flatten(2)  # [B, n, 4m]
        rel_a = a_xy.unsqueeze(1) - a_xy.unsqueeze(2)  # [B, n, n, 2]
        a_alive = alive.float().unsqueeze(1).expand(b, n, n).unsqueeze(-1)
        a_hp = self._a_hp.unsqueeze(1).expand(b, n, n).unsqueeze(-1)
        ally_feats = torch.cat([a_alive, rel_a, a_hp], -1).flatten(2)  # [B, n, 4n]
        own = torch.cat([self._a_hp.unsqueeze(-1), a_xy], -1)  # [B, n, 3]
        obs = torch.cat([own, enemy_feats, ally_feats], -1) * alive.unsqueeze(-1)
        last = torch.nn.functional.one_hot(self._last_action, self.n_actions).float()
        state = torch.cat(
            [
                torch.cat([self._a_hp.unsqueeze(-1), a_xy], -1).flatten(1),
                torch.cat([self._e_hp.unsqueeze(-1), e_xy], -1).flatten(1),
                last.flatten(1),
            ],
            -1,
        )
        zeros = torch.zeros(b, dtype=torch.bool, device=self.device)
        won = zeros if won is None else won
        limit = zeros if limit is None else limit
        out = TensorDict(
            {
                self.group: TensorDict(
                    {"observation": obs, "action_mask": mask}, batch_size=(b, n)
                ),
                "state": state,
                "info": TensorDict(
                    {
                        "battle_won": won,
                        "episode_limit": limit,
                        "dead_allies": (~alive).sum(-1),
                        "dead_enemies": (self._e_hp <= 0).sum(-1),
                    },
                    batch_size=(b,),
                ),
            },
            batch_size=(b,),
            device=self.device,
        )
        if reward is not None:
            term = term.unsqueeze(-1)
            trunc = limit.unsqueeze(-1)
            out.set("reward", reward.unsqueeze(-1))
            out.set("terminated", term)
            out.set("truncated", trunc)
            out.set("done", term | trunc)
        return out

    # ------------------------------------------------------------------ dynamics
    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        b, n, m, size = self.num_envs, self.n_agents, self.n_enemies, self.config.map_size
        reset = None if tensordict is None else tensordict.get("_reset", None)
        ids = (
            torch.arange(b, device=self.device)
            if reset is None
            else reset.view(b).to(self.device).nonzero().squeeze(-1)
        )
        k, third = ids.numel(), max(size // 3, 1)
        rnd = torch.rand(k, n + m, 2, generator=self.rng, device=self.device)
        cells = (rnd * third).long()
        self._a_pos[ids] = cells[:, :n]
        self._e_pos[ids] = cells[:, n:] + (size - third)
        self._a_hp[ids] = 1.0
        self._e_hp[ids] = 1.0
        self._last_action[ids] = 0
        self._steps[ids] = 0
        return self._observe()

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        b, n, m, cfg = self.num_envs, self.n_agents, self.n_enemies, self.config
        action = tensordict.get((self.group, "action")).reshape(b, n).to(self.device).long()
        available = self.action_mask().gather(-1, action.clamp(0, self.n_actions - 1).unsqueeze(-1))
        invalid = ~available.squeeze(-1) | (action < 0) | (action >= self.n_actions)
        if invalid.any():
            env, agent = invalid.nonzero()[0].tolist()
            raise ValueError(
                f"Agent {agent} of env {env} cannot perform action {action[env, agent].item()}"
            )
        # allies: moves, then attacks
        self._a_pos = self._a_pos + self._moves[action.clamp(max=ATTACK_OFFSET - 1)] * (
            action < ATTACK_OFFSET
        ).unsqueeze(-1)
        attacking = action >= ATTACK_OFFSET
        target = (action - ATTACK_OFFSET).clamp(min=0)
        damage = torch.zeros(b, m, device=self.device)
        damage.scatter_add_(1, target, attacking.float() * cfg.agent_damage)
        e_before = self._e_hp
        self._e_hp = (e_before - damage).clamp(min=0.0)
        kills = ((e_before > 0) & (self._e_hp <= 0)).float().sum(-1)
        # surviving enemies hit a random live ally
        a_alive = self._a_hp > 0
        keys = torch.rand(b, m, n + 1, generator=self.rng, device=self.device)
        victim = ((keys[..., :n] + 1.0) * a_alive.unsqueeze(1)).argmax(-1)  # [B, m]
        hits = (keys[..., n] < cfg.enemy_hit_prob) & (self._e_hp > 0) & a_alive.any(-1, True)
        hurt = torch.zeros(b, n, device=self.device)
        hurt.scatter_add_(1, victim, hits.float() * cfg.enemy_damage)
        self._a_hp = (self._a_hp - hurt).clamp(min=0.0)
        self._last_action = action
        self._steps = self._steps + 1
        won = (self._e_hp <= 0).all(-1)
        lost = (self._a_hp <= 0).all(-1)
        term = won | lost
        limit = (self._steps >= cfg.episode_limit) & ~term
        reward = (e_before - self._e_hp).sum(-1) + kills + 2.0 * won.float()
        return self._observe(reward=reward, won=won, limit=limit, term=term)


class FakeSmacv2Class(SmacLayoutClass):
    """BenchMARL task class of the fake SMACv2 battle (specs split as BenchMARL's ``Smacv2Class``)."""

    def get_env_fun(
        self, num_envs: int, continuous_actions: bool, seed: int | None, device: Any
    ) -> Callable[[], EnvBase]:
        if continuous_actions:
            raise ValueError("fake_smacv2 has discrete actions only")
        config = dataclasses.asdict(FakeSmacv2Config(**self.config))
        return lambda: FakeSmacv2Env(num_envs=num_envs, seed=seed, device=device, **config)

    def max_steps(self, env: EnvBase) -> int:
        return int(self.config["episode_limit"])

    def group_map(self, env: EnvBase) -> dict[str, list[str]]:
        return {FakeSmacv2Env.group: [str(i) for i in range(self.config["n_agents"])]}

    @staticmethod
    def env_name() -> str:
        return "fake_smacv2"


FakeSmacv2Task = task_enum(
    "FakeSmacv2Task",
    ["battle_5_vs_5"],
    FakeSmacv2Class,
    FakeSmacv2Config,
    __name__,
    doc='Fake SMACv2 tasks (for tests of the StarCraft path without StarCraft II).',
)
