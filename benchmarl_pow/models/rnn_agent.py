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
def _hidden_gates(h: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    """``W_hh h + b_hh`` for ``h`` ``[B, n, H]``: shared ``w_hh`` ``[3H, H]`` or per-agent ``[n, 3H, H]``."""
    if w_hh.dim() == 2:
        batch, n, hidden = h.shape
        return torch.addmm(b_hh, h.reshape(batch * n, hidden), w_hh.t()).view(batch, n, -1)
    return torch.baddbmm(b_hh.unsqueeze(1), h.transpose(0, 1), w_hh.transpose(1, 2)).transpose(0, 1)


def _hidden_grad(d_gh: Tensor, w_hh: Tensor) -> Tensor:
    """``d_gh @ W_hh``: the gradient reaching ``h`` through ``W_hh h``; ``d_gh`` ``[B, n, 3H]``."""
    if w_hh.dim() == 2:
        batch, n, gates = d_gh.shape
        return torch.mm(d_gh.reshape(batch * n, gates), w_hh).view(batch, n, -1)
    return torch.bmm(d_gh.transpose(0, 1), w_hh).transpose(0, 1)


class _GruRecurrence(torch.autograd.Function):
    """The recurrent part of a GRU unroll with resets, given the precomputed input gates.

    Inputs: ``gi`` ``[B, T, n, 3H]`` (``W_ih x_t + b_ih`` for every step), ``keep`` ``[B, T, 1, 1]``
    (0 where the hidden state is reset to zero before step t, else 1), ``h0`` ``[B, n, H]``,
    ``w_hh`` ``[3H, H]`` or ``[n, 3H, H]``, ``b_hh`` ``[3H]`` or ``[n, 3H]``.
    Output: the hidden states ``h_1 … h_T`` as ``[B, T, n, H]``.

    Per step, with ``hp = keep_t · h_{t-1}``, exactly ``torch.nn.GRUCell``::

        r = σ(gi_r + W_hr hp + b_hr)        z = σ(gi_z + W_hz hp + b_hz)
        n = tanh(gi_n + r ⊙ (W_hn hp + b_hn))
        h = (1 − z) ⊙ n + z ⊙ hp
    """

    @staticmethod
    def forward(ctx, gi: Tensor, keep: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
        batch, time, n, gates = gi.shape
        hidden = gates // 3
        hs = gi.new_empty(batch, time, n, hidden)
        rz_all = gi.new_empty(batch, time, n, 2 * hidden)  # σ outputs r, z
        new_all = gi.new_empty(batch, time, n, hidden)  # tanh output n
        ghn_all = gi.new_empty(batch, time, n, hidden)  # W_hn hp + b_hn
        h = h0
        for t in range(time):
            hp = h * keep[:, t]
            gh = _hidden_gates(hp, w_hh, b_hh)
            git = gi[:, t]
            rz = torch.sigmoid(git[..., : 2 * hidden] + gh[..., : 2 * hidden])
            ghn = gh[..., 2 * hidden :]
            new = torch.tanh(torch.addcmul(git[..., 2 * hidden :], rz[..., :hidden], ghn))
            h = torch.addcmul(new, rz[..., hidden:], hp - new)
            hs[:, t] = h
            rz_all[:, t] = rz
            new_all[:, t] = new
            ghn_all[:, t] = ghn
        ctx.save_for_backward(keep, h0, w_hh, hs, rz_all, new_all, ghn_all)
        return hs

    @staticmethod
    def backward(ctx, d_hs: Tensor):
        keep, h0, w_hh, hs, rz_all, new_all, ghn_all = ctx.saved_tensors
        batch, time, n, hidden = hs.shape
        # The state each step started from (after its reset): hp_t = keep_t · h_{t-1}.
        hp_all = torch.cat([h0.unsqueeze(1), hs[:, :-1]], dim=1).mul_(keep)
        d_gi = hs.new_empty(batch, time, n, 3 * hidden)
        d_gh = hs.new_empty(batch, time, n, 3 * hidden)
        dh = torch.zeros_like(h0)
        d_hs = d_hs.contiguous() if d_hs is not None else torch.zeros_like(hs)
        for t in range(time - 1, -1, -1):
            dh = dh + d_hs[:, t]
            rz = rz_all[:, t]
            r, z = rz[..., :hidden], rz[..., hidden:]
            new = new_all[:, t]
            hp = hp_all[:, t]
            # h = n + z ⊙ (hp − n)
            d_new_pre = dh * (1 - z) * (1 - new * new)  # through tanh
            d_rz = torch.cat([d_new_pre * ghn_all[:, t], dh * (hp - new)], dim=-1)
            d_rz = d_rz * rz * (1 - rz)  # through σ
            d_gi[:, t, :, : 2 * hidden] = d_rz
            d_gi[:, t, :, 2 * hidden :] = d_new_pre
            d_gh[:, t, :, : 2 * hidden] = d_rz
            d_ghn = d_new_pre * r
            d_gh[:, t, :, 2 * hidden :] = d_ghn
            dh = (dh * z + _hidden_grad(d_gh[:, t], w_hh)) * keep[:, t]
        d_h0 = dh if ctx.needs_input_grad[2] else None
        d_w = d_b = None
        if w_hh.dim() == 2:
            flat_gh = d_gh.view(-1, 3 * hidden)
            if ctx.needs_input_grad[3]:
                d_w = flat_gh.t().mm(hp_all.view(-1, hidden))
            if ctx.needs_input_grad[4]:
                d_b = flat_gh.sum(0)
        else:
            per_agent_gh = d_gh.transpose(0, 2).reshape(n, -1, 3 * hidden)  # [n, T·B, 3H]
            if ctx.needs_input_grad[3]:
                per_agent_hp = hp_all.transpose(0, 2).reshape(n, -1, hidden)
                d_w = torch.bmm(per_agent_gh.transpose(1, 2), per_agent_hp)
            if ctx.needs_input_grad[4]:
                d_b = per_agent_gh.sum(1)
        d_gi = d_gi if ctx.needs_input_grad[0] else None
        return d_gi, None, d_h0, d_w, d_b


def gru_recurrence(gi: Tensor, keep: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    """Hidden states ``[B, T, n, H]`` of a GRU with resets from precomputed input gates (see
    :class:`_GruRecurrence`)."""
    return _GruRecurrence.apply(gi, keep, h0, w_hh, b_hh)


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
    def unroll(self, x: Tensor, is_init: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Outputs ``[B, T, n, out]`` and hidden states ``[B, T, n, H]`` for inputs ``[B, T, n, F]``.

        ``is_init`` ``[B, T, 1]`` (or ``[B, T]``): reset the hidden state to zero before those steps.
        ``h0`` ``[B, n, H]``: the state before step 0 (zeros when None).
        """
        batch, time, n, _ = x.shape
        if self.input_embed > 0:
            x = torch.relu(self._linear(x, self._weights("embed", "weight"), self._weights("embed", "bias")))
        gi = self._linear(x, self._weights("rnn", "weight_ih"), self._weights("rnn", "bias_ih"))
        if h0 is None:
            h0 = x.new_zeros(batch, n, self.hidden_size)
        keep = (~is_init.reshape(batch, time, 1, 1).bool()).to(gi.dtype)
        hs = gru_recurrence(gi, keep, h0, self._weights("rnn", "weight_hh"), self._weights("rnn", "bias_hh"))
        out = self._linear(hs, self._weights("head", "weight"), self._weights("head", "bias"))
        return out, hs

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
