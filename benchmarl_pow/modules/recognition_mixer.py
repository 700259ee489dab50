"""POW recognition network Q_r (spec §3.6.1, the released ``PowMixer`` with ``use_lambda_hypernetwork``).

Q_r(s, a) = V(s) + Σ_i λ_i(s, a) · ΔQ_i,   ΔQ_i = Q_i(τ_i, a_i) − max_a' Q_i(τ_i, a') ≤ 0 (detached input)
λ_i(s, a) = Σ_k |W1(x)|_{ik} · |wf(x)|_k ≥ 0,   x = [s ; onehot(a)] (joint one-hot, n·|A|)

The λΔQ path has no bias and no activation: it is linear in ΔQ, ≤ 0, and exactly 0 at the per-agent
greedy joint action â. Hence max_a Q_r(s, a) = Q_r(s, â) = V(s): Q_r is IGM-consistent with the same
Q_i that Q_tot uses, and the recognition test |λΔQ| < C equals Q_r(s, a) > V(s) − C.
"""

from __future__ import annotations

import torch
from torch import nn

from .dmaq import SiWeight
from .mlp import build_mlp


def lambdas_from_hypernet_outputs(w1: torch.Tensor, wf: torch.Tensor) -> torch.Tensor:
    """Raw hypernet outputs w1 [*B, n, E] and wf [*B, E] -> λ [*B, n], λ_i = Σ_k |w1_ik|·|wf_k|."""
    return torch.matmul(w1.abs(), wf.abs().unsqueeze(-1)).squeeze(-1)


def recognition_value(
    v: torch.Tensor, lambdas: torch.Tensor, delta_q: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """v [*B, 1], λ [*B, n], ΔQ [*B, n] -> (Q_r = v + λΔQ [*B, 1], λΔQ [*B, 1])."""
    lambda_dq = (lambdas * delta_q).sum(dim=-1, keepdim=True)
    return v + lambda_dq, lambda_dq


class RecognitionMixer(nn.Module):
    """Q_r network of POW.

    With ``use_lambda_hypernetwork=True`` (released setting):
        W1(x) = MLP1(x) ∈ R^{n×E}, MLP1 = Lin(S+n|A|→H)-ReLU-Lin(H→H)-ReLU-Lin(H→E·n)
        wf(x) = MLP2(x) ∈ R^{E},   MLP2 = Lin(S+n|A|→H)-ReLU-Lin(H→H)-ReLU-Lin(H→E)
    with H = ``hypernet_embed`` (128) and E = ``mixing_embed`` (64); abs is applied in λ.
    The two hypernets are plain separate MLPs: fusing their first layers (or batching their hidden
    layers) over the shared x was measured 5-15 % *slower* on CPU for 128-25,600 samples, because the
    work is matmul-bound and the split/transposes add copies in backward.
    With ``use_lambda_hypernetwork=False``, λ is QPLEX's SI-weight attention (:class:`SiWeight`).

    V(s) = Lin(S→Hv)-ReLU-Lin(Hv→Hv)-ReLU-Lin(Hv→1), Hv = ``v_embed`` (128).

    Args:
        n_agents, n_actions, state_dim: n, |A|, S.
        hypernet_embed: H.  mixing_embed: E.  v_embed: Hv.
        use_lambda_hypernetwork: λ from the hypernets (True) or from SiWeight (False).
        si_num_kernel, si_layers, si_embed: SiWeight settings when ``use_lambda_hypernetwork=False``.
    """

    def __init__(
        self,
        n_agents: int,
        n_actions: int,
        state_dim: int,
        hypernet_embed: int = 128,
        mixing_embed: int = 64,
        v_embed: int = 128,
        use_lambda_hypernetwork: bool = True,
        si_num_kernel: int = 4,
        si_layers: int = 3,
        si_embed: int = 64,
    ) -> None:
        super().__init__()
        self.n_agents = n_agents
        self.n_actions = n_actions
        self.state_dim = state_dim
        self.mixing_embed = mixing_embed
        self.use_lambda_hypernetwork = use_lambda_hypernetwork
        if use_lambda_hypernetwork:
            in_dim = state_dim + n_agents * n_actions
            self.lambda_hypernet = nn.ModuleDict(
                {
                    "w1": build_mlp(in_dim, hypernet_embed, mixing_embed * n_agents, 3),
                    "wf": build_mlp(in_dim, hypernet_embed, mixing_embed, 3),
                }
            )
        else:
            self.si_weight = SiWeight(
                n_agents, n_actions, state_dim, si_num_kernel, si_layers, si_embed
            )
        self.v = build_mlp(state_dim, v_embed, 1, 3)

    def lambdas(self, state: torch.Tensor, actions_onehot: torch.Tensor) -> torch.Tensor:
        """state [*B, S], actions_onehot [*B, n, |A|] -> λ(s, a) [*B, n] ≥ 0."""
        if not self.use_lambda_hypernetwork:
            return self.si_weight(state, actions_onehot)
        x = torch.cat([state, actions_onehot.flatten(-2).to(state.dtype)], dim=-1)
        w1, wf = self.lambda_hypernet["w1"](x), self.lambda_hypernet["wf"](x)
        # Under autocast (the bf16 Q_r steps) only the hypernets' matmuls are reduced precision:
        # λ is formed in the state's dtype (float32; a no-op outside autocast).
        with torch.autocast(x.device.type, enabled=False):
            return lambdas_from_hypernet_outputs(
                w1.to(x.dtype).unflatten(-1, (self.n_agents, self.mixing_embed)), wf.to(x.dtype)
            )

    def value(self, state: torch.Tensor) -> torch.Tensor:
        """V(s) = max_a Q_r(s, a), [*B, 1]."""
        return self.v(state)

    def forward(
        self, delta_q: torch.Tensor, state: torch.Tensor, actions_onehot: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """delta_q [*B, n] (≤ 0, detached), state [*B, S], actions_onehot [*B, n, |A|]
        -> (Q_r [*B, 1], λΔQ [*B, 1]). Under autocast, V and λ come out of bf16 matmuls but
        Q_r = V + λΔQ is formed in float32."""
        v, lambdas = self.value(state).to(state.dtype), self.lambdas(state, actions_onehot)
        with torch.autocast(state.device.type, enabled=False):
            return recognition_value(v, lambdas, delta_q)
