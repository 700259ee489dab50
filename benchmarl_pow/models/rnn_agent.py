"""The PyMARL agent network as a BenchMARL model: Linear → ReLU → GRUCell → Linear (pow_spec.md §1.5).

``RnnAgent`` speaks BenchMARL's recurrent-model protocol (the same one as ``benchmarl.models.Gru``):

* **Collection** (the hidden state ``(group, "_hidden_rnn_agent_<i>")`` is in the input td, any
  batch): one step. The hidden state is zeroed where ``is_init`` is True, the network is applied,
  the output and ``("next", group, "_hidden_rnn_agent_<i>")`` are written. BenchMARL primes the
  hidden state from :meth:`RnnAgentConfig.get_model_state_spec` (``_add_rnn_transforms``), the
  collector carries it with ``step_mdp``, and keys starting with ``_`` are not stored.
* **Training** (no hidden state in the td, batch ``[*L, T]``): an unroll over the whole chunk from
  a zero hidden state, reset to zero before every step whose ``is_init`` is True.

Speed (``share_params=True``, BenchMARL's default). The whole unroll is one autograd function,
:class:`_SharedAgentUnroll`, with a hand-written backward pass:

* everything that does not depend on the recurrence (the embedding, ``W_ih e + b_ih``, the output
  layer and their gradients) is one big matmul over all steps and agents;
* only the recurrent part loops over time, with agents folded into the batch (``[B·n, H]``); each
  step is two small ``addmm`` and five element-wise kernels writing straight into time-major
  buffers (``out=``), and its backward is the GRU's BPTT (one ``addmm`` pair and ~12 element-wise
  kernels a step; ``dW_hh`` is one big matmul after the loop);
* the big intermediate buffers come from a small CPU buffer pool (:class:`_BufferPool`) and are
  recycled between calls. Big fresh allocations are ``mmap``-ed by glibc and cost a page fault per
  4 KiB on first touch, which on our machines made the loop's stores ~10x slower than its maths.

The gate math is exactly ``torch.nn.GRUCell``'s, and the parameters live in real ``nn.Linear`` /
``nn.GRUCell`` modules (torch's initialisation). With ``share_params=False`` each agent has its
own modules; that case runs a plain autograd implementation with batched matmuls over the agent
dimension (correct, not tuned).
"""

from __future__ import annotations

import collections
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from benchmarl.models.common import Model, ModelConfig, parse_model_config
from benchmarl.utils import _read_yaml_config
from tensordict import TensorDictBase
from tensordict.utils import unravel_key_list
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torchrl.data.tensor_specs import Composite, Unbounded

__all__ = ["RnnAgent", "RnnAgentConfig", "RnnAgentSchema", "agent_unroll", "clear_buffer_pool"]


# --------------------------------------------------------------------------------------------------
# Buffer pool
# --------------------------------------------------------------------------------------------------
class _BufferPool:
    """Recycles big CPU scratch tensors between calls (see the module docstring for why).

    ``empty`` lends a view of a pooled flat tensor (the smallest free one that is large enough,
    else a new one); ``release`` takes it back. Only tensors lent by the pool are ever taken back.
    Small or non-CPU requests bypass the pool (glibc reuses small chunks; CUDA has its own cache).
    At most ``max_free`` buffers are kept; the smallest are dropped first. ``release`` may run from
    a finaliser (garbage collection inside ``empty``): it queues and never blocks.
    """

    min_numel = 1 << 18  # 1 MiB of float32

    def __init__(self, max_free: int = 16):
        self.max_free = max_free
        self._free: list[Tensor] = []
        self._lent: dict[int, Tensor] = {}
        self._pending: collections.deque[Tensor] = collections.deque()
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        numel = math.prod(shape)
        if like.device.type != "cpu" or numel < self.min_numel:
            return torch.empty(shape, dtype=like.dtype, device=like.device)
        with self._lock:
            self._drain()
            best = None
            for i, buffer in enumerate(self._free):
                if buffer.dtype == like.dtype and buffer.numel() >= numel:
                    if best is None or buffer.numel() < self._free[best].numel():
                        best = i
            base = self._free.pop(best) if best is not None else torch.empty(numel, dtype=like.dtype)
            self._lent[id(base)] = base
        return base[:numel].view(shape)

    def release(self, *tensors: Tensor | None) -> None:
        self._pending.extend(t for t in tensors if t is not None)
        if self._lock.acquire(blocking=False):
            try:
                self._drain()
            finally:
                self._lock.release()

    def _drain(self) -> None:
        while self._pending:
            tensor = self._pending.popleft()
            base = tensor if tensor._base is None else tensor._base
            if self._lent.pop(id(base), None) is not None:
                self._free.append(base)
        if len(self._free) > self.max_free:
            self._free.sort(key=Tensor.numel)
            del self._free[: len(self._free) - self.max_free]

    def clear(self) -> None:
        with self._lock:
            self._drain()
            self._free.clear()


