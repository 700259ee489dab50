"""Unit and property tests for benchmarl_pow.modules (spec §2, §3.6.1, §3.6.4, §7.4)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from benchmarl_pow.modules import (
    CentralMixer,
    DmaqMixer,
    GroupedMLP,
    QmixMixer,
    RecognitionMixer,
    SiWeight,
    VdnMixer,
    build_mlp,
    dmaq_combine,
    dmaq_parts,
    lambdas_from_hypernet_outputs,
    recognition_value,
)

FEW = settings(max_examples=12, deadline=None)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def joint_actions(n_agents: int, n_actions: int) -> torch.Tensor:
    """All joint actions [J, n] in lexicographic order (index = Σ a_i·|A|^(n-1-i))."""
    return torch.tensor(list(itertools.product(range(n_actions), repeat=n_agents)))


def greedy_index(q: torch.Tensor, n_actions: int) -> torch.Tensor:
    """q: [B, n, |A|] -> lexicographic index of the per-agent greedy joint action, [B]."""
    idx = torch.zeros(q.shape[0], dtype=torch.long)
    for a in q.argmax(-1).unbind(-1):
        idx = idx * n_actions + a
    return idx


def enumerate_inputs(q: torch.Tensor, n_actions: int):
    """q: [B, n, |A|] -> per (b, joint action j): chosen Q [B, J, n], max Q [B, J, n], onehot [B, J, n, |A|]."""
    b, n, _ = q.shape
    ja = joint_actions(n, n_actions)  # [J, n]
    chosen = q.gather(-1, ja.T.unsqueeze(0).expand(b, n, -1)).transpose(1, 2)  # [B, J, n]
    max_q = q.max(-1).values.unsqueeze(1).expand_as(chosen)
    onehot = nn.functional.one_hot(ja, n_actions).to(q.dtype).expand(b, -1, -1, -1)
    return chosen, max_q, onehot


# ------------------------------------------------------------------ §7.4 unit vectors


def test_dmaq_vector_functional() -> None:
    w, v = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -0.5])
    q, max_q, lam = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 3.0]), torch.tensor([1.5, 0.7])
    v_tot, a_tot = dmaq_parts(q, max_q, w, v, lam)
    assert v_tot.item() == pytest.approx(7.0)
    assert a_tot.item() == pytest.approx(-0.5)
    assert dmaq_combine(q, max_q, w, v, lam).item() == pytest.approx(6.5)


class _ConstLambda(nn.Module):
    def __init__(self, lam: torch.Tensor) -> None:
        super().__init__()
        self.lam = lam

    def forward(self, state: torch.Tensor, actions_onehot: torch.Tensor) -> torch.Tensor:
        return self.lam.expand(*state.shape[:-1], -1)


def test_dmaq_vector_through_module() -> None:
    """Inject w, v (via the head's final bias) and λ (stub) into DmaqMixer; the module must give 6.5."""
    mixer = DmaqMixer(n_agents=2, n_actions=3, state_dim=2)
    with torch.no_grad():
        mixer.head.last_w.zero_()
        mixer.head.last_b[0, 0] = torch.tensor([1.0, 2.0])  # w (abs + 1e-10)
        mixer.head.last_b[1, 0] = torch.tensor([0.5, -0.5])  # v
    mixer.si_weight = _ConstLambda(torch.tensor([1.5, 0.7]))
    q, max_q = torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, 3.0]])
    s, onehot = torch.randn(1, 2), torch.zeros(1, 2, 3)
    assert mixer(q, s, onehot, max_q).item() == pytest.approx(6.5)
    assert mixer.v_part(q, s).item() == pytest.approx(7.0)
    assert mixer.a_part(q, max_q, s, onehot).item() == pytest.approx(-0.5)
    q_p, max_q_p = mixer.transform(q, max_q, s)
    torch.testing.assert_close(q_p, torch.tensor([[1.5, 5.5]]))
    torch.testing.assert_close(max_q_p, torch.tensor([[2.5, 5.5]]))


def test_lambda_from_hypernet_vector() -> None:
    w1 = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    wf = torch.tensor([3.0, -1.0])
    torch.testing.assert_close(lambdas_from_hypernet_outputs(w1, wf), torch.tensor([5.0, 1.5]))


def test_recognition_value_vector() -> None:
    q_r, lam_dq = recognition_value(
        torch.tensor([7.0]), torch.tensor([2.0, 3.0]), torch.tensor([-0.5, 0.0])
    )
    assert lam_dq.item() == pytest.approx(-1.0)
    assert q_r.item() == pytest.approx(6.0)
    # At the greedy action ΔQ = 0, so Q_r = V.
    q_r0, lam_dq0 = recognition_value(torch.tensor([7.0]), torch.tensor([2.0, 3.0]), torch.zeros(2))
    assert q_r0.item() == 7.0 and lam_dq0.item() == 0.0


# ------------------------------------------------------------------ §3.6.4 parameter counts

