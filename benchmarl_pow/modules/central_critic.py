"""Unrestricted central critic head (spec §2.5, WQMIX's ``QMixerCentralFF``).

Q̂*(s, a) = FF([s ; u_1(a_1), …, u_n(a_n)]) + Vc(s), with no sign constraints, so it can represent
non-monotonic joint values. The per-agent utilities u_i come from a separate central agent network
(built elsewhere). ResQ reuses this head (E = 128) for its residual R(s, a).
"""

from __future__ import annotations

import torch
from torch import nn


class CentralMixer(nn.Module):
    """FF = Lin(S+n→E)-ReLU-Lin(E→E)-ReLU-Lin(E→E)-ReLU-Lin(E→1); Vc = Lin(S→E)-ReLU-Lin(E→1).

    Args:
        n_agents: n.
        state_dim: S.
        embed_dim: E (64 for POW, 128 for ResQ, 256 for CW/OW-QMIX).
    """

    def __init__(self, n_agents: int, state_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.n_agents = n_agents
        self.state_dim = state_dim
        self.embed_dim = embed_dim
        e = embed_dim
        self.ff = nn.Sequential(
            nn.Linear(state_dim + n_agents, e), nn.ReLU(),
            nn.Linear(e, e), nn.ReLU(),
            nn.Linear(e, e), nn.ReLU(),
            nn.Linear(e, 1),
        )  # fmt: skip
        self.v = nn.Sequential(nn.Linear(state_dim, e), nn.ReLU(), nn.Linear(e, 1))

    def forward(self, agent_utils: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """agent_utils: [*B, n] (utility of each agent's evaluated action), state: [*B, S] -> [*B, 1]."""
        return self.ff(torch.cat([state, agent_utils], dim=-1)) + self.v(state)
