"""``rnn_agent``: PyMARL's agent network as a BenchMARL model (pow_spec.md §1.5).

Its fast training unroll equals a naive step-by-step ``nn.GRUCell`` loop (values and gradients),
its collection mode (hidden state carried through the td) equals the unroll, and it trains inside
BenchMARL experiments (BenchMARL's ``qmix`` on VMAS, our ``pow_qmix`` on predator-prey).
"""

from __future__ import annotations

import pytest
import torch
from benchmarl.models import model_config_registry
from tensordict import TensorDict
from torch import nn
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs.utils import step_mdp

from benchmarl_pow.models import RnnAgent, RnnAgentConfig, agent_unroll, register_models
from benchmarl_pow.models.rnn_agent import _POOL

GROUP = "agents"


def build(config: RnnAgentConfig, n_agents=3, obs=(5, 2), n_actions=4, share_params=True, centralised=False):
    """An ``RnnAgent`` for a group whose observation is split over ``len(obs)`` keys."""
    keys = {f"obs_{i}": Unbounded(shape=(n_agents, size)) for i, size in enumerate(obs)}
    return config.get_model(
        input_spec=Composite({GROUP: Composite(keys, shape=(n_agents,))}),
        output_spec=Composite(
            {GROUP: Composite({"action_value": Unbounded(shape=(n_agents, n_actions))}, shape=(n_agents,))}
        ),
        agent_group=GROUP,
        input_has_agent_dim=True,
        n_agents=n_agents,
        centralised=centralised,
        share_params=share_params,
        device="cpu",
        action_spec=Composite(
            {GROUP: Composite({"action": Categorical(n_actions, shape=(n_agents,))}, shape=(n_agents,))}
        ),
    )


def sequence(batch=4, time=11, n_agents=3, obs=(5, 2), seed=0):
    """Random inputs ``[B, T]`` with resets at t=0 and in the middle of the chunks."""
    g = torch.Generator().manual_seed(seed)
    is_init = torch.rand(batch, time, 1, generator=g) < 0.2
    is_init[:, 0] = True
    is_init[0, 1] = True  # two resets in a row
    data = {f"obs_{i}": torch.randn(batch, time, n_agents, size, generator=g) for i, size in enumerate(obs)}
    return TensorDict({GROUP: data, "is_init": is_init}, batch_size=[batch, time])


def reference(model: RnnAgent, td: TensorDict) -> torch.Tensor:
    """Step by step with ``nn.GRUCell``, agent by agent, resetting where ``is_init``."""
    x = torch.cat([td.get(key) for key in model.obs_keys], -1)
    batch, time, n_agents, _ = x.shape
    outs = torch.empty(batch, time, n_agents, model.output_features)
    for agent in range(n_agents):
        net = model.nets[0 if model.share_params else agent]
        h = torch.zeros(batch, model.hidden_size)
        for t in range(time):
            h = torch.where(td["is_init"][:, t], torch.zeros_like(h), h)
            inp = x[:, t, agent]
            if net.embed is not None:
                inp = torch.relu(net.embed(inp))
            h = net.rnn(inp, h)
            outs[:, t, agent] = net.head(h)
    return outs


def assert_same_values_and_grads(model, td, out, expected):
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(expected)
    grads = torch.autograd.grad((out * weights).sum(), list(model.parameters()))
    ref_grads = torch.autograd.grad((expected * weights).sum(), list(model.parameters()))
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("share_params", [True, False])
@pytest.mark.parametrize("input_embed", [12, 0])
def test_training_unroll_matches_a_naive_grucell_loop(share_params, input_embed):
    torch.manual_seed(0)
    model = build(RnnAgentConfig(hidden_size=16, input_embed=input_embed), share_params=share_params)
    assert len(model.nets) == (1 if share_params else 3)
    td = sequence()
    out = model(td.clone(False)).get((GROUP, "action_value"))
    assert out.shape == (4, 11, 3, 4)
    assert (model.hidden_state_name not in td.keys(True)) and ("next" not in td.keys())
    assert_same_values_and_grads(model, td, out, reference(model, td))


