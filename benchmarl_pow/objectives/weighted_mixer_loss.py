"""The weighted mixer loss family: QMIX(λ), VDN(λ), QPLEX, CW/OW-QMIX, ResQ and POW in one module.

Every member computes the same things (pow_spec.md §3): per-agent Q_i unrolled over stored
chunks, the factorised Q_tot, optionally an unrestricted central critic Q̂*, a double-Q bootstrap
(online greedy next action, scored by the *target* Q_tot or the *target* Q̂*), TD(λ) targets, and a
weighted squared error. Members differ only in the mixer, in the network that supplies the
bootstrap, and in a :class:`~benchmarl_pow.objectives.weighting.WeightingRule`; POW adds the
recognition network Q_r with its own optimiser and inner updates, ResQ a residual network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torchrl.objectives import LossModule

from benchmarl_pow.modules import DmaqMixer, RecognitionMixer
from benchmarl_pow.objectives.sequence import unroll
from benchmarl_pow.objectives.targets import (
    available_or_all,
    gather_actions,
    masked_argmax,
    td_lambda_targets,
)
from benchmarl_pow.objectives.weighting import (
    WeightingRule,
    WeightInputs,
    residual_mask,
)


@dataclass
class _Batch:
    """What one learner call reads from its ``[B, T]`` batch (all ``[B, T, ...]``)."""

    action: Tensor
    state: Tensor
    next_td: TensorDictBase
    next_state: Tensor
    reward: Tensor
    terminated: Tensor
    done: Tensor
    truncated: Tensor | None
    mask: Tensor | None
    next_mask: Tensor | None
    valid: Tensor  # [B, T, 1] bool: real steps
    weight: Tensor  # valid as float
    n_valid: Tensor  # number of real steps (at least 1)

    def mean(self, x: Tensor) -> Tensor:
        """Σ valid·x / Σ valid for a per-step quantity ``x`` ``[B, T, 1]``."""
        return (x * self.weight).sum() / self.n_valid


@dataclass
class _AgentValues:
    """The online agents' utilities at the taken actions and their greedy choices."""

    q_taken: Tensor  # [B, T, n], with gradient
    greedy: Tensor  # [B, T, n]
    max_q: Tensor  # [B, T, n], detached
    greedy_next: Tensor  # [B, T, n]
    onehot: Tensor  # [B, T, n, A], the taken actions
    taken_is_greedy: Tensor  # [B, T, 1] bool


