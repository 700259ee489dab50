"""PyMARL's agent input as a TorchRL transform: observation ⊕ one-hot last action ⊕ one-hot id.

PyMARL feeds each agent ``[o_t^i ; onehot(a_{t-1}^i) ; onehot(i)]`` (pow_spec.md §1.5: the last
action when ``obs_last_action``, zeros at an episode's first step; the id when ``obs_agent_id``).
:class:`AgentInputs` appends both to a group's observation, for any multi-agent TorchRL env with
categorical (or one-hot) discrete actions, in the env's own batch layout. It knows no algorithm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torchrl.data import Composite, Unbounded
from torchrl.envs.transforms import Transform


class AgentInputs(Transform):
    """Append the one-hot last action and/or the one-hot agent id to ``(group, obs_name)``.

    Args:
        group: the agent group (e.g. ``"agents"``).
        obs_name: the observation entry inside the group.
        n_agents, n_actions: group size and number of discrete actions.
        last_action: append ``onehot(a_{t-1})`` (zeros after a reset).
        agent_id: append ``onehot(i)`` for agent ``i``.

    The observation ``[*B, n, O]`` becomes ``[*B, n, O + |A|·last_action + n·agent_id]``.
    """

    def __init__(
        self,
        group: str,
        obs_name: str,
        n_agents: int,
        n_actions: int,
        *,
        last_action: bool,
        agent_id: bool,
    ):
        key: NestedKey = (group, obs_name)
        super().__init__(in_keys=[key], out_keys=[key])
        self.group = group
        self.obs_key = key
        self.action_key = (group, "action")
        self.n_agents = int(n_agents)
        self.n_actions = int(n_actions)
        self.last_action = bool(last_action)
        self.agent_id = bool(agent_id)
        self._base_dim: int | None = None  # the env's own observation width (from its spec)

    @property
    def extra(self) -> int:
        """Number of appended features."""
        return self.n_actions * self.last_action + self.n_agents * self.agent_id

    def _append(self, obs: torch.Tensor, action: torch.Tensor | None) -> torch.Tensor:
        parts = [obs]
        lead = obs.shape[:-1]  # [*B, n]
        if self.last_action:
            if action is None:
                parts.append(obs.new_zeros(*lead, self.n_actions))
            else:
                if action.shape[-1] == self.n_actions and action.dim() == obs.dim():
                    onehot = action.to(obs.dtype)  # already one-hot
                else:
                    onehot = F.one_hot(action.long(), self.n_actions).to(obs.dtype)
                parts.append(onehot.expand(*lead, self.n_actions))
        if self.agent_id:
            eye = torch.eye(self.n_agents, dtype=obs.dtype, device=obs.device)
            parts.append(eye.expand(*lead, self.n_agents))
        return torch.cat(parts, -1)

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        obs = tensordict_reset.get(self.obs_key, None)
        if obs is not None:
            tensordict_reset.set(self.obs_key, self._append(obs, None))
        return tensordict_reset

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        obs = next_tensordict.get(self.obs_key, None)
        if obs is not None:
            action = tensordict.get(self.action_key, None) if self.last_action else None
            next_tensordict.set(self.obs_key, self._append(obs, action))
        return next_tensordict

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        return next_tensordict  # handled in _step, which sees the action

    def _inv_call(self, tensordict: TensorDictBase) -> TensorDictBase:
        # Hand the wrapped env its own observation width: batched envs (SerialEnv/ParallelEnv)
        # copy the input's observations into their output on partial steps.
        obs = tensordict.get(self.obs_key, None)
        if obs is not None and self._base_dim is not None and obs.shape[-1] != self._base_dim:
            tensordict.set(self.obs_key, obs[..., : self._base_dim])
        return tensordict

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        spec = observation_spec[self.obs_key]
        self._base_dim = int(spec.shape[-1])
        shape = (*spec.shape[:-1], spec.shape[-1] + self.extra)
        observation_spec[self.obs_key] = Unbounded(shape=shape, dtype=spec.dtype, device=spec.device)
        return observation_spec