def test_training_unroll_with_extra_leading_batch_dims():
    torch.manual_seed(0)
    model = build(RnnAgentConfig(hidden_size=8, input_embed=6))
    td = sequence(batch=6)
    out = model(td.clone(False)).get((GROUP, "action_value"))
    stacked = model(td.reshape(2, 3, 11).clone(False)).get((GROUP, "action_value"))
    torch.testing.assert_close(stacked.reshape(out.shape), out)


def test_fused_unroll_gradcheck_in_float64():
    """All inputs, including x and h0; gradcheck also backpropagates twice (retain_graph)."""
    torch.manual_seed(0)
    dtype = torch.double
    batch, time, n_agents, features, embed, hidden, actions = 3, 7, 2, 4, 5, 6, 3
    for use_embed in (True, False):
        emb = nn.Linear(features, embed, dtype=dtype) if use_embed else None
        rnn = nn.GRUCell(embed if use_embed else features, hidden, dtype=dtype)
        head = nn.Linear(hidden, actions, dtype=dtype)
        x = torch.randn(batch, time, n_agents, features, dtype=dtype, requires_grad=True)
        h0 = torch.randn(batch, n_agents, hidden, dtype=dtype, requires_grad=True)
        is_init = torch.rand(batch, time) < 0.3
        params = [p for m in (emb, rnn, head) if m is not None for p in m.parameters()]

        def unroll(x, h0, *_, is_init=is_init, modules=(emb, rnn, head)):
            return agent_unroll(x, is_init, h0, *modules)

        assert torch.autograd.gradcheck(unroll, (x, h0, *params))


