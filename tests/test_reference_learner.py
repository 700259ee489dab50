"""An independent, per-episode reference learner written from the spec, and the loss held to it.

Issue 9, "Tests", first bullet. Every other numeric test of :class:`WeightedMixerLoss` uses one-step
episodes that end at once, so the bootstrap is always multiplied by zero. Here the loss built by the
real composition path (``compose_experiment``) is compared, to float tolerance, with a plain
re-implementation of ``shared/spec/pow_spec.md`` on recorded multi-step batches with early
terminations, time-outs (which bootstrap), padding and action masks that change over time:

* §1.5 every episode is unrolled alone from a zero hidden state at its first step. The reference
  steps the networks one step at a time (the collection path of the model, carrying the hidden
  state by hand), not through the loss's sequence unroll;
* §1.6 the TD(λ) recursion, per episode, run to the episode's end (terminated: no bootstrap;
  truncated: bootstrap from the target value at the final next observation);
* §1.7 double-Q: the greedy next action from the online agents over the *available* actions,
  scored by the target Q_tot (QMIX/VDN/QPLEX; QPLEX's A-part with the target's own max) or the
  target Q̂* (CW/OW/ResQ/POW);
* §1.8 every loss is Σ over real steps / the number of real steps (padding has zero weight);
* §3 each algorithm's Q_tot / Q̂* / Q_r / ResQ Q_jt, its weights and its loss coefficients; POW's
  Q_r inner Adam steps are replayed on a deep copy of Q_r.

The network *modules* (agent RNN, mixers, central head, Q_r) are reused with the loss's parameters:
they are tested elsewhere. None of the loss's helpers (TD(λ), masked argmax, gather, unroll) is used.

Compared: the returned losses and statistics, the per-step priorities |Q_tot − y|, per-step
Q_tot, Q̂* and ResQ's R (module outputs seen through forward hooks) and the per-step gradients of
the main loss with respect to them (which pin down y and the weights step by step), Q_r's
parameters after its inner steps, and the gradient of the main loss w.r.t. every parameter.
Target parameters are perturbed first, so that online/target mix-ups are visible; two such
mutations are shown to fail the comparison.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch
from tensordict import TensorDict

from benchmarl_pow.algorithms import ALGORITHMS as ALGORITHM_CONFIGS
from benchmarl_pow.compose import compose_experiment
from benchmarl_pow.modules import DmaqMixer

ALGORITHMS = list(ALGORITHM_CONFIGS)

#: pow_spec.md §3: (factor of the Q_tot/Q_jt squared error, factor of the Q̂* squared error)
COEFS = {
    "qmix_lambda": (0.5, None),
    "vdn_lambda": (0.5, None),
    "qplex": (0.5, None),
    "cw_qmix": (1.0, 0.5),
    "ow_qmix": (1.0, 0.5),
    "resq": (1.0, 1.0),
    "pow_qmix": (0.5, 0.5),
    "pow_vdn": (0.5, 0.5),
    "pow_qplex": (0.5, 0.5),
}
#: §3.7: which target network supplies the bootstrap
CENTRAL_BOOTSTRAP = {"cw_qmix", "ow_qmix", "resq", "pow_qmix", "pow_vdn", "pow_qplex"}

# A small predator-prey (3 agents, 6 actions with masks, a 4x4 grid: obs 27, state 48).
TASK = [
    "task=predator_prey/punish_4",
    "task.grid_size=4",
    "task.n_agents=3",
    "task.n_prey=2",
    "task.obs_radius=1",
    "task.episode_limit=6",
]
EXPERIMENT = [
    "experiment=smoke",
    "model=rnn_agent",
    "experiment.loggers=[]",
    "experiment.create_json=False",
    "experiment.evaluation=False",
    # a learning rate large enough for Q_r's inner steps to move it visibly
    "experiment.lr=0.001",
]

RTOL, ATOL = 2e-4, 2e-5


# ------------------------------------------------------------------------------------- set-up
_EXPERIMENTS: dict = {}


def _experiment(algorithm: str, tmp_path_factory):
    """The composed experiment of ``algorithm`` (once per module) and its loss's initial state.

    Tests restore that state in place (``load_state_dict``) instead of deep-copying the loss: a
    deep copy of a TorchRL loss unties its modules from its ``*_params`` (the copy then trains
    tensors that ``named_parameters`` does not list).
    """
    if algorithm not in _EXPERIMENTS:
        extra = ["algorithm.no_weighted_steps=0"] if algorithm.startswith("pow_") else []
        torch.manual_seed(0)
        exp = compose_experiment(
            [f"algorithm={algorithm}", *TASK, *EXPERIMENT, *extra],
            save_folder=tmp_path_factory.mktemp(algorithm),
            callbacks=[],  # the loss needs none (and the probe callback wants a bigger grid)
        )
        loss = exp.losses["agents"]
        state = {
            k: v.clone() if torch.is_tensor(v) else copy.deepcopy(v)
            for k, v in loss.state_dict().items()
        }
        threshold = getattr(loss.rule, "threshold", None)
        _EXPERIMENTS[algorithm] = (exp, state, threshold)
    return _EXPERIMENTS[algorithm]


@dataclass
class Setting:
    """Everything the reference reads from the configuration (not from the loss's internals)."""

    algorithm: str
    gamma: float
    lmbda: float
    alpha: float = 0.0
    threshold: float | None = None
    no_weighted_steps: int = 0
    total_frames: int = 1
    qr_steps: int = 20
    qr_clip: float | None = None
    qr_optimizer: type | None = None
    qr_optimizer_kwargs: dict = field(default_factory=dict)


def _target_networks(algorithm: str) -> tuple[str, ...]:
    """§3.7: the networks whose target copies supply the bootstrap."""
    if algorithm in CENTRAL_BOOTSTRAP:
        return ("central_agent", "central_mixer")
    return ("agent_network", "mixer")


def _fresh_loss(algorithm: str, tmp_path_factory, seed: int = 1):
    """The experiment's loss, back in its initial state (optimisers too), with perturbed target
    parameters, and the Setting the reference reads."""
    exp, state, threshold = _experiment(algorithm, tmp_path_factory)
    loss = exp.losses["agents"]
    loss.load_state_dict(state)
    loss.zero_grad(set_to_none=True)
    if threshold is not None:
        loss.rule.threshold = threshold
    for optimizer in exp.optimizers["agents"].values():
        optimizer.state.clear()
    loss._reference_algorithm = algorithm
    loss._reference_state_dim = int(exp.algorithm.state_spec["state"].shape[-1])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in _target_networks(algorithm):
            target, online = getattr(loss, f"target_{name}_params"), getattr(loss, f"{name}_params")
            for key, t in target.items(True, True):
                assert t.data_ptr() != online.get(key).data_ptr(), f"{name} has no own target copy"
                t.add_(0.15 * torch.randn(t.shape, generator=gen))
    cfg = exp.algorithm_config
    setting = Setting(algorithm=algorithm, gamma=exp.config.gamma, lmbda=cfg.lmbda)
    if algorithm.startswith("pow_"):
        setting.alpha = cfg.other_actions_weight
        setting.no_weighted_steps = cfg.no_weighted_steps
        setting.qr_steps = cfg.first_recognition_updates
        setting.qr_clip = exp.config.clip_grad_val
        # Q_r's own optimiser: a fresh one of the experiment's kind and settings
        opt = exp.optimizers["agents"]["loss_recognition"]
        setting.qr_optimizer = type(opt)
        setting.qr_optimizer_kwargs = dict(opt.defaults)
        loss.attach_optimizers(exp.optimizers["agents"])
        loss.total_frames = setting.total_frames
    elif algorithm in ("cw_qmix", "ow_qmix"):
        # null = the task preset (§0): α = 0.1 on predator-prey
        alpha = cfg.other_actions_weight
        setting.alpha = 0.1 if alpha is None else alpha
    return loss, setting


# ------------------------------------------------------------------------------------ batches
@dataclass
class Row:
    """One episode: ``length`` real transitions ending as ``end`` ("terminated", "truncated",
    or "open": not done, the row simply ends with the stored slots)."""

    length: int
    end: str
    greedy_first: bool = False  # take the online greedy joint action at step 0


def _obs_keys(module):
    return [k for k in module.in_keys if k != "is_init" and "_hidden" not in str(k)]


def make_batch(loss, rows: list[Row], slots: int, *, valid_key: bool, seed: int = 0) -> TensorDict:
    """A recorded batch ``[B, slots]`` in the episode layout of issue 9.

    Rows are single episodes starting at slot 0. After an episode's last real step t_end, slot
    t_end+1 holds at the root the final next observation / state / mask of step t_end, and later
    slots hold garbage (random values); ``valid`` is False on all of them.
    """
    gen = torch.Generator().manual_seed(seed)
    n, n_actions = loss.n_agents, loss.n_actions
    obs_keys = _obs_keys(loss.agent_network)
    obs_shapes = {k: tuple(loss.agent_network.input_spec[k].shape) for k in obs_keys}
    state_dim = loss._reference_state_dim
    b = len(rows)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen)

    def rnd_mask(*lead):
        m = torch.rand(*lead, n, n_actions, generator=gen) < 0.6
        force = torch.randint(n_actions, (*lead, n), generator=gen)
        return m | torch.nn.functional.one_hot(force, n_actions).bool()

    # every row's trajectory: slots 0..L (L+1 observations: o_0 … o_{L-1}, o'_{L-1})
    root = {k: rnd(b, slots, *s) for k, s in obs_shapes.items()}
    nxt = {k: rnd(b, slots, *s) for k, s in obs_shapes.items()}
    state, next_state = rnd(b, slots, state_dim), rnd(b, slots, state_dim)
    mask, next_mask = rnd_mask(b, slots), rnd_mask(b, slots)
    reward = rnd(b, slots, 1)
    terminated = torch.rand(b, slots, 1, generator=gen) < 0.3  # garbage outside the episodes
    done = terminated | (torch.rand(b, slots, 1, generator=gen) < 0.3)
    valid = torch.zeros(b, slots, 1, dtype=torch.bool)
    for i, row in enumerate(rows):
        L = row.length
        assert L <= slots and (L == slots or row.end != "open")
        traj = {k: rnd(L + 1, *s) for k, s in obs_shapes.items()}
        traj_state, traj_mask = rnd(L + 1, state_dim), rnd_mask(L + 1)
        stored = min(L + 1, slots)
        for k in obs_keys:
            root[k][i, :stored] = traj[k][:stored]
            nxt[k][i, :L] = traj[k][1:]
        state[i, :stored], next_state[i, :L] = traj_state[:stored], traj_state[1:]
        mask[i, :stored], next_mask[i, :L] = traj_mask[:stored], traj_mask[1:]
        terminated[i, :L] = False
        done[i, :L] = False
        if row.end in ("terminated", "truncated"):
            done[i, L - 1] = True
            terminated[i, L - 1] = row.end == "terminated"
        valid[i, :L] = True
    # actions: uniformly among the available ones at every slot (padding too)
    weights = mask.float().reshape(-1, n_actions)
    action = torch.multinomial(weights, 1, generator=gen).reshape(b, slots, n)
    is_init = torch.zeros(b, slots, 1, dtype=torch.bool)
    is_init[:, 0] = True
    td = TensorDict(
        {
            **{k: v for k, v in root.items()},
            "state": state,
            ("agents", "action"): action,
            ("agents", "action_mask"): mask,
            "is_init": is_init,
            "next": TensorDict(
                {
                    **{k: v for k, v in nxt.items()},
                    "state": next_state,
                    ("agents", "action_mask"): next_mask,
                    "reward": reward,
                    "terminated": terminated,
                    "done": done,
                },
                batch_size=[b, slots],
            ),
        },
        batch_size=[b, slots],
    )
    if valid_key:
        td.set("valid", valid)
    # some rows take the online greedy joint action at step 0 (ResQ's w_r = 0, CW's a = â branch)
    for i, row in enumerate(rows):
        if row.greedy_first:
            with torch.no_grad():
                q0 = _step_values(loss.agent_network, None, _episode_inputs(td, i, 1, obs_keys))[0]
            td.get(("agents", "action"))[i, 0] = _greedy(q0, mask[i, 0])
    return td


