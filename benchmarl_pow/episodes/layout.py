"""Whole episodes as stored rows: PyMARL's layout, padding marked by the ``"valid"`` key.

A row of an episode batch ``[B, L + 1]`` holds one episode from its first step (slot 0, where
``is_init`` is True). Slots ``0 … len-1`` are its real transitions (``valid`` True). Slot ``len``
holds at the root the observation, state and action mask that followed the last transition (the
next observation of slot ``len-1``), as PyMARL stores them, so an unroll over the row reads the
next-step values of every real step by shifting, with no re-run after a time-out. Every later
slot is zeros. ``valid`` is False from slot ``len`` on. ``L`` is the task's episode limit, so a
full-length episode still has its final observation slot.

Losses learn about padding from this key alone (``WeightedMixerLoss`` reads ``"valid"``); this
module knows nothing of losses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torchrl.envs.transforms import Transform

#: bool ``[B, T, 1]``: True on real transitions, False on padding.
VALID_KEY = "valid"
#: bool ``[B, T, 1]``: True at the first step of an episode (TorchRL's InitTracker key).
IS_INIT_KEY = "is_init"

_DONE_NAMES = ("done", "terminated", "truncated")


def _is_private(key: NestedKey) -> bool:
    parts = (key,) if isinstance(key, str) else key
    return any(str(part).startswith("_") for part in parts)


def episode_done(rollout: TensorDictBase) -> torch.Tensor:
    """``[B, T]`` bool: the step ended the episode (any ``done`` leaf under ``"next"``)."""
    flags = []
    for key in rollout.get("next").keys(include_nested=True, leaves_only=True):
        name = key if isinstance(key, str) else key[-1]
        if name == "done":
            value = rollout.get(("next", *((key,) if isinstance(key, str) else key)))
            flags.append(value.reshape(*rollout.shape, -1).any(-1))
    if not flags:
        raise KeyError("the rollout has no ('next', ..., 'done') entry")
    return torch.stack(flags, -1).any(-1)


def valid_steps(done: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: steps up to and including each row's first ``done``."""
    before = torch.cumsum(done.long(), dim=1) - done.long()
    return before == 0


def episodes_from_rollout(
    rollout: TensorDictBase, max_len: int, shifted_keys: Sequence[NestedKey] | None = None
) -> TensorDictBase:
    """Rows of whole episodes ``[B, max_len + 1]`` from an episode-synchronous rollout.

    Args:
        rollout: ``[B, T]`` from ``env.rollout(..., break_when_all_done=True)``, each row one
            episode from a reset; after its end TorchRL repeats the last step (ignored here).
            ``T <= max_len``.
        max_len: the episode limit L.
        shifted_keys: root keys whose value after the last step (``("next", key)``) is written
            to the slot after it; default: every root leaf that also exists under ``"next"``
            except done flags.

    Returns:
        the padded rows with ``"valid"`` and ``"is_init"`` set (layout in the module docstring).
        A row that did not end within ``T`` steps is cut there as a time-out (``done`` True,
        ``terminated`` unchanged), so its λ-return bootstraps from the next observation.
    """
    batch, steps = rollout.shape
    if steps > max_len:
        raise ValueError(f"rollout has {steps} steps, more than the episode limit {max_len}")
    rollout = rollout.exclude(*[k for k in rollout.keys(True, True) if _is_private(k)])
    done = episode_done(rollout)
    valid = valid_steps(done)
    length = valid.sum(1)  # [B], >= 1
    ended = done.any(1)
    if shifted_keys is None:
        next_keys = set(rollout.get("next").keys(True, True))
        shifted_keys = [
            k
            for k in rollout.keys(True, True)
            if k in next_keys and (k if isinstance(k, str) else k[-1]) not in _DONE_NAMES
        ]
    rows = torch.arange(batch, device=length.device)
    total = max_len + 1
    mask = torch.zeros(batch, total, dtype=torch.bool, device=valid.device)
    mask[:, :steps] = valid

    def zero_padding(x: torch.Tensor) -> torch.Tensor:
        keep = valid.reshape(batch, steps, *([1] * (x.ndim - 2)))
        return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))

    # apply/cat keep the nested (agent) batch dimensions of the groups
    real = rollout.apply(zero_padding)
    tail = rollout[:, :1].expand(batch, total - steps).clone().zero_()
    out = torch.cat([real, tail], dim=1)
    last = length - 1
    if not bool(ended.all()):
        # Cut by the rollout's length: a time-out at the last step (bootstraps, cuts the trace).
        for key in out.get("next").keys(True, True):
            name = key if isinstance(key, str) else key[-1]
            if name == "done":
                full = ("next", *((key,) if isinstance(key, str) else key))
                flag = out.get(full)
                flag[rows[~ended], last[~ended]] = True
    for key in shifted_keys:
        value = out.get(key, None)
        if value is None:
            continue
        value[rows, length] = rollout.get(("next", *((key,) if isinstance(key, str) else key)))[
            rows, last
        ].to(value.dtype)
    is_init = torch.zeros(batch, total, 1, dtype=torch.bool, device=mask.device)
    is_init[:, 0] = True
    out.set(IS_INIT_KEY, is_init)
    out.set(VALID_KEY, mask.unsqueeze(-1))
    return out


def truncate_to_longest(batch: TensorDictBase) -> TensorDictBase:
    """Cut a ``[B, T]`` episode batch in time after the longest episode's final slot (PyMARL's
    ``max_t_filled``): ``T' = max(len) + 1``, at most ``T``."""
    valid = batch.get(VALID_KEY).reshape(*batch.shape)
    keep = min(int(valid.sum(1).max()) + 1, batch.shape[1])
    return batch[:, :keep]


def restore_next(batch: TensorDictBase, shifted_keys: Sequence[NestedKey]) -> TensorDictBase:
    """Write ``("next", key)[:, t] = key[:, t + 1]`` (zeros at the last slot) for ``shifted_keys``.

    In the episode layout this is exactly the next observation of every real step, so the replay
    stores each observation once.
    """
    for key in shifted_keys:
        value = batch.get(key, None)
        if value is None:
            continue
        nxt = torch.zeros_like(value)
        nxt[:, :-1] = value[:, 1:]
        batch.set(("next", *((key,) if isinstance(key, str) else key)), nxt)
    return batch


class EpisodeStorageTransform(Transform):
    """Replay-buffer transform of the episode layout (a TorchRL ``Transform``).

    On ``extend`` (``inv``) it drops the ``("next", key)`` copies of ``shifted_keys``, which the
    layout makes redundant (halving the replay's memory); on ``sample`` (``forward``) it cuts the
    batch after its longest episode and rebuilds those entries by shifting.
    """

    def __init__(self, shifted_keys: Sequence[NestedKey]):
        super().__init__()
        self.shifted_keys = list(shifted_keys)

    def _next(self, key: NestedKey) -> tuple:
        return ("next", *((key,) if isinstance(key, str) else key))

    def _inv_call(self, tensordict: TensorDictBase) -> TensorDictBase:
        return tensordict.exclude(*[self._next(k) for k in self.shifted_keys])

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        return restore_next(truncate_to_longest(tensordict).clone(False), self.shifted_keys)
