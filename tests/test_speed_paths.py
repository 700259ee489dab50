"""Speed paths of POW's recognition network (issue 11) against the faithful float32 path.

* The faithful Q_r update (``recognition_bf16`` off, fraction 1) is bit-for-bit the released
  loop: same parameters after the inner steps, same last loss; the module's forward and gradients
  are bit-for-bit the plain formula.
* The bf16 Q_r steps select the same recognition set A_r as float32 on a small batch recorded from
  a real ``pow_qmix`` run on ``predator_prey/punish_4`` (tests/data/recognition_batch.pt, written by
  ``benchmarks/recognition_agreement.py extract``): membership agreement ≥ 95 % and the A_r
  fraction within 10 % relative, the targets of the paired benchmark.
* So does the cheap option (``recognition_batch_fraction=0.4``) in one learner call from a trained
  Q_r, as the benchmark's ``--restart-each-call`` mode measures it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarl_pow.modules import RecognitionMixer
from benchmarl_pow.objectives.weighted_mixer_loss import WeightedMixerLoss

DATA = Path(__file__).parent / "data" / "recognition_batch.pt"
N_AGENTS, N_ACTIONS = 8, 6


@pytest.fixture(scope="module")
def recorded():
    data = torch.load(DATA)
    bits = np.unpackbits(data["state_bits"].numpy(), axis=-1, count=data["state_dim"])
    return SimpleNamespace(
        delta_q=data["delta_q"],
        state=torch.from_numpy(bits.astype(np.float32)),
        onehot=F.one_hot(data["action"].long(), N_ACTIONS).to(torch.float32),
        target=data["target"],
        threshold=float(data["threshold"]),
    )


def _host(mixer: RecognitionMixer, bf16: bool = False, fraction: float = 1.0, first: int = 20):
    """The attributes ``WeightedMixerLoss._update_recognition`` reads, around ``mixer``."""
    return SimpleNamespace(
        recognition_mixer=mixer,
        recognition_optimizer=None,
        recognition_lr=1e-3,
        recognition_clip=10.0,
        recognition_updates=10,
        first_recognition_updates=first,
        recognition_batch_fraction=fraction,
        recognition_bf16=bf16,
        n_learner_calls=torch.zeros((), dtype=torch.long),
        n_agents=N_AGENTS,
        n_actions=N_ACTIONS,
    )


def _update(host, batch, calls: int = 1):
    out = None
    for _ in range(calls):
        out = WeightedMixerLoss._update_recognition(
            host, batch.delta_q, batch.state, batch.onehot, batch.target
        )
    return out


def _reference_update(mixer: RecognitionMixer, batch, steps: int):
    """The faithful loop as released (pow_spec.md §3.6.2 (1)), written out."""
    optimizer = torch.optim.Adam(mixer.parameters(), lr=1e-3, fused=True)
    params = list(mixer.parameters())
    loss = None
    for _ in range(steps):
        q_r, _ = mixer(batch.delta_q, batch.state, batch.onehot)
        loss = 0.5 * (q_r - batch.target).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
    return loss.detach()


def _mixer(seed: int = 0, state_dim: int = 300) -> RecognitionMixer:
    torch.manual_seed(seed)
    return RecognitionMixer(N_AGENTS, N_ACTIONS, state_dim)


def test_recorded_batch_is_what_the_tests_assume(recorded):
    n = recorded.delta_q.shape[0]
    assert recorded.state.shape == (n, 300) and recorded.onehot.shape == (n, N_AGENTS, N_ACTIONS)
    assert bool((recorded.delta_q <= 0).all()) and recorded.threshold == 1.0


def test_faithful_update_is_bitwise_the_released_loop(recorded):
    batch = SimpleNamespace(**{k: v[:512] for k, v in vars(recorded).items() if k != "threshold"})
    ours, ref = _mixer(), _mixer()
    out = _update(_host(ours, first=3), batch)
    ref_loss = _reference_update(ref, batch, steps=3)
    assert torch.equal(out["loss_recognition"], ref_loss)
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_module_forward_and_gradients_are_bitwise_the_formula(recorded):
    """Q_r = V(s) + Σ_i (Σ_k |W1|_ik |wf|_k) ΔQ_i, computed here without the module's casts."""
    mixer = _mixer()
    dq, s, oh, y = recorded.delta_q[:256], recorded.state[:256], recorded.onehot[:256], recorded.target[:256]
    q_r, ldq = mixer(dq, s, oh)
    (0.5 * (q_r - y).pow(2).mean()).backward()
    grads = [p.grad.clone() for p in mixer.parameters()]
    mixer.zero_grad()
    x = torch.cat([s, oh.flatten(-2)], dim=-1)
    w1 = mixer.lambda_hypernet["w1"](x).unflatten(-1, (N_AGENTS, mixer.mixing_embed))
    lam = torch.matmul(w1.abs(), mixer.lambda_hypernet["wf"](x).abs().unsqueeze(-1)).squeeze(-1)
    ref_ldq = (lam * dq).sum(-1, keepdim=True)
    ref_q = mixer.v(s) + ref_ldq
    (0.5 * (ref_q - y).pow(2).mean()).backward()
    assert torch.equal(q_r, ref_q) and torch.equal(ldq, ref_ldq)
    for g, p in zip(grads, mixer.parameters()):
        assert torch.equal(g, p.grad)