def test_no_grad_path_matches_and_buffers_are_recycled():
    torch.manual_seed(0)
    model = build(RnnAgentConfig(hidden_size=64, input_embed=64), n_agents=8, obs=(75,), n_actions=6)
    td = sequence(batch=16, time=40, n_agents=8, obs=(75,))  # big enough for the buffer pool
    with torch.no_grad():
        expected = model(td.clone(False)).get((GROUP, "action_value"))
    for _ in range(2):  # the second call runs on recycled buffers
        out = model(td.clone(False)).get((GROUP, "action_value"))
        assert _POOL._lent  # the saved activations are lent by the pool until backward
        out.sum().backward()
        assert not _POOL._lent and _POOL._free
        torch.testing.assert_close(out.detach(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("share_params", [True, False])
def test_collection_steps_match_the_training_unroll(share_params):
    """Step by step as TorchRL's collector runs it: hidden state primed at zero, ``("next",
    hidden)`` written by the model and moved to the root by ``step_mdp``."""
    torch.manual_seed(0)
    config = RnnAgentConfig(hidden_size=16, input_embed=12)
    model = build(config, share_params=share_params)
    td = sequence()
    batch, time = td.shape
    with torch.no_grad():
        expected = model(td.clone(False)).get((GROUP, "action_value"))

    hidden_key = model.hidden_state_name
    assert hidden_key[1] == "_hidden_rnn_agent_0"
    assert config.get_model_state_spec()[hidden_key[1]].shape == (16,)
    step = TensorDict({hidden_key: torch.zeros(batch, 3, 16)}, batch_size=[batch])
    outs = []
    with torch.no_grad():
        for t in range(time):
            step.update(td[:, t].select(*model.obs_keys, "is_init"))
            step = model(step)
            outs.append(step.get((GROUP, "action_value")))
            assert step.get(("next", *hidden_key)).shape == (batch, 3, 16)
            step = step_mdp(step, keep_other=False, exclude_action=True)
    torch.testing.assert_close(torch.stack(outs, 1), expected, atol=1e-5, rtol=1e-5)

    # no batch dimension (BenchMARL's evaluation rollouts of a single env)
    single = td[0, 0].select(*model.obs_keys, "is_init")
    single.set(hidden_key, torch.zeros(3, 16))
    with torch.no_grad():
        out = model(single).get((GROUP, "action_value"))
    torch.testing.assert_close(out, expected[0, 0], atol=1e-5, rtol=1e-5)


def test_in_keys_and_errors():
    model = build(RnnAgentConfig(hidden_size=8, input_embed=4))
    assert model.in_keys == [(GROUP, "obs_0"), (GROUP, "obs_1"), "is_init", (GROUP, "_hidden_rnn_agent_0")]
    assert model.out_keys == [(GROUP, "action_value")]
    assert RnnAgentConfig().is_rnn
    with pytest.raises(NotImplementedError, match="decentralised per-agent network"):
        build(RnnAgentConfig(), centralised=True)
    with pytest.raises(ValueError, match=r"\[\.\.\., T\]"):  # training mode needs a time dim
        model(sequence()[:, 0].clone(False))


def test_stag_hunt_parameter_count():
    """Input 75 (no last action / agent id in our env), embed 64, GRU 64, 6 actions."""
    config = RnnAgentConfig.get_from_yaml()
    assert (config.hidden_size, config.input_embed) == (64, 64)
    model = build(config, n_agents=8, obs=(75,), n_actions=6)
    expected = 75 * 64 + 64 + 3 * (64 * 64 + 64) * 2 + 64 * 6 + 6
    assert sum(p.numel() for p in model.parameters()) == expected == 30214


def test_registry_and_hydra():
    from benchmarl.hydra_config import load_model_config_from_hydra

    from benchmarl_pow.compose import compose_config

    register_models()
    assert model_config_registry["rnn_agent"] is RnnAgentConfig
    cfg = compose_config(["algorithm=qmix", "task=vmas/balance", "model=rnn_agent", "model.hidden_size=32"])
    assert load_model_config_from_hydra(cfg.model) == RnnAgentConfig(hidden_size=32, input_embed=64)


# --------------------------------------------------------------------------------------------------
# Inside BenchMARL experiments
# --------------------------------------------------------------------------------------------------
def tiny_config(tmp_path):
    from benchmarl.experiment import ExperimentConfig

    config = ExperimentConfig.get_from_yaml()
    settings = dict(
        loggers=[], create_json=False, render=False, evaluation=False, save_folder=str(tmp_path),
        checkpoint_at_end=False, max_n_iters=2, max_n_frames=None, off_policy_n_envs_per_worker=4,
        off_policy_collected_frames_per_batch=32, off_policy_n_optimizer_steps=1,
        off_policy_train_batch_size=16, off_policy_memory_size=256,
    )
    for key, value in settings.items():
        setattr(config, key, value)
    return config


def test_trains_with_benchmarl_qmix_on_vmas(tmp_path):
    from benchmarl.algorithms import QmixConfig
    from benchmarl.environments import VmasTask
    from benchmarl.experiment import Experiment

    task = VmasTask.BALANCE.get_from_yaml()
    task.config.update({"max_steps": 8, "n_agents": 2})
    experiment = Experiment(
        task=task, algorithm_config=QmixConfig.get_from_yaml(),
        model_config=RnnAgentConfig(hidden_size=16, input_embed=16), seed=0, config=tiny_config(tmp_path),
    )
    policy_model = experiment.policy[0].module[0]
    assert isinstance(policy_model, RnnAgent)
    before = [p.detach().clone() for p in policy_model.parameters()]
    experiment.run()
    assert experiment.n_iters_performed == 2
    assert any(not torch.equal(b, p) for b, p in zip(before, policy_model.parameters()))


def test_trains_with_pow_qmix_on_predator_prey(tmp_path):
    from benchmarl.experiment import Experiment

    import benchmarl_pow  # noqa: F401  (registers pow_qmix and the predator-prey tasks)
    from benchmarl_pow.algorithms import PowQmixConfig
    from custom_envs import PredatorPreyTask

    experiment = Experiment(
        task=PredatorPreyTask.PUNISH_4.get_from_yaml(), algorithm_config=PowQmixConfig.get_from_yaml(),
        model_config=RnnAgentConfig(hidden_size=16, input_embed=16), seed=0, config=tiny_config(tmp_path),
    )
    experiment.run()
    assert experiment.n_iters_performed == 2
