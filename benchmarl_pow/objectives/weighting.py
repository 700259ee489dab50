"""Weighting rules: the only thing in which POW, CW-QMIX, OW-QMIX and ResQ's mask differ.

A rule turns the quantities of one learner call into per-sample weights ``[*B, 1]`` for the
Q_tot loss (pow_spec.md §3.4–3.6). Rules are tiny stateless objects; the loss computes every
input they may read and passes it in a :class:`WeightInputs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class WeightInputs:
    """Everything a rule may read, all ``[*B, 1]`` unless noted, all without gradient.

    Attributes:
        q_tot: the online Q_tot(s, a) at the taken action.
        target: the TD(λ) target y.
        taken_is_greedy: bool, the taken joint action equals the agents' current greedy one.
        central_target_at_greedy: the target Q̂*(s, â) at the current greedy action (CW), or None.
        lambda_delta_q: the recognition network's λΔQ(s, a) ≤ 0 after its updates (POW), or None.
        total_frames: frames collected so far (for the unweighted warm-up).
    """

    q_tot: Tensor
    target: Tensor
    taken_is_greedy: Tensor
    central_target_at_greedy: Tensor | None = None
    lambda_delta_q: Tensor | None = None
    total_frames: int = 0


class WeightingRule:
    """Base rule: no weighting (QMIX, VDN, QPLEX). ``weights`` returns None for "all ones"."""

    #: whether the loss must compute the target Q̂* at the current greedy action
    needs_central_at_greedy: bool = False
    #: whether the loss must run the recognition network Q_r
    needs_recognition: bool = False

    def weights(self, inputs: WeightInputs) -> Tensor | None:
        return None

    def joint_action_weights(
        self, q_tot: Tensor, target: Tensor, is_greedy: Tensor, lambda_delta_q: Tensor | None
    ) -> Tensor | None:
        """Weights of every joint action of a one-step game (diagnostics; ``target`` = payoff)."""
        return self.weights(
            WeightInputs(
                q_tot=q_tot,
                target=target,
                taken_is_greedy=is_greedy,
                central_target_at_greedy=None,
                lambda_delta_q=lambda_delta_q,
                total_frames=2**62,
            )
        )


def _select(condition: Tensor, alpha: float) -> Tensor:
    return torch.where(condition, 1.0, alpha).to(torch.float32)


class RecognitionSetRule(WeightingRule):
    """POW (pow_spec.md §3.6.2): weight 1 inside the recognition set A_r, α outside.

    A_r = {a : |λΔQ(s, a)| < C}, i.e. Q_r(s, a) > Q_r(s, â) − C (strict, as released). While
    ``total_frames <= no_weighted_steps`` every sample has weight 1 (the released warm-up).
    """

    needs_recognition = True

    def __init__(self, threshold: float, alpha: float = 0.0, no_weighted_steps: int = 0):
        if threshold <= 0:
            raise ValueError(f"threshold (C) must be > 0, got {threshold}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"other_actions_weight (α) must be in [0, 1], got {alpha}")
        self.threshold = float(threshold)
        self.alpha = float(alpha)
        self.no_weighted_steps = int(no_weighted_steps)

    def in_set(self, lambda_delta_q: Tensor) -> Tensor:
        return lambda_delta_q.abs() < self.threshold

    def weights(self, inputs: WeightInputs) -> Tensor | None:
        if inputs.total_frames <= self.no_weighted_steps:
            return None
        return _select(self.in_set(inputs.lambda_delta_q), self.alpha)


class CentralWeightingRule(WeightingRule):
    """CW-QMIX (pow_spec.md §3.4): 1 if a = â or y > Q̂*_tgt(s, â), else α."""

    needs_central_at_greedy = True

    def __init__(self, alpha: float = 0.1):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)

    def weights(self, inputs: WeightInputs) -> Tensor:
        better = (
            inputs.target > inputs.central_target_at_greedy
            if inputs.central_target_at_greedy is not None
            else torch.zeros_like(inputs.taken_is_greedy)
        )
        return _select(inputs.taken_is_greedy | better, self.alpha)

    def joint_action_weights(self, q_tot, target, is_greedy, lambda_delta_q):
        # In a one-step game Q̂* ≈ payoff, so Q̂*(s, â) is the payoff of the greedy joint action.
        greedy_value = target[is_greedy.squeeze(-1)].reshape(-1)[:1]
        return _select(is_greedy | (target > greedy_value), self.alpha)


class OptimisticWeightingRule(WeightingRule):
    """OW-QMIX (pow_spec.md §3.4): 1 where Q_tot(s, a) < y (under-estimates), else α."""

    def __init__(self, alpha: float = 0.1):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)

    def weights(self, inputs: WeightInputs) -> Tensor:
        return _select(inputs.q_tot < inputs.target, self.alpha)


def residual_mask(taken_is_greedy: Tensor) -> Tensor:
    """ResQ's mask w_r (pow_spec.md §3.5, ``condition: max_action``): 0 at â, 1 elsewhere."""
    return (~taken_is_greedy).to(torch.float32)