def test_bf16_outputs_are_float32_and_close(recorded):
    mixer = _mixer()
    dq, s, oh = recorded.delta_q, recorded.state, recorded.onehot
    with torch.no_grad():
        q32, l32 = mixer(dq, s, oh)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q16, l16 = mixer(dq, s, oh)
    assert q16.dtype == l16.dtype == torch.float32
    assert float((l16 - l32).abs().max()) <= 0.02 * float(l32.abs().max())


def test_bf16_recognition_steps_select_the_same_set_as_float32(recorded):
    """Three learner calls (20 + 10 + 10 steps) from the same weights on the recorded batch."""
    fp32, bf16 = _mixer(), _mixer()
    out32 = _update(_host(fp32), recorded, calls=3)
    out16 = _update(_host(bf16, bf16=True), recorded, calls=3)
    with torch.no_grad():
        ref = fp32(recorded.delta_q, recorded.state, recorded.onehot)[1].abs() < recorded.threshold
        got = bf16(recorded.delta_q, recorded.state, recorded.onehot)[1].abs() < recorded.threshold
    frac_ref, frac = ref.float().mean().item(), got.float().mean().item()
    assert 0.05 < frac_ref < 0.95, "the recorded batch should make A_r a non-trivial subset"
    agreement = (ref == got).float().mean().item()
    assert agreement >= 0.95, f"A_r membership agreement {agreement:.3f}"
    assert abs(frac - frac_ref) <= 0.10 * frac_ref, f"A_r fraction {frac:.3f} vs {frac_ref:.3f}"
    assert abs(out16["loss_recognition"].item() - out32["loss_recognition"].item()) <= 0.05 * max(
        out32["loss_recognition"].item(), 1e-6
    )


def test_bf16_off_leaves_the_update_unchanged(recorded):
    """recognition_bf16=False (the default) is the float32 path, bit for bit."""
    batch = SimpleNamespace(**{k: v[:512] for k, v in vars(recorded).items() if k != "threshold"})
    a, b = _mixer(), copy.deepcopy(_mixer())
    host_b = _host(b, first=2)
    del host_b.recognition_bf16  # a loss built without the algorithm's attribute
    _update(_host(a, bf16=False, first=2), batch)
    _update(host_b, batch)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_cheap_fraction_selects_the_same_set_as_the_full_batch(recorded):
    """The documented cheap option (``recognition_batch_fraction=0.4``: each Q_r step on a fresh
    40 % subset of the batch) against the faithful full-batch steps for one learner call,
    both continuing from the same trained Q_r and optimiser state (six faithful calls on the
    recorded batch), as ``recognition_agreement.py compare --restart-each-call`` measures it on a
    run's stream: the issue's targets (≥ 95 % agreement, A_r fraction within 10 %)."""
    trained = _host(_mixer())
    _update(trained, recorded, calls=6)
    full, cheap = copy.deepcopy(trained), copy.deepcopy(trained)  # networks with their Adams
    cheap.recognition_batch_fraction = 0.4
    _update(full, recorded)
    torch.manual_seed(0)  # the draws
    _update(cheap, recorded)

    def in_set(host) -> torch.Tensor:
        with torch.no_grad():
            _, ldq = host.recognition_mixer(recorded.delta_q, recorded.state, recorded.onehot)
        return ldq.abs() < recorded.threshold

    ref, got = in_set(full), in_set(cheap)
    frac_ref, frac = ref.float().mean().item(), got.float().mean().item()
    assert 0.05 < frac_ref < 0.95
    agreement = (ref == got).float().mean().item()
    assert agreement >= 0.95, f"A_r membership agreement {agreement:.3f}"
    assert abs(frac - frac_ref) <= 0.10 * frac_ref, f"A_r fraction {frac:.3f} vs {frac_ref:.3f}"