class WeightedMixerLoss(LossModule):
    """TensorDict loss for value factorisation with optional weighting, central critic and Q_r.

    Args:
        agent_network: BenchMARL model writing per-agent utilities ``(group, "action_value")``
            ``[*B, n, A]`` (the policy's network: its parameters are the trained ones).
        mixer: the Q_tot mixer (``QmixMixer``, ``VdnMixer`` or ``DmaqMixer``).
        n_agents, n_actions: group size and number of discrete actions.
        gamma, lmbda: discount and TD(λ) trace (λ = 0: one-step targets).
        bootstrap: ``"mixer"`` (target Q_tot: QMIX/VDN/QPLEX) or ``"central"`` (target Q̂*).
        rule: the weighting rule (default: none).
        central_agent, central_mixer: Q̂* = central_mixer(central utilities at a, s).
        recognition_mixer: POW's Q_r (trained by its own optimiser inside ``forward``).
        residual_agent, residual_mixer: ResQ's residual R(s, a); Q_jt = Q_tot + w_r·(−|R|).
        recurrent: whether the per-agent networks are recurrent (unrolled with resets).
        state_key: root key of the global state, or None to use the concatenated observations.
        mixer_loss_coef, central_loss_coef: 0.5 or 1.0 factors of pow_spec.md §3.
        recognition_updates, first_recognition_updates: Q_r steps per call (first call).
        recognition_batch_fraction: fraction of the valid samples each Q_r step trains on, a
            fresh subset of distinct samples per step (1 = all, faithful; 0.4 is the documented
            cheap option, README "POW's settings").
        recognition_clip: max global grad norm of a Q_r step (over Q_r's own parameters).
        recognition_lr: learning rate of the fallback Q_r optimiser (used only when no optimiser
            was attached, e.g. outside an Experiment).
        group: the agent group name.
    """

    @dataclass
    class _AcceptedKeys:
        """Keys read from the sampled tensordict (set with :meth:`set_keys`)."""

        action: NestedKey = ("agents", "action")
        action_mask: NestedKey = ("agents", "action_mask")
        action_value: NestedKey = ("agents", "action_value")
        observation: NestedKey = ("agents", "observation")
        central_value: NestedKey = ("agents", "central_value")
        residual_value: NestedKey = ("agents", "residual_value")
        state: NestedKey = "state"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        is_init: NestedKey = "is_init"
        valid: NestedKey = "valid"
        priority: NestedKey = ("agents", "td_error")

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    agent_network: TensorDictModuleBase
    agent_network_params: TensorDictBase
    target_agent_network_params: TensorDictBase
    mixer: TensorDictModuleBase
    mixer_params: TensorDictBase
    target_mixer_params: TensorDictBase
    central_agent: TensorDictModuleBase
    central_agent_params: TensorDictBase
    target_central_agent_params: TensorDictBase
    central_mixer: TensorDictModuleBase
    central_mixer_params: TensorDictBase
    target_central_mixer_params: TensorDictBase
    residual_agent: TensorDictModuleBase
    residual_agent_params: TensorDictBase
    target_residual_agent_params: TensorDictBase
    residual_mixer: TensorDictModuleBase
    residual_mixer_params: TensorDictBase
    target_residual_mixer_params: TensorDictBase

    def __init__(
        self,
        agent_network: TensorDictModuleBase,
        mixer: nn.Module,
        *,
        n_agents: int,
        n_actions: int,
        gamma: float,
        lmbda: float,
        bootstrap: str = "mixer",
        rule: WeightingRule | None = None,
        central_agent: TensorDictModuleBase | None = None,
        central_mixer: nn.Module | None = None,
        recognition_mixer: RecognitionMixer | None = None,
        residual_agent: TensorDictModuleBase | None = None,
        residual_mixer: nn.Module | None = None,
        recurrent: bool = False,
        state_key: NestedKey | None = "state",
        mixer_loss_coef: float = 0.5,
        central_loss_coef: float = 0.5,
        recognition_updates: int = 10,
        first_recognition_updates: int = 20,
        recognition_batch_fraction: float = 1.0,
        recognition_clip: float | None = 10.0,
        recognition_lr: float = 1e-3,
        group: str = "agents",
    ):
        super().__init__()
        if bootstrap not in ("mixer", "central"):
            raise ValueError(f"bootstrap must be 'mixer' or 'central', got {bootstrap!r}")
        if bootstrap == "central" and (central_agent is None or central_mixer is None):
            raise ValueError("bootstrap='central' needs central_agent and central_mixer")
        self.rule = rule if rule is not None else WeightingRule()
        if self.rule.needs_recognition and recognition_mixer is None:
            raise ValueError(f"{type(self.rule).__name__} needs a recognition_mixer")
        if self.rule.needs_central_at_greedy and central_agent is None:
            raise ValueError(f"{type(self.rule).__name__} needs a central critic")
        if (residual_agent is None) != (residual_mixer is None):
            raise ValueError("residual_agent and residual_mixer go together")
        if not 0.0 < recognition_batch_fraction <= 1.0:
            raise ValueError(
                f"recognition_batch_fraction must be in (0, 1], got {recognition_batch_fraction}"
            )
        if recognition_updates < 1 or first_recognition_updates < 1:
            raise ValueError(
                "recognition_updates and first_recognition_updates must be >= 1, got "
                f"{recognition_updates} and {first_recognition_updates}"
            )
        self.group = group
        self.n_agents = int(n_agents)
        self.n_actions = int(n_actions)
        self.gamma = float(gamma)
        self.lmbda = float(lmbda)
        self.bootstrap = bootstrap
        self.recurrent = bool(recurrent)
        self.state_key = state_key
        self.mixer_loss_coef = float(mixer_loss_coef)
        self.central_loss_coef = float(central_loss_coef)
        self.recognition_updates = int(recognition_updates)
        self.first_recognition_updates = int(first_recognition_updates)
        self.recognition_batch_fraction = float(recognition_batch_fraction)
        self.recognition_clip = recognition_clip
        self.recognition_lr = float(recognition_lr)

        self.convert_to_functional(
            agent_network, "agent_network", create_target_params=bootstrap == "mixer"
        )
        self.convert_to_functional(mixer, "mixer", create_target_params=bootstrap == "mixer")
        self.has_central = central_agent is not None
        if self.has_central:
            self.convert_to_functional(central_agent, "central_agent", create_target_params=True)
            self.convert_to_functional(central_mixer, "central_mixer", create_target_params=True)
        self.has_residual = residual_agent is not None
        if self.has_residual:
            self.convert_to_functional(residual_agent, "residual_agent")
            self.convert_to_functional(residual_mixer, "residual_mixer")
        # Q_r is a plain sub-module: it has no target network (the released one was never used).
        self.recognition_mixer = recognition_mixer
        self.recognition_optimizer: torch.optim.Optimizer | None = None
        # Optimisers attached by the algorithm; their states travel in this module's state dict
        # (BenchMARL's checkpoints hold the losses but not the optimisers).
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._pending_optimizer_states: dict[str, dict] = {}
        # Counted in the state dict so that a resumed run does not redo the 20-step first call.
        self.register_buffer("n_learner_calls", torch.zeros((), dtype=torch.long))
        #: frames collected so far; the algorithm sets it before each learner call.
        self.total_frames = 0

    # ------------------------------------------------------------------ keys
    def _forward_value_estimator_keys(self, **kwargs) -> None:
        # Targets are computed in-house (see targets.py); no TorchRL value estimator to update.
        pass

    # --------------------------------------------------------------- helpers
    def _state(self, td: TensorDictBase) -> Tensor:
        if self.state_key is not None:
            state = td.get(self.state_key, None)
            if state is None:
                raise KeyError(
                    f"the batch has no global state at key {self.state_key!r}; set state_key=None "
                    "to mix over the concatenated observations"
                )
            return state
        return td.get(self.tensor_keys.observation).flatten(-2)

    def _model_inputs(self, module: TensorDictModuleBase, td: TensorDictBase) -> TensorDictBase:
        keys = [k for k in module.in_keys if td.get(k, None) is not None]
        return td.select(*keys)

    def _unroll(
        self,
        module: TensorDictModuleBase,
        td: TensorDictBase,
        next_td: TensorDictBase | None,
        out_key: NestedKey,
        **kwargs,
    ) -> tuple[Tensor, Tensor | None]:
        """:func:`~benchmarl_pow.objectives.sequence.unroll` on ``module``'s own input keys."""
        next_in = None if next_td is None else self._model_inputs(module, next_td)
        return unroll(
            module,
            self._model_inputs(module, td),
            next_in,
            out_key,
            recurrent=self.recurrent,
            need_next=next_td is not None,
            **kwargs,
        )

    def _critic(
        self,
        agent: TensorDictModuleBase,
        mixer: nn.Module,
        out_key: NestedKey,
        td: TensorDictBase,
        actions: Tensor,
        state: Tensor,
    ) -> Tensor:
        """``mixer(agent's utilities at actions, state)``: Q̂*, or ResQ's raw residual R."""
        values, _ = self._unroll(agent, td, None, out_key)
        return mixer(gather_actions(values, actions), state)

    def _first_step_values(
        self, agent: TensorDictModuleBase, td: TensorDictBase, out_key: NestedKey
    ) -> Tensor:
        """``agent``'s utilities ``[n, A]`` at the single (first-step) state of ``td``."""
        keys = [
            k for k in self._model_inputs(agent, td).keys(True, True) if "_hidden" not in str(k)
        ]
        seq = td.select(*keys).unsqueeze(1)  # a sequence of one step, from a zero hidden state
        if "is_init" in seq.keys():
            seq.set("is_init", torch.ones_like(seq.get("is_init")))
        return agent(seq).get(out_key)[0, 0]

    def _mix(
        self,
        mixer: nn.Module,
        agent_qs: Tensor,
        state: Tensor,
        actions_onehot: Tensor,
        max_qs: Tensor,
    ) -> Tensor:
        if isinstance(mixer, DmaqMixer):
            return mixer(agent_qs, state, actions_onehot, max_qs)
        return mixer(agent_qs, state)

    def _as_sequence(self, td: TensorDictBase) -> tuple[TensorDictBase, bool]:
        if td.batch_dims == 2:
            return td, True
        if td.batch_dims == 1:
            if self.lmbda > 0:
                raise ValueError(
                    f"TD(λ) with lmbda={self.lmbda} needs sequences, but the batch is flat "
                    f"(batch_size={tuple(td.batch_size)}). Store chunks (the algorithm sets "
                    "has_rnn=True for lmbda > 0) or set lmbda=0."
                )
            return td.unsqueeze(1), False
        raise ValueError(
            f"expected a batch of transitions [B] or chunks [B, T], got batch_size={tuple(td.batch_size)}"
        )

    def _check_shapes(self, batch: torch.Size, action: Tensor, state: Tensor) -> None:
        if tuple(action.shape) != (*batch, self.n_agents):
            raise ValueError(
                f"action {self.tensor_keys.action} has shape {tuple(action.shape)}; expected "
                f"[*B, {self.n_agents}] (categorical, one per agent)"
            )
        mixer_state_dim = getattr(self.mixer, "state_dim", None)
        if mixer_state_dim is not None and state.shape[-1] != mixer_state_dim:
            raise ValueError(
                f"state has {state.shape[-1]} features but the mixer expects {mixer_state_dim}"
            )

    # --------------------------------------------------------------- forward
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        """One learner call. Returns ``loss`` (Q_tot + Q̂* [+ ResQ]) and detached diagnostics.

        For POW the Q_r inner updates happen here, before the weights are computed; the Q_r loss
        of the last inner step is returned as ``loss_recognition`` (already stepped: the algorithm
        removes it before BenchMARL's optimiser loop).

        Padding: where the batch carries the ``valid`` key (``[B, T, 1]`` bool), every term,
        statistic and priority gives padded steps zero weight and losses are divided by the
        number of real steps (pow_spec.md §1.8). Its rows are then whole episodes in PyMARL's
        layout (``benchmarl_pow.episodes.layout``): the slot after an episode's last step holds
        that step's next observation, so next-step values come from the shift alone.
        """
        td, is_sequence = self._as_sequence(tensordict)
        batch = self._read_batch(td)
        out: dict[str, Tensor] = {}
        agents = self._agent_values(td, batch)
        target, central_at_greedy = self._targets(td, batch, agents)
        q_tot = self._q_tot(td, batch, agents, out)
        loss = q_tot.new_zeros(())
        if self.has_central:
            loss = loss + self._central_loss(td, batch, target, out)
        lambda_delta_q = None
        if self.recognition_mixer is not None:
            lambda_delta_q = self._recognition(batch, agents, target, out)
        loss_tot, td_error = self._q_tot_loss(
            q_tot, target, batch, agents, central_at_greedy, lambda_delta_q, out
        )
        loss = loss + loss_tot
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss {float(loss.detach())} (Q_tot loss {float(loss_tot.detach())}); check rewards, "
                "learning rate and gradient clipping"
            )
        priority = td_error.expand(*td_error.shape[:-1], self.n_agents)
        tensordict.set(self.tensor_keys.priority, priority if is_sequence else priority.squeeze(1))
        mean = batch.mean
        out.update(
            {
                "loss": loss,
                "loss_q_tot": loss_tot.detach(),
                "td_error_q_tot": mean(td_error),
                "q_tot_taken_mean": mean(q_tot.detach()),
                "q_taken_mean": mean(agents.q_taken.detach().mean(-1, keepdim=True)),
                "target_mean": mean(target),
                "greedy_fraction": mean(agents.taken_is_greedy.float()),
            }
        )
        return TensorDict(out, batch_size=[])

    # ------------------------------------------------------- forward: steps
    def _read_batch(self, td: TensorDictBase) -> _Batch:
        """Actions, state, rewards, done flags, masks and the padding mask of a ``[B, T]`` batch."""
        keys = self.tensor_keys
        action = td.get(keys.action)
        state = self._state(td)
        next_td = td.get("next")
        self._check_shapes(td.batch_size, action, state)
        terminated = next_td.get(keys.terminated).bool()
        done = next_td.get(keys.done).bool() | terminated
        valid = td.get(keys.valid, None)
        episode_rows = valid is not None
        if valid is None:
            valid = torch.ones_like(terminated)
        valid = valid.reshape(terminated.shape).bool()
        return _Batch(
            action=action,
            state=state,
            next_td=next_td,
            next_state=self._state(next_td),
            reward=next_td.get(keys.reward),
            terminated=terminated,
            done=done,
            # Episode rows need no re-run after a time-out: the next observation is the next slot.
            truncated=None if episode_rows else (done & ~terminated).squeeze(-1),
            mask=td.get(keys.action_mask, None),
            next_mask=next_td.get(keys.action_mask, None),
            valid=valid,
            weight=valid.to(torch.float32),
            n_valid=valid.sum().clamp_min(1).to(torch.float32),
        )

    def _agent_values(self, td: TensorDictBase, batch: _Batch) -> _AgentValues:
        """Online per-agent utilities, their greedy actions now and at the next step."""
        q_all, q_next_all = self._unroll(
            self.agent_network,
            td,
            batch.next_td,
            self.tensor_keys.action_value,
            truncated=batch.truncated,
            next_grad=False,  # next-step utilities only pick the greedy next action
        )
        q_detached = q_all.detach()
        greedy = masked_argmax(q_detached, batch.mask)
        action = batch.action.long()
        return _AgentValues(
            q_taken=gather_actions(q_all, action),  # [B, T, n]
            greedy=greedy,
            max_q=gather_actions(q_detached, greedy),
            greedy_next=masked_argmax(q_next_all.detach(), batch.next_mask),
            onehot=F.one_hot(action, self.n_actions).to(q_all.dtype),
            taken_is_greedy=(action == greedy).all(-1, keepdim=True),
        )

    @torch.no_grad()
    def _targets(
        self, td: TensorDictBase, batch: _Batch, agents: _AgentValues
    ) -> tuple[Tensor, Tensor | None]:
        """Double-Q bootstrap (online greedy next action, target network's value) and TD(λ)."""
        keys = self.tensor_keys
        central_at_greedy = None
        if self.bootstrap == "mixer":
            with self.target_agent_network_params.to_module(self.agent_network):
                _, qt_next = self._unroll(
                    self.agent_network, td, batch.next_td, keys.action_value,
                    truncated=batch.truncated,
                )
            next_avail = available_or_all(batch.next_mask, qt_next)
            qt_max = qt_next.masked_fill(~next_avail, float("-inf")).max(-1).values
            with self.target_mixer_params.to_module(self.mixer):
                next_value = self._mix(
                    self.mixer,
                    gather_actions(qt_next, agents.greedy_next),
                    batch.next_state,
                    F.one_hot(agents.greedy_next, self.n_actions).to(qt_next.dtype),
                    qt_max,
                )
        else:
            with self.target_central_agent_params.to_module(self.central_agent):
                ct_all, ct_next = self._unroll(
                    self.central_agent, td, batch.next_td, keys.central_value,
                    truncated=batch.truncated,
                )
            with self.target_central_mixer_params.to_module(self.central_mixer):
                next_value = self.central_mixer(
                    gather_actions(ct_next, agents.greedy_next), batch.next_state
                )
                if self.rule.needs_central_at_greedy:
                    central_at_greedy = self.central_mixer(
                        gather_actions(ct_all, agents.greedy), batch.state
                    )
        target = td_lambda_targets(
            batch.reward, next_value, batch.terminated, batch.done, self.gamma, self.lmbda,
            mask=batch.weight,
        )
        return target, central_at_greedy

    def _q_tot(
        self, td: TensorDictBase, batch: _Batch, agents: _AgentValues, out: dict[str, Tensor]
    ) -> Tensor:
        """The factorised Q_tot at the taken actions (ResQ: Q_jt = Q_tot + w_r·(−|R|))."""
        q_tot = self._mix(self.mixer, agents.q_taken, batch.state, agents.onehot, agents.max_q)
        if self.has_residual:
            raw = self._critic(
                self.residual_agent, self.residual_mixer, self.tensor_keys.residual_value, td,
                batch.action, batch.state,
            )
            residual = -raw.abs()
            q_tot = q_tot + residual_mask(agents.taken_is_greedy) * residual
            out["residual_mean"] = batch.mean(residual.detach())
        return q_tot

    def _central_loss(
        self, td: TensorDictBase, batch: _Batch, target: Tensor, out: dict[str, Tensor]
    ) -> Tensor:
        """coef · Σ valid·(Q̂*(s, a) − y)² / Σ valid."""
        q_star = self._critic(
            self.central_agent, self.central_mixer, self.tensor_keys.central_value, td,
            batch.action, batch.state,
        )
        error = q_star - target
        loss = self.central_loss_coef * batch.mean(error.pow(2))
        out["loss_central"] = loss.detach()
        out["td_error_central"] = batch.mean(error.detach().abs())
        out["q_star_taken_mean"] = batch.mean(q_star.detach())
        return loss

    def _recognition(
        self, batch: _Batch, agents: _AgentValues, target: Tensor, out: dict[str, Tensor]
    ) -> Tensor:
        """POW: Q_r's inner updates (training only), then λΔQ of the taken actions."""
        delta_q = agents.q_taken.detach() - agents.max_q  # ≤ 0, exactly 0 at the greedy action
        if torch.is_grad_enabled() and self.training:
            out.update(
                self._update_recognition(delta_q, batch.state, agents.onehot, target, batch.valid)
            )
        with torch.no_grad():
            q_r, lambda_delta_q = self.recognition_mixer(delta_q, batch.state, agents.onehot)
        out["td_error_recognition"] = batch.mean((q_r - target).abs())
        out["mean_abs_delta_q"] = batch.mean(delta_q.abs().mean(-1, keepdim=True))
        out["q_r_taken_mean"] = batch.mean(q_r)
        if hasattr(self.rule, "in_set"):
            in_set = self.rule.in_set(lambda_delta_q) & batch.valid
            out["fraction_in_recognition_set"] = batch.mean(in_set.float())
            out["n_in_recognition_set"] = in_set.sum().to(torch.float32)
        return lambda_delta_q

    def _q_tot_loss(
        self,
        q_tot: Tensor,
        target: Tensor,
        batch: _Batch,
        agents: _AgentValues,
        central_at_greedy: Tensor | None,
        lambda_delta_q: Tensor | None,
        out: dict[str, Tensor],
    ) -> tuple[Tensor, Tensor]:
        """coef · Σ valid·w·(Q_tot − y)² / Σ valid (not divided by Σw: §1.8); the |TD error|."""
        weights = self.rule.weights(
            WeightInputs(
                q_tot=q_tot.detach(),
                target=target,
                taken_is_greedy=agents.taken_is_greedy,
                central_target_at_greedy=central_at_greedy,
                lambda_delta_q=lambda_delta_q,
                total_frames=int(self.total_frames),
            )
        )
        error = q_tot - target
        squared = error.pow(2)
        if weights is not None:
            squared = weights * squared
            out["mean_weight"] = batch.mean(weights)
        else:
            out["mean_weight"] = squared.new_ones(())
        loss = self.mixer_loss_coef * batch.mean(squared)
        return loss, error.detach().abs() * batch.weight

    # ------------------------------------------------------------- recognition
    def attach_optimizers(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """Hand the loss BenchMARL's optimisers (``{"loss": ..., "loss_recognition": ...}``).

        ``loss_recognition`` is used for the Q_r inner steps. All attached optimisers are saved
        with this module's state dict and restored from it, so a checkpoint resumes them too.
        """
        self._optimizers = dict(optimizers)
        if "loss_recognition" in optimizers:
            self.recognition_optimizer = optimizers["loss_recognition"]
        for name, state in list(self._pending_optimizer_states.items()):
            if name in self._optimizers:
                self._optimizers[name].load_state_dict(state)
                del self._pending_optimizer_states[name]

    def get_extra_state(self) -> dict:
        optimizers = dict(self._optimizers)
        if self.recognition_optimizer is not None:
            optimizers.setdefault("loss_recognition", self.recognition_optimizer)
        states = {name: opt.state_dict() for name, opt in optimizers.items()}
        states.update(self._pending_optimizer_states)  # restored but not yet attached
        return {"optimizers": states}

    def set_extra_state(self, state: dict) -> None:
        self._pending_optimizer_states = dict(state.get("optimizers", {}))
        if self._optimizers:
            self.attach_optimizers(self._optimizers)

    def _update_recognition(
        self,
        delta_q: Tensor,
        state: Tensor,
        onehot: Tensor,
        target: Tensor,
        valid: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Q_r inner steps (pow_spec.md §3.6.2 (1)) on 0.5·Σ valid·(Q_r − y)² / Σ valid, own
        optimiser. Only real (``valid``) steps enter; padding is dropped before the steps.

        Gradients are clipped over Q_r's parameters only (the release clipped over all of the
        learner's parameters, quirk Q3).

        With ``recognition_bf16`` (an attribute the algorithm sets; default False) each step's
        forward runs under autocast to bfloat16: the hypernets' and V's matmuls in bf16 with fp32
        accumulation (≈2x faster on CPUs with AMX), λ, Q_r, the loss and the optimiser in fp32.
        The weights after the steps (``_recognition``) are always scored in fp32.
        """
        bf16 = bool(getattr(self, "recognition_bf16", False))
        if self.recognition_optimizer is None:
            # Outside an Experiment (tests, scripts): an Adam of our own.
            self.recognition_optimizer = torch.optim.Adam(
                self.recognition_mixer.parameters(), lr=self.recognition_lr, fused=True
            )
        optimizer = self.recognition_optimizer
        params = [p for g in optimizer.param_groups for p in g["params"]]
        steps = (
            self.first_recognition_updates
            if int(self.n_learner_calls) == 0
            else self.recognition_updates
        )
        dq = delta_q.reshape(-1, self.n_agents)
        s = state.reshape(dq.shape[0], -1)
        oh = onehot.reshape(dq.shape[0], self.n_agents, self.n_actions)
        y = target.reshape(-1, 1)
        if valid is not None and not bool(valid.all()):
            rows = valid.reshape(-1).nonzero().squeeze(-1)
            dq, s, oh, y = dq[rows], s[rows], oh[rows], y[rows]
        n_samples = dq.shape[0]
        n_draw = max(1, int(round(self.recognition_batch_fraction * n_samples)))
        grad_norm = torch.zeros(())
        loss = torch.zeros(())
        for _ in range(steps):
            with torch.autocast(dq.device.type, dtype=torch.bfloat16, enabled=bf16):
                if n_draw < n_samples:  # distinct samples, a fresh subset each step
                    idx = torch.randperm(n_samples, device=dq.device)[:n_draw]
                    q_r, _ = self.recognition_mixer(dq[idx], s[idx], oh[idx])
                    y_step = y[idx]
                else:
                    q_r, _ = self.recognition_mixer(dq, s, oh)
                    y_step = y
            loss = 0.5 * (q_r - y_step).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.recognition_clip is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, self.recognition_clip)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.n_learner_calls += 1
        return {
            "loss_recognition": loss.detach(),
            "grad_norm_recognition": torch.as_tensor(grad_norm).detach(),
        }

    # ------------------------------------------------------------ diagnostics
    @torch.no_grad()
    def joint_action_tables(
        self, td: TensorDictBase, payoff: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Per-joint-action tables of a two-agent one-step game at the state in ``td``.

        ``td`` holds one state (batch ``[1]``) with ``(group, "action_value")`` already computed
        by the policy. Returns ``[A, A]`` tables (rows: agent 0): ``Q_tot`` (ResQ: ``Q_jt``),
        ``Q_star``, ``Q_r``, ``weight`` (the training weight, with ``payoff`` as the target, which is
        exact in a one-step game) and ``Q_i`` ``[n, A]``.
        """
        keys = self.tensor_keys
        q = td.get(keys.action_value)[0]  # [n, A]
        mask = td.get(keys.action_mask, None)
        mask = mask[0] if mask is not None else None
        n, a = q.shape
        if n != 2:
            raise ValueError(f"joint-action tables are for two-agent games, got {n} agents")
        joint = torch.cartesian_prod(torch.arange(a), torch.arange(a)).to(q.device)
        q_taken = q[torch.arange(n, device=q.device), joint]  # [A², n]
        greedy = masked_argmax(q, mask)
        max_q = q[torch.arange(n, device=q.device), greedy].expand_as(q_taken)
        state = self._state(td)[0].expand(joint.shape[0], -1)
        onehot = F.one_hot(joint, a).to(q.dtype)
        is_greedy = (joint == greedy).all(-1, keepdim=True)
        tables: dict[str, Tensor] = {"Q_i": q}
        q_tot = self._mix(self.mixer, q_taken, state, onehot, max_q)
        agent_index = torch.arange(n, device=q.device)
        if self.has_residual:
            r = self._first_step_values(self.residual_agent, td, keys.residual_value)
            residual = -self.residual_mixer(r[agent_index, joint], state).abs()
            tables["Q_tot_monotone"] = q_tot.reshape(a, a)
            q_tot = q_tot + residual_mask(is_greedy) * residual
        tables["Q_tot"] = q_tot.reshape(a, a)
        if self.has_central:
            c = self._first_step_values(self.central_agent, td, keys.central_value)
            tables["Q_star"] = self.central_mixer(c[agent_index, joint], state).reshape(a, a)
        lambda_delta_q = None
        if self.recognition_mixer is not None:
            q_r, lambda_delta_q = self.recognition_mixer(q_taken - max_q, state, onehot)
            tables["Q_r"] = q_r.reshape(a, a)
        if payoff is not None:
            target = payoff.to(q.device).reshape(-1, 1)
            weights = self.rule.joint_action_weights(q_tot, target, is_greedy, lambda_delta_q)
            tables["weight"] = (weights if weights is not None else torch.ones_like(q_tot)).reshape(
                a, a
            )
        return tables
