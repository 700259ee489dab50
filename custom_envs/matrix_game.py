"""The one-step cooperative matrix game (pow_spec.md §5.1) as a batched TorchRL environment.

Two agents each pick one of ``|A|`` actions; the team receives ``payoff[a_0][a_1]`` (rows are
agent 0's action) and the episode terminates after that single step. Every agent observes the
one-hot step counter (``[1, 0]`` at reset, ``[0, 1]`` after the step) and so does the global
state, exactly as in PyMARL's ``one_step_matrix_game``. By default each agent's observation also
carries its one-hot id, as PyMARL's agent input does (``obs_agent_id``, pow_spec.md §1.5: input
2 + 2 = 4): BenchMARL's models share parameters across agents and do not add ids themselves, so
without it both agents would always hold identical utilities.

The batch dimension is the number of parallel games; everything is pure torch, on any device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from benchmarl.environments.common import TaskClass
from benchmarl.utils import DEVICE_TYPING
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Binary, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from custom_envs.common import task_enum

N_AGENTS = 2

#: The paper's Fig. 2 payoff (pow_spec.md §5.1): the optimum (A, A) = 8, the monotone trap (C, C) = 7.9.
NONMONOTONIC_PAYOFF = [[8.0, -12.0, -12.0], [-12.0, 0.0, 0.0], [-12.0, 0.0, 7.9]]
#: Claus & Boutilier (1998), the climbing game.
CLIMBING_PAYOFF = [[11.0, -30.0, 0.0], [-30.0, 7.0, 6.0], [0.0, 0.0, 5.0]]
#: Claus & Boutilier (1998), the penalty game with k = -100.
PENALTY_PAYOFF = [[10.0, 0.0, -100.0], [0.0, 2.0, 0.0], [-100.0, 0.0, 10.0]]


def validate_payoff(payoff: Sequence[Sequence[float]]) -> list[list[float]]:
    """Return ``payoff`` as a list of float rows, or raise a ``ValueError`` saying what is wrong.

    The payoff must be a square matrix (rows = agent 0's action), at least 2x2, of finite numbers.
    """
    if not isinstance(payoff, Sequence) or isinstance(payoff, str) or len(payoff) < 2:
        raise ValueError(f"payoff must be a square list of lists, at least 2x2; got {payoff!r}")
    n = len(payoff)
    rows = []
    for i, row in enumerate(payoff):
        if not isinstance(row, Sequence) or isinstance(row, str) or len(row) != n:
            raise ValueError(
                f"payoff must be square ({n}x{n}): row {i} is {row!r}, expected {n} numbers"
            )
        values = []
        for j, value in enumerate(row):
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"payoff[{i}][{j}] = {value!r} is not a number") from None
            if not math.isfinite(value):
                raise ValueError(f"payoff[{i}][{j}] = {value!r} is not finite")
            values.append(value)
        rows.append(values)
    return rows


def validate_unavailable_actions(
    unavailable: Sequence[Sequence[int]], n_actions: int
) -> list[list[int]]:
    """Check the per-agent lists of unavailable action indices; every agent keeps one action."""
    if len(unavailable) != N_AGENTS:
        raise ValueError(
            f"unavailable_actions must hold one list per agent ({N_AGENTS}); got {unavailable!r}"
        )
    checked = []
    for agent, actions in enumerate(unavailable):
        actions = [int(a) for a in actions]
        bad = [a for a in actions if not 0 <= a < n_actions]
        if bad:
            raise ValueError(
                f"unavailable_actions[{agent}] = {actions}: indices {bad} are outside 0..{n_actions - 1}"
            )
        if len(set(actions)) >= n_actions:
            raise ValueError(
                f"unavailable_actions[{agent}] = {actions} leaves agent {agent} no available action"
            )
        checked.append(sorted(set(actions)))
    return checked


class MatrixGameEnv(EnvBase):
    """A batch of one-step two-agent cooperative matrix games.

    Keys (``*B`` = ``batch_size``, n = 2 agents, |A| = payoff size):
        - ``("agents", "observation")``: ``[*B, n, 2 (+ n)]`` one-hot step counter (and agent id);
        - ``"state"``: ``[*B, 2]``, the same vector;
        - ``("agents", "action_mask")``: ``[*B, n, |A|]`` bool;
        - ``("agents", "action")``: ``[*B, n]`` categorical;
        - ``("agents", "reward")``: ``[*B, n, 1]``, the shared payoff;
        - ``"done"``, ``"terminated"``, ``"truncated"``: ``[*B, 1]``; every step terminates.

    Args:
        payoff: square matrix of team rewards, rows = agent 0's action.
        num_envs: number of games in the batch.
        unavailable_actions: per agent, the action indices masked out (default: none).
        device: torch device.
        observe_agent_id: append each agent's one-hot id to its observation.
    """

    _batch_locked = True

    def __init__(
        self,
        payoff: Sequence[Sequence[float]] = NONMONOTONIC_PAYOFF,
        num_envs: int = 1,
        unavailable_actions: Sequence[Sequence[int]] | None = None,
        device: DEVICE_TYPING = "cpu",
        seed: int | None = None,
        observe_agent_id: bool = True,
    ):
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        super().__init__(device=device, batch_size=torch.Size([int(num_envs)]))
        payoff = validate_payoff(payoff)
        self.n_actions = len(payoff)
        self.payoff = torch.tensor(payoff, dtype=torch.float32, device=self.device)
        unavailable = validate_unavailable_actions(
            unavailable_actions if unavailable_actions is not None else [[], []], self.n_actions
        )
        mask = torch.ones(N_AGENTS, self.n_actions, dtype=torch.bool, device=self.device)
        for agent, actions in enumerate(unavailable):
            mask[agent, actions] = False
        self.action_mask = mask
        self.observe_agent_id = bool(observe_agent_id)
        self.obs_dim = 2 + (N_AGENTS if self.observe_agent_id else 0)
        self._make_specs()
        if seed is not None:
            self.set_seed(seed)

    def _make_specs(self) -> None:
        b = self.batch_size
        n, a = N_AGENTS, self.n_actions
        dev = self.device
        self.observation_spec = Composite(
            agents=Composite(
                observation=Unbounded(shape=(*b, n, self.obs_dim), device=dev),
                action_mask=Binary(n=a, shape=(*b, n, a), dtype=torch.bool, device=dev),
                shape=(*b, n),
            ),
            state=Unbounded(shape=(*b, 2), device=dev),
            shape=b,
        )
        self.action_spec = Composite(
            agents=Composite(
                action=Categorical(
                    n=a,
                    shape=(*b, n),
                    device=dev,
                    # The spec carries the mask so that random actions respect it.
                    mask=self.action_mask.expand(*b, n, a).clone(),
                ),
                shape=(*b, n),
            ),
            shape=b,
        )
        self.reward_spec = Composite(
            agents=Composite(reward=Unbounded(shape=(*b, n, 1), device=dev), shape=(*b, n)),
            shape=b,
        )
        self.done_spec = Composite(
            done=Categorical(n=2, shape=(*b, 1), dtype=torch.bool, device=dev),
            terminated=Categorical(n=2, shape=(*b, 1), dtype=torch.bool, device=dev),
            truncated=Categorical(n=2, shape=(*b, 1), dtype=torch.bool, device=dev),
            shape=b,
        )

    def _observation(self, step: int) -> TensorDict:
        b = self.batch_size
        counter = torch.zeros(*b, 2, device=self.device)
        counter[..., step] = 1.0
        observation = counter.unsqueeze(-2).expand(*b, N_AGENTS, 2)
        if self.observe_agent_id:
            ids = torch.eye(N_AGENTS, device=self.device).expand(*b, N_AGENTS, N_AGENTS)
            observation = torch.cat([observation, ids], dim=-1)
        return TensorDict(
            {
                "agents": TensorDict(
                    {
                        "observation": observation.clone(),
                        "action_mask": self.action_mask.expand(*b, N_AGENTS, self.n_actions).clone(),
                    },
                    batch_size=(*b, N_AGENTS),
                ),
                "state": counter,
            },
            batch_size=b,
            device=self.device,
        )

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        # Every game restarts from the same first step, so a partial reset ("_reset" mask)
        # and a full one produce the same values.
        out = self._observation(0)
        false = torch.zeros(*self.batch_size, 1, dtype=torch.bool, device=self.device)
        out.update({"done": false, "terminated": false.clone(), "truncated": false.clone()})
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        actions = tensordict.get(("agents", "action"))
        if actions.shape[-1] != N_AGENTS:
            raise ValueError(f"expected actions of shape [*B, {N_AGENTS}], got {tuple(actions.shape)}")
        actions = actions.long()
        available = self.action_mask[torch.arange(N_AGENTS, device=self.device), actions]
        if not bool(available.all()):
            raise ValueError(
                f"an unavailable action was taken: actions {actions.tolist()} with mask "
                f"{self.action_mask.tolist()}"
            )
        reward = self.payoff[actions[..., 0], actions[..., 1]]
        out = self._observation(1)
        true = torch.ones(*self.batch_size, 1, dtype=torch.bool, device=self.device)
        out.update(
            {
                ("agents", "reward"): reward[..., None, None].expand(*self.batch_size, N_AGENTS, 1).clone(),
                "done": true,
                "terminated": true.clone(),
                "truncated": torch.zeros_like(true),
            }
        )
        return out

    def _set_seed(self, seed: int | None) -> None:
        # The game is deterministic; nothing to seed.
        return None

    # ---------------------------------------------------------------- checkpoint state
    def get_extra_state(self) -> dict[str, torch.Tensor]:
        """The env's running state for a checkpoint (PyTorch's extra-state hook, so that
        ``env.state_dict()`` holds it): empty, because every step is a whole one-step episode
        and the game draws no random numbers. Declaring it tells a resumed run that the env's
        state is restored exactly."""
        return {}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Nothing to restore (see :meth:`get_extra_state`)."""
        return None


