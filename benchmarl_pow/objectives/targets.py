"""Bootstrap targets and masked action selection shared by every loss of the family."""

from __future__ import annotations

import torch
from torch import Tensor
from torchrl.objectives.value.functional import vec_td_lambda_return_estimate


def td_lambda_targets(
    reward: Tensor,
    next_value: Tensor,
    terminated: Tensor,
    done: Tensor,
    gamma: float,
    lmbda: float,
    mask: Tensor | None = None,
) -> Tensor:
    """Forward-view TD(λ) returns over the time dimension (``-2``), pow_spec.md §1.6.

    ``y_t = r_t + γ (1 - term_t) [(1 - λ) V_{t+1} + λ y_{t+1}]``, where the λ-recursion stops at
    every ``done`` step (a terminal or a time-limit truncation) and at the end of the sequence,
    where it bootstraps from ``V_{t+1}`` fully. Only ``terminated`` stops bootstrapping: a
    truncated step still bootstraps from the value of its own next observation. ``λ = 0`` gives
    one-step targets. Uses TorchRL's vectorised estimator on precomputed values (its value
    *modules* cannot be used: they unroll a target GRU on the ``next`` sequence without resets).

    Args:
        reward: ``[*B, T, 1]``.
        next_value: ``[*B, T, 1]`` bootstrap value of each step's next observation.
        terminated, done: ``[*B, T, 1]`` bool; ``done`` must include ``terminated``.
        gamma, lmbda: discount and trace parameter.
        mask: optional ``[*B, T, 1]``; targets of masked-out (padded) steps are set to 0.

    Returns:
        ``[*B, T, 1]`` targets (no gradient).
    """
    if not 0.0 <= lmbda <= 1.0:
        raise ValueError(f"lmbda must be in [0, 1], got {lmbda}")
    terminated = terminated.bool()
    done = done.bool() | terminated
    with torch.no_grad():
        if lmbda == 0.0:
            y = reward + gamma * (~terminated).to(next_value.dtype) * next_value
        else:
            y = vec_td_lambda_return_estimate(
                gamma, lmbda, next_value, reward, done, terminated, time_dim=-2
            )
        if mask is not None:
            y = y * mask.to(y.dtype)
    return y


def available_or_all(mask: Tensor | None, like: Tensor) -> Tensor:
    """The action mask as bool, with rows that have no available action treated as all-available.

    Such rows occur only on steps whose value is multiplied by zero (e.g. after a terminal); making
    them all-available keeps maxima finite there (the authors' code produced ±1e7 on padding).
    """
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    mask = mask.bool()
    return mask | ~mask.any(-1, keepdim=True)


def masked_argmax(values: Tensor, mask: Tensor | None) -> Tensor:
    """Greedy action over available actions: ``[*B, n, A] -> [*B, n]`` (long)."""
    mask = available_or_all(mask, values)
    return values.masked_fill(~mask, float("-inf")).argmax(-1)


def gather_actions(values: Tensor, actions: Tensor) -> Tensor:
    """``values[..., a]`` per agent: ``[*B, n, A]``, ``[*B, n] -> [*B, n]``."""
    return values.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
