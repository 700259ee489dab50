"""The PyMARL agent network as a BenchMARL model: Linear → ReLU → GRUCell → Linear (pow_spec.md §1.5).

``RnnAgent`` speaks BenchMARL's recurrent-model protocol (the same one as ``benchmarl.models.Gru``):

* **Collection** (the hidden state ``(group, "_hidden_rnn_agent_<i>")`` is in the input td, any
  batch): one step. The hidden state is zeroed where ``is_init`` is True, the network is applied,
  the output and ``("next", group, "_hidden_rnn_agent_<i>")`` are written. BenchMARL primes the
  hidden state from :meth:`RnnAgentConfig.get_model_state_spec` (``_add_rnn_transforms``) and the
  collector carries it with ``step_mdp``; keys starting with ``_`` are not stored in the buffer.
* **Training** (no hidden state in the td, batch ``[*L, T]``): an unroll over the whole chunk from
  a zero hidden state, reset to zero before every step whose ``is_init`` is True.

The training unroll is written for speed on CPU. Everything that does not depend on the recurrence
(the input embedding and the GRU input projection ``W_ih x + b_ih`` before it, and the output
layer after it) is computed for all steps and agents in one matmul each. Only the recurrent part
loops over time, with agents folded into the batch, inside a hand-written autograd function
(:class:`_GruRecurrence`) whose backward pass is the GRU's BPTT: it needs one small matmul per step
and accumulates ``dW_hh`` in one big matmul after the loop, instead of tracing ~15 autograd nodes
per step. The gate math is ``torch.nn.GRUCell``'s, and the parameters live in real
``torch.nn.Linear``/``torch.nn.GRUCell`` modules (torch's initialisation).

With ``share_params=False`` each agent has its own modules; their weights are stacked at call time
and applied with batched matmuls over the agent dimension.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from benchmarl.models.common import Model, ModelConfig, parse_model_config
from benchmarl.utils import _read_yaml_config
from tensordict import TensorDictBase
from tensordict.utils import unravel_key_list
from torch import Tensor, nn
from torchrl.data.tensor_specs import Composite, Unbounded

__all__ = ["RnnAgent", "RnnAgentConfig", "RnnAgentSchema", "gru_recurrence"]


# --------------------------------------------------------------------------------------------------
# The recurrence
# --------------------------------------------------------------------------------------------------
class _GruRecurrence(torch.autograd.Function):
    """The recurrent part of a GRU unroll with resets, given the precomputed input gates.

    Time-major inputs: ``gi`` ``[T, B, n, 3H]`` (``W_ih x_t + b_ih`` for every step), ``keep``
    ``[T, B]`` (0 where the hidden state is reset to zero before step t, else 1), ``h0``
    ``[B, n, H]``, ``w_hh`` ``[3H, H]`` (shared) or ``[n, 3H, H]`` (per agent), ``b_hh`` ``[3H]`` or
    ``[n, 3H]``. Output: the hidden states ``h_1 … h_T`` as ``[T, B, n, H]``.

    Per step, with ``hp = keep_t · h_{t-1}``, exactly ``torch.nn.GRUCell``::

        r = σ(gi_r + W_hr hp + b_hr)        z = σ(gi_z + W_hz hp + b_hz)
        n = tanh(gi_n + r ⊙ (W_hn hp + b_hn))
        h = (1 − z) ⊙ n + z ⊙ hp

    The loop writes every intermediate straight into preallocated time-major buffers (``out=``),
    so one step is one ``addmm`` and five element-wise kernels on cache-resident ``[B·n, ·]``
    blocks. The backward pass is the hand-written BPTT: per step ~12 element-wise kernels and the
    ``dh_{t-1} = d(gates) · W_hh`` matmul; ``dW_hh`` and ``db_hh`` are one big matmul/sum after it.
    """

    @staticmethod
    def forward(ctx, gi: Tensor, keep: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
        time, batch, n, gates = gi.shape
        hidden, rows = gates // 3, batch * n
        gi = gi.reshape(time, rows, gates)
        keep = keep.reshape(time, batch, 1, 1).to(gi.dtype)
        resets = (keep.reshape(time, batch) == 0).any(1).tolist()
        shared = w_hh.dim() == 2
        # hs[0] = h0, hs[t + 1] = h_t; only the W_hn part of W_hh hp + b_hh is kept for backward.
        hs = gi.new_empty(time + 1, rows, hidden)
        hs[0] = h0.reshape(rows, hidden)
        ghn_all = gi.new_empty(time, rows, hidden)
        rz_all = gi.new_empty(time, rows, 2 * hidden)  # σ outputs r, z
        new_all = gi.new_empty(time, rows, hidden)  # tanh output n
        gh = gi.new_empty(rows, gates)
        w_t = w_hh.t() if shared else w_hh.transpose(1, 2)
        for t in range(time):
            hp = _apply_keep(hs[t], keep[t], batch) if resets[t] else hs[t]
            if shared:
                torch.addmm(b_hh, hp, w_t, out=gh)
            else:
                per_agent = torch.baddbmm(b_hh.unsqueeze(1), hp.view(batch, n, hidden).transpose(0, 1), w_t)
                gh.view(batch, n, gates).copy_(per_agent.transpose(0, 1))
            git = gi[t]
            rz = torch.add(git[:, : 2 * hidden], gh[:, : 2 * hidden], out=rz_all[t]).sigmoid_()
            ghn = ghn_all[t].copy_(gh[:, 2 * hidden :])
            new = torch.addcmul(git[:, 2 * hidden :], rz[:, :hidden], ghn, out=new_all[t]).tanh_()
            torch.addcmul(new, rz[:, hidden:], hp - new, out=hs[t + 1])
        ctx.save_for_backward(keep, w_hh, hs, ghn_all, rz_all, new_all)
        ctx.resets = resets
        return hs[1:].view(time, batch, n, hidden)

    @staticmethod
    def backward(ctx, d_hs: Tensor):
        keep, w_hh, hs, ghn_all, rz_all, new_all = ctx.saved_tensors
        resets = ctx.resets
        time = rz_all.shape[0]
        rows, hidden = hs.shape[1:]
        batch = keep.shape[1]
        n = rows // batch
        gates = 3 * hidden
        shared = w_hh.dim() == 2
        if d_hs is None:
            d_hs = torch.zeros_like(new_all)
        d_hs = d_hs.reshape(time, rows, hidden)
        d_gi = hs.new_empty(time, rows, gates)
        d_ghn_all = hs.new_empty(time, rows, hidden)  # d(W_hn hp + b_hn) = d(pre-tanh) ⊙ r
        ones = hs.new_ones(rows, hidden)
        w_rz, w_n = w_hh[..., : 2 * hidden, :], w_hh[..., 2 * hidden :, :]
        dh = torch.zeros_like(ones)
        for t in range(time - 1, -1, -1):
            dh = dh + d_hs[t]
            rz = rz_all[t]
            r, z = rz[:, :hidden], rz[:, hidden:]
            new = new_all[t]
            hp = _apply_keep(hs[t], keep[t], batch) if resets[t] else hs[t]
            d_rz_act = torch.addcmul(rz, rz, rz, value=-1)  # σ' = σ(1 − σ)
            dhz = dh * z
            # h = n + z ⊙ (hp − n): through n and tanh, then through r and z
            d_pre_n = torch.mul(dh - dhz, torch.addcmul(ones, new, new, value=-1), out=d_gi[t, :, 2 * hidden :])
            torch.mul(d_pre_n * ghn_all[t], d_rz_act[:, :hidden], out=d_gi[t, :, :hidden])
            torch.mul(dh * (hp - new), d_rz_act[:, hidden:], out=d_gi[t, :, hidden : 2 * hidden])
            d_ghn = torch.mul(d_pre_n, r, out=d_ghn_all[t])
            if shared:
                dh = torch.addmm(dhz, d_gi[t, :, : 2 * hidden], w_rz).addmm_(d_ghn, w_n)
            else:
                d_gh = torch.cat([d_gi[t, :, : 2 * hidden], d_ghn], -1).view(batch, n, gates).transpose(0, 1)
                dh = dhz + torch.bmm(d_gh, w_hh).transpose(0, 1).reshape(rows, hidden)
            if resets[t]:
                dh = _apply_keep(dh, keep[t], batch)
        d_h0 = dh.view(batch, n, hidden) if ctx.needs_input_grad[2] else None
        d_w = d_b = None
        d_gh_rz = d_gi[..., : 2 * hidden]
        if ctx.needs_input_grad[3]:
            # dW_hh = Σ_t d_gh_t^T hp_t with hp_t = keep_t · hs[t]: all rows at once, then minus
            # the (few) rows whose state was reset.
            t_idx, b_idx = torch.nonzero(keep.reshape(time, batch) == 0, as_tuple=True)
            reset_hp = hs[:-1].view(time, batch, n, hidden)[t_idx, b_idx]  # [K, n, H]
            reset_gh = torch.cat(
                [
                    d_gh_rz.view(time, batch, n, 2 * hidden)[t_idx, b_idx],
                    d_ghn_all.view(time, batch, n, hidden)[t_idx, b_idx],
                ],
                -1,
            )  # [K, n, 3H]
            if shared:
                flat_hp = hs[:-1].reshape(-1, hidden)
                d_w = torch.cat(
                    [d_gh_rz.reshape(-1, 2 * hidden).t().mm(flat_hp), d_ghn_all.view(-1, hidden).t().mm(flat_hp)]
                )
                d_w -= reset_gh.reshape(-1, gates).t().mm(reset_hp.reshape(-1, hidden))
            else:
                d_gh = torch.cat([d_gh_rz, d_ghn_all], -1).view(time, batch, n, gates)
                d_w = torch.einsum("tbng,tbnh->ngh", d_gh, hs[:-1].view(time, batch, n, hidden))
                d_w -= torch.einsum("kng,knh->ngh", reset_gh, reset_hp)
        if ctx.needs_input_grad[4]:
            if shared:
                d_b = torch.cat([d_gh_rz.sum((0, 1)), d_ghn_all.sum((0, 1))])
            else:
                d_b = torch.cat(
                    [
                        d_gh_rz.reshape(time, batch, n, 2 * hidden).sum((0, 1)),
                        d_ghn_all.view(time, batch, n, hidden).sum((0, 1)),
                    ],
                    -1,
                )
        d_gi = d_gi.view(time, batch, n, gates) if ctx.needs_input_grad[0] else None
        return d_gi, None, d_h0, d_w, d_b


def _apply_keep(h: Tensor, keep_t: Tensor, batch: int) -> Tensor:
    """``h`` ``[B·n, H]`` times ``keep_t`` ``[B, 1, 1]`` (zero the reset rows)."""
    rows, hidden = h.shape
    return (h.view(batch, rows // batch, hidden) * keep_t).view(rows, hidden)


def gru_recurrence(gi: Tensor, keep: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    """Hidden states ``[T, B, n, H]`` of a GRU with resets from time-major precomputed input gates
    ``gi`` ``[T, B, n, 3H]`` (see :class:`_GruRecurrence`)."""
    return _GruRecurrence.apply(gi.contiguous(), keep, h0.contiguous(), w_hh, b_hh)


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
    Parameters are shared across agents when ``share_params`` (BenchMARL's default), else each
    agent has its own.
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
            raise ValueError(f"RnnAgent needs hidden_size > 0 and input_embed >= 0, got {hidden_size}, {input_embed}")
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

    # ------------------------------------------------------------------ checks
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

    # ------------------------------------------------------------- parameters
    def _weights(self, module_name: str, param: str) -> Tensor:
        """A parameter of all agents: as is when shared, stacked on a leading agent dim otherwise."""
        if self.share_params:
            return getattr(getattr(self.nets[0], module_name), param)
        return torch.stack([getattr(getattr(net, module_name), param) for net in self.nets])

    @staticmethod
    def _linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """``x`` ``[..., n, F]`` through a shared (``[O, F]``) or per-agent (``[n, O, F]``) Linear."""
        if weight.dim() == 2:
            return F.linear(x, weight, bias)
        lead = x.shape[:-2]
        n, features = x.shape[-2:]
        flat = x.reshape(-1, n, features).transpose(0, 1)  # [n, N, F]
        out = torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2))  # [n, N, O]
        return out.transpose(0, 1).reshape(*lead, n, -1)

    # ---------------------------------------------------------------- forward
    def unroll(self, x: Tensor, is_init: Tensor, h0: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Outputs ``[B, T, n, out]`` and hidden states ``[B, T, n, H]`` for inputs ``[B, T, n, F]``.

        ``is_init`` ``[B, T, 1]`` (or ``[B, T]``): reset the hidden state to zero before those steps.
        ``h0`` ``[B, n, H]``: the state before step 0 (zeros when None). The work is done
        time-major (the input is transposed once); the outputs are ``[B, T]`` views of it.
        """
        batch, time, n, _ = x.shape
        x = x.transpose(0, 1)  # [T, B, n, F]
        if self.input_embed > 0:
            x = self._linear(x, self._weights("embed", "weight"), self._weights("embed", "bias")).relu_()
        gi = self._linear(x, self._weights("rnn", "weight_ih"), self._weights("rnn", "bias_ih"))
        if h0 is None:
            h0 = gi.new_zeros(batch, n, self.hidden_size)
        keep = (~is_init.reshape(batch, time).bool()).t().to(gi.dtype)
        hs = gru_recurrence(gi, keep, h0, self._weights("rnn", "weight_hh"), self._weights("rnn", "bias_hh"))
        out = self._linear(hs, self._weights("head", "weight"), self._weights("head", "bias"))
        return out.transpose(0, 1), hs.transpose(0, 1)

    def _forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        x = torch.cat([tensordict.get(key) for key in self.obs_keys], dim=-1)
        is_init = tensordict.get("is_init", None)
        if is_init is None:
            raise KeyError("RnnAgent needs the 'is_init' key (BenchMARL adds it with InitTracker)")
        h0 = tensordict.get(self.hidden_state_name, None)
        n = self.n_agents
        if h0 is not None:  # collection: one step from the carried hidden state
            lead = x.shape[:-2]
            steps = lead.numel()
            out, hs = self.unroll(
                x.reshape(steps, 1, n, -1),
                is_init.reshape(steps, 1),
                h0.reshape(steps, n, self.hidden_size),
            )
            tensordict.set(self.out_key, out.reshape(*lead, n, -1))
            tensordict.set(("next", *self.hidden_state_name), hs.reshape(*lead, n, self.hidden_size))
            return tensordict
        # training: unroll over the last batch dim from a zero state
        if x.dim() < 4:
            raise ValueError(
                "RnnAgent without a hidden state in the input unrolls a sequence: it needs a batch "
                f"[..., T] (inputs [..., T, n_agents, features]), got inputs of shape {tuple(x.shape)}"
            )
        lead = x.shape[:-3]
        time = x.shape[-3]
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
