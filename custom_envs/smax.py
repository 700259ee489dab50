"""JaxMARL's SMAX (a StarCraft-free SMAC) as a batched TorchRL environment.

SMAX re-implements SMAC-style micromanagement battles in JAX. This module wraps JaxMARL's
``HeuristicEnemySMAX`` (the allies learn; the enemies follow JaxMARL's built-in heuristic, as SMAC's
built-in AI) for ``num_envs`` battles at once: reset and step are ``jax.jit``-compiled functions of
``jax.vmap``-ed JaxMARL calls, and tensors cross between JAX and torch through DLPack (no copies
on CPU, no Python loop over environments). Needs the optional extra ``smax`` (``pip install
".[smax]"``, which installs ``jaxmarl`` with CPU JAX); importing this module does not import JAX.

Speed (see :func:`_compiled`): one jitted call per step, whose outputs come packed in one array
(one DLPack conversion, torch views of it); the enemies' observations, which JaxMARL's step
computes again, are carried over from the previous output; the partial reset of the battles that
a step finishes is computed inside that step (``fuse_reset``), so TorchRL's reset that follows
makes no JAX call. ``benchmarks/env_throughput.py`` times it.

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

Seeding: the env owns a JAX PRNG key (``seed``/:meth:`set_seed`); every step and reset splits it
(one key per battle), so the same seed, batch size and actions give the same battles. A reset
re-draws battle ``i`` from the ``i``-th key of its split, the same whether it re-draws every
battle, a few (partial reset) or is fused into a step.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import importlib.util
import logging
import math
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from custom_envs.common import SmacLayoutClass, SmacLayoutEnv, task_enum

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


#: Fields of a packed output: name, dtype, shape of one battle (letters: the dims of
#: :class:`_Compiled`). Each field starts at a multiple of 4 bytes (bool fields are padded to
#: whole 4-byte words).
_FIELDS = (
    ("obs", "float32", ("n", "F")),
    ("state", "float32", ("S",)),
    ("reward", "float32", (1,)),
    ("dead_allies", "int32", ()),
    ("dead_enemies", "int32", ()),
    ("mask", "bool", ("n", "A")),
    ("won", "bool", ()),
    ("terminated", "bool", (1,)),
    ("truncated", "bool", (1,)),
    ("done", "bool", (1,)),
)
_TORCH_DTYPES = {"float32": torch.float32, "int32": torch.int32, "bool": torch.bool}
#: The packing order: :data:`_FIELDS` grouped by dtype (as :class:`_Layout` reads them).
_ORDER = tuple(field for dtype in _TORCH_DTYPES for field in _FIELDS if field[1] == dtype)


def _reset_width(batch: int) -> int:
    """How many battles one pass of a reset re-draws (its ``vmap`` width); re-drawing ``k``
    battles takes ``ceil(k / width)`` passes. XLA's rounding can depend on the ``vmap`` width (a
    battle re-drawn in a batch of 8 or of 64 can differ in the last bit), so every reset (the
    first, a partial one, one fused into a step) re-draws in passes of this one width: a battle's
    key gives the same battle whichever path re-draws it (``tests/test_smax.py`` checks it)."""
    return min(batch, max(8, batch // 8))


def _round4(size: int) -> int:
    return -(-size // 4) * 4


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where the :data:`_FIELDS` of ``batch`` battles lie in a packed output (seen as bytes):
    bytes ``start`` to ``stop``, in ``groups`` of one dtype ``(torch dtype, start, stop, sizes,
    names, shapes)`` (bytes from ``start``; sizes in elements, padding named None).

    A fused step's output goes on with the reset of the battles that it finished: their flags
    (one byte a battle, bytes ``finished``), their indices (int32, bytes ``idx``, padded with
    ``batch``), the fields of those battles re-drawn (``fresh``: a layout of
    :func:`_reset_width` rows, in the order of the indices), then what only JAX reads (their
    state, from byte ``fresh.stop``)."""

    start: int
    stop: int
    groups: tuple[tuple[torch.dtype, int, int, list[int], list[str | None], list[tuple]], ...]
    finished: tuple[int, int] | None = None
    idx: tuple[int, int] | None = None
    fresh: _Layout | None = None

    @staticmethod
    def make(batch: int, dims: dict[str, int], start: int = 0, fused: bool = False) -> _Layout:
        groups, offset = [], 0
        for dtype in _TORCH_DTYPES:
            itemsize = 1 if dtype == "bool" else 4
            sizes, names, shapes, group_start = [], [], [], offset
            for name, field_dtype, shape in _ORDER:
                if field_dtype == dtype:
                    shape = (batch, *(dims.get(d, d) for d in shape))
                    size = math.prod(shape)
                    padding = _round4(size * itemsize) // itemsize - size  # 4-byte words
                    for part in ((size, name, shape), (padding, None, None))[: 1 + bool(padding)]:
                        sizes.append(part[0])
                        names.append(part[1])
                        shapes.append(part[2])
            offset += sum(sizes) * itemsize
            groups.append((_TORCH_DTYPES[dtype], group_start, offset, sizes, names, shapes))
        layout = _Layout(start, start + offset, tuple(groups))
        if not fused:
            return layout
        width = _reset_width(batch)
        finished = (layout.stop, layout.stop + batch)
        idx = (layout.stop + _round4(batch), layout.stop + _round4(batch) + 4 * width)
        fresh = _Layout.make(width, dims, start=idx[1])
        return dataclasses.replace(layout, finished=finished, idx=idx, fresh=fresh)