_POOL = _BufferPool()


def clear_buffer_pool() -> None:
    """Free the memory kept by ``RnnAgent``'s buffer pool (it refills on the next training call)."""
    _POOL.clear()


class _Lease:
    """Pooled buffers saved for backward: given back after backward, or when the graph dies."""

    def __init__(self, **buffers: Tensor | None):
        self.buffers = buffers

    def __getitem__(self, name: str) -> Tensor:
        return self.buffers[name]

    def release(self, *names: str) -> None:
        _POOL.release(*(self.buffers.pop(name, None) for name in names))

    def release_all(self) -> None:
        self.release(*list(self.buffers))

    def __del__(self):
        try:
            self.release_all()
        except Exception:  # interpreter shutdown
            pass


# --------------------------------------------------------------------------------------------------
# The fused unroll (shared parameters)
# --------------------------------------------------------------------------------------------------
def _keep_rows(h: Tensor, keep_t: Tensor, batch: int) -> Tensor:
    """``h`` ``[B·n, H]`` with the rows of the batch entries where ``keep_t`` ``[B, 1, 1]`` is 0 zeroed."""
    rows, hidden = h.shape
    return (h.view(batch, rows // batch, hidden) * keep_t).view(rows, hidden)


class _SharedAgentUnroll(torch.autograd.Function):
    """``x`` ``[B, T, n, F]`` → Q ``[B, T, n, A]`` and the last hidden state ``[B, n, H]``.

    Inputs: ``x``, ``keep`` ``[T, B]`` (0 where the hidden state is reset to zero before step t),
    ``h0`` ``[B, n, H]``, then the shared weights ``w_e, b_e`` (None: no embedding),
    ``w_ih, b_ih, w_hh, b_hh`` (``torch.nn.GRUCell`` layout, gates r, z, n) and ``w_o, b_o``.
    Per step, with ``hp = keep_t · h_{t-1}`` and ``e_t = relu(W_e x_t + b_e)``::

        r = σ(W_ir e + b_ir + W_hr hp + b_hr)       z = σ(W_iz e + b_iz + W_hz hp + b_hz)
        n = tanh(W_in e + b_in + r ⊙ (W_hn hp + b_hn))
        h = (1 − z) ⊙ n + z ⊙ hp                     q = W_o h + b_o
    """

    @staticmethod
    def forward(ctx, save, x, keep, h0, w_e, b_e, w_ih, b_ih, w_hh, b_hh, w_o, b_o):
        q, h_last, lease = _SharedAgentUnroll.run(save, x, keep, h0, w_e, b_e, w_ih, b_ih, w_hh, b_hh, w_o, b_o)
        if save:
            ctx.save_for_backward(x, keep, h0, w_e, b_e, w_ih, b_ih, w_hh, b_hh, w_o, b_o)
            ctx.lease = lease
        return q, h_last

    @staticmethod
    def run(save, x, keep, h0, w_e, b_e, w_ih, b_ih, w_hh, b_hh, w_o, b_o):
        """The forward pass; with ``save`` also the :class:`_Lease` of what backward needs."""
        batch, time, n, features = x.shape
        hidden = w_hh.shape[1]
        rows, total = batch * n, time * batch * n
        resets = (keep == 0).any(1).tolist()
        keep4 = keep.reshape(time, batch, 1, 1)

        # Inputs of the two big matmuls carry a column of ones, so that their biases ride in the
        # matmul (no broadcast pass over the output) and come back with the weight gradients.
        x_aug = _POOL.empty((total, features + 1), x)  # time-major [x_t | 1]
        x_aug[:, features] = 1
        x_aug[:, :features].view(time, batch, n, features).copy_(x.transpose(0, 1))
        inp = x_aug
        e_aug = None
        if w_e is not None:
            embed = w_e.shape[0]
            e_aug = _POOL.empty((total, embed + 1), x)  # [relu(W_e x + b_e) | 1]
            e_aug[:, embed] = 1
            torch.mm(x_aug, torch.cat([w_e, b_e.unsqueeze(1)], 1).t(), out=e_aug[:, :embed]).relu_()
            inp = e_aug
        # W_ih e + b_ih, with b_hr and b_hz folded in (they add to the same pre-activations)
        bias = torch.cat([b_ih[: 2 * hidden] + b_hh[: 2 * hidden], b_ih[2 * hidden :]])
        w_ih_aug = torch.cat([w_ih, bias.unsqueeze(1)], 1)
        gi = torch.mm(inp, w_ih_aug.t(), out=_POOL.empty((total, 3 * hidden), x)).view(time, rows, -1)

        hs = _POOL.empty((time + 1, rows, hidden), x)  # hs[0] = h0, hs[t + 1] = h_t
        hs[0] = h0.reshape(rows, hidden)
        ghn, new, diff = (x.new_empty(rows, hidden) for _ in range(3))
        if save:
            # What backward needs, computed while it is in cache: r, z and the three products
            # A = (1 − z)(1 − n²), C_r = (W_hn hp + b_hn) σ'(r), D_z = (hp − n) σ'(z).
            rz_all = _POOL.empty((time, rows, 2 * hidden), x)
            a_all, cr_all, dz_all = (_POOL.empty((time, rows, hidden), x) for _ in range(3))
            d_act, d_tanh = x.new_empty(rows, 2 * hidden), x.new_empty(rows, hidden)
            ones = x.new_ones(rows, hidden)
        else:
            rz_all = x.new_empty(1, rows, 2 * hidden).expand(time, -1, -1)
        # transposed copies: a row-major right operand makes the small per-step matmuls ~20% faster
        w_rz_t, w_n_t = w_hh[: 2 * hidden].t().contiguous(), w_hh[2 * hidden :].t().contiguous()
        b_hn = b_hh[2 * hidden :]
        steps = zip(gi[..., : 2 * hidden].unbind(0), gi[..., 2 * hidden :].unbind(0), rz_all.unbind(0))
        h_prev, h_next = hs[:-1].unbind(0), hs[1:].unbind(0)
        for t, (gi_rz, gi_n, rz) in enumerate(steps):
            hp = _keep_rows(h_prev[t], keep4[t], batch) if resets[t] else h_prev[t]
            torch.addmm(gi_rz, hp, w_rz_t, out=rz).sigmoid_()
            r, z = rz[:, :hidden], rz[:, hidden:]
            torch.addmm(b_hn, hp, w_n_t, out=ghn)
            torch.addcmul(gi_n, r, ghn, out=new).tanh_()
            torch.addcmul(new, z, torch.sub(hp, new, out=diff), out=h_next[t])
            if save:
                torch.addcmul(rz, rz, rz, value=-1, out=d_act)  # σ' = σ(1 − σ)
                torch.mul(ghn, d_act[:, :hidden], out=cr_all[t])
                torch.mul(diff, d_act[:, hidden:], out=dz_all[t])
                torch.addcmul(ones, new, new, value=-1, out=d_tanh)
                torch.addcmul(d_tanh, d_tanh, z, value=-1, out=a_all[t])
        _POOL.release(gi)

        q = torch.addmm(b_o, hs[1:].view(total, hidden), w_o.t())
        q = q.view(time, batch, n, -1).transpose(0, 1).contiguous()
        h_last = hs[time].view(batch, n, hidden).clone()
        if save:
            lease = _Lease(x_aug=x_aug, e_aug=e_aug, hs=hs, rz_all=rz_all, a_all=a_all, cr_all=cr_all, dz_all=dz_all)
            lease.resets = resets
            return q, h_last, lease
        _POOL.release(x_aug, e_aug, hs)
        return q, h_last, None

    @staticmethod
    @once_differentiable
    def backward(ctx, d_q, d_h_last):
        inputs = ctx.saved_tensors  # x, keep, h0, w_e, b_e, w_ih, b_ih, w_hh, b_hh, w_o, b_o
        _, keep, _, w_e, _, w_ih, _, w_hh, _, w_o, _ = inputs
        needs = ctx.needs_input_grad  # (save, *inputs)
        lease = ctx.lease
        if "hs" not in lease.buffers:
            # a second backward (retain_graph=True): the buffers went back to the pool after the
            # first one, so run the forward pass again
            lease = _SharedAgentUnroll.run(True, *inputs)[2]
        resets = lease.resets
        x_aug, e_aug, hs = lease["x_aug"], lease["e_aug"], lease["hs"]
        rz_all, a_all, cr_all, dz_all = (lease[name] for name in ("rz_all", "a_all", "cr_all", "dz_all"))
        time, rows, hidden = rz_all.shape[0], *hs.shape[1:]
        batch = keep.shape[1]
        n, features, total = rows // batch, x_aug.shape[1] - 1, time * rows
        keep4 = keep.reshape(time, batch, 1, 1)
        h_all = hs[1:].view(total, hidden)

        # output layer (its gradient into h_t is added inside the loop)
        if d_q is None:
            d_q = hs.new_zeros(batch, time, n, w_o.shape[0])
        d_q = d_q.transpose(0, 1).reshape(total, -1)
        d_w_o = d_q.t().mm(h_all) if needs[10] else None
        d_b_o = d_q.sum(0) if needs[11] else None
        d_q = d_q.view(time, rows, -1)

        # BPTT through the recurrence: h = n + z ⊙ (hp − n), n = tanh(gi_n + r ⊙ (W_hn hp + b_hn))
        d_gi = _POOL.empty((time, rows, 3 * hidden), hs)
        d_ghn_all = _POOL.empty((time, rows, hidden), hs)  # d(W_hn hp + b_hn) = d(pre-tanh n) ⊙ r
        dhz = hs.new_empty(rows, hidden)
        w_rz, w_n = w_hh[: 2 * hidden], w_hh[2 * hidden :]
        dh = hs.new_zeros(rows, hidden) if d_h_last is None else d_h_last.reshape(rows, hidden).clone()
        steps = zip(
            rz_all.unbind(0), a_all.unbind(0), cr_all.unbind(0), dz_all.unbind(0), d_gi.unbind(0),
            d_ghn_all.unbind(0), d_q.unbind(0),
        )
        for t, (rz, a, c_r, d_z, d_gi_t, d_ghn, d_q_t) in reversed(list(enumerate(steps))):
            dh.addmm_(d_q_t, w_o)
            d_pre_n = torch.mul(dh, a, out=d_gi_t[:, 2 * hidden :])
            torch.mul(d_pre_n, c_r, out=d_gi_t[:, :hidden])
            torch.mul(dh, d_z, out=d_gi_t[:, hidden : 2 * hidden])
            torch.mul(d_pre_n, rz[:, :hidden], out=d_ghn)
            torch.mul(dh, rz[:, hidden:], out=dhz)
            dh = torch.addmm(dhz, d_gi_t[:, : 2 * hidden], w_rz).addmm_(d_ghn, w_n)
            if resets[t]:
                dh = _keep_rows(dh, keep4[t], batch)
        lease.release("rz_all", "a_all", "cr_all", "dz_all")
        d_h0 = dh.view(batch, n, hidden) if needs[3] else None

        # W_hh, b_hh: Σ_t d_gh_t^T hp_t with hp_t = keep_t · hs[t]; all rows, minus the reset ones
        d_gh_rz = d_gi[..., : 2 * hidden]
        d_w_hh = d_b_hh = None
        if needs[8]:
            h_prev = hs[:-1].view(total, hidden)
            d_w_hh = torch.cat(
                [d_gh_rz.reshape(total, 2 * hidden).t().mm(h_prev), d_ghn_all.view(total, hidden).t().mm(h_prev)]
            )
            t_idx, b_idx = torch.nonzero(keep == 0, as_tuple=True)
            if t_idx.numel():
                reset_hp = hs[:-1].view(time, batch, n, hidden)[t_idx, b_idx].reshape(-1, hidden)
                reset_gh = torch.cat(
                    [
                        d_gh_rz.view(time, batch, n, 2 * hidden)[t_idx, b_idx],
                        d_ghn_all.view(time, batch, n, hidden)[t_idx, b_idx],
                    ],
                    -1,
                ).reshape(-1, 3 * hidden)
                d_w_hh -= reset_gh.t().mm(reset_hp)
        d_gi = d_gi.view(total, 3 * hidden)
        inp = x_aug if e_aug is None else e_aug
        d_w_ih = d_b_ih = None
        if needs[6] or needs[7] or needs[9]:
            d_w_ih_aug = d_gi.t().mm(inp)  # [3H, in + 1]: [dW_ih | db_ih]
            d_w_ih, d_b_ih = d_w_ih_aug[:, :-1].contiguous(), d_w_ih_aug[:, -1].contiguous()
        if needs[9]:
            d_b_hh = torch.cat([d_b_ih[: 2 * hidden], d_ghn_all.view(total, hidden).sum(0)])
        _POOL.release(d_ghn_all)

        # input projection and embedding
        d_inp = None
        if e_aug is not None and (needs[4] or needs[5] or needs[1]) or e_aug is None and needs[1]:
            d_inp = torch.mm(d_gi, w_ih, out=_POOL.empty((total, w_ih.shape[1]), hs))
        _POOL.release(d_gi)
        d_w_e = d_b_e = d_x_tm = None
        if e_aug is not None and d_inp is not None:
            # through the ReLU (e is its output), in place
            torch.ops.aten.threshold_backward.grad_input(d_inp, e_aug[:, :-1], 0.0, grad_input=d_inp)
            if needs[4] or needs[5]:
                d_w_e_aug = d_inp.t().mm(x_aug)  # [E, F + 1]: [dW_e | db_e]
                d_w_e, d_b_e = d_w_e_aug[:, :-1].contiguous(), d_w_e_aug[:, -1].contiguous()
            d_x_tm = d_inp.mm(w_e) if needs[1] else None
        elif d_inp is not None:
            d_x_tm = d_inp.clone()
        _POOL.release(d_inp)
        lease.release_all()
        d_x = d_x_tm.view(time, batch, n, features).transpose(0, 1) if d_x_tm is not None else None
        return None, d_x, None, d_h0, d_w_e, d_b_e, d_w_ih, d_b_ih, d_w_hh, d_b_hh, d_w_o, d_b_o


def agent_unroll(
    x: Tensor,
    is_init: Tensor,
    h0: Tensor | None,
    embed: nn.Linear | None,
    rnn: nn.GRUCell,
    head: nn.Linear,
) -> tuple[Tensor, Tensor]:
    """The agent network with shared parameters over a sequence, fast path.

    Args:
        x: inputs ``[B, T, n, F]``.
        is_init: ``[B, T]`` or ``[B, T, 1]``; the hidden state is reset to zero before those steps.
        h0: hidden state before step 0, ``[B, n, H]`` (None: zeros).
        embed, rnn, head: the modules (``embed`` None: no embedding).

    Returns:
        ``(q [B, T, n, A], h_T [B, n, H])``.
    """
    batch, time, n, _ = x.shape
    if h0 is None:
        h0 = x.new_zeros(batch, n, rnn.hidden_size)
    keep = (~is_init.reshape(batch, time).bool()).t().to(x.dtype)
    w_e = b_e = None
    if embed is not None:
        w_e, b_e = embed.weight, embed.bias
    tensors = (x, h0, w_e, b_e, rnn.weight_ih, rnn.bias_ih, rnn.weight_hh, rnn.bias_hh, head.weight, head.bias)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return _SharedAgentUnroll.apply(
        save, x, keep, h0, w_e, b_e, rnn.weight_ih, rnn.bias_ih, rnn.weight_hh, rnn.bias_hh, head.weight, head.bias
    )


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class _AgentNet(nn.Module):
    """One agent's parameters: ``embed`` (Linear, or None), ``rnn`` (GRUCell), ``head`` (Linear)."""

    def __init__(self, in_features: int, input_embed: int, hidden_size: int, out_features: int, device):
        super().__init__()
        self.embed = nn.Linear(in_features, input_embed, device=device) if input_embed > 0 else None
        rnn_in = input_embed if input_embed > 0 else in_features
        self.rnn = nn.GRUCell(rnn_in, hidden_size, device=device)
        self.head = nn.Linear(hidden_size, out_features, device=device)


class RnnAgent(Model):
    """PyMARL's RNN agent: ``Linear(in→E) → ReLU → GRUCell(E→H) → Linear(H→out)`` per agent.

    Args:
        hidden_size: GRU hidden size H (64 in the paper).
        input_embed: width E of the Linear+ReLU before the GRU (64); 0 feeds the inputs to the
            GRU directly.

    The inputs (the group's observation keys, concatenated on the last dim) must have the agent
    dimension; the model is decentralised (``centralised=True`` raises ``NotImplementedError``).
    Parameters are shared across agents when ``share_params`` (BenchMARL's default) and live in
    ``self.nets[0]``; otherwise ``self.nets[i]`` holds agent i's.
    """

    def __init__(self, hidden_size: int, input_embed: int, **kwargs):
        super().__init__(
            input_spec=kwargs.pop("input_spec"),
            output_spec=kwargs.pop("output_spec"),
            agent_group=kwargs.pop("agent_group"),
            input_has_agent_dim=kwargs.pop("input_has_agent_dim"),
            n_agents=kwargs.pop("n_agents"),
            centralised=kwargs.pop("centralised"),
            share_params=kwargs.pop("share_params"),
            device=kwargs.pop("device"),
            action_spec=kwargs.pop("action_spec"),
            model_index=kwargs.pop("model_index"),
            is_critic=kwargs.pop("is_critic"),
        )
        if kwargs:
            raise TypeError(f"RnnAgent got unexpected arguments {sorted(kwargs)}")
        if hidden_size <= 0 or input_embed < 0:
            raise ValueError(
                f"RnnAgent needs hidden_size > 0 and input_embed >= 0, got {hidden_size} and {input_embed}"
            )
        self.hidden_size = hidden_size
        self.input_embed = input_embed
        self.hidden_state_name = (self.agent_group, f"_hidden_rnn_agent_{self.model_index}")
        self.rnn_keys = unravel_key_list(["is_init", self.hidden_state_name])
        self.obs_keys = list(self.in_keys)
        self.in_keys = self.obs_keys + self.rnn_keys

        self.input_features = sum(spec.shape[-1] for spec in self.input_spec.values(True, True))
        self.output_features = self.output_leaf_spec.shape[-1]
        self.nets = nn.ModuleList(
            [
                _AgentNet(self.input_features, input_embed, hidden_size, self.output_features, self.device)
                for _ in range(1 if self.share_params else self.n_agents)
            ]
        )

    def _perform_checks(self):
        super()._perform_checks()
        if self.centralised or not self.input_has_agent_dim or not self.output_has_agent_dim:
            raise NotImplementedError(
                "RnnAgent is a decentralised per-agent network: it needs inputs and outputs with the "
                "agent dimension and centralised=False (use it for policies / agent Q-networks, not "
                "for centralised critics)"
            )
        for key, spec in self.input_spec.items(True, True):
            if len(spec.shape) != 2 or spec.shape[0] != self.n_agents:
                raise ValueError(
                    f"RnnAgent inputs must have shape [n_agents={self.n_agents}, features], "
                    f"got {key}: {tuple(spec.shape)}"
                )
        out_shape = self.output_leaf_spec.shape
        if len(out_shape) != 2 or out_shape[0] != self.n_agents:
            raise ValueError(
                f"RnnAgent output must have shape [n_agents={self.n_agents}, features], got {tuple(out_shape)}"
            )

    # ---------------------------------------------------------------- unroll
    def unroll(self, x: Tensor, is_init: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Outputs ``[B, T, n, out]`` and the last hidden state ``[B, n, H]`` for inputs ``[B, T, n, F]``.

        ``is_init`` ``[B, T, 1]`` (or ``[B, T]``): reset the hidden state to zero before those steps.
        ``h0`` ``[B, n, H]``: the state before step 0 (zeros when None).
        """
        if self.share_params:
            net = self.nets[0]
            return agent_unroll(x, is_init, h0, net.embed, net.rnn, net.head)
        return self._per_agent_unroll(x, is_init, h0)

    def _stacked(self, module_name: str, param: str) -> Tensor:
        return torch.stack([getattr(getattr(net, module_name), param) for net in self.nets])

    def _per_agent_linear(self, x: Tensor, module_name: str) -> Tensor:
        """``x`` ``[..., n, F]`` through each agent's own Linear."""
        weight, bias = self._stacked(module_name, "weight"), self._stacked(module_name, "bias")
        return torch.einsum("...nf,nof->...no", x, weight) + bias

    def _per_agent_unroll(self, x: Tensor, is_init: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor]:
        """``share_params=False``: plain autograd, batched over agents (einsum), looping over time."""
        batch, time, n, _ = x.shape
        hidden = self.hidden_size
        if self.input_embed > 0:
            x = torch.relu(self._per_agent_linear(x, "embed"))
        w_ih, b_ih = self._stacked("rnn", "weight_ih"), self._stacked("rnn", "bias_ih")
        w_hh, b_hh = self._stacked("rnn", "weight_hh"), self._stacked("rnn", "bias_hh")
        gi = torch.einsum("btnf,ngf->btng", x, w_ih) + b_ih
        keep = (~is_init.reshape(batch, time, 1, 1).bool()).to(x.dtype)
        h = x.new_zeros(batch, n, hidden) if h0 is None else h0
        hs = []
        for t in range(time):
            hp = h * keep[:, t]
            gh = torch.einsum("bnh,ngh->bng", hp, w_hh) + b_hh
            gi_r, gi_z, gi_n = gi[:, t].chunk(3, -1)
            gh_r, gh_z, gh_n = gh.chunk(3, -1)
            r = torch.sigmoid(gi_r + gh_r)
            z = torch.sigmoid(gi_z + gh_z)
            new = torch.tanh(gi_n + r * gh_n)
            h = (1 - z) * new + z * hp
            hs.append(h)
        return self._per_agent_linear(torch.stack(hs, 1), "head"), h

    # --------------------------------------------------------------- forward
    def _forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        inputs = [tensordict.get(key) for key in self.obs_keys]
        x = inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=-1)
        is_init = tensordict.get("is_init", None)
        if is_init is None:
            raise KeyError("RnnAgent needs the 'is_init' key (BenchMARL adds it with InitTracker)")
        h0 = tensordict.get(self.hidden_state_name, None)
        n = self.n_agents
        if h0 is not None:  # collection: one step from the carried hidden state
            lead = x.shape[:-2]
            steps = lead.numel()
            out, h_n = self.unroll(
                x.reshape(steps, 1, n, -1), is_init.reshape(steps, 1), h0.reshape(steps, n, self.hidden_size)
            )
            tensordict.set(self.out_key, out.reshape(*lead, n, -1))
            tensordict.set(("next", *self.hidden_state_name), h_n.reshape(*lead, n, self.hidden_size))
            return tensordict
        # training: unroll over the last batch dim from a zero state
        if x.dim() < 4:
            raise ValueError(
                "RnnAgent without a hidden state in the input unrolls a sequence: it needs a batch "
                f"[..., T] (inputs [..., T, n_agents, features]), got inputs of shape {tuple(x.shape)}"
            )
        lead, time = x.shape[:-3], x.shape[-3]
        batch = lead.numel()
        out, _ = self.unroll(x.reshape(batch, time, n, -1), is_init.reshape(batch, time))
        tensordict.set(self.out_key, out.reshape(*lead, time, n, -1))
        return tensordict


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------
@dataclass
class RnnAgentConfig(ModelConfig):
    """Dataclass config for :class:`RnnAgent` (``model=rnn_agent`` on the CLI).

    Args:
        hidden_size: GRU hidden size (64).
        input_embed: width of the Linear+ReLU before the GRU (64); 0 = none.
    """

    hidden_size: int = 64
    input_embed: int = 64

    @staticmethod
    def associated_class():
        return RnnAgent

    @property
    def is_rnn(self) -> bool:
        return True

    def get_model_state_spec(self, model_index: int = 0) -> Composite:
        return Composite({f"_hidden_rnn_agent_{model_index}": Unbounded(shape=(self.hidden_size,))})

    @classmethod
    def get_from_yaml(cls, path: str | None = None):
        """Load from ``path``, by default this project's ``conf/model/rnn_agent.yaml``."""
        if path is None:
            from custom_envs.common import conf_root

            path = Path(conf_root()) / "model" / "rnn_agent.yaml"
        config = _read_yaml_config(str(path))
        config.setdefault("name", "rnn_agent")
        return cls(**parse_model_config(config))


@dataclass
class RnnAgentSchema(RnnAgentConfig):
    """Hydra schema of ``model=rnn_agent``: the config fields plus the ``name`` that BenchMARL's
    ``load_model_config_from_hydra`` looks up in ``model_config_registry``."""

    name: str = "rnn_agent"
