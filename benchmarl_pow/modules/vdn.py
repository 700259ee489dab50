"""VDN mixer (spec §2.3): Q_tot = Σ_i Q_i, no parameters."""

from __future__ import annotations

import torch
from torch import nn


class VdnMixer(nn.Module):
    """Sum of the agent utilities. ``state`` is accepted (and ignored) so all mixers share one call signature."""

    def __init__(self, n_agents: int) -> None:
        super().__init__()
        self.n_agents = n_agents

    def forward(self, agent_qs: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        """agent_qs: [*B, n] -> Q_tot [*B, 1]."""
        return agent_qs.sum(dim=-1, keepdim=True)
