"""Predator-prey (stag hunt with a mis-capture penalty) as a batched TorchRL environment.

Rules follow ``shared/spec/pow_spec.md`` section 5.2 (PyMARL2's ``stag_hunt`` with the configuration
used by the POW release): a bounded ``grid_size`` x ``grid_size`` grid, ``n_agents`` predators,
``n_prey`` stags (no hares), 6 actions per agent

    0 right (0,+1), 1 down (+1,0), 2 left (0,-1), 3 up (-1,0), 4 stay, 5 catch

with availability masks, a ``(2r+1) x (2r+1) x 3`` observation window (``r = obs_radius``), a
``grid_size**2 * 3`` global state, agents moving one after the other in a random order (blocked by
occupied cells), then prey acting one after the other in a random order: a stag is captured when at
least 2 adjacent non-frozen agents chose ``catch`` (+10, the catchers are frozen and removed from the
grid), a stag with exactly one adjacent catcher adds ``miscapture_punishment`` once, and any other
alive stag moves to a uniformly random free neighbouring cell. An episode terminates when every stag
is captured or every agent is frozen, and is truncated (``truncated`` True, ``terminated`` False)
after ``episode_limit`` steps.

Everything is pure torch over a batch of ``num_envs`` environments (CPU or GPU). The only Python
loops in a step are the two sequential phases of the rules (over the agents in their random order,
then over the prey in theirs); each iteration handles all environments at once.

Cell contents live in one integer grid per environment, padded by ``obs_radius`` empty cells on each
side (so observation windows are plain gathers) plus one trailing scratch cell that absorbs the
writes of entities that do not move. Positions are flat indices into that padded grid.

TensorDict layout (batch size ``[num_envs]``):

* ``("agents", "action")``: int64 ``[B, n_agents]`` in ``0..5`` (input);
* ``("agents", "observation")``: float32 ``[B, n_agents, (2r+1)**2 * 3]``;
* ``("agents", "action_mask")``: bool ``[B, n_agents, 6]``;
* ``"state"``: float32 ``[B, grid_size**2 * 3]``;
* ``("agents", "reward")``: float32 ``[B, n_agents, 1]`` (the team reward, copied to every agent);
* ``"done"``, ``"terminated"``, ``"truncated"``: bool ``[B, 1]``;
* ``("info", k)`` for k in ``episode_return`` (float32), ``captures``, ``miscaptures``,
  ``episode_length`` (int64) and ``episode_limit`` (bool), all ``[B, 1]``: running per-episode
  counters, read by :meth:`PredatorPreyClass.log_info` at done steps.

Randomness comes from a ``torch.Generator`` owned by the env (``seed`` / :meth:`set_seed`); one draw
per step covers all environments, each environment getting its own numbers. The same seed and the
same sequence of calls give the same trajectories.

Tests and debugging: :meth:`PredatorPreyEnv.set_positions` places agents / stags (and frozen / alive
flags, step counters) by hand in chosen envs; :meth:`PredatorPreyEnv.positions` reads them back as
``(row, col)``. :meth:`PredatorPreyEnv.render` draws env 0 as an RGB array.

Deviation from the reference implementation: when the last capture happens on the very step that
reaches ``episode_limit``, the reference reports a time-out (``episode_limit`` True, bootstrapped);
here ``terminated`` is True and ``truncated`` False, because the episode did end.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from benchmarl.environments.common import TaskClass
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from custom_envs.common import task_enum

__all__ = [
    "ACTION_NAMES",
    "CATCH",
    "STAY",
    "PredatorPreyClass",
    "PredatorPreyConfig",
    "PredatorPreyEnv",
    "PredatorPreyTask",
    "random_available_actions",
]

ACTION_NAMES = ("right", "down", "left", "up", "stay", "catch")
N_ACTIONS = 6
STAY = 4
CATCH = 5
#: (d_row, d_col) of actions 0..3 (right, down, left, up).
MOVES = ((0, 1), (1, 0), (0, -1), (-1, 0))
#: Grid cell codes; the observation/state channel of code ``k >= 1`` is ``k - 1``.
EMPTY, AGENT, STAG = 0, 1, 2
#: Temporary code of a live agent that chose ``catch``, used during the prey phase of a step only
#: (``CATCHER & 3 == AGENT``, so one bitwise and restores the codes afterwards).
CATCHER = 5
N_CHANNELS = 3  # agent, stag, hare (hares are never placed: n_hare = 0 in the reference config)
STAG_REWARD = 10.0
CATCHERS_PER_STAG = 2


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------
def _check_int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"predator_prey config: '{key}' must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"predator_prey config: '{key}' must be >= {minimum}, got {value!r}")
    return int(value)


@dataclasses.dataclass
class PredatorPreyConfig:
    """Configuration of the predator-prey task (all keys are required in the yamls).

    Attributes:
        miscapture_punishment: added to the team reward once per stag that exactly one agent tried
            to catch (and that was therefore not captured) in a step. It is *added*, so a penalty is
            negative (the paper's p = -4 / -5); positive values are rejected.
        grid_size: side of the bounded square grid (10 in the paper).
        n_agents: number of predators (8).
        n_prey: number of stags (8).
        obs_radius: half-width of the square observation window (2 -> 5x5; the paper's text says
            3x3 but its results used 5x5, see the spec's ambiguity A6).
        episode_limit: number of steps after which an episode is truncated (200).
    """

    miscapture_punishment: float
    grid_size: int
    n_agents: int
    n_prey: int
    obs_radius: int
    episode_limit: int

    def __post_init__(self) -> None:
        p = self.miscapture_punishment
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
            raise ValueError(
                f"predator_prey config: 'miscapture_punishment' must be a finite number, got {p!r}"
            )
        if p > 0:
            raise ValueError(
                "predator_prey config: 'miscapture_punishment' is added to the reward, so it must "
                f"be <= 0 (e.g. -4.0), got {p!r}"
            )
        self.miscapture_punishment = float(p)
        self.grid_size = _check_int("grid_size", self.grid_size, 2)
        self.n_agents = _check_int("n_agents", self.n_agents, 1)
        self.n_prey = _check_int("n_prey", self.n_prey, 1)
        self.obs_radius = _check_int("obs_radius", self.obs_radius, 0)
        self.episode_limit = _check_int("episode_limit", self.episode_limit, 1)
        cells = self.grid_size * self.grid_size
        if self.n_agents + self.n_prey > cells:
            raise ValueError(
                f"predator_prey config: 'n_agents' + 'n_prey' = {self.n_agents + self.n_prey} "
                f"entities do not fit on a {self.grid_size}x{self.grid_size} grid "
                f"('grid_size' = {self.grid_size}, {cells} cells)"
            )


# --------------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------------
def random_available_actions(
    action_mask: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A uniformly random available action per agent, from a bool mask ``[..., n_actions]``."""
    keys = torch.rand(action_mask.shape, generator=generator, device=action_mask.device)
    return ((keys + 1.0) * action_mask).argmax(-1)  # available keys are >= 1, the others 0


class PredatorPreyEnv(EnvBase):
    """Batched predator-prey (stag hunt) environment; see the module docstring for the rules.

    Args:
        num_envs: number of environments simulated in parallel (the env's batch size).
        miscapture_punishment, grid_size, n_agents, n_prey, obs_radius, episode_limit: see
            :class:`PredatorPreyConfig` (validated the same way).
        seed: seed of the env's own random generator (random if ``None``).
        device: torch device of the env and of every tensor it returns.
    """

    group = "agents"

    def __init__(
        self,
        num_envs: int = 1,
        *,
        miscapture_punishment: float = 0.0,
        grid_size: int = 10,
        n_agents: int = 8,
        n_prey: int = 8,
        obs_radius: int = 2,
        episode_limit: int = 200,
        seed: int | None = None,
        device: torch.device | str | None = "cpu",
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        cfg = PredatorPreyConfig(
            miscapture_punishment=miscapture_punishment,
            grid_size=grid_size,
            n_agents=n_agents,
            n_prey=n_prey,
            obs_radius=obs_radius,
            episode_limit=episode_limit,
        )
        device = torch.device("cpu" if device is None else device)
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.config = cfg
        self.num_envs = num_envs
        self.miscapture_punishment = cfg.miscapture_punishment
        self.grid_size = cfg.grid_size
        self.n_agents = cfg.n_agents
        self.n_prey = cfg.n_prey
        self.obs_radius = cfg.obs_radius
        self.episode_limit = cfg.episode_limit
        self.window = 2 * cfg.obs_radius + 1
        self.obs_dim = self.window * self.window * N_CHANNELS
        self.state_dim = cfg.grid_size * cfg.grid_size * N_CHANNELS
        self.group_map = {self.group: [f"agent_{i}" for i in range(cfg.n_agents)]}
        self._make_tables()
        self._make_specs()
        self._init_state()
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        self.set_seed(seed)

    # ---------------------------------------------------------------- construction
    def _make_tables(self) -> None:
        """Index tables over the padded grid (built once, on the env's device)."""
        g, r = self.grid_size, self.obs_radius
        gp = g + 2 * r  # padded side
        self._gp = gp
        self._n_cells = gp * gp  # padded cells; index _n_cells is the scratch cell
        self._scratch = gp * gp
        rows = torch.arange(g).repeat_interleave(g)
        cols = torch.arange(g).repeat(g)
        interior = (rows + r) * gp + (cols + r)  # [g*g] padded index of each grid cell
        # target cell of each action (off-grid moves, stay and catch -> the cell itself), and the
        # static part of the action mask (moves inside the grid, stay; catch filled per step)
        nbr = torch.arange(self._n_cells).unsqueeze(1).repeat(1, N_ACTIONS)
        static_mask = torch.zeros(self._n_cells, N_ACTIONS, dtype=torch.bool)
        static_mask[:, STAY] = True
        for a, (dr, dc) in enumerate(MOVES):
            nr, nc = rows + dr, cols + dc
            inside = (nr >= 0) & (nr < g) & (nc >= 0) & (nc < g)
            nbr[interior, a] = torch.where(inside, (nr + r) * gp + (nc + r), interior)
            static_mask[interior, a] = inside
        # observation window offsets from the agent's cell, in (row, col) order
        dr = torch.arange(self.window).repeat_interleave(self.window) - r
        dc = torch.arange(self.window).repeat(self.window) - r
        win_off = dr * gp + dc
        pad_to_rc = torch.full((self._n_cells + 1, 2), -1, dtype=torch.long)
        pad_to_rc[interior] = torch.stack([rows, cols], -1)
        dev = self.device
        self._interior = interior.to(dev)
        self._pad_to_rc = pad_to_rc.to(dev)
        self._nbr_flat = nbr.reshape(-1).to(dev)  # [cells * 6]
        self._nbr4 = nbr[:, :4].contiguous().to(dev)  # [cells, 4]
        self._static_mask = static_mask.to(dev)
        self._stay_only = (torch.arange(N_ACTIONS) == STAY).to(dev)
        self._win_off = win_off.to(dev)
        b = self.num_envs
        # row-code tables (see _row_codes): a window row of w cells has code sum_k code_k 3**k
        w = self.window
        if w <= 9:
            codes = torch.arange(3**w)
            digits = torch.stack([(codes // 3**k) % 3 for k in range(w)], dim=-1)  # [3**w, w]
            table = torch.stack(
                [digits == AGENT, digits == STAG, torch.zeros_like(digits, dtype=torch.bool)], -1
            )
            self._row_table = table.view(3**w, w * N_CHANNELS).to(torch.float32).to(dev)
            self._row_off = ((torch.arange(w) - r) * gp).to(dev)  # centres of the window rows
            self._rc_buf = torch.zeros(b, self._n_cells, dtype=torch.int16, device=dev)
            if g % w == 0:
                # state as g // w segments per grid row, centred on columns w*i + r
                seg_rows = torch.arange(g).repeat_interleave(g // w)
                seg_cols = (torch.arange(g // w) * w + r).repeat(g)
                self._state_anchor = ((seg_rows + r) * gp + seg_cols + r).to(dev)
            else:
                self._state_anchor = None
        else:
            self._row_table = None
            self._state_anchor = None
        self._move_vals = torch.tensor([EMPTY, AGENT], dtype=torch.int16, device=dev).expand(b, 2)

    def _make_specs(self) -> None:
        b, n, dev = self.num_envs, self.n_agents, self.device
        bs = (b,)
        self.full_observation_spec = Composite(
            {
                self.group: Composite(
                    {
                        "observation": Unbounded(
                            shape=(b, n, self.obs_dim), dtype=torch.float32, device=dev
                        ),
                        "action_mask": Categorical(
                            n=2, shape=(b, n, N_ACTIONS), dtype=torch.bool, device=dev
                        ),
                    },
                    shape=(b, n),
                    device=dev,
                ),
                "state": Unbounded(shape=(b, self.state_dim), dtype=torch.float32, device=dev),
                "info": Composite(
                    {
                        "episode_return": Unbounded(shape=(b, 1), dtype=torch.float32, device=dev),
                        "captures": Unbounded(shape=(b, 1), dtype=torch.int64, device=dev),
                        "miscaptures": Unbounded(shape=(b, 1), dtype=torch.int64, device=dev),
                        "episode_length": Unbounded(shape=(b, 1), dtype=torch.int64, device=dev),
                        "episode_limit": Categorical(
                            n=2, shape=(b, 1), dtype=torch.bool, device=dev
                        ),
                    },
                    shape=bs,
                    device=dev,
                ),
            },
            shape=bs,
            device=dev,
        )
        self.full_action_spec = Composite(
            {
                self.group: Composite(
                    {
                        "action": Categorical(
                            n=N_ACTIONS, shape=(b, n), dtype=torch.int64, device=dev
                        )
                    },
                    shape=(b, n),
                    device=dev,
                )
            },
            shape=bs,
            device=dev,
        )
        self.full_reward_spec = Composite(
            {
                self.group: Composite(
                    {"reward": Unbounded(shape=(b, n, 1), dtype=torch.float32, device=dev)},
                    shape=(b, n),
                    device=dev,
                )
            },
            shape=bs,
            device=dev,
        )
        self.full_done_spec = Composite(
            {
                key: Categorical(n=2, shape=(b, 1), dtype=torch.bool, device=dev)
                for key in ("done", "terminated", "truncated")
            },
            shape=bs,
            device=dev,
        )

    def _init_state(self) -> None:
        b, n, p, dev = self.num_envs, self.n_agents, self.n_prey, self.device
        self._grid = torch.zeros(b, self._n_cells + 1, dtype=torch.int16, device=dev)
        self._agent_pos = torch.zeros(b, n, dtype=torch.long, device=dev)
        self._prey_pos = torch.zeros(b, p, dtype=torch.long, device=dev)
        self._frozen = torch.zeros(b, n, dtype=torch.bool, device=dev)
        self._prey_alive = torch.zeros(b, p, dtype=torch.bool, device=dev)
        self._steps = torch.zeros(b, dtype=torch.long, device=dev)
        self._ep_return = torch.zeros(b, dtype=torch.float32, device=dev)
        self._captures = torch.zeros(b, dtype=torch.long, device=dev)
        self._miscaptures = torch.zeros(b, dtype=torch.long, device=dev)
        self._terminated = torch.zeros(b, dtype=torch.bool, device=dev)
        self._truncated = torch.zeros(b, dtype=torch.bool, device=dev)

    _STATE_NAMES = (
        "_grid",
        "_agent_pos",
        "_prey_pos",
        "_frozen",
        "_prey_alive",
        "_steps",
        "_ep_return",
        "_captures",
        "_miscaptures",
        "_terminated",
        "_truncated",
    )

    def to(self, device: torch.device | str) -> PredatorPreyEnv:
        device = torch.device(device)
        if device == self.device:
            return self
        state = {k: getattr(self, k) for k in self._STATE_NAMES}
        seed = int(torch.randint(0, 2**62, (), generator=self.rng, device=self.rng.device).item())
        super().to(device)
        self._make_tables()
        for k, v in state.items():
            setattr(self, k, v.to(device))
        self.rng = torch.Generator(device=self.device)
        self.rng.manual_seed(seed)
        return self

    def _set_seed(self, seed: int | None) -> None:
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        if not hasattr(self, "rng") or self.rng.device != self.device:
            self.rng = torch.Generator(device=self.device)
        self.rng.manual_seed(int(seed))

    # ---------------------------------------------------------------- checkpoint state
    def get_extra_state(self) -> dict[str, torch.Tensor]:
        """The env's whole running state: every env's grid, positions, flags, step and episode
        counters, and the random generator's state (tensors only).

        PyTorch's extra-state hook, so ``env.state_dict()`` holds it (under ``_extra_state``) and
        ``env.load_state_dict()`` restores it: a run resumed from a checkpoint continues the
        interrupted episodes and random draws exactly.
        """
        state = {name: getattr(self, name).detach().clone() for name in self._STATE_NAMES}
        state["rng"] = self.rng.get_state()
        return state

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`get_extra_state`'s output (on this env's device).

        Raises:
            ValueError: ``state`` is not this env's (missing entries, or another number of
                envs, agents, prey or grid size).
        """
        missing = [name for name in (*self._STATE_NAMES, "rng") if name not in state]
        if missing:
            raise ValueError(f"predator_prey: the saved env state lacks {missing}")
        for name in self._STATE_NAMES:
            current, saved = getattr(self, name), state[name]
            if tuple(saved.shape) != tuple(current.shape):
                raise ValueError(
                    f"predator_prey: the saved env state has {name} of shape "
                    f"{tuple(saved.shape)}, this env {tuple(current.shape)} (another num_envs, "
                    "n_agents, n_prey, grid_size or obs_radius)"
                )
        for name in self._STATE_NAMES:
            dtype = getattr(self, name).dtype
            setattr(self, name, state[name].to(device=self.device, dtype=dtype).clone())
        self.rng.set_state(state["rng"].cpu())  # a generator's state is a CPU byte tensor

    # ---------------------------------------------------------------- helpers
    def _interior_view(self, grid: torch.Tensor) -> torch.Tensor:
        """The ``[B, g, g]`` grid cells (a strided view of the padded grid)."""
        g, r, gp = self.grid_size, self.obs_radius, self._gp
        return grid[:, : self._n_cells].view(-1, gp, gp)[:, r : r + g, r : r + g]

    def _rebuild_grid(self, ids: torch.Tensor) -> None:
        """Recompute the grid rows of the envs ``ids`` (long [k]) from the positions."""
        scratch = self._scratch
        grid = torch.zeros(
            ids.numel(), self._grid.shape[1], dtype=self._grid.dtype, device=self.device
        )
        live = ~self._frozen[ids]
        grid.scatter_(1, scratch + (self._agent_pos[ids] - scratch) * live, AGENT)
        alive = self._prey_alive[ids]
        grid.scatter_(1, scratch + (self._prey_pos[ids] - scratch) * alive, STAG)
        grid[:, scratch] = EMPTY
        self._grid[ids] = grid

    @staticmethod
    def _one_hot(codes: torch.Tensor) -> torch.Tensor:
        """Cell codes ``[..., M]`` (0 empty, 1 agent, 2 stag) -> float ``[..., M * 3]``."""
        c = codes.unsqueeze(-1)
        hot = torch.cat([c & 1, c >> 1, torch.zeros_like(c)], dim=-1)  # (agent, stag, hare)
        return hot.to(torch.float32).flatten(-2)

    def _row_codes(self) -> torch.Tensor:
        """Base-3 code of the ``window`` cells centred on each cell of a padded row.

        ``rc[b, x] = sum_k grid[b, x - r + k] * 3**k``; only meaningful where the segment stays in
        one padded row, i.e. for cells whose column is inside the grid (the only ones queried).
        """
        c, r = self._n_cells, self.obs_radius
        g = self._grid[:, :c]
        rc = self._rc_buf
        inner = rc[:, r : c - r]
        inner.copy_(g[:, : c - 2 * r])
        for k in range(1, self.window):
            inner.add_(g[:, k : c - 2 * r + k], alpha=3**k)
        return rc

    def _observe(self, reward: torch.Tensor | None = None) -> TensorDictBase:
        """The tensordict (obs, mask, state, info, done flags, and ``reward`` [B] if given)."""
        b, n = self.num_envs, self.n_agents
        grid, pos = self._grid, self._agent_pos
        live = ~self._frozen
        flat_pos = pos.view(-1)
        if self._row_table is not None:
            # one table lookup per window row: row code -> its (2r+1) * 3 channel values
            rc = self._row_codes()
            rows = rc.gather(1, (pos.unsqueeze(-1) + self._row_off).view(b, -1)).view(b, n, -1)
            rows = (rows * live.unsqueeze(-1)).long()  # frozen agents see zeros
            obs = torch.nn.functional.embedding(rows, self._row_table).view(b, n, self.obs_dim)
            if self._state_anchor is not None:
                seg = rc.index_select(1, self._state_anchor).long()
                state = torch.nn.functional.embedding(seg, self._row_table).view(b, -1)
            else:
                state = self._one_hot(self._interior_view(grid)).view(b, -1)
        else:
            win = (pos.unsqueeze(-1) + self._win_off).view(b, -1)
            codes = grid.gather(1, win).view(b, n, -1) * live.unsqueeze(-1)
            obs = self._one_hot(codes)
            state = self._one_hot(self._interior_view(grid)).view(b, -1)
        # action mask: static moves/stay of the cell, catch iff a stag/hare is next to the agent
        mask = self._static_mask.index_select(0, flat_pos).view(b, n, N_ACTIONS)
        near = grid.gather(1, self._nbr4.index_select(0, flat_pos).view(b, -1))
        mask[..., CATCH] = (near.view(b, n, 4) >= STAG).any(-1)
        mask &= live.unsqueeze(-1) | self._stay_only  # frozen agents: only `stay`
        # (copies: the returned tensors never alias the env's running state)
        terminated = self._terminated.unsqueeze(-1).clone()
        truncated = self._truncated.unsqueeze(-1).clone()
        agent_entries = {"observation": obs, "action_mask": mask}
        if reward is not None:
            agent_entries["reward"] = reward.view(b, 1, 1).expand(b, n, 1)
        agents = TensorDict._new_unsafe(agent_entries, batch_size=(b, n), device=self.device)
        info = TensorDict._new_unsafe(
            {
                "episode_return": self._ep_return.unsqueeze(-1).clone(),
                "captures": self._captures.unsqueeze(-1).clone(),
                "miscaptures": self._miscaptures.unsqueeze(-1).clone(),
                "episode_length": self._steps.unsqueeze(-1).clone(),
                "episode_limit": truncated,
            },
            batch_size=(b,),
            device=self.device,
        )
        return TensorDict._new_unsafe(
            {
                self.group: agents,
                "state": state,
                "info": info,
                "done": terminated | truncated,
                "terminated": terminated,
                "truncated": truncated,
            },
            batch_size=(b,),
            device=self.device,
        )

    # ---------------------------------------------------------------- reset / step
    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        b, n, p = self.num_envs, self.n_agents, self.n_prey
        reset = None if tensordict is None else tensordict.get("_reset", None)
        if reset is None:
            ids = torch.arange(b, device=self.device)
        else:
            ids = reset.view(b).to(self.device).nonzero().squeeze(-1)
        k = ids.numel()
        # agents one by one on uniformly random free cells, then the stags: the same law as the
        # first n + p entries of a uniformly random ordering of the cells.
        keys = torch.rand(k, self.grid_size**2, generator=self.rng, device=self.device)
        cells = self._interior[keys.topk(n + p, dim=1).indices]  # [k, n + p], distinct
        self._agent_pos[ids] = cells[:, :n]
        self._prey_pos[ids] = cells[:, n:]
        self._frozen[ids] = False
        self._prey_alive[ids] = True
        for name in ("_steps", "_ep_return", "_captures", "_miscaptures"):
            getattr(self, name)[ids] = 0
        self._terminated[ids] = False
        self._truncated[ids] = False
        self._rebuild_grid(ids)
        return self._observe()

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        # Hot path. Masked selections use arithmetic (`scratch + (idx - scratch) * flag`) rather than
        # torch.where, and the loops touch [B, <=4]-sized tensors only: indexing ops cost several ns
        # per element on CPU while elementwise arithmetic is vectorised.
        b, n, p = self.num_envs, self.n_agents, self.n_prey
        action = tensordict.get((self.group, "action")).reshape(b, n).to(self.device).long()
        grid = self._grid
        scratch = self._scratch
        pos = self._agent_pos
        frozen = self._frozen
        live = ~frozen
        rnd = torch.rand(b, n + p + 4 * p, generator=self.rng, device=self.device)
        agent_order = rnd[:, :n].argsort(dim=1)
        prey_order = rnd[:, n : n + p].argsort(dim=1)

        # ---- 1. agents move one by one in a random order. An agent only moves during its own turn,
        # so its start and target cells can be looked up for all agents beforehand; its move only
        # depends on whether the target is empty when its turn comes.
        target = self._nbr_flat.index_select(0, (pos * N_ACTIONS + action).view(-1)).view(b, n)
        wants = live & (target != pos)  # stay, catch and off-grid moves target the own cell
        ord_pos = pos.gather(1, agent_order)
        ord_tgt = target.gather(1, agent_order)
        ord_wants = wants.gather(1, agent_order)
        # (old cell, new cell) relative to the scratch cell, so that `rel * moved + scratch` sends
        # the writes of agents that do not move to the scratch cell
        rel_cells = (torch.stack([ord_pos, ord_tgt], dim=-1) - scratch).unbind(1)  # N x [B, 2]
        tgts, wants_i = ord_tgt.unsqueeze(-1).unbind(1), ord_wants.unsqueeze(-1).unbind(1)
        moved = []
        for i in range(n):
            mv = wants_i[i] & (grid.gather(1, tgts[i]) == EMPTY)  # [B, 1]
            grid.scatter_(1, rel_cells[i] * mv + scratch, self._move_vals)  # clear old, fill new
            moved.append(mv)
        moved = torch.cat(moved, 1)
        pos = pos.scatter(1, agent_order, ord_pos + (ord_tgt - ord_pos) * moved)
        self._agent_pos = pos

        # ---- 2. prey act one by one in a random order. Agent positions are final now; live
        # agents that chose `catch` are marked CATCHER in the grid, and a frozen catcher's cell is
        # emptied, so one gather around a stag shows both its free cells and its catchers.
        catching = (action == CATCH) & live
        grid.scatter_(1, (pos - scratch) * catching + scratch, CATCHER)
        ord_prey_pos = self._prey_pos.gather(1, prey_order)  # [B, P]
        ord_alive = self._prey_alive.gather(1, prey_order)
        ord_nbr = self._nbr4.index_select(0, ord_prey_pos.view(-1)).view(b, p, 4)
        # move keys in [1, 2) for alive prey, 0 for dead ones (which therefore never move)
        ord_keys = (rnd[:, n + p :].view(b, p, 4) + 1.0) * ord_alive.unsqueeze(-1)
        rel_here = (ord_prey_pos - scratch).unsqueeze(-1).unbind(1)
        alives = ord_alive.unsqueeze(-1).unbind(1)
        nbrs, keys = ord_nbr.unbind(1), ord_keys.unbind(1)
        n_catch, caught, moves, dests = [], [], [], []
        for j in range(p):
            nb = nbrs[j]  # [B, 4] neighbouring cells (off-grid ones -> the stag's own cell)
            codes = grid.gather(1, nb)
            # capture: at least 2 unfrozen catchers next to the stag (agents frozen by an earlier
            # capture in this step are no longer CATCHER)
            catchers = codes == CATCHER
            count = catchers.sum(-1, keepdim=True)
            got = (count >= CATCHERS_PER_STAG) & alives[j]  # [B, 1]
            grid.scatter_(1, (nb - scratch) * (catchers & got) + scratch, EMPTY)  # freeze
            # otherwise move to a uniformly random free neighbouring cell (stay if none is free)
            best, choice = (keys[j] * (codes == EMPTY)).max(-1, keepdim=True)
            mv = (best > 0) & ~got
            dest = nb.gather(1, choice)
            grid.scatter_(1, rel_here[j] * (got | mv) + scratch, EMPTY)
            grid.scatter_(1, (dest - scratch) * mv + scratch, STAG)
            n_catch.append(count)
            caught.append(got)
            moves.append(mv)
            dests.append(dest)
        n_catch = torch.cat(n_catch, 1)
        caught = torch.cat(caught, 1)
        new_pos = ord_prey_pos + (torch.cat(dests, 1) - ord_prey_pos) * torch.cat(moves, 1)
        self._prey_pos = self._prey_pos.scatter(1, prey_order, new_pos)
        self._prey_alive = self._prey_alive.scatter(1, prey_order, ord_alive & ~caught)
        # catchers still marked were not frozen; frozen ones had their cell emptied
        self._frozen = frozen | (catching & (grid.gather(1, pos) != CATCHER))
        grid.bitwise_and_(3)  # CATCHER -> AGENT
        captures = caught.sum(-1)
        misses = (ord_alive & (n_catch > 0) & ~caught).sum(-1)
        reward = captures * STAG_REWARD + misses * self.miscapture_punishment  # float [B]

        # ---- 3. bookkeeping
        self._steps = self._steps + 1
        self._ep_return = self._ep_return + reward
        self._captures = self._captures + captures
        self._miscaptures = self._miscaptures + misses
        self._terminated = ~self._prey_alive.any(-1) | self._frozen.all(-1)
        self._truncated = (self._steps >= self.episode_limit) & ~self._terminated
        return self._observe(reward)

    # ---------------------------------------------------------------- test / debugging helpers
    def set_positions(
        self,
        agent_pos: torch.Tensor | Sequence,
        prey_pos: torch.Tensor | Sequence,
        env_ids: torch.Tensor | Sequence[int] | int | None = None,
        *,
        frozen: torch.Tensor | Sequence | None = None,
        prey_alive: torch.Tensor | Sequence | None = None,
        steps: torch.Tensor | Sequence[int] | int | None = None,
    ) -> TensorDictBase:
        """Place the entities of chosen envs by hand (for tests) and return the fresh observation.

        Args:
            agent_pos: ``(row, col)`` of every agent, shape ``[n_agents, 2]`` (same for every env in
                ``env_ids``) or ``[len(env_ids), n_agents, 2]``.
            prey_pos: ``(row, col)`` of every stag, ``[n_prey, 2]`` or ``[len(env_ids), n_prey, 2]``.
            env_ids: the envs to modify (all by default).
            frozen: bool ``[n_agents]`` or ``[len(env_ids), n_agents]``; default none frozen.
            prey_alive: bool ``[n_prey]`` or ``[len(env_ids), n_prey]``; default all alive.
            steps: the step counter to set (default 0).

        The episode counters (return, captures, mis-captures) of those envs restart at 0. Live
        entities (non-frozen agents, alive stags) must be inside the grid and on distinct cells.

        Returns:
            A tensordict like :meth:`reset`'s for all envs; put the actions in it and call
            :meth:`step` on it.
        """
        b, n, p, g = self.num_envs, self.n_agents, self.n_prey, self.grid_size
        dev = self.device
        if env_ids is None:
            ids = torch.arange(b, device=dev)
        else:
            ids = torch.as_tensor(env_ids, dtype=torch.long, device=dev).reshape(-1)
        k = ids.numel()

        def expand(x: Any, shape: tuple[int, ...], dtype: torch.dtype, name: str) -> torch.Tensor:
            t = torch.as_tensor(x, dtype=dtype, device=dev)
            if t.ndim == 0 or t.shape == shape[1:]:
                t = t.expand(shape)
            if t.shape != shape:
                raise ValueError(
                    f"{name} must have shape {shape[1:]} or {shape}, got {tuple(t.shape)}"
                )
            return t

        a_rc = expand(agent_pos, (k, n, 2), torch.long, "agent_pos")
        p_rc = expand(prey_pos, (k, p, 2), torch.long, "prey_pos")
        fz = expand(False if frozen is None else frozen, (k, n), torch.bool, "frozen")
        al = expand(True if prey_alive is None else prey_alive, (k, p), torch.bool, "prey_alive")
        for name, rc in (("agent_pos", a_rc), ("prey_pos", p_rc)):
            if ((rc < 0) | (rc >= g)).any():
                raise ValueError(f"{name} has cells outside the {g}x{g} grid: {rc.tolist()}")
        flat_a = (a_rc[..., 0] + self.obs_radius) * self._gp + a_rc[..., 1] + self.obs_radius
        flat_p = (p_rc[..., 0] + self.obs_radius) * self._gp + p_rc[..., 1] + self.obs_radius
        for e in range(k):
            cells = torch.cat([flat_a[e][~fz[e]], flat_p[e][al[e]]])
            if cells.unique().numel() != cells.numel():
                raise ValueError("live agents and alive stags must occupy distinct cells")
        self._agent_pos[ids] = flat_a
        self._prey_pos[ids] = flat_p
        self._frozen[ids] = fz
        self._prey_alive[ids] = al
        st = (
            torch.zeros(k, dtype=torch.long, device=dev)
            if steps is None
            else (torch.as_tensor(steps, dtype=torch.long, device=dev).expand(k))
        )
        self._steps[ids] = st
        for name in ("_ep_return", "_captures", "_miscaptures"):
            getattr(self, name)[ids] = 0
        self._terminated[ids] = False
        self._truncated[ids] = False
        self._rebuild_grid(ids)
        return self._observe()

    def positions(self) -> dict[str, torch.Tensor]:
        """``(row, col)`` of agents ``[B, N, 2]`` and stags ``[B, P, 2]``, plus frozen / alive flags."""
        return {
            "agent_pos": self._pad_to_rc[self._agent_pos].clone(),
            "prey_pos": self._pad_to_rc[self._prey_pos].clone(),
            "frozen": self._frozen.clone(),
            "prey_alive": self._prey_alive.clone(),
            "steps": self._steps.clone(),
        }

    # ---------------------------------------------------------------- rendering
    def render(self, mode: str = "rgb_array", env_index: int = 0, cell_px: int = 16) -> np.ndarray:
        """An RGB frame (``uint8 [H, W, 3]``) of environment ``env_index``.

        White cells, grey grid lines, blue agents, red stags; frozen agents are not drawn (they have
        left the grid).
        """
        if mode != "rgb_array":
            raise ValueError(f"Only mode='rgb_array' is supported, got {mode!r}")
        g, s = self.grid_size, cell_px
        codes = self._grid[env_index, self._interior].view(g, g).cpu().numpy()
        palette = np.array(
            [[255, 255, 255], [40, 90, 220], [210, 40, 40], [60, 160, 60]], dtype=np.uint8
        )
        img = palette[codes].repeat(s, axis=0).repeat(s, axis=1)
        img[::s, :, :] = 180
        img[:, ::s, :] = 180
        img[-1, :, :] = 180
        img[:, -1, :] = 180
        return np.ascontiguousarray(img)


# --------------------------------------------------------------------------------------------------
# BenchMARL task
# --------------------------------------------------------------------------------------------------
class PredatorPreyClass(TaskClass):
    """BenchMARL task class of predator-prey; the config follows :class:`PredatorPreyConfig`."""

    def get_env_fun(
        self,
        num_envs: int,
        continuous_actions: bool,
        seed: int | None,
        device: Any,
    ) -> Callable[[], EnvBase]:
        if continuous_actions:
            raise ValueError("predator_prey has discrete actions only")
        config = dataclasses.asdict(PredatorPreyConfig(**self.config))
        return lambda: PredatorPreyEnv(num_envs=num_envs, seed=seed, device=device, **config)

    def supports_continuous_actions(self) -> bool:
        return False

    def supports_discrete_actions(self) -> bool:
        return True

    def has_render(self, env: EnvBase) -> bool:
        return True

    def max_steps(self, env: EnvBase) -> int:
        return int(self.config["episode_limit"])

    def group_map(self, env: EnvBase) -> dict[str, list[str]]:
        return {PredatorPreyEnv.group: [f"agent_{i}" for i in range(self.config["n_agents"])]}

    def observation_spec(self, env: EnvBase) -> Composite:
        spec = env.full_observation_spec_unbatched.clone()
        del spec["info"]
        del spec["state"]
        del spec[(PredatorPreyEnv.group, "action_mask")]
        return spec

    def action_mask_spec(self, env: EnvBase) -> Composite | None:
        spec = env.full_observation_spec_unbatched.clone()
        del spec["info"]
        del spec["state"]
        del spec[(PredatorPreyEnv.group, "observation")]
        return spec

    def state_spec(self, env: EnvBase) -> Composite | None:
        spec = env.full_observation_spec_unbatched.clone()
        del spec["info"]
        del spec[PredatorPreyEnv.group]
        return spec

    def info_spec(self, env: EnvBase) -> Composite | None:
        spec = env.full_observation_spec_unbatched.clone()
        del spec["state"]
        del spec[PredatorPreyEnv.group]
        return spec

    def action_spec(self, env: EnvBase) -> Composite:
        return env.full_action_spec_unbatched

    @staticmethod
    def log_info(batch: TensorDictBase) -> dict[str, float]:
        """Per-episode means over the episodes that finished in ``batch`` (NaN if none did).

        The keys are the ones BenchMARL's logger would otherwise fill with step averages of the
        running counters, so these per-episode values replace them.
        """
        done = batch.get(("next", "done")).squeeze(-1)
        info = batch.get(("next", "info"))
        out = {}
        for key in ("episode_return", "captures", "miscaptures", "episode_length", "episode_limit"):
            out[f"collection/info/{key}"] = (
                info.get(key).squeeze(-1)[done].to(torch.float).mean().item()
            )
        return out

    @staticmethod
    def env_name() -> str:
        return "predator_prey"


PredatorPreyTask = task_enum(
    "PredatorPreyTask",
    ["stag_hunt", "punish_4", "punish_5"],
    PredatorPreyClass,
    PredatorPreyConfig,
    __name__,
    doc='Predator-prey tasks: stag hunt without penalty, and with mis-capture penalties -4 and -5.',
)