# (S, n, |A|): λ-hypernet, V, Q_r total, inert SI (3 layers, K=4, embed 64), nmix, FF E=64, FF E=256
PARAM_TABLE = [
    ((2, 2, 3), 60_096, 17_025, 77_121, 55_060, 6_849, 8_962, 134_146),
    ((300, 8, 6), 196_672, 55_169, 251_841, 297_796, 76_545, 47_490, 288_258),
    ((60, 4, 3), 92_992, 24_449, 117_441, 102_180, 22_145, 16_514, 164_354),
]


@pytest.mark.parametrize("dims, lam, v, qr, si, nmix, ff64, ff256", PARAM_TABLE)
def test_param_counts(dims, lam, v, qr, si, nmix, ff64, ff256) -> None:
    s, n, a = dims
    rec = RecognitionMixer(n, a, s)
    assert n_params(rec.lambda_hypernet) == lam
    assert n_params(rec.v) == v
    assert n_params(rec) == qr
    assert n_params(SiWeight(n, a, s, num_kernel=4, layers=3, embed=64)) == si
    assert n_params(QmixMixer(n, s)) == nmix
    assert n_params(CentralMixer(n, s, 64)) == ff64
    assert n_params(CentralMixer(n, s, 256)) == ff256
    # The SI-weight variant of Q_r has the SI weight in place of the λ-hypernet.
    assert n_params(RecognitionMixer(n, a, s, use_lambda_hypernetwork=False)) == si + v


# ------------------------------------------------------------------ fused MLPs are exact


@pytest.mark.parametrize(
    "layers, out_dims", [(1, [3, 5]), (2, [4, 4, 4]), (3, [6, 2]), (3, [5, 5])]
)
def test_grouped_mlp_equals_separate_mlps(layers: int, out_dims: list[int]) -> None:
    torch.manual_seed(0)
    in_dim, hid = 7, 16
    g = GroupedMLP(in_dim, hid, out_dims, layers)
    refs = [build_mlp(in_dim, hid, o, layers) for o in out_dims]
    assert n_params(g) == sum(n_params(r) for r in refs)
    # Copy the grouped parameters into the separate reference MLPs.
    with torch.no_grad():
        if layers == 1:
            w_chunks = g.first.weight.split(out_dims, 0)
            b_chunks = g.first.bias.split(out_dims, 0)
            for r, w, b in zip(refs, w_chunks, b_chunks):
                r[0].weight.copy_(w)
                r[0].bias.copy_(b)
        else:
            for i, r in enumerate(refs):
                lin = [m for m in r if isinstance(m, nn.Linear)]
                lin[0].weight.copy_(g.first.weight[i * hid : (i + 1) * hid])
                lin[0].bias.copy_(g.first.bias[i * hid : (i + 1) * hid])
                for k, (w, b) in enumerate(zip(g.mid_w, g.mid_b)):
                    lin[1 + k].weight.copy_(w[i].T)
                    lin[1 + k].bias.copy_(b[i, 0])
                if g.equal_out:
                    lin[-1].weight.copy_(g.last_w[i].T)
                    lin[-1].bias.copy_(g.last_b[i, 0])
                else:
                    lin[-1].load_state_dict(g.last[i].state_dict())
    x = torch.randn(3, 4, in_dim)
    for out, r in zip(g(x), refs):
        torch.testing.assert_close(out, r(x))
    if len(set(out_dims)) == 1:
        torch.testing.assert_close(g.forward_stacked(x), torch.stack([r(x) for r in refs]))


# ------------------------------------------------------------------ properties


@FEW
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 5), s_dim=st.integers(1, 8))
def test_qmix_monotone(seed: int, n: int, s_dim: int) -> None:
    torch.manual_seed(seed)
    mixer = QmixMixer(n, s_dim)
    q = (3 * torch.randn(16, n)).requires_grad_(True)
    s = torch.randn(16, s_dim)
    (grad,) = torch.autograd.grad(mixer(q, s).sum(), q)
    assert (grad >= 0).all()
    # Finite difference: raising one agent's Q never lowers Q_tot.
    with torch.no_grad():
        bumped = q.detach().clone()
        bumped[:, seed % n] += 0.5
        assert (mixer(bumped, s) >= mixer(q.detach(), s) - 1e-6).all()


