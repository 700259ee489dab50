"""PyMARL2-style monotonic QMIX mixer (spec §2.1 "nmix", identical in function to §2.2 with 2-layer hypernets)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class QmixMixer(nn.Module):
    """Monotonic mixer Q_tot = ELU(qᵀ|W1(s)| + b1(s)) · |W2(s)| + V(s).

    * W1(s) = |Lin(h→n·e)(ReLU(Lin(S→h)(s)))| reshaped [n, e]
    * b1(s) = Lin(S→e)(s)
    * W2(s) = |Lin(h→e)(ReLU(Lin(S→h)(s)))|            ([e, 1])
    * V(s)  = Lin(e→1)(ReLU(Lin(S→e)(s)))              (final bias)

    abs() keeps every mixing weight non-negative, so ∂Q_tot/∂q_i ≥ 0 (monotonicity => IGM).
    TorchRL's ``QMixer`` uses 1-layer hypernets, hence this separate module.

    Args:
        n_agents: n.
        state_dim: S.
        embed_dim: mixing width e (32 in the released configs).
        hypernet_embed: hypernet hidden width h (64).
    """

    def __init__(
        self, n_agents: int, state_dim: int, embed_dim: int = 32, hypernet_embed: int = 64
    ) -> None:
        super().__init__()
        self.n_agents = n_agents
        self.state_dim = state_dim
        self.embed_dim = embed_dim
        self.hyper_w1 = nn.Sequential(
            nn.Linear(state_dim, hypernet_embed),
            nn.ReLU(),
            nn.Linear(hypernet_embed, n_agents * embed_dim),
        )
        self.hyper_b1 = nn.Linear(state_dim, embed_dim)
        self.hyper_w2 = nn.Sequential(
            nn.Linear(state_dim, hypernet_embed), nn.ReLU(), nn.Linear(hypernet_embed, embed_dim)
        )
        self.v = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, agent_qs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """agent_qs: [*B, n], state: [*B, S] -> Q_tot [*B, 1]."""
        lead = agent_qs.shape[:-1]
        q = agent_qs.reshape(-1, 1, self.n_agents)  # [N, 1, n]
        s = state.reshape(-1, self.state_dim)  # [N, S]
        w1 = self.hyper_w1(s).abs().view(-1, self.n_agents, self.embed_dim)  # [N, n, e]
        b1 = self.hyper_b1(s).unsqueeze(-2)  # [N, 1, e]
        hidden = F.elu(torch.baddbmm(b1, q, w1))  # [N, 1, e]
        w2 = self.hyper_w2(s).abs().unsqueeze(-1)  # [N, e, 1]
        q_tot = torch.bmm(hidden, w2).squeeze(-1) + self.v(s)  # [N, 1]
        return q_tot.reshape(*lead, 1)