def valid_of(td: TensorDict) -> torch.Tensor:
    v = td.get("valid", None)
    if v is None:
        return torch.ones(td.batch_size, dtype=torch.bool)
    return v.reshape(td.batch_size).bool()


def row_lengths(td: TensorDict) -> list[int]:
    return [int(v.sum()) for v in valid_of(td)]


# --------------------------------------------------------------------------- the reference
def _greedy(q: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """Per-agent argmax over available actions, written out: q [n, A], avail [n, A] -> [n]."""
    out = []
    for i in range(q.shape[0]):
        best, best_a = None, None
        for a in range(q.shape[1]):
            if avail[i, a] and (best is None or q[i, a] > best):
                best, best_a = q[i, a], a
        out.append(best_a)
    return torch.tensor(out, dtype=torch.long)


def _episode_inputs(td: TensorDict, row: int, length: int, obs_keys) -> list[dict]:
    """The L+1 agent inputs of an episode: o_0 … o_{L-1} and the final next observation o'_{L-1}."""
    steps = []
    for t in range(length):
        steps.append({k: td.get(k)[row, t] for k in obs_keys})
    steps.append(
        {
            k: td.get(("next", *((k,) if isinstance(k, str) else k)))[row, length - 1]
            for k in obs_keys
        }
    )
    return steps


def _step_values(module, params, steps: list[dict]) -> torch.Tensor:
    """Run an agent network one step at a time from a zero hidden state: [len(steps), n, out]."""
    hidden_key = getattr(module, "hidden_state_name", None)
    outs = []

    def run():
        h = None
        for t, inputs in enumerate(steps):
            td = TensorDict({k: v.unsqueeze(0) for k, v in inputs.items()}, batch_size=[1])
            td.set("is_init", torch.tensor([[t == 0]]))
            if hidden_key is not None:
                if h is None:
                    n = next(iter(inputs.values())).shape[0]
                    h = torch.zeros(1, n, module.hidden_size)
                td.set(hidden_key, h)
            out = module(td)
            outs.append(out.get(module.out_keys[0])[0])
            if hidden_key is not None:
                h = out.get(("next", *hidden_key))

    if params is None:
        run()
    else:
        with params.to_module(module):
            run()
    return torch.stack(outs)


def _mix(mixer, params, q, state, onehot=None, max_q=None):
    def run():
        if isinstance(mixer, DmaqMixer):
            return mixer(q, state, onehot, max_q)
        return mixer(q, state)

    if params is None:
        return run()
    with params.to_module(mixer):
        return run()


def _pick(values: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """values [n, A], actions [n] -> [n] (written as a loop over agents)."""
    return torch.stack([values[i, int(actions[i])] for i in range(values.shape[0])])


def loss_algorithm(loss) -> str:
    return loss._reference_algorithm


def _params(loss):
    """Independent copies of the loss's parameters: online (leaves with grad) and target."""
    online, target = {}, {}
    for name in (
        "agent_network",
        "mixer",
        "central_agent",
        "central_mixer",
        "residual_agent",
        "residual_mixer",
    ):
        p = getattr(loss, f"{name}_params", None)
        if p is None:
            continue
        online[name] = p.detach().clone().apply(lambda t: t.detach().clone().requires_grad_())
        if name in _target_networks(loss_algorithm(loss)):
            target[name] = getattr(loss, f"target_{name}_params").detach().clone()
    return online, target


def reference(
    loss,
    td: TensorDict,
    s: Setting,
    *,
    greedy_from: str = "online",
    recognition: tuple | None = None,
) -> dict:
    """The spec's learner call, episode by episode. Returns per-step values (real steps, in
    (row, time) order), the losses, the statistics and the gradients of the main loss.

    POW: Q_r's inner steps run on a deep copy of the loss's Q_r with a fresh optimiser of the
    experiment's kind, or continue from ``recognition`` = ``(network, optimiser)`` of a previous
    call (returned as ``out["recognition"]``).
    """
    alg = s.algorithm
    central = alg in CENTRAL_BOOTSTRAP
    coef_tot, coef_central = COEFS[alg]
    online, target = _params(loss)
    obs_keys = _obs_keys(loss.agent_network)
    n_actions = loss.n_actions
    actions_all = td.get(("agents", "action"))
    mask_root, mask_next = (
        td.get(("agents", "action_mask")),
        td.get(("next", "agents", "action_mask")),
    )
    state_root, state_next = td.get("state"), td.get(("next", "state"))
    rewards, terms = td.get(("next", "reward")), td.get(("next", "terminated"))

    per = {
        k: []
        for k in (
            "y",
            "q_tot",
            "q_star",
            "raw_residual",
            "q_jt",
            "weight",
            "greedy",
            "delta_q",
            "q_taken",
            "state",
            "onehot",
            "central_at_greedy",
            "index",
        )
    }
    for b, length in enumerate(row_lengths(td)):
        steps = _episode_inputs(td, b, length, obs_keys)
        avail = [mask_root[b, t] for t in range(length)] + [mask_next[b, length - 1]]
        states = [state_root[b, t] for t in range(length)] + [state_next[b, length - 1]]
        acts = [actions_all[b, t] for t in range(length)]
        q_on = _step_values(loss.agent_network, online["agent_network"], steps)  # [L+1, n, A]
        greedy = [_greedy(q_on[k].detach(), avail[k]) for k in range(length + 1)]
        with torch.no_grad():
            if central:
                tgt_net = _step_values(loss.central_agent, target["central_agent"], steps)
            else:
                tgt_net = _step_values(loss.agent_network, target["agent_network"], steps)
            next_greedy = list(greedy)
            if greedy_from == "target":  # mutation (b): â' from the target network
                next_greedy = [_greedy(tgt_net[k], avail[k]) for k in range(length + 1)]
            # bootstrap value at τ_k for k = 1 … L, read at the online greedy action â_k
            boot = [None]
            for k in range(1, length + 1):
                a_k = next_greedy[k]
                if central:
                    v = _mix(
                        loss.central_mixer,
                        target["central_mixer"],
                        _pick(tgt_net[k], a_k),
                        states[k],
                    )
                else:
                    max_t = torch.stack(
                        [tgt_net[k][i][avail[k][i]].max() for i in range(loss.n_agents)]
                    )
                    v = _mix(
                        loss.mixer,
                        target.get("mixer"),
                        _pick(tgt_net[k], a_k),
                        states[k],
                        torch.nn.functional.one_hot(a_k, n_actions).float(),
                        max_t,
                    )
                boot.append(v.reshape(()))
            # §1.6, per episode, run to its end
            term_end = bool(terms[b, length - 1])
            g = boot[length] * (0.0 if term_end else 1.0)
            ys = [None] * length
            for t in range(length - 1, -1, -1):
                term_t = term_end if t == length - 1 else False
                g = (
                    s.lmbda * s.gamma * g
                    + rewards[b, t, 0]
                    + (1 - s.lmbda) * s.gamma * boot[t + 1] * (0.0 if term_t else 1.0)
                )
                ys[t] = g
        if central or alg.startswith("pow_") or alg in ("cw_qmix", "ow_qmix", "resq"):
            qc = _step_values(loss.central_agent, online["central_agent"], steps)
        if alg == "cw_qmix":
            with torch.no_grad():
                ct = _step_values(loss.central_agent, target["central_agent"], steps)
        if alg == "resq":
            qres = _step_values(loss.residual_agent, online["residual_agent"], steps)
        for t in range(length):
            a = acts[t]
            onehot = torch.nn.functional.one_hot(a, n_actions).float()
            q_taken = _pick(q_on[t], a)
            max_q = _pick(q_on[t].detach(), greedy[t])
            q_tot = _mix(
                loss.mixer, online.get("mixer"), q_taken, states[t], onehot, max_q
            ).reshape(())
            per["y"].append(ys[t])
            per["q_tot"].append(q_tot)
            per["q_taken"].append(q_taken)
            per["greedy"].append(bool((a == greedy[t]).all()))
            per["delta_q"].append(q_taken.detach() - max_q)
            per["state"].append(states[t])
            per["onehot"].append(onehot)
            per["index"].append((b, t))
            if central:
                per["q_star"].append(
                    _mix(
                        loss.central_mixer, online["central_mixer"], _pick(qc[t], a), states[t]
                    ).reshape(())
                )
            if alg == "cw_qmix":
                with torch.no_grad():
                    per["central_at_greedy"].append(
                        _mix(
                            loss.central_mixer,
                            target["central_mixer"],
                            _pick(ct[t], greedy[t]),
                            states[t],
                        ).reshape(())
                    )
            if alg == "resq":
                raw = _mix(
                    loss.residual_mixer, online["residual_mixer"], _pick(qres[t], a), states[t]
                )
                per["raw_residual"].append(raw.reshape(()))
                w_r = 0.0 if per["greedy"][-1] else 1.0
                per["q_jt"].append(q_tot + w_r * (-raw.reshape(()).abs()))

    n_real = len(per["y"])
    y = torch.stack(per["y"])
    q_tot = torch.stack(per["q_tot"])
    out: dict = {"n": n_real, "index": per["index"], "y": y, "q_tot_monotone": q_tot.detach()}
    fit = torch.stack(per["q_jt"]) if alg == "resq" else q_tot
    out["q_tot"] = fit.detach()

    # ---- weights (§3.4, §3.6.2)
    weights = torch.ones(n_real)
    if alg == "ow_qmix":
        weights = torch.tensor(
            [1.0 if float(f) < float(t) else s.alpha for f, t in zip(fit.detach(), y)]
        )
    elif alg == "cw_qmix":
        weights = torch.tensor(
            [
                1.0 if (gr or float(t) > float(c)) else s.alpha
                for gr, t, c in zip(per["greedy"], y, per["central_at_greedy"])
            ]
        )
    elif alg.startswith("pow_"):
        if recognition is None:
            qr_net = copy.deepcopy(loss.recognition_mixer)
            opt = s.qr_optimizer(list(qr_net.parameters()), **s.qr_optimizer_kwargs)
        else:
            qr_net, opt = recognition
        qr_params = list(qr_net.parameters())
        dq, st, oh = (
            torch.stack(per["delta_q"]),
            torch.stack(per["state"]),
            torch.stack(per["onehot"]),
        )
        last = last_norm = None
        for _ in range(s.qr_steps):
            q_r, _ = qr_net(dq, st, oh)
            loss_r = 0.5 * ((q_r.reshape(-1) - y) ** 2).sum() / n_real
            opt.zero_grad()
            loss_r.backward()
            if s.qr_clip is not None:
                last_norm = torch.nn.utils.clip_grad_norm_(qr_params, s.qr_clip)
            opt.step()
            last = loss_r.detach()
        with torch.no_grad():
            q_r, lambda_dq = qr_net(dq, st, oh)
        q_r, lambda_dq = q_r.reshape(-1), lambda_dq.reshape(-1)
        out.update(
            qr_net=qr_net,
            recognition=(qr_net, opt),
            q_r=q_r,
            lambda_delta_q=lambda_dq,
            loss_recognition=last,
            grad_norm_recognition=last_norm,
        )
        if s.threshold is None:
            s.threshold = _split_threshold(lambda_dq.abs())
        in_set = lambda_dq.abs() < s.threshold
        out["in_set"] = in_set
        if s.total_frames > s.no_weighted_steps:
            weights = torch.where(in_set, 1.0, s.alpha)
    out["weight"] = weights

    # ---- losses (§1.8: Σ over real steps / number of real steps)
    loss_tot = coef_tot * (weights * (fit - y) ** 2).sum() / n_real
    main = loss_tot
    out["loss_q_tot"] = loss_tot.detach()
    if central:
        q_star = torch.stack(per["q_star"])
        loss_central = coef_central * ((q_star - y) ** 2).sum() / n_real
        main = main + loss_central
        out.update(q_star=q_star.detach(), loss_central=loss_central.detach())
    if alg == "resq":
        out["raw_residual"] = torch.stack(per["raw_residual"]).detach()
    out["loss"] = main.detach()
    # per-step gradients of the main loss w.r.t. the fitted values (they pin down y and w per step)
    out["dloss_dq_tot"] = 2 * coef_tot * weights * (fit.detach() - y) / n_real
    if central:
        out["dloss_dq_star"] = 2 * coef_central * (out["q_star"] - y) / n_real
    leaves = {}
    for name, p in online.items():
        for key, leaf in p.items(True, True):
            leaves[f"{name}_params." + ".".join(key if isinstance(key, tuple) else (key,))] = leaf
    needed = {k: v for k, v in leaves.items() if v.requires_grad}
    grads = torch.autograd.grad(main, list(needed.values()), allow_unused=True)
    out["grads"] = {
        k: (g if g is not None else torch.zeros_like(v)) for (k, v), g in zip(needed.items(), grads)
    }
    out["stats"] = {
        "target_mean": y.mean(),
        "q_tot_taken_mean": fit.detach().mean(),
        "td_error_q_tot": (fit.detach() - y).abs().mean(),
        "mean_weight": weights.mean(),
        "q_taken_mean": torch.stack(per["q_taken"]).detach().mean(),
        "greedy_fraction": torch.tensor(per["greedy"], dtype=torch.float).mean(),
    }
    if central:
        out["stats"].update(
            q_star_taken_mean=out["q_star"].mean(),
            td_error_central=(out["q_star"] - y).abs().mean(),
        )
    if alg.startswith("pow_"):
        out["stats"].update(
            q_r_taken_mean=out["q_r"].mean(),
            td_error_recognition=(out["q_r"] - y).abs().mean(),
            fraction_in_recognition_set=out["in_set"].float().mean(),
            mean_abs_delta_q=torch.stack(per["delta_q"]).abs().mean(),
        )
    if alg == "resq":
        out["stats"]["residual_mean"] = (-out["raw_residual"].abs()).mean()
    return out


def _split_threshold(values: torch.Tensor) -> float:
    """A threshold C that puts about half of ``values`` in A_r, far from every value."""
    v = values.sort().values
    gaps = v[1:] - v[:-1]
    lo, hi = len(v) // 4, max(len(v) // 4 + 1, 3 * len(v) // 4)
    i = lo + int(gaps[lo:hi].argmax())
    assert float(gaps[i]) > 1e-4 * max(1.0, float(v[i])), "no clean split of |λΔQ|"
    return float((v[i] + v[i + 1]) / 2)


# ----------------------------------------------------------------------- running the loss
class _Capture:
    """Forward hooks on the loss's critic modules: the grad-enabled outputs (Q_tot, Q̂*, ResQ's R)
    and, after backward, the gradient of the main loss w.r.t. each of them."""

    def __init__(self, loss):
        self.values: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self.handles = []
        for name, module in (
            ("q_tot", loss.mixer),
            ("q_star", getattr(loss, "central_mixer", None)),
            ("raw_residual", getattr(loss, "residual_mixer", None)),
        ):
            if module is not None:
                self.handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def hook(module, args, output):
            if torch.is_tensor(output) and output.requires_grad:
                self.values[name] = output.detach().clone()

                def save(grad):
                    self.grads[name] = grad.detach().clone()

                output.register_hook(save)

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def run_loss(loss, td: TensorDict):
    capture = _Capture(loss)
    try:
        out = loss(td)
        loss.zero_grad(set_to_none=True)
        out["loss"].backward()
    finally:
        capture.remove()
    grads = {n: p.grad for n, p in loss.named_parameters()}
    return out, capture, grads


def _per_step(x: torch.Tensor, td: TensorDict, ref: dict, what: str) -> torch.Tensor:
    """A loss-side per-step tensor ([B, T, ...] or [N_real, ...]) at the reference's real steps."""
    b, t = td.batch_size
    flat = (
        x.reshape(b * t, -1)[:, 0] if x.numel() % (b * t) == 0 and x.shape[:2] == (b, t) else None
    )
    if flat is not None:
        rows = torch.tensor([i for i, _ in ref["index"]])
        cols = torch.tensor([j for _, j in ref["index"]])
        return flat.reshape(b, t)[rows, cols]
    if x.numel() == ref["n"]:
        return x.reshape(-1)
    raise AssertionError(
        f"{what}: unexpected shape {tuple(x.shape)} for batch {tuple(td.batch_size)}"
    )


def _close(actual, expected, what, rtol=RTOL, atol=ATOL):
    actual = torch.as_tensor(actual, dtype=torch.float32).detach()
    expected = torch.as_tensor(expected, dtype=torch.float32).detach()
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    )
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def compare(loss, td: TensorDict, ref: dict, out, capture: _Capture, grads: dict) -> None:
    """Assert that the loss's call matches the reference (raises AssertionError otherwise)."""
    alg_has_central = "q_star" in ref
    # ---- per step
    valid = valid_of(td)
    if "q_tot" in capture.values:
        # ResQ: the hook sees the monotone Q_tot; the gradient is w.r.t. Q_jt = Q_tot + w_r Q_r
        _close(
            _per_step(capture.values["q_tot"], td, ref, "Q_tot"),
            ref["q_tot_monotone"],
            "Q_tot per step",
        )
        g = capture.grads["q_tot"]
        _close(
            _per_step(g, td, ref, "dL/dQ_tot"),
            ref["dloss_dq_tot"],
            "dloss/dQ_tot per step (= 2c·w·(Q_tot − y)/N: targets and weights)",
        )
        if g.shape[:2] == tuple(td.batch_size):
            pad = g.reshape(*td.batch_size, -1)[~valid]
            assert pad.numel() == 0 or float(pad.abs().max()) == 0.0, (
                "padding steps receive gradient through Q_tot"
            )
    if alg_has_central:
        _close(_per_step(capture.values["q_star"], td, ref, "Q̂*"), ref["q_star"], "Q̂* per step")
        _close(
            _per_step(capture.grads["q_star"], td, ref, "dL/dQ̂*"),
            ref["dloss_dq_star"],
            "dloss/dQ̂* per step (= 2c·(Q̂* − y)/N: the targets y)",
        )
    if "raw_residual" in ref:
        _close(
            _per_step(capture.values["raw_residual"], td, ref, "R"),
            ref["raw_residual"],
            "ResQ raw residual R per step",
        )
    priority = td.get(("agents", "td_error"))
    if bool((~valid).any()):
        assert float(priority[~valid].abs().max()) == 0.0, "padding steps have a non-zero priority"
    _close(
        _per_step(priority[..., 0:1], td, ref, "priority"),
        (ref["q_tot"] - ref["y"]).abs(),
        "priority |Q_tot − y| (ResQ: |Q_jt − y|) per step",
    )
    # ---- Q_r after its inner steps
    if "qr_net" in ref:
        for (name, p), p_ref in zip(
            loss.recognition_mixer.named_parameters(), ref["qr_net"].parameters()
        ):
            _close(
                p.detach(),
                p_ref.detach(),
                f"Q_r parameter {name} after the inner steps",
                rtol=1e-3,
                atol=1e-5,
            )
            assert p.grad is None or float(p.grad.abs().max()) == 0.0, (
                f"main loss reaches Q_r ({name})"
            )
        _close(out["loss_recognition"], ref["loss_recognition"], "loss_recognition")
        if "grad_norm_recognition" in out.keys() and ref["grad_norm_recognition"] is not None:
            _close(
                out["grad_norm_recognition"],
                ref["grad_norm_recognition"],
                "grad_norm_recognition",
                rtol=1e-3,
                atol=1e-5,
            )
    # ---- losses and statistics
    _close(out["loss"], ref["loss"], "loss")
    _close(out["loss_q_tot"], ref["loss_q_tot"], "loss_q_tot")
    if alg_has_central:
        _close(out["loss_central"], ref["loss_central"], "loss_central")
    for key, value in ref["stats"].items():
        if key in out.keys():
            _close(out[key], value, key)
    # ---- gradients of the main loss w.r.t. every parameter
    assert set(ref["grads"]) <= set(grads), (
        f"parameters missing in the loss: {set(ref['grads']) - set(grads)}"
    )
    for name, g_ref in ref["grads"].items():
        g = grads[name]
        _close(
            torch.zeros_like(g_ref) if g is None else g,
            g_ref,
            f"grad of {name}",
            rtol=1e-3,
            atol=1e-6,
        )
    for name, g in grads.items():
        if name not in ref["grads"] and not name.startswith("recognition_mixer."):
            assert g is None or float(g.abs().max()) == 0.0, f"unexpected gradient on {name}"


# -------------------------------------------------------------------------------- batches
# No padding: every row fills all slots; episodes end (terminated / truncated) or not at the last one.
FULL_ROWS = [
    Row(6, "terminated", greedy_first=True),
    Row(6, "truncated"),
    Row(6, "open", greedy_first=True),
]
FULL_SLOTS = 6
# Padding: early terminations and time-outs before the last slot, a final-observation slot, garbage.
PADDED_ROWS = [
    Row(7, "truncated"),
    Row(3, "terminated", greedy_first=True),
    Row(5, "truncated", greedy_first=True),
    Row(6, "terminated"),
]
PADDED_SLOTS = 7


def _check(algorithm, tmp_path_factory, rows, slots, *, valid_key, seed=0):
    loss, setting = _fresh_loss(algorithm, tmp_path_factory)
    td = make_batch(loss, rows, slots, valid_key=valid_key, seed=seed)
    ref = reference(loss, td, setting)
    if setting.threshold is not None:
        loss.rule.threshold = setting.threshold
    out, capture, grads = run_loss(loss, td)
    compare(loss, td, ref, out, capture, grads)
    return loss, setting, td, ref


# ---------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_matches_reference_without_padding(algorithm, tmp_path_factory):
    """Full-length rows (no "valid" key): terminated, truncated and open at the last slot."""
    _, _, _, ref = _check(algorithm, tmp_path_factory, FULL_ROWS, FULL_SLOTS, valid_key=False)
    # the batch really exercises the bootstrap, the masks and both weight values
    assert ref["n"] == 18
    if algorithm in ("cw_qmix", "ow_qmix") or algorithm.startswith("pow_"):
        assert 0 < int((ref["weight"] == 1).sum()) < ref["n"], "all weights equal"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_matches_reference_with_all_valid_key(algorithm, tmp_path_factory):
    _check(algorithm, tmp_path_factory, FULL_ROWS, FULL_SLOTS, valid_key=True, seed=3)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_matches_reference_with_padding(algorithm, tmp_path_factory):
    """Early terminations and time-outs before the last slot, then padding (issue 9 layout)."""
    _check(algorithm, tmp_path_factory, PADDED_ROWS, PADDED_SLOTS, valid_key=True, seed=5)


def test_pow_warm_up_is_unweighted(tmp_path_factory):
    loss, setting = _fresh_loss("pow_qmix", tmp_path_factory)
    loss.total_frames = setting.total_frames = 0  # ≤ no_weighted_steps (0): unweighted (§3.6.2)
    td = make_batch(loss, FULL_ROWS, FULL_SLOTS, valid_key=False)
    ref = reference(loss, td, setting)
    assert bool((ref["weight"] == 1).all())
    loss.rule.threshold = setting.threshold
    compare(loss, td, ref, *run_loss(loss, td))


@pytest.mark.parametrize("algorithm", ["pow_qmix", "pow_qplex"])
def test_pow_second_call_continues_q_r_and_its_optimiser(algorithm, tmp_path_factory):
    """§3.6.2: 20 Q_r steps on the first learner call, 10 on the next, with the same optimiser."""
    loss, setting = _fresh_loss(algorithm, tmp_path_factory)
    first = make_batch(loss, FULL_ROWS, FULL_SLOTS, valid_key=True, seed=21)
    second = make_batch(loss, PADDED_ROWS, PADDED_SLOTS, valid_key=True, seed=22)
    ref = reference(loss, first, setting)
    loss.rule.threshold = setting.threshold
    compare(loss, first, ref, *run_loss(loss, first))
    later = copy.deepcopy(setting)
    later.threshold = None
    config = _experiment(algorithm, tmp_path_factory)[0].algorithm_config
    later.qr_steps = config.recognition_updates
    assert later.qr_steps != setting.qr_steps
    ref2 = reference(loss, second, later, recognition=ref["recognition"])
    loss.rule.threshold = later.threshold
    compare(loss, second, ref2, *run_loss(loss, second))


# ------------------------------------------------------------------------------ mutations
def _mutate_targets(loss, mode: str):
    """``swap``: exchange online and target parameters; ``online``: targets := online
    (a loss that bootstraps from its online network)."""
    with torch.no_grad():
        for name in _target_networks(loss_algorithm(loss)):
            target = getattr(loss, f"target_{name}_params")
            online = getattr(loss, f"{name}_params")
            for key, t in target.items(True, True):
                o = online.get(key)
                kept = o.detach().clone()
                if mode == "swap":
                    o.data.copy_(t)
                t.copy_(kept)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_mutation_swapped_online_and_target_parameters_is_caught(algorithm, tmp_path_factory):
    """Mutation (a): the loss run with online and target parameters exchanged does not match the
    reference; nor does a loss that reads its bootstrap from the online network, although its
    Q_tot / Q̂* per step still match (only the targets y give it away)."""
    for mode in ("swap", "online"):
        loss, setting = _fresh_loss(algorithm, tmp_path_factory)
        td = make_batch(loss, FULL_ROWS, FULL_SLOTS, valid_key=False)
        ref = reference(loss, td, setting)
        if setting.threshold is not None:
            loss.rule.threshold = setting.threshold
        _mutate_targets(loss, mode)
        out, capture, grads = run_loss(loss, td)
        with pytest.raises(AssertionError):
            compare(loss, td, ref, out, capture, grads)
        if "q_star" in ref:  # the central critic is fitted to y with weight 1 everywhere
            key, values, slopes = "q_star", ref["q_star"], ref["dloss_dq_star"]
        else:
            key, values, slopes = "q_tot", ref["q_tot_monotone"], ref["dloss_dq_tot"]
        got_values = _per_step(capture.values[key], td, ref, key)
        got_slopes = _per_step(capture.grads[key], td, ref, key)
        if mode == "online":
            _close(got_values, values, f"{key} per step (online parameters untouched)")
        # dloss/d(value) = 2c·w·(value − y)/N per step: y differs
        assert not torch.allclose(got_slopes, slopes, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_mutation_greedy_next_action_from_target_network_is_caught(algorithm, tmp_path_factory):
    """Mutation (b): â' taken from the target network instead of the online agents.

    The reference with that mutation must disagree with the loss (while the faithful reference
    agrees, see the tests above): on these batches the two choices give different targets.
    """
    loss, setting = _fresh_loss(algorithm, tmp_path_factory)
    td = make_batch(loss, FULL_ROWS, FULL_SLOTS, valid_key=False)
    faithful = reference(loss, td, setting)
    mutant = reference(loss, td, copy.deepcopy(setting), greedy_from="target")  # same C
    if setting.threshold is not None:
        loss.rule.threshold = setting.threshold
    assert not torch.allclose(mutant["y"], faithful["y"]), "the mutation does not change y here"
    out, capture, grads = run_loss(loss, td)
    compare(loss, td, faithful, out, capture, grads)
    with pytest.raises(AssertionError):
        compare(loss, td, mutant, out, capture, grads)


# ------------------------------------------------------------------- padding and recurrence
def _repad(td: TensorDict, slots: int, seed: int) -> TensorDict:
    """The same episodes stored in ``slots`` slots; the extra slots hold garbage, valid False."""
    b, t = td.batch_size
    gen = torch.Generator().manual_seed(seed)
    out = td.exclude(("agents", "td_error"))
    extra = slots - t
    assert extra > 0

    def pad(x):
        if x.dtype == torch.bool:
            filler = torch.rand(b, extra, *x.shape[2:], generator=gen) < 0.5
        elif x.dtype == torch.long:
            filler = torch.randint(2, (b, extra, *x.shape[2:]), generator=gen)
        else:
            filler = torch.randn(b, extra, *x.shape[2:], generator=gen)
        return torch.cat([x, filler], 1)

    new = out.apply(pad, batch_size=[b, slots])
    new.set(
        "is_init", torch.cat([td.get("is_init"), torch.zeros(b, extra, 1, dtype=torch.bool)], 1)
    )
    new.set(
        "valid",
        torch.cat([valid_of(td).unsqueeze(-1), torch.zeros(b, extra, 1, dtype=torch.bool)], 1),
    )
    # layout: the slot after a full-length row's last step now exists and holds its final next
    # observation / state / mask (those of "next" at that step)
    keys = [k for k in td.keys(True, True) if not (isinstance(k, tuple) and k[0] == "next")]
    for i, length in enumerate(row_lengths(td)):
        if length == t:
            for key in keys:
                k = key if isinstance(key, tuple) else (key,)
                if ("next", *k) in td.keys(True, True):
                    new.get(key)[i, t] = td.get(("next", *k))[i, t - 1]
    return new


def _snapshot(out, capture, grads, loss):
    """Detached copies of one call's results, safe across a later state restore."""
    return {
        "out": {k: v.detach().clone() for k, v in out.items()},
        "values": {k: v.clone() for k, v in capture.values.items()},
        "grads": {k: None if g is None else g.clone() for k, g in grads.items()},
        "q_r": [p.detach().clone() for p in loss.recognition_mixer.parameters()]
        if loss.recognition_mixer is not None
        else [],
    }


def _call(algorithm, tmp_path_factory, td, threshold=None):
    loss, _ = _fresh_loss(algorithm, tmp_path_factory)
    if threshold is not None:
        loss.rule.threshold = threshold
    return _snapshot(*run_loss(loss, td), loss)


def _same_results(a, b, what, counts=True):
    for key in a["out"]:
        if not counts and key.startswith("n_"):
            continue  # a count of steps (e.g. n_in_recognition_set) scales with the copies
        _close(b["out"][key], a["out"][key], f"{key}: {what}")
    for name, g in a["grads"].items():
        if g is not None or b["grads"][name] is not None:
            _close(b["grads"][name], g, f"grad of {name}: {what}", rtol=1e-3, atol=1e-6)
    for p, q in zip(a["q_r"], b["q_r"]):
        _close(q, p, f"Q_r after the inner steps: {what}", rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_padding_changes_nothing(algorithm, tmp_path_factory):
    """Issue 9: the same episodes in 7 slots (the shortest that fits) and in 11 give exactly the
    same losses, gradients, statistics (the A_r fraction included), priorities and Q_r."""
    loss, setting = _fresh_loss(algorithm, tmp_path_factory)
    short = make_batch(loss, PADDED_ROWS, PADDED_SLOTS, valid_key=True, seed=7)
    long = _repad(short, PADDED_SLOTS + 4, seed=8)
    threshold = None
    if algorithm.startswith("pow_"):
        ref = reference(loss, short, setting)
        threshold = setting.threshold
    res_s = _call(algorithm, tmp_path_factory, short, threshold)
    res_l = _call(algorithm, tmp_path_factory, long, threshold)
    _same_results(res_s, res_l, "padded vs unpadded")
    p_s, p_l = short.get(("agents", "td_error")), long.get(("agents", "td_error"))
    _close(p_l[:, :PADDED_SLOTS][valid_of(short)], p_s[valid_of(short)], "priorities")
    assert float(p_l[:, PADDED_SLOTS:].abs().max()) == 0.0, "padding has a priority"
    if algorithm.startswith("pow_"):
        fraction = res_s["out"]["fraction_in_recognition_set"]
        assert 0.0 < float(fraction) < 1.0
        _close(fraction, ref["stats"]["fraction_in_recognition_set"], "A_r fraction")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_recurrence_episode_alone_equals_episode_in_a_batch(algorithm, tmp_path_factory):
    """Issue 9: an episode's per-step values do not depend on the other rows of its batch: the
    episode alone (a batch of one, unrolled from its first step) gives the same Q_tot, Q̂* and
    priorities as inside a batch of three, and three copies of it give the same losses,
    gradients and Q_r as one."""
    loss, _ = _fresh_loss(algorithm, tmp_path_factory)
    batch = make_batch(loss, PADDED_ROWS[1:], PADDED_SLOTS - 1, valid_key=True, seed=11)
    row = 1  # a time-out before the last slot
    alone = batch[row : row + 1].clone()
    triple = torch.cat([alone, alone, alone], 0)
    res_b = _call(algorithm, tmp_path_factory, batch)
    res_a = _call(algorithm, tmp_path_factory, alone)
    res_t = _call(algorithm, tmp_path_factory, triple)
    v = valid_of(alone)[0]
    _close(
        alone.get(("agents", "td_error"))[0][v],
        batch.get(("agents", "td_error"))[row][v],
        "priorities of the episode alone vs in a batch",
    )
    for key in ("q_tot", "q_star"):
        if key in res_a["values"]:
            a = res_a["values"][key].reshape(1, -1)[0][v]
            b = res_b["values"][key].reshape(*batch.batch_size)[row][v]
            _close(a, b, f"{key} of the episode alone vs in a batch")
    _same_results(res_a, res_t, "one copy vs three", counts=False)
