"""Mechanism probe for predator-prey: the matrix game's joint-action tables carried to the real task.

A fixed set of hand-built *probe states* (placed with
:meth:`custom_envs.predator_prey.PredatorPreyEnv.set_positions`) isolates the stag-hunt dilemma:

* ``pair_at_stag``: agents 0 and 1 on both sides of one stag, everybody else far away (no other
  entity inside anyone's observation window);
* ``lone_at_stag``: agent 0 alone next to that stag, agent 1 sent far away as well.

At each probe state and for the joint actions that matter there (both catch, one catches, both
stay, both move away; alone: catch, stay, move away) :func:`probe_values` evaluates the learned
networks of a :class:`~benchmarl_pow.objectives.WeightedMixerLoss`:

* ``Q_tot`` (ResQ: ``Q_jt``), the factorised value the policy follows;
* ``Q_star``, the central critic Q̂* (CW/OW-QMIX, POW);
* ``Q_r``, POW's recognition network, its ``lambda_delta_q`` (λΔQ ≤ 0) and the membership
  ``in_A_r`` = |λΔQ| < C of the recognition set A_r;
* ``reward``: the immediate team reward of that joint action (the env is stepped once), i.e. what a
  perfect critic should learn about this step: +10 for a coordinated capture, the penalty p for a
  lone catch.

All other agents take their greedy (available) action. The networks are evaluated at the first
step of an episode (zero recurrent state), as the matrix-game tables are.

:class:`PredatorPreyProbe` (a BenchMARL ``Callback``) runs the probe at every evaluation and
appends one JSON object per evaluation to ``probe.jsonl`` in the run folder; ``python -m
benchmarl_pow.reproduce plot`` draws it over training. Read-only with respect to training: it uses
its own environment instance and ``torch.no_grad``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from benchmarl.experiment.callback import Callback
from tensordict import TensorDictBase
from torch import Tensor

from custom_envs.predator_prey import CATCH, STAY, PredatorPreyConfig, PredatorPreyEnv

GROUP = "agents"
PROBE_JSONL = "probe.jsonl"
#: action ids of the moves that lead away from the scene stag (left for the agent on its left,
#: right for the agent on its right)
LEFT, RIGHT = 2, 0


@dataclass
class ProbeScene:
    """One hand-built probe state and the joint actions of its scene agents to evaluate.

    Attributes:
        name: identifier (``pair_at_stag``, ``lone_at_stag``).
        agent_pos: ``(row, col)`` of every agent, ``[n_agents, 2]``.
        prey_pos: ``(row, col)`` of every stag, ``[n_prey, 2]``; stag 0 is the scene's stag.
        scene_agents: indices of the agents whose actions are varied.
        joint_actions: label -> one action per scene agent.
    """

    name: str
    agent_pos: list[list[int]]
    prey_pos: list[list[int]]
    scene_agents: list[int]
    joint_actions: dict[str, list[int]] = field(default_factory=dict)


def _cheb(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(abs(a[0] - b[0]), abs(a[1] - b[1]))


def probe_scenes(config: PredatorPreyConfig | dict[str, Any]) -> list[ProbeScene]:
    """The probe states for a predator-prey configuration (deterministic).

    The scene stag sits at ``(r+1, r+1)`` (``r`` = obs radius, so the scene agents' windows stay on
    the grid); scene agents at its left and right. Far agents fill the cells farthest from it, and
    the other stags the cells at Chebyshev distance > ``r`` from every agent of either scene, so no
    agent sees anything but the scene.

    Raises:
        ValueError: if the grid is too small to place everything that way.
    """
    cfg = config if isinstance(config, PredatorPreyConfig) else PredatorPreyConfig(**config)
    g, n, p, r = cfg.grid_size, cfg.n_agents, cfg.n_prey, cfg.obs_radius
    if n < 2:
        raise ValueError("the predator-prey probe needs at least 2 agents")
    stag = (r + 1, r + 1)
    left, right = (stag[0], stag[1] - 1), (stag[0], stag[1] + 1)
    if right[1] >= g:
        raise ValueError(f"grid {g}x{g} too small for the probe with obs_radius {r}")
    cells = [(i, j) for i in range(g) for j in range(g)]
    far_order = sorted(
        (c for c in cells if _cheb(c, stag) > r + 1),
        key=lambda c: (-_cheb(c, stag), -(abs(c[0] - stag[0]) + abs(c[1] - stag[1])), c),
    )
    # agents 2.. (and agent 1 in the lone scene) on the farthest cells
    far = far_order[: n - 1]
    if len(far) < n - 1:
        raise ValueError(f"grid {g}x{g} too small to place {n} agents away from the probe scene")
    pair_agents = [left, right, *far[: n - 2]]
    lone_agents = [left, far[n - 2], *far[: n - 2]]
    everyone = set(pair_agents) | set(lone_agents)
    others = [c for c in cells if c != stag and all(_cheb(c, a) > r for a in everyone)]
    if len(others) < p - 1:
        raise ValueError(f"grid {g}x{g} too small to place {p} stags away from every agent")
    prey = [stag, *others[: p - 1]]
    as_lists = [list(c) for c in prey]
    pair = ProbeScene(
        name="pair_at_stag",
        agent_pos=[list(c) for c in pair_agents],
        prey_pos=as_lists,
        scene_agents=[0, 1],
        joint_actions={
            "both catch": [CATCH, CATCH],
            "0 catches, 1 stays": [CATCH, STAY],
            "0 stays, 1 catches": [STAY, CATCH],
            "both stay": [STAY, STAY],
            "both move away": [LEFT, RIGHT],
        },
    )
    lone = ProbeScene(
        name="lone_at_stag",
        agent_pos=[list(c) for c in lone_agents],
        prey_pos=as_lists,
        scene_agents=[0],
        joint_actions={"catch": [CATCH], "stay": [STAY], "move away": [LEFT]},
    )
    return [pair, lone]


def _masked_argmax(q: Tensor, mask: Tensor | None) -> Tensor:
    """Greedy available action, ``q`` ``[..., A]``, ``mask`` bool ``[..., A]`` -> ``[...]``."""
    if mask is None:
        return q.argmax(-1)
    return q.masked_fill(~mask, float("-inf")).argmax(-1)


def _first_step_values(module: Any, obs_td: TensorDictBase, out_key: Any) -> Tensor:
    """``module``'s per-agent output ``[n, A]`` at the single state of ``obs_td`` (batch ``[1]``),
    run as a one-step sequence from a zero recurrent state (as the loss unrolls stored chunks)."""
    keys = [
        k
        for k in module.in_keys
        if obs_td.get(k, None) is not None and "_hidden" not in str(k) and k != "is_init"
    ]
    seq = obs_td.select(*keys).unsqueeze(1)  # [1, 1]
    if "is_init" in module.in_keys:
        seq.set("is_init", torch.ones(1, 1, 1, dtype=torch.bool, device=seq.device))
    return module(seq).get(out_key)[0, 0]


def _state_of(loss: Any, obs_td: TensorDictBase) -> Tensor:
    """The mixer's state input ``[1, S]`` (the global state, or the concatenated observations)."""
    key = getattr(loss, "state_key", "state")
    if key is not None:
        return obs_td.get(key)
    return obs_td.get((GROUP, "observation")).flatten(-2)


