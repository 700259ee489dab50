"""QPLEX / DMAQ mixer with the SI-weight attention λ (spec §2.4).

Q_tot(s, a) = V_tot + A_tot with
    Q'_i = w_i(s)·Q_i + v_i(s),   maxQ'_i = w_i(s)·maxQ_i + v_i(s),   w_i = |·| + 1e-10 > 0
    V_tot = Σ_i Q'_i
    A_tot = Σ_i (λ_i(s, a) − 1) · stopgrad(Q'_i − maxQ'_i)
Because w_i > 0 and λ_i > 0, Q_tot = Σ_i maxQ'_i + Σ_i λ_i (Q'_i − maxQ'_i) is maximised exactly at the
per-agent greedy joint action (IGM). The stop-gradient means the A-part trains only λ; Q_i and the
(w, v) head receive gradient only through V_tot.
"""

from __future__ import annotations

import torch
from torch import nn

from .mlp import GroupedMLP

# Keeps w and the attention key strictly positive (released constant).
_EPS = 1e-10


def dmaq_parts(
    q: torch.Tensor, max_q: torch.Tensor, w: torch.Tensor, v: torch.Tensor, lambdas: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Functional DMAQ combination, all inputs [*B, n] (w already positive) -> (V_tot, A_tot), each [*B, 1]."""
    q_p = w * q + v
    max_q_p = w * max_q + v
    v_tot = q_p.sum(dim=-1, keepdim=True)
    # is_minus_one=True: the V-part already counts each Q'_i once, so the advantage is weighted by λ−1.
    a_tot = ((lambdas - 1.0) * (q_p - max_q_p).detach()).sum(dim=-1, keepdim=True)
    return v_tot, a_tot


def dmaq_combine(
    q: torch.Tensor, max_q: torch.Tensor, w: torch.Tensor, v: torch.Tensor, lambdas: torch.Tensor
) -> torch.Tensor:
    """Q_tot = V_tot + A_tot of :func:`dmaq_parts`, shape [*B, 1]."""
    v_tot, a_tot = dmaq_parts(q, max_q, w, v, lambdas)
    return v_tot + a_tot


class SiWeight(nn.Module):
    """QPLEX SI-weight attention: λ_i(s, a) = Σ_k key_k(s) · ag_{k,i}(s) · ac_{k,i}(s, a) ≥ 0.

    key_k = |MLP_key,k(s)| + 1e-10 (scalar), ag_k = σ(MLP_ag,k(s)) ∈ R^n,
    ac_k = σ(MLP_ac,k([s ; onehot(a)])) ∈ R^n, where onehot(a) is the flattened joint one-hot (n·|A|).
    Every MLP has ``layers`` Linear layers of hidden width ``embed`` (Linear-ReLU-Linear for 2).

    Args:
        n_agents, n_actions, state_dim: n, |A|, S.
        num_kernel: K attention heads (4).
        layers: Linear layers per MLP (2 for QPLEX, 3 for POW-QPLEX).
        embed: hidden width (64).
    """

    def __init__(
        self,
        n_agents: int,
        n_actions: int,
        state_dim: int,
        num_kernel: int = 4,
        layers: int = 2,
        embed: int = 64,
    ) -> None:
        super().__init__()
        self.n_agents = n_agents
        self.n_actions = n_actions
        self.state_dim = state_dim
        self.num_kernel = num_kernel
        # K independent MLPs of each kind; grouping only batches them (same function and param count).
        self.key = GroupedMLP(state_dim, embed, [1] * num_kernel, layers)
        self.agents = GroupedMLP(state_dim, embed, [n_agents] * num_kernel, layers)
        self.action = GroupedMLP(
            state_dim + n_agents * n_actions, embed, [n_agents] * num_kernel, layers
        )

    def forward(self, state: torch.Tensor, actions_onehot: torch.Tensor) -> torch.Tensor:
        """state: [*B, S], actions_onehot: [*B, n, |A|] -> λ [*B, n]."""
        a_flat = actions_onehot.flatten(-2).to(state.dtype)
        key = self.key.forward_stacked(state).abs() + _EPS  # [K, *B, 1]
        ag = torch.sigmoid(self.agents.forward_stacked(state))  # [K, *B, n]
        ac = torch.sigmoid(
            self.action.forward_stacked(torch.cat([state, a_flat], dim=-1))
        )  # [K, *B, n]
        return (key * ag * ac).sum(dim=0)


class DmaqMixer(nn.Module):
    """QPLEX duplex-dueling mixer (DMAQ, ``weighted_head=True``, ``is_minus_one=True``).

    Args:
        n_agents, n_actions, state_dim: n, |A|, S.
        hypernet_embed: hidden width of the w(s) and v(s) heads (Lin(S→h)-ReLU-Lin(h→n) each).
        adv_hypernet_layers: Linear layers of each SI-weight MLP (2 QPLEX, 3 POW-QPLEX).
        adv_hypernet_embed: SI-weight hidden width.
        num_kernel: SI-weight attention heads K.
    """

    def __init__(
        self,
        n_agents: int,
        n_actions: int,
        state_dim: int,
        hypernet_embed: int = 64,
        adv_hypernet_layers: int = 2,
        adv_hypernet_embed: int = 64,
        num_kernel: int = 4,
    ) -> None:
        super().__init__()
        self.n_agents = n_agents
        self.n_actions = n_actions
        self.state_dim = state_dim
        # Group 0: w(s) (PyMARL's hyper_w_final), group 1: v(s) (PyMARL's V); both read only s.
        self.head = GroupedMLP(state_dim, hypernet_embed, [n_agents, n_agents], 2)
        self.si_weight = SiWeight(
            n_agents, n_actions, state_dim, num_kernel, adv_hypernet_layers, adv_hypernet_embed
        )

    def weights(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """state: [*B, S] -> (w [*B, n] > 0, v [*B, n])."""
        w_raw, v = self.head(state)
        return w_raw.abs() + _EPS, v

    def transform(
        self, agent_qs: torch.Tensor, max_qs: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-agent affine transform -> (Q' [*B, n], maxQ' [*B, n])."""
        w, v = self.weights(state)
        return w * agent_qs + v, w * max_qs + v

    def v_part(self, agent_qs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """V_tot = Σ_i Q'_i, [*B, 1]."""
        w, v = self.weights(state)
        return (w * agent_qs + v).sum(dim=-1, keepdim=True)

    def a_part(
        self,
        agent_qs: torch.Tensor,
        max_qs: torch.Tensor,
        state: torch.Tensor,
        actions_onehot: torch.Tensor,
    ) -> torch.Tensor:
        """A_tot = Σ_i (λ_i(s, a) − 1)·stopgrad(Q'_i − maxQ'_i), [*B, 1]."""
        w, v = self.weights(state)
        return dmaq_parts(agent_qs, max_qs, w, v, self.si_weight(state, actions_onehot))[1]

    def forward(
        self,
        agent_qs: torch.Tensor,
        state: torch.Tensor,
        actions_onehot: torch.Tensor,
        max_qs: torch.Tensor,
    ) -> torch.Tensor:
        """agent_qs [*B, n] (Q_i at a), state [*B, S], actions_onehot [*B, n, |A|], max_qs [*B, n] -> Q_tot [*B, 1].

        For the QPLEX target (§3.3) call it with the target agent's Q at â', onehot(â') and the target
        agent's own max: the V-part is then read at â' and the A-part uses the target's max.
        """
        w, v = self.weights(state)
        return dmaq_combine(agent_qs, max_qs, w, v, self.si_weight(state, actions_onehot))