@dataclasses.dataclass(frozen=True)
class _Compiled:
    """The JaxMARL env of one config and its jitted, vmapped functions (see :func:`_compiled`);
    ``dims``: allies ``n``, observation size ``F``, world state size ``S``, actions ``A``."""

    env: Any
    dims: dict[str, int]
    reset_fn: Callable
    step_fn: Callable
    merge: Callable
    set_key: Callable
    read_row: Callable
    fused_words: Callable[[int], int]


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

    What a :class:`SmaxEnv` carries between calls is a ``row``: the PRNG key, the batched JaxMARL
    state and the enemies' observations of that state (the enemy heuristic acts on them; they are
    computed with the allies' ones, so that a step does not compute them again), packed into one
    int32 array (a call's cost grows with its number of arrays). Outputs are packed into one flat
    int32 array (:class:`_Layout`, in bytes), which crosses to torch with one DLPack call.

    * ``reset_fn(key | None, row | None, where [B] bool) -> (row, packed)`` re-draws the battles
      where ``where`` is True: the first reset (``row`` None) starts from ``key``, later ones from
      the carried key.
    * ``step_fn(row, prev, apply, action [B, n] int32, fuse_reset) -> (row, packed)`` steps every
      battle. With ``fuse_reset``, ``packed`` goes on with the partial reset of the battles that
      this step finished, as ``reset_fn`` gives it (:class:`_Layout`; skipped when none finished,
      flagged unusable when more than one pass would be needed): taking it costs torch a few row
      copies and no JAX call. The next call gets that output as ``prev`` and ``apply`` (int32
      scalar) 1 to start from the re-drawn battles (and the reset's key), else 0.
    * ``merge(row, prev, B) -> row``: the row with ``prev``'s reset put in (before a ``reset_fn``
      or ``set_key`` that follows a taken fused reset).
    * ``set_key(row, key) -> row`` puts a new key in a row; ``read_row(row, B) -> (key, state,
      eobs)`` unpacks one (for tests); ``fused_words(B)``: the size of a fused step's output.
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
    world = env._env  # JaxMARL's SMAX, which HeuristicEnemySMAX drives
    if world.action_type != "discrete":
        raise ValueError("smax: only discrete actions are supported")
    n, agents, enemies = env.num_allies, env.agents, env.enemy_agents
    dims = {
        "n": n,
        "F": int(env.obs_size),
        "S": int(env.state_size),
        "A": int(env.num_ally_actions),
    }

    # ------------------------------------------------------------ one battle
    def reset_one(key):
        return env.reset(key)[1]

    def outputs(state):
        """Everything read from one battle's state: the allies' and the enemies' observations
        ``[n, F]``/``[m, F]``, world state ``[S]``, action mask ``[n, A]``, alive flags."""
        unit_obs = world.get_obs_unit_list(state.state)  # what the enemy heuristic observes
        ally_obs = unit_obs if world.observation_type == "unit_list" else env.get_obs(state)
        avail = env.get_avail_actions(state)
        alive = state.state.unit_alive
        return {
            "obs": jnp.stack([ally_obs[a] for a in agents]),
            "eobs": jnp.stack([unit_obs[a] for a in enemies]),
            "state": env.get_world_state(state).astype(jnp.float32),
            "mask": jnp.stack([avail[a] for a in agents]).astype(jnp.bool_),
            "ally_alive": alive[:n],
            "enemy_alive": alive[n:],
        }

    def step_one(key, state, action, enemy_obs):
        """``HeuristicEnemySMAX.step_env`` (discrete actions), with the enemies' observations of
        ``state`` given instead of computed (a test checks it against ``step_env``)."""
        key, action_key = jax.random.split(key)
        enemy_actions, policy_state = env.get_enemy_actions(
            action_key, state.enemy_policy_state, enemy_obs
        )
        enemy_actions = jnp.stack([enemy_actions[a] for a in enemies])
        ally_move, ally_attack = world._decode_discrete_actions(action)
        enemy_move, enemy_attack = world._decode_discrete_actions(enemy_actions)
        _, new, rewards, dones, _ = world.step_env_no_decode(
            key,
            state.state,
            (
                jnp.concatenate([ally_move, enemy_move]),
                jnp.concatenate([ally_attack, enemy_attack]),
            ),
        )
        state = state.replace(enemy_policy_state=policy_state, state=new)
        return state, rewards[agents[0]], dones["__all__"]

    # ------------------------------------------------------------ packing
    def to_words(x):
        """``x`` flattened to int32 words: 4-byte types bitcast, others one word per element."""
        if jnp.dtype(x.dtype).itemsize == 4:
            return jax.lax.bitcast_convert_type(x, jnp.int32).reshape(-1)
        return x.astype(jnp.int32).reshape(-1)

    def from_words(w, like):
        if jnp.dtype(like.dtype).itemsize == 4:
            return jax.lax.bitcast_convert_type(w, like.dtype).reshape(like.shape)
        return w.astype(like.dtype).reshape(like.shape)  # int32 to bool: != 0

    def bytes_as_words(x):
        """A bool array as int32 words, 4 flags (bytes) a word in memory order, padded."""
        x = x.astype(jnp.uint8).reshape(-1)
        x = jnp.pad(x, (0, -x.shape[0] % 4))
        return jax.lax.bitcast_convert_type(x.reshape(-1, 4), jnp.int32)

    def carry_structure(batch):
        """Shapes and dtypes of what a row holds: ``(key, state, eobs)``."""

        def fresh(keys):
            state = jax.vmap(reset_one)(keys)
            return keys[0], state, jax.vmap(outputs)(state)["eobs"]

        return jax.eval_shape(fresh, jax.ShapeDtypeStruct((batch, 2), jnp.uint32))

    def pack_row(key, state, eobs):
        return jnp.concatenate([to_words(x) for x in jax.tree.leaves((key, state, eobs))])

    def unpack_row(row, batch):
        leaves, treedef = jax.tree.flatten(carry_structure(batch))
        out, offset = [], 0
        for like in leaves:
            size = math.prod(like.shape)
            out.append(from_words(row[offset : offset + size], like))
            offset += size
        return jax.tree.unflatten(treedef, out)

    def pack(out, reward=None, done=None):
        """The :data:`_FIELDS` of batched ``outputs`` as one flat int32 array."""
        batch = out["state"].shape[0]
        lost = ~out["ally_alive"].any(-1)
        fields = {
            "obs": out["obs"],
            "state": out["state"],
            "dead_allies": (~out["ally_alive"]).sum(-1).astype(jnp.int32),
            "dead_enemies": (~out["enemy_alive"]).sum(-1).astype(jnp.int32),
            "mask": out["mask"],
        }
        if reward is None:  # after a reset: no reward, no flag set
            fields["reward"] = jnp.zeros((batch,), jnp.float32)
            for key in ("won", "terminated", "truncated", "done"):
                fields[key] = jnp.zeros((batch,), jnp.bool_)
        else:
            enemy_lost = ~out["enemy_alive"].any(-1)
            terminated = enemy_lost | lost  # a team wiped out (a draw included)
            truncated = done & ~terminated
            fields.update(
                reward=reward.astype(jnp.float32),
                won=enemy_lost & ~lost,
                terminated=terminated,
                truncated=truncated,
                done=terminated | truncated,
            )
        return jnp.concatenate(
            [
                bytes_as_words(fields[name]) if dt == "bool" else to_words(fields[name].astype(dt))
                for name, dt, _ in _ORDER
            ]
        )

    # ------------------------------------------------------------ resets
    def redraw_rows(keys, idx):
        """Battles ``idx`` (one pass; out of range: padding) re-drawn from ``keys[idx]``: their
        state and outputs."""
        fresh = jax.vmap(reset_one)(keys[jnp.minimum(idx, keys.shape[0] - 1)])
        return fresh, jax.vmap(outputs)(fresh)

    def put_rows(batched, idx, rows):
        return jax.tree.map(lambda old, new: old.at[idx].set(new, mode="drop"), batched, rows)

    def redraw(keys, where, state, out):
        """``state`` and its ``outputs`` with the battles where ``where`` is True re-drawn, battle
        ``i`` from ``keys[i]``, in passes of :func:`_reset_width` battles (none: no pass; the
        usual one or two finished battles: one pass)."""
        batch = where.shape[0]
        width = _reset_width(batch)
        passes = -(-batch // width)
        # the battles to re-draw first, then `batch` (out of range: gathers clip, scatters drop)
        order = jnp.nonzero(where, size=passes * width, fill_value=batch)[0]

        def one_pass(i, carry):
            idx = jax.lax.dynamic_slice(order, (i * width,), (width,))
            return put_rows(carry, idx, redraw_rows(keys, idx))

        needed = (where.sum() + width - 1) // width
        return jax.lax.fori_loop(0, needed, one_pass, (state, out))

    def reset_fn(key, row, where):
        batch = where.shape[0]
        if row is None:  # every battle re-drawn: start from zeros of the right shapes
            _, state, _ = carry_structure(batch)
            state = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), state)
            out = jax.tree.map(
                lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(jax.vmap(outputs), state)
            )
        else:
            key, state, _ = unpack_row(row, batch)
            out = jax.vmap(outputs)(state)
        key, sub = jax.random.split(key)  # one key per battle, from `sub`
        state, out = redraw(jax.random.split(sub, batch), where, state, out)
        return pack_row(key, state, out["eobs"]), pack(out)

    # ------------------------------------------------------------ steps
    def row_words(batch):
        return sum(math.prod(x.shape) for x in jax.tree.leaves(carry_structure(batch)))

    def fused_words(batch):
        return _Layout.make(batch, dims, fused=True).fresh.stop // 4 + row_words(
            _reset_width(batch)
        )

    def current(row, prev, apply, batch):
        """``(key, state, eobs)`` of ``row``, with ``prev``'s re-drawn battles and key if
        ``apply``."""
        key, state, eobs = unpack_row(row, batch)
        layout, width = _Layout.make(batch, dims, fused=True), _reset_width(batch)
        idx = prev[layout.idx[0] // 4 : layout.idx[1] // 4]
        start = layout.fresh.stop // 4
        fresh_key, fresh_state, fresh_eobs = unpack_row(
            prev[start : start + row_words(width)], width
        )
        idx = jnp.where(apply != 0, idx, batch)  # out of range: nothing put
        key = jnp.where(apply != 0, fresh_key, key)
        state, eobs = put_rows((state, eobs), idx, (fresh_state, fresh_eobs))
        return key, state, eobs

    def merge(row, prev, batch):
        return pack_row(*current(row, prev, jnp.int32(1), batch))

    def step_fn(row, prev, apply, action, fuse_reset=True):
        batch = action.shape[0]
        key, state, eobs = current(row, prev, apply, batch)
        key, sub = jax.random.split(key)
        done_before = state.state.done
        state, reward, done = jax.vmap(step_one)(jax.random.split(sub, batch), state, action, eobs)
        out = jax.vmap(outputs)(state)
        row, packed = pack_row(key, state, out["eobs"]), pack(out, reward, done)
        if not fuse_reset:
            return row, packed
        # The reset of the battles that this step finished (battles stepped on after their end,
        # without a reset, are left out), as reset_fn gives it when one pass re-draws them all:
        # no pass when none finished; with more than a pass can take, no flag is set (SmaxEnv
        # takes it only for a reset of exactly the flagged battles).
        finished = done & ~done_before
        width, count = _reset_width(batch), finished.sum()
        idx = jnp.nonzero(finished, size=width, fill_value=batch)[0]
        reset_key, sub = jax.random.split(key)

        def fresh():
            return redraw_rows(jax.random.split(sub, batch), idx)

        def none():
            shapes = jax.eval_shape(fresh)
            return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

        fresh_state, fresh_out = jax.lax.cond(count > 0, fresh, none)
        return row, jnp.concatenate(
            [
                packed,
                bytes_as_words(finished & (count <= width)),
                idx.astype(jnp.int32),
                pack(fresh_out),
                pack_row(reset_key, fresh_state, fresh_out["eobs"]),
            ]
        )

    def set_key(row, key):
        return row.at[: key.shape[0]].set(to_words(key))

    return _Compiled(
        env=env,
        dims=dims,
        reset_fn=jax.jit(reset_fn),
        step_fn=jax.jit(step_fn, static_argnames="fuse_reset"),
        merge=jax.jit(merge, static_argnums=2),
        set_key=jax.jit(set_key),
        read_row=jax.jit(unpack_row, static_argnums=1),
        fused_words=fused_words,
    )


class _JaxCarry:
    """What a :class:`SmaxEnv` holds on the JAX side (a plain object: EnvBase's ``__setattr__``
    is slow for per-step updates); see :func:`_compiled`."""

    __slots__ = ("key", "row", "prev", "apply", "ready")

    def __init__(self) -> None:
        self.key = None  # the seeded PRNG key, until the first reset packs it into `row`
        self.row = None
        self.prev = None  # the last fused step's packed output (JAX), or zeros of its size
        self.apply = False  # whether the next call starts from prev's re-drawn battles
        self.ready = None  # the last fused step's output (torch bytes, field views), until a reset


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


class SmaxEnv(SmacLayoutEnv, EnvBase):
    """Batched SMAX battles (JaxMARL) as a TorchRL env; see the module docstring.

    Args:
        num_envs: number of battles simulated in parallel (the env's batch size).
        seed: seed of the env's JAX PRNG key (random if ``None``).
        device: torch device of the returned tensors (JAX runs on its default CPU backend).
        fuse_reset: compute the partial reset of the battles that a step finishes inside that
            step (faster under TorchRL's ``step_and_maybe_reset``; the same data either way).
        **config: the keys of :class:`SmaxConfig`.
    """

    group = "agents"

    def __init__(
        self,
        num_envs: int = 1,
        *,
        seed: int | None = None,
        device: torch.device | str | None = "cpu",
        fuse_reset: bool = True,
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
        self.set_smac_layout_specs()
        self._group_batch = torch.Size([num_envs, self.n_agents])
        self.fuse_reset = fuse_reset
        self._layouts = {
            fused: _Layout.make(num_envs, self._fns.dims, fused=fused) for fused in (False, True)
        }
        jnp = self._jax.numpy
        self._apply = {False: jnp.asarray(0, jnp.int32), True: jnp.asarray(1, jnp.int32)}
        self._jx = _JaxCarry()
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        self.set_seed(seed)

    def _set_seed(self, seed: int | None) -> None:
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        key = self._jax.random.PRNGKey(int(seed) % (2**32))
        jx = self._jx
        if jx.row is None:
            jx.key = key
        else:
            self._merge()
            jx.row = self._fns.set_key(jx.row, key)
        jx.ready = None

    # ------------------------------------------------------------------ torch side
    def _views(self, buf: torch.Tensor, layout: _Layout) -> dict[str, torch.Tensor]:
        """The fields of a packed output (``buf``: its CPU bytes) as views, on the env's device
        (each JAX call gives a fresh buffer: nothing is shared with earlier outputs)."""
        buf = buf[layout.start : layout.stop].to(self.device)
        v = {}
        for dtype, start, stop, sizes, names, shapes in layout.groups:
            for name, shape, part in zip(
                names, shapes, buf[start:stop].view(dtype).split_with_sizes(sizes)
            ):
                if name is not None:
                    v[name] = part.view(shape)
        return v

    def _tensordict(self, v: dict[str, torch.Tensor], step: bool) -> TensorDict:
        """The output TensorDict of the fields ``v`` (a reset's has no reward; its flags are
        False), built without validation: the layout matches the specs by construction."""
        # random actions drawn from the spec respect the mask (as torchrl's SMACv2 wrapper)
        self.full_action_spec[self.group, "action"].update_mask(v["mask"])
        new, device, batch = TensorDict._new_unsafe, self.device, self.batch_size
        truncated = v["truncated"]
        source = {
            self.group: new(
                {"observation": v["obs"], "action_mask": v["mask"]},
                batch_size=self._group_batch,
                device=device,
            ),
            "state": v["state"],
            "info": new(
                {
                    "battle_won": v["won"],
                    "episode_limit": truncated.view(batch),
                    "dead_allies": v["dead_allies"].long(),
                    "dead_enemies": v["dead_enemies"].long(),
                },
                batch_size=batch,
                device=device,
            ),
            "done": v["done"],
            "terminated": v["terminated"],
            "truncated": truncated,
        }
        if step:
            source["reward"] = v["reward"]
        return new(source, batch_size=batch, device=device)

    def _fused_reset(
        self, buf: torch.Tensor, v: dict[str, torch.Tensor], where: torch.Tensor
    ) -> TensorDict:
        """The reset of the battles ``where`` (those that the last step finished) from that
        step's packed output ``buf`` (``v``: its step fields): the step's observations with the
        re-drawn battles' rows put in."""
        fresh = self._views(buf, self._layouts[True].fresh)
        idx = where.nonzero().squeeze(-1).to(self.device)  # ascending, as the step's indices
        out = {}
        for name in ("obs", "state", "mask", "dead_allies", "dead_enemies"):
            out[name] = v[name].index_copy(0, idx, fresh[name][: idx.shape[0]])
        flags = torch.zeros((4, self.num_envs, 1), dtype=torch.bool, device=self.device)
        out["won"] = flags[0].view(self.num_envs)
        out["terminated"], out["truncated"], out["done"] = flags[1], flags[2], flags[3]
        return self._tensordict(out, step=False)

    def _merge(self) -> None:
        """Put a taken fused reset into the carried row (before a call other than a step)."""
        jx = self._jx
        if jx.apply:
            jx.row, jx.apply = self._fns.merge(jx.row, jx.prev, self.num_envs), False

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        jx = self._jx
        reset = None if tensordict is None else tensordict.get("_reset", None)
        ready, jx.ready = jx.ready, None
        if reset is None or jx.row is None:
            where = np.ones((self.num_envs,), dtype=bool)
        else:
            where = reset.reshape(-1).cpu()
            if ready is not None and bool(where.any()):
                buf, v = ready
                if torch.equal(where, buf[slice(*self._layouts[True].finished)].view(torch.bool)):
                    # the battles that the last step finished: that step re-drew them already
                    jx.apply = True
                    return self._fused_reset(buf, v, where)
            where = where.numpy()
        self._merge()
        jx.row, packed = self._fns.reset_fn(jx.key if jx.row is None else None, jx.row, where)
        jx.key = None
        if jx.prev is None:
            words = self._fns.fused_words(self.num_envs)
            jx.prev = self._jax.numpy.zeros((words,), dtype=self._jax.numpy.int32)
        buf = torch.from_dlpack(packed).view(torch.uint8)
        return self._tensordict(self._views(buf, self._layouts[False]), step=False)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        jx = self._jx
        action = tensordict.get((self.group, "action")).reshape(self.num_envs, self.n_agents)
        action = action.to("cpu", torch.int32).numpy()
        jx.row, packed = self._fns.step_fn(
            jx.row, jx.prev, self._apply[jx.apply], action, fuse_reset=self.fuse_reset
        )
        jx.apply, buf = False, torch.from_dlpack(packed).view(torch.uint8)
        v = self._views(buf, self._layouts[self.fuse_reset])
        if self.fuse_reset:
            jx.prev, jx.ready = packed, (buf, v)
        return self._tensordict(v, step=True)


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


SmaxTask = task_enum(
    "SmaxTask",
    SMAX_MAPS,
    SmaxClass,
    SmaxConfig,
    __name__,
    doc=(
        'SMAX maps of JaxMARL (StarCraft-free SMAC), one member per :data:`SMAX_MAPS` entry '
        '(``SmaxTask["3S_VS_5Z"]``; task name ``smax/3s_vs_5z``). Extra ``smax``.'
    ),
)
