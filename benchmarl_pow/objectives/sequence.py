"""Unrolling per-agent networks over stored chunks, online and target, with correct resets.

BenchMARL stores recurrent data as chunks ``[B, T]`` that do not align with episodes; the GRU
starts from zero at each chunk start and resets where ``is_init`` is True. TorchRL's value
estimators run the *target* network over the ``next`` sequence, whose ``is_init`` is always False,
so the target GRU never resets inside a chunk (shared/spec/stack.md §4). We instead run every
network once over the time-extended sequence ``[o_0 … o_{T-1}, o'_{T-1}]`` with the root resets
and read next-step values by shifting. That is exact wherever ``o'_t = o_{t+1}``, i.e. except
after a ``done`` inside the chunk: after a terminal the value is multiplied by zero anyway, and
after a time-limit truncation (which must bootstrap) we re-run the few affected chunk prefixes
with ``o'_t`` in place of the next episode's first observation.

Non-recurrent networks are simply evaluated on the root and the ``next`` observations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import Tensor


def _run(module: TensorDictModuleBase, td: TensorDictBase, out_key: NestedKey) -> Tensor:
    return module(td.clone(False)).get(out_key)


def unroll(
    module: TensorDictModuleBase,
    inputs: TensorDictBase,
    next_inputs: TensorDictBase,
    out_key: NestedKey,
    *,
    recurrent: bool,
    truncated: Tensor | None = None,
    need_next: bool = True,
    next_grad: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Values of ``module`` at every stored step and at every step's next observation.

    Args:
        module: a BenchMARL model (TensorDictModule) writing ``out_key``.
        inputs: the model's inputs at the root, batch ``[B, T]`` (with ``"is_init"`` if
            ``recurrent``).
        next_inputs: the same keys from ``td["next"]``, batch ``[B, T]``.
        out_key: where the module writes its output ``[B, T, n, A]``.
        recurrent: whether the module carries a hidden state over time.
        truncated: ``[B, T]`` bool, steps that ended an episode by time limit (not terminal);
            only needed for recurrent modules.
        need_next: if False only the root values are computed.
        next_grad: if False the next-step values are only needed without gradient (e.g. for
            an argmax), so the truncation re-runs skip building a graph.

    Returns:
        ``(current, next)``, each ``[B, T, *out]``; ``next`` is None when ``need_next`` is False.
    """
    if not need_next:
        return _run(module, inputs, out_key), None
    if not recurrent:
        both = torch.stack([inputs, next_inputs], dim=0)  # one call, [2, B, T]
        out = _run(module, both.reshape(-1, *inputs.shape[1:]), out_key)
        out = out.reshape(2, *inputs.shape, *out.shape[len(inputs.shape[1:]) + 1 :])
        return out[0], out[1]

    batch, time = inputs.shape
    # o'_{T-1} continues the last episode of the chunk: no reset before it.
    tail = next_inputs[:, -1:].select(*inputs.keys(True, True), strict=False).clone()
    tail.set("is_init", torch.zeros_like(inputs.get("is_init")[:, :1]))
    extended = torch.cat([inputs, tail], dim=1)  # [B, T+1]
    out = _run(module, extended, out_key)
    current, nxt = out[:, :-1], out[:, 1:]

    if truncated is not None and time > 1:
        rows, steps = torch.nonzero(truncated[:, :-1].reshape(batch, time - 1), as_tuple=True)
        if rows.numel() > 0:
            nxt = nxt.clone()
            length = int(steps.max()) + 2
            prefix = extended[rows, :length].clone()  # [K, L]
            k = torch.arange(rows.numel(), device=rows.device)
            for key in _leaf_keys(next_inputs):
                if key == "is_init":
                    continue
                prefix.get(key)[k, steps + 1] = next_inputs.get(key)[rows, steps]
            prefix.get("is_init")[k, steps + 1] = False
            with torch.set_grad_enabled(torch.is_grad_enabled() and next_grad):
                fixed = _run(module, prefix, out_key)
            nxt[rows, steps] = fixed[k, steps + 1]
    return current, nxt


def _leaf_keys(td: TensorDictBase) -> Sequence[NestedKey]:
    return list(td.keys(include_nested=True, leaves_only=True))