@dataclass
class MatrixGameConfig:
    """Config of a ``matrix_game/*`` task (also its Hydra schema).

    Attributes:
        payoff: square list of lists of floats, rows = agent 0's action (write ints as ``8.0``).
        unavailable_actions: per agent, action indices that are never available.
        observe_agent_id: append each agent's one-hot id to its observation (PyMARL's agent input).
    """

    payoff: list[list[float]] = field(default_factory=lambda: [row[:] for row in NONMONOTONIC_PAYOFF])
    unavailable_actions: list[list[int]] = field(default_factory=lambda: [[], []])
    observe_agent_id: bool = True

    def __post_init__(self) -> None:
        self.payoff = validate_payoff(self.payoff)
        self.unavailable_actions = validate_unavailable_actions(
            self.unavailable_actions, len(self.payoff)
        )


class MatrixGameClass(TaskClass):
    """BenchMARL task logic for the matrix games (vectorised: the env carries the batch)."""

    def get_env_fun(
        self,
        num_envs: int,
        continuous_actions: bool,
        seed: int | None,
        device: DEVICE_TYPING,
    ) -> Callable[[], EnvBase]:
        if continuous_actions:
            raise ValueError(f"matrix_game/{self.name.lower()} has discrete actions only")
        payoff = [list(r) for r in self.config["payoff"]]
        unavailable = [list(r) for r in self.config.get("unavailable_actions", [[], []])]
        observe_agent_id = bool(self.config.get("observe_agent_id", True))
        return lambda: MatrixGameEnv(
            payoff=payoff,
            num_envs=num_envs,
            unavailable_actions=unavailable,
            device=device,
            seed=seed,
            observe_agent_id=observe_agent_id,
        )

    def supports_continuous_actions(self) -> bool:
        return False

    def supports_discrete_actions(self) -> bool:
        return True

    def has_render(self, env: EnvBase) -> bool:
        return False

    def max_steps(self, env: EnvBase) -> int:
        return 1

    def group_map(self, env: EnvBase) -> dict[str, list[str]]:
        return {"agents": [f"agent_{i}" for i in range(N_AGENTS)]}

    def observation_spec(self, env: EnvBase) -> Composite:
        spec = env.full_observation_spec_unbatched.clone()
        del spec["state"]
        del spec[("agents", "action_mask")]
        return spec

    def action_mask_spec(self, env: EnvBase) -> Composite:
        spec = env.full_observation_spec_unbatched.clone()
        del spec["state"]
        del spec[("agents", "observation")]
        return spec

    def state_spec(self, env: EnvBase) -> Composite:
        return Composite(state=env.full_observation_spec_unbatched["state"].clone())

    def info_spec(self, env: EnvBase) -> Composite | None:
        return None

    def action_spec(self, env: EnvBase) -> Composite:
        return env.full_action_spec_unbatched

    @staticmethod
    def env_name() -> str:
        return "matrix_game"


MatrixGameTask = task_enum(
    "MatrixGameTask",
    ["nonmonotonic", "climbing", "penalty"],
    MatrixGameClass,
    MatrixGameConfig,
    __name__,
    doc="``matrix_game/*`` tasks: the paper's non-monotonic game and two classic ones.",
)
