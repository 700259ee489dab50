"""Unit tests of the loss family against pow_spec.md §7.4 and hand-built sequences."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn

from benchmarl_pow.modules import QmixMixer, RecognitionMixer, VdnMixer
from benchmarl_pow.objectives import (
    CentralWeightingRule,
    OptimisticWeightingRule,
    RecognitionSetRule,
    WeightedMixerLoss,
    WeightInputs,
    masked_argmax,
    residual_mask,
    td_lambda_targets,
)
from benchmarl_pow.objectives.sequence import unroll


def _col(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype).reshape(1, -1, 1)


# ---------------------------------------------------------------- TD(λ) (§7.4)
def test_td_lambda_terminated_at_the_last_transition():
    y = td_lambda_targets(
        _col([1.0, 0.0, 2.0]), _col([20.0, 30.0, 40.0]), _col([0, 0, 1], torch.bool),
        _col([0, 0, 1], torch.bool), gamma=0.99, lmbda=0.6,
    )
    assert torch.allclose(y.flatten(), torch.tensor([16.682392, 13.068, 2.0]), atol=1e-5)


def test_td_lambda_truncated_sequence_bootstraps():
    # not terminated: the last step bootstraps from Qtgt[3] = 40 (sequence end, or truncation)
    for done_last in (0, 1):
        y = td_lambda_targets(
            _col([1.0, 0.0, 2.0]), _col([20.0, 30.0, 40.0]), _col([0, 0, 0], torch.bool),
            _col([0, 0, done_last], torch.bool), gamma=0.99, lmbda=0.6,
        )
        assert torch.allclose(y.flatten(), torch.tensor([30.6546976, 36.5904, 41.6]), atol=1e-4)


def test_td_lambda_terminated_early_with_padding():
    y = td_lambda_targets(
        _col([1.0, 2.0, 0.0]), _col([20.0, 30.0, 40.0]), _col([0, 1, 0], torch.bool),
        _col([0, 1, 0], torch.bool), gamma=0.99, lmbda=0.6, mask=_col([1, 1, 0]),
    )
    assert torch.allclose(y.flatten(), torch.tensor([10.108, 2.0, 0.0]), atol=1e-5)


def test_td_lambda_truncation_inside_a_chunk_cuts_the_trace_but_bootstraps():
    # step 0 ends an episode by time limit; step 1 starts a new one
    y = td_lambda_targets(
        _col([1.0, 5.0]), _col([10.0, 100.0]), _col([0, 0], torch.bool),
        _col([1, 0], torch.bool), gamma=0.5, lmbda=0.6,
    )
    assert torch.allclose(y.flatten(), torch.tensor([1.0 + 0.5 * 10.0, 5.0 + 0.5 * 100.0]))


def test_td_lambda_zero_is_one_step_and_matrix_game_target_is_the_reward():
    y = td_lambda_targets(
        _col([1.0, 0.0]), _col([20.0, 30.0]), _col([0, 0], torch.bool), _col([0, 0], torch.bool),
        gamma=0.99, lmbda=0.0,
    )
    assert torch.allclose(y.flatten(), torch.tensor([1.0 + 0.99 * 20, 0.99 * 30]))
    y = td_lambda_targets(
        _col([8.0]), _col([123.0]), _col([1], torch.bool), _col([1], torch.bool), 0.99, 0.6
    )
    assert y.item() == 8.0


# ---------------------------------------------------- rules (§7.4, §3.4–3.6)
def test_recognition_set_is_strict():
    # ΔQ = (-0.5, 0), λ = (2, 3), V = 7  →  λΔQ = -1.0, Q_r = 6
    lambda_dq = torch.tensor([[-1.0]])
    assert not RecognitionSetRule(threshold=0.1).in_set(lambda_dq).item()
    assert not RecognitionSetRule(threshold=1.0).in_set(lambda_dq).item()  # strict <
    assert RecognitionSetRule(threshold=1.01).in_set(lambda_dq).item()
    assert RecognitionSetRule(threshold=1e-6).in_set(torch.zeros(1, 1)).item()  # greedy: ΔQ = 0


def _inputs(**kw):
    base = dict(
        q_tot=torch.zeros(3, 1), target=torch.zeros(3, 1),
        taken_is_greedy=torch.zeros(3, 1, dtype=torch.bool),
    )
    base.update(kw)
    return WeightInputs(**base)


def test_pow_weights_and_warm_up():
    rule = RecognitionSetRule(threshold=0.5, alpha=0.0, no_weighted_steps=100)
    lambda_dq = torch.tensor([[-0.1], [-0.7], [0.0]])
    assert rule.weights(_inputs(lambda_delta_q=lambda_dq, total_frames=100)) is None  # warm-up
    w = rule.weights(_inputs(lambda_delta_q=lambda_dq, total_frames=101))
    assert w.flatten().tolist() == [1.0, 0.0, 1.0]
    w = RecognitionSetRule(0.5, alpha=0.25).weights(_inputs(lambda_delta_q=lambda_dq, total_frames=1))
    assert w.flatten().tolist() == [1.0, 0.25, 1.0]
    with pytest.raises(ValueError, match="threshold"):
        RecognitionSetRule(threshold=0.0)


def test_cw_and_ow_weights():
    cw = CentralWeightingRule(alpha=0.1)
    w = cw.weights(_inputs(
        target=torch.tensor([[1.0], [5.0], [1.0]]),
        taken_is_greedy=torch.tensor([[True], [False], [False]]),
        central_target_at_greedy=torch.tensor([[3.0], [3.0], [3.0]]),
    ))
    assert torch.allclose(w.flatten(), torch.tensor([1.0, 1.0, 0.1]))
    ow = OptimisticWeightingRule(alpha=0.1)
    w = ow.weights(_inputs(q_tot=torch.tensor([[0.0], [2.0], [1.0]]),
                           target=torch.tensor([[1.0], [1.0], [1.0]])))
    assert torch.allclose(w.flatten(), torch.tensor([1.0, 0.1, 0.1]))


def test_resq_residual_mask_example():
    # Q_tot = 5 and raw residual 2 → Q_r = -2; Q_jt = 3 off the greedy action, 5 at it
    q_tot, q_r = torch.tensor([[5.0], [5.0]]), -torch.tensor([[2.0], [2.0]]).abs()
    q_jt = q_tot + residual_mask(torch.tensor([[False], [True]])) * q_r
    assert q_jt.flatten().tolist() == [3.0, 5.0]


def test_masked_argmax_honours_masks_and_survives_empty_rows():
    q = torch.tensor([[[1.0, 5.0, 3.0], [2.0, 1.0, 0.0]]])
    mask = torch.tensor([[[True, False, True], [False, False, False]]])
    assert masked_argmax(q, mask).tolist() == [[2, 0]]


# ------------------------------------------------------ sequences with resets
class _ToyGru(nn.Module):
    """A per-agent GRU over [B, T, n, F] that resets where is_init is True."""

    def __init__(self, n_in=3, hidden=4, n_actions=2):
        super().__init__()
        self.cell = nn.GRUCell(n_in, hidden)
        self.head = nn.Linear(hidden, n_actions)

    def forward(self, obs, is_init):
        b, t, n, _ = obs.shape
        h = obs.new_zeros(b, n, self.cell.hidden_size)
        outs = []
        for i in range(t):
            h = torch.where(is_init[:, i].unsqueeze(-1), torch.zeros_like(h), h)
            h = self.cell(obs[:, i].reshape(b * n, -1), h.reshape(b * n, -1)).reshape(b, n, -1)
            outs.append(self.head(h))
        return torch.stack(outs, 1)


def _toy_module():
    torch.manual_seed(0)
    return TensorDictModule(_ToyGru(), in_keys=[("agents", "observation"), "is_init"],
                            out_keys=[("agents", "action_value")])


def test_unroll_resets_and_fixes_next_values_after_a_truncation():
    module = _toy_module()
    b, t, n = 2, 6, 2
    obs = torch.randn(b, t, n, 3)
    next_obs = torch.cat([obs[:, 1:], torch.randn(b, 1, n, 3)], 1)
    # chunk 0: an episode is truncated at t=2 (its real next obs differs) and a new one starts at 3
    next_obs[0, 2] = torch.randn(n, 3)
    is_init = torch.zeros(b, t, 1, dtype=torch.bool)
    is_init[:, 0] = True
    is_init[0, 3] = True
    truncated = torch.zeros(b, t, dtype=torch.bool)
    truncated[0, 2] = True
    inputs = TensorDict({"agents": {"observation": obs}, "is_init": is_init}, [b, t])
    next_inputs = TensorDict({"agents": {"observation": next_obs},
                              "is_init": torch.zeros_like(is_init)}, [b, t])
    cur, nxt = unroll(module, inputs, next_inputs, ("agents", "action_value"),
                      recurrent=True, truncated=truncated)

    def episode_values(seq):  # run one episode from a fresh hidden state
        ii = torch.zeros(1, seq.shape[0], 1, dtype=torch.bool)
        ii[:, 0] = True
        return module.module(seq.unsqueeze(0), ii)[0]

    first = episode_values(torch.cat([obs[0, :3], next_obs[0, 2:3]]))  # o0 o1 o2 o'2
    second = episode_values(torch.cat([obs[0, 3:], next_obs[0, 5:6]]))  # o3 o4 o5 o'5
    assert torch.allclose(cur[0, :3], first[:3], atol=1e-6)
    assert torch.allclose(nxt[0, 2], first[3], atol=1e-6)  # the truncation's own next obs
    assert torch.allclose(cur[0, 3:], second[:3], atol=1e-6)  # reset at the new episode
    assert torch.allclose(nxt[0, 5], second[3], atol=1e-6)
    whole = episode_values(torch.cat([obs[1], next_obs[1, -1:]]))
    assert torch.allclose(nxt[1], whole[1:], atol=1e-6)


# ------------------------------------------------------------ the loss itself
def _matrix_batch(actions, payoff):
    n = actions.shape[0]
    obs = torch.tensor([1.0, 0.0]).expand(n, 2, 2)
    nobs = torch.tensor([0.0, 1.0]).expand(n, 2, 2)
    reward = payoff[actions[:, 0], actions[:, 1]].reshape(n, 1)
    true = torch.ones(n, 1, dtype=torch.bool)
    return TensorDict({
        "agents": {"observation": obs.clone(), "action": actions,
                   "action_mask": torch.ones(n, 2, 3, dtype=torch.bool)},
        "state": obs[:, 0].clone(),
        "next": {"agents": {"observation": nobs.clone(),
                            "action_mask": torch.ones(n, 2, 3, dtype=torch.bool)},
                 "state": nobs[:, 0].clone(), "reward": reward, "done": true,
                 "terminated": true.clone()},
    }, [n])


def _agent():
    return TensorDictModule(nn.Linear(2, 3), in_keys=[("agents", "observation")],
                            out_keys=[("agents", "action_value")])


def _central():
    return TensorDictModule(nn.Linear(2, 3), in_keys=[("agents", "observation")],
                            out_keys=[("agents", "central_value")])


def _pow_loss(**kw):
    torch.manual_seed(0)
    loss = WeightedMixerLoss(
        _agent(), QmixMixer(2, 2), n_agents=2, n_actions=3, gamma=0.99, lmbda=0.0,
        bootstrap="central", rule=RecognitionSetRule(0.05, 0.0, 0),
        central_agent=_central(), central_mixer=__import__(
            "benchmarl_pow.modules", fromlist=["CentralMixer"]).CentralMixer(2, 2, 8),
        recognition_mixer=RecognitionMixer(2, 3, 2), **kw,
    )
    loss.total_frames = 1  # past the (zero-length) warm-up
    return loss


def test_pow_loss_runs_inner_recognition_updates_and_reports_diagnostics():
    payoff = torch.tensor([[8.0, -12, -12], [-12, 0, 0], [-12, 0, 7.9]])
    actions = torch.cartesian_prod(torch.arange(3), torch.arange(3)).repeat(4, 1)
    loss = _pow_loss(recognition_updates=3, first_recognition_updates=5)
    before = [p.clone() for p in loss.recognition_mixer.parameters()]
    out = loss(_matrix_batch(actions, payoff))
    assert int(loss.n_learner_calls) == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, loss.recognition_mixer.parameters()))
    for key in ("loss", "loss_recognition", "td_error_q_tot", "td_error_central",
                "td_error_recognition", "fraction_in_recognition_set", "mean_weight",
                "mean_abs_delta_q"):
        assert torch.isfinite(out[key]), key
    assert out["loss"].requires_grad and not out["loss_recognition"].requires_grad
    # only Q_tot + Q̂* go to the main optimiser; Q_r has no gradient from "loss"
    out["loss"].backward()
    assert all(p.grad is None for p in loss.recognition_mixer.parameters())
    # the weighted loss is normalised by the number of samples, not by Σw (§1.8)
    assert 0.0 <= float(out["mean_weight"]) <= 1.0


def test_pow_loss_is_the_mean_of_weighted_errors():
    payoff = torch.tensor([[8.0, -12, -12], [-12, 0, 0], [-12, 0, 7.9]])
    actions = torch.cartesian_prod(torch.arange(3), torch.arange(3))
    loss = _pow_loss()
    loss.eval()  # no inner updates, so the weights are reproducible from outside
    td = _matrix_batch(actions, payoff)
    out = loss(td)
    with torch.no_grad():
        q = loss.agent_network(td.clone())["agents", "action_value"]
        q_taken = q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        greedy = q.argmax(-1)
        max_q = q.gather(-1, greedy.unsqueeze(-1)).squeeze(-1)
        _, ldq = loss.recognition_mixer(q_taken - max_q, td["state"],
                                        torch.nn.functional.one_hot(actions, 3).float())
        w = (ldq.abs() < 0.05).float()
        q_tot = loss.mixer(q_taken, td["state"])
        expected = 0.5 * (w * (q_tot - td["next", "reward"]) ** 2).mean()
    assert torch.allclose(out["loss_q_tot"], expected, atol=1e-6)


def test_lambda_with_a_flat_batch_is_refused():
    loss = WeightedMixerLoss(_agent(), VdnMixer(2), n_agents=2, n_actions=3, gamma=0.99, lmbda=0.6)
    payoff = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="needs sequences"):
        loss(_matrix_batch(torch.zeros(4, 2, dtype=torch.long), payoff))


def test_wrong_action_shape_and_missing_state_are_clear_errors():
    loss = WeightedMixerLoss(_agent(), QmixMixer(2, 2), n_agents=2, n_actions=3, gamma=0.99, lmbda=0.0)
    td = _matrix_batch(torch.zeros(4, 2, dtype=torch.long), torch.zeros(3, 3))
    bad = td.clone()
    bad.set(("agents", "action"), torch.zeros(4, 2, 2, dtype=torch.long), inplace=False)
    with pytest.raises(ValueError):
        loss(bad)
    del td["state"]
    with pytest.raises(KeyError, match="global state"):
        loss(td)


def test_non_finite_loss_is_an_error():
    loss = WeightedMixerLoss(_agent(), QmixMixer(2, 2), n_agents=2, n_actions=3, gamma=0.99, lmbda=0.0)
    td = _matrix_batch(torch.zeros(4, 2, dtype=torch.long), torch.zeros(3, 3))
    td.set(("next", "reward"), torch.full((4, 1), float("nan")))
    with pytest.raises(FloatingPointError, match="non-finite"):
        loss(td)