def supports_probe(loss: Any) -> bool:
    """Whether ``loss`` exposes what the probe reads (our :class:`WeightedMixerLoss` family)."""
    return all(hasattr(loss, name) for name in ("agent_network", "mixer", "rule"))


@torch.no_grad()
def probe_values(
    loss: Any,
    env: PredatorPreyEnv,
    scenes: list[ProbeScene] | None = None,
    agent_inputs: Any = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate the loss's networks at every probe scene and joint action.

    Args:
        loss: a :class:`~benchmarl_pow.objectives.WeightedMixerLoss` (its public attributes
            ``agent_network``, ``mixer``, ``central_agent``, ``central_mixer``,
            ``recognition_mixer``, ``residual_agent``, ``residual_mixer``, ``rule`` are used).
        env: a predator-prey env (``num_envs`` >= 1; env 0 is overwritten by the probe states).
        scenes: default :func:`probe_scenes` of the env's config.
        agent_inputs: the algorithm's :class:`~custom_envs.agent_inputs.AgentInputs` of the
            group (``algorithm.agent_inputs(group)``), applied to the probe observations.

    Returns:
        ``{scene: {"greedy": [scene agents' greedy actions], "Q_i": [k, A], "joint_actions":
        {label: {"actions", "reward", "Q_tot", "Q_star"?, "Q_r"?, "lambda_delta_q"?, "in_A_r"?,
        "is_greedy"}}}}`` with plain Python numbers.
    """
    if scenes is None:
        scenes = probe_scenes(env.config)
    result: dict[str, dict[str, Any]] = {}
    n, n_actions = env.n_agents, 6
    agent_index = torch.arange(n, device=env.device)
    for scene in scenes:
        obs = env.set_positions(scene.agent_pos, scene.prey_pos, env_ids=[0])[:1]
        if agent_inputs is not None:  # PyMARL's agent input, as at an episode's first step
            key = (GROUP, "observation")
            obs.set(key, agent_inputs._append(obs.get(key), None))
        q = _first_step_values(loss.agent_network, obs, (GROUP, "action_value"))  # [n, A]
        mask = obs.get((GROUP, "action_mask"))[0]  # [n, A]
        greedy = _masked_argmax(q, mask)  # [n]
        labels = list(scene.joint_actions)
        joint = greedy.unsqueeze(0).repeat(len(labels), 1)  # [K, n]
        for k, label in enumerate(labels):
            joint[k, scene.scene_agents] = torch.as_tensor(
                scene.joint_actions[label], device=joint.device
            )
        k_count = joint.shape[0]
        q_taken = q[agent_index, joint]  # [K, n]
        max_q = q[agent_index, greedy].expand_as(q_taken)  # [K, n]
        state = _state_of(loss, obs)[0].expand(k_count, -1)  # [K, S]
        onehot = F.one_hot(joint, n_actions).to(q.dtype)  # [K, n, A]
        is_greedy = (joint == greedy).all(-1, keepdim=True)  # [K, 1]
        values: dict[str, Tensor] = {}
        mixer = loss.mixer
        if type(mixer).__name__ == "DmaqMixer":
            q_tot = mixer(q_taken, state, onehot, max_q)
        else:
            q_tot = mixer(q_taken, state)
        if getattr(loss, "has_residual", False):
            r = _first_step_values(loss.residual_agent, obs, ("agents", "residual_value"))
            residual = -loss.residual_mixer(r[agent_index, joint], state).abs()
            q_tot = q_tot + (~is_greedy).to(q_tot.dtype) * residual
        values["Q_tot"] = q_tot
        if getattr(loss, "has_central", False):
            c = _first_step_values(loss.central_agent, obs, ("agents", "central_value"))
            values["Q_star"] = loss.central_mixer(c[agent_index, joint], state)
        recognition = getattr(loss, "recognition_mixer", None)
        if recognition is not None:
            q_r, lambda_dq = recognition(q_taken - max_q, state, onehot)
            values["Q_r"] = q_r
            values["lambda_delta_q"] = lambda_dq
            if hasattr(loss.rule, "in_set"):
                values["in_A_r"] = loss.rule.in_set(lambda_dq)
        rewards = []
        for k in range(k_count):
            td = env.set_positions(scene.agent_pos, scene.prey_pos, env_ids=[0])
            action = td.get((GROUP, "action_mask")).new_zeros(
                td.batch_size[0], n, dtype=torch.long
            )
            action.fill_(STAY)
            action[0] = joint[k]
            td.set((GROUP, "action"), action)
            out = env.step(td)
            rewards.append(float(out.get(("next", GROUP, "reward"))[0, 0, 0]))
        table = {}
        for k, label in enumerate(labels):
            row: dict[str, Any] = {
                "actions": [int(a) for a in joint[k, scene.scene_agents]],
                "reward": rewards[k],
                "is_greedy": bool(is_greedy[k, 0]),
            }
            for name, value in values.items():
                v = value[k, 0]
                row[name] = bool(v) if v.dtype == torch.bool else float(v)
            table[label] = row
        result[scene.name] = {
            "greedy": [int(greedy[i]) for i in scene.scene_agents],
            "Q_i": q[scene.scene_agents].tolist(),
            "joint_actions": table,
        }
    env.reset()
    return result


class PredatorPreyProbe(Callback):
    """Run :func:`probe_values` at every evaluation; one JSON line per evaluation in
    ``<run folder>/probe.jsonl``: ``{"iteration", "frames", "scenes": probe_values(...)}``.

    Does nothing on tasks other than ``predator_prey/*`` or with losses outside our family.
    """

    def on_setup(self) -> None:
        experiment = self.experiment
        loss = experiment.losses.get(GROUP) if hasattr(experiment, "losses") else None
        self.enabled = (
            experiment.task.env_name() == "predator_prey"
            and loss is not None
            and supports_probe(loss)
        )
        if not self.enabled:
            return
        config = dict(experiment.task.config)
        self._env = PredatorPreyEnv(
            num_envs=1, seed=0, device=experiment.config.train_device, **config
        )
        self._scenes = probe_scenes(config)
        self.path = Path(experiment.folder_name) / PROBE_JSONL

    def on_evaluation_end(self, rollouts: list[TensorDictBase]) -> None:
        if not getattr(self, "enabled", False):
            return
        experiment = self.experiment
        loss = experiment.losses[GROUP]
        was_training = loss.training
        loss.eval()
        try:
            agent_inputs = getattr(experiment.algorithm, "agent_inputs", None)
            scenes = probe_values(
                loss, self._env, self._scenes, agent_inputs(GROUP) if agent_inputs else None
            )
        finally:
            loss.train(was_training)
        record = {
            "iteration": int(experiment.n_iters_performed),
            "frames": int(experiment.total_frames),
            "scenes": scenes,
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def __getstate__(self) -> dict[str, Any]:
        # BenchMARL pickles the callbacks into config.pkl; the env and the experiment stay out.
        return {k: v for k, v in self.__dict__.items() if k not in ("_env", "experiment")}


def read_probe(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``probe.jsonl``, one per frame count (a resumed run's later record for the
    same frame count replaces the earlier one), sorted by frames."""
    by_frames: dict[int, dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                record = json.loads(line)
                by_frames[int(record["frames"])] = record
    return [by_frames[k] for k in sorted(by_frames)]