@FEW
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 3),
    n_actions=st.integers(2, 4),
    hyper=st.booleans(),
)
def test_recognition_mixer_properties(seed: int, n: int, n_actions: int, hyper: bool) -> None:
    torch.manual_seed(seed)
    s_dim = 3
    mixer = RecognitionMixer(n, n_actions, s_dim, use_lambda_hypernetwork=hyper).double()
    b = 4
    q = torch.randn(b, n, n_actions, dtype=torch.float64)
    s = torch.randn(b, s_dim, dtype=torch.float64)
    chosen, max_q, onehot = enumerate_inputs(q, n_actions)
    j = chosen.shape[1]
    s_rep = s.unsqueeze(1).expand(b, j, s_dim)
    delta_q = chosen - max_q  # ≤ 0
    with torch.no_grad():
        q_r, lam_dq = mixer(delta_q, s_rep, onehot)
        v = mixer.value(s_rep)
        assert (mixer.lambdas(s_rep, onehot) >= 0).all()
        assert (lam_dq <= 0).all()
        torch.testing.assert_close(q_r, v + lam_dq)
        # ΔQ = 0 -> Q_r = V(s) exactly.
        q_r0, lam_dq0 = mixer(torch.zeros_like(delta_q), s_rep, onehot)
        assert (lam_dq0 == 0).all() and torch.equal(q_r0, v)
    # IGM: over all joint actions, max Q_r is at the per-agent greedy action, where it equals V(s).
    greedy = greedy_index(q, n_actions)
    torch.testing.assert_close(q_r.squeeze(-1).argmax(-1), greedy)
    torch.testing.assert_close(q_r[torch.arange(b), greedy], v[:, 0])


@FEW
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 3),
    n_actions=st.integers(2, 4),
    layers=st.sampled_from([2, 3]),
)
def test_dmaq_igm(seed: int, n: int, n_actions: int, layers: int) -> None:
    torch.manual_seed(seed)
    s_dim = 3
    mixer = DmaqMixer(n, n_actions, s_dim, adv_hypernet_layers=layers).double()
    b = 4
    q = torch.randn(b, n, n_actions, dtype=torch.float64)
    s = torch.randn(b, s_dim, dtype=torch.float64)
    chosen, max_q, onehot = enumerate_inputs(q, n_actions)
    s_rep = s.unsqueeze(1).expand(b, chosen.shape[1], s_dim)
    with torch.no_grad():
        q_tot = mixer(chosen, s_rep, onehot, max_q).squeeze(-1)  # [B, J]
        torch.testing.assert_close(
            q_tot.unsqueeze(-1),
            mixer.v_part(chosen, s_rep) + mixer.a_part(chosen, max_q, s_rep, onehot),
        )
    torch.testing.assert_close(q_tot.argmax(-1), greedy_index(q, n_actions))


def test_dmaq_gradient_only_through_v_part() -> None:
    torch.manual_seed(1)
    n, a, s_dim = 3, 4, 5
    mixer = DmaqMixer(n, a, s_dim)
    q = torch.randn(8, n, requires_grad=True)
    max_q = (q.detach() + torch.rand(8, n)).requires_grad_(True)
    s = torch.randn(8, s_dim)
    onehot = nn.functional.one_hot(torch.randint(0, a, (8, n)), a).float()
    mixer(q, s, onehot, max_q).sum().backward()
    w, _ = mixer.weights(s)
    # dQ_tot/dQ_i = w_i: only the V-part contributes (the A-part's difference is detached).
    torch.testing.assert_close(q.grad, w.detach())
    assert max_q.grad is None or (max_q.grad == 0).all()
    # The (w, v) head also trains only through V_tot; λ (SI weight) trains through A_tot.
    head_grads = [p.grad.clone() for p in mixer.head.parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixer.si_weight.parameters())
    mixer.zero_grad()
    mixer.v_part(q, s).sum().backward()
    for g_full, p in zip(head_grads, mixer.head.parameters()):
        torch.testing.assert_close(g_full, p.grad)


# ------------------------------------------------------------------ shapes


@pytest.mark.parametrize("lead", [(5,), (3, 4)])
def test_shapes(lead: tuple[int, ...]) -> None:
    n, a, s_dim = 3, 4, 6
    q = torch.randn(*lead, n)
    s = torch.randn(*lead, s_dim)
    onehot = nn.functional.one_hot(torch.randint(0, a, (*lead, n)), a).float()
    max_q = q + torch.rand_like(q)
    out = (*lead, 1)
    assert QmixMixer(n, s_dim)(q, s).shape == out
    assert VdnMixer(n)(q, s).shape == out
    torch.testing.assert_close(VdnMixer(n)(q), q.sum(-1, keepdim=True))
    assert CentralMixer(n, s_dim, 16)(q, s).shape == out
    for layers in (1, 2, 3):
        assert DmaqMixer(n, a, s_dim, adv_hypernet_layers=layers)(q, s, onehot, max_q).shape == out
        assert SiWeight(n, a, s_dim, 4, layers, 8)(s, onehot).shape == (*lead, n)
    for hyper in (True, False):
        rec = RecognitionMixer(n, a, s_dim, use_lambda_hypernetwork=hyper)
        q_r, lam_dq = rec(q - max_q, s, onehot)
        assert q_r.shape == out and lam_dq.shape == out
        assert rec.lambdas(s, onehot).shape == (*lead, n)
        # Leading dims are pure batch: flattening them gives the same numbers.
        flat_q_r, _ = rec(
            (q - max_q).reshape(-1, n), s.reshape(-1, s_dim), onehot.reshape(-1, n, a)
        )
        torch.testing.assert_close(q_r.reshape(-1, 1), flat_q_r)
