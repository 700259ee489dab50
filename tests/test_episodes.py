"""The paper's training regime (``regime=episodes``): layout, schedule, padding and recurrence.

A scripted env plays episodes of known lengths (some ending early by a terminal, some by the time
limit), so every count of the schedule (pow_spec.md §1.2-1.4, §7.4) can be checked exactly.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from benchmarl.environments.common import TaskClass
from benchmarl.experiment.callback import Callback
from benchmarl.hydra_config import (
    load_algorithm_config_from_hydra,
    load_experiment_config_from_hydra,
    load_model_config_from_hydra,
)
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from benchmarl_pow.compose import compose_config, compose_experiment
from benchmarl_pow.episodes import (
    VALID_KEY,
    EpisodeExperiment,
    RegimeConfig,
    episodes_from_rollout,
    truncate_to_longest,
)
from benchmarl_pow.episodes.layout import restore_next

N_AGENTS, N_ACTIONS, LIMIT = 2, 3, 6
#: LENGTHS[i][k]: length of env i's k-th episode (LIMIT = a time-out, shorter = a terminal)
LENGTHS = [[2, 6, 4, 1, 6, 3, 5, 2], [6, 3, 1, 6, 2, 4, 6, 5], [4, 4, 6, 2, 3, 6, 1, 6]]
N_ENVS = len(LENGTHS)


class ScriptedEnv(EnvBase):
    """Batched env whose episode lengths follow :data:`LENGTHS`. Reward 1 per step; action 2 is
    masked out for agent 1 on odd steps (a mask that changes over time)."""

    group = "agents"

    def __init__(self, num_envs: int = N_ENVS, device: Any = "cpu", **kwargs: Any):
        super().__init__(batch_size=torch.Size([num_envs]), device=device)
        b, n = num_envs, N_AGENTS
        self.full_observation_spec = Composite(
            {
                "agents": Composite(
                    {
                        "observation": Unbounded(shape=(b, n, 3)),
                        "action_mask": Categorical(n=2, shape=(b, n, N_ACTIONS), dtype=torch.bool),
                    },
                    shape=(b, n),
                ),
                "state": Unbounded(shape=(b, 4)),
            },
            shape=(b,),
        )
        self.full_action_spec = Composite(
            {"agents": Composite({"action": Categorical(n=N_ACTIONS, shape=(b, n))}, shape=(b, n))},
            shape=(b,),
        )
        self.full_reward_spec = Composite(
            {"agents": Composite({"reward": Unbounded(shape=(b, n, 1))}, shape=(b, n))},
            shape=(b,),
        )
        self.full_done_spec = Composite(
            {k: Categorical(n=2, shape=(b, 1), dtype=torch.bool) for k in ("done", "terminated", "truncated")},
            shape=(b,),
        )
        self.episode_index = torch.full((b,), -1, dtype=torch.long)
        self.t = torch.zeros(b, dtype=torch.long)
        self.lengths = torch.tensor([row * 10 for row in LENGTHS])[:b]  # enough episodes

    def _length(self) -> torch.Tensor:
        return self.lengths[torch.arange(self.batch_size[0]), self.episode_index]

    def _observe(self) -> TensorDict:
        b = self.batch_size[0]
        t = self.t.float()
        env = torch.arange(b).float()
        obs = torch.stack([t / LIMIT, env / b, self.episode_index.float() / 10], -1)
        obs = obs.unsqueeze(1).expand(b, N_AGENTS, 3).clone()
        obs[:, 1, 0] += 0.5
        mask = torch.ones(b, N_AGENTS, N_ACTIONS, dtype=torch.bool)
        mask[:, 1, 2] = self.t % 2 == 0
        state = torch.stack([t / LIMIT, env / b, self.episode_index.float() / 10, t % 2], -1)
        agents = TensorDict({"observation": obs, "action_mask": mask}, batch_size=[b, N_AGENTS])
        return TensorDict({"agents": agents, "state": state}, batch_size=[b])

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDict:
        b = self.batch_size[0]
        reset = None if tensordict is None else tensordict.get("_reset", None)
        ids = torch.ones(b, dtype=torch.bool) if reset is None else reset.reshape(b).bool()
        self.episode_index[ids] += 1
        self.t[ids] = 0
        out = self._observe()
        for key in ("done", "terminated", "truncated"):
            out.set(key, torch.zeros(b, 1, dtype=torch.bool))
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDict:
        b = self.batch_size[0]
        self.t += 1
        length = self._length()
        done = self.t >= length
        out = self._observe()
        out.set(("agents", "reward"), torch.ones(b, N_AGENTS, 1))
        out.set("done", done.unsqueeze(-1))
        out.set("terminated", (done & (length < LIMIT)).unsqueeze(-1))
        out.set("truncated", (done & (length >= LIMIT)).unsqueeze(-1))
        return out

    def _set_seed(self, seed: int | None) -> None:
        pass


class ScriptedTask(TaskClass):
    def get_env_fun(self, num_envs, continuous_actions, seed, device):
        return lambda: ScriptedEnv(num_envs)

    def supports_continuous_actions(self) -> bool:
        return False

    def supports_discrete_actions(self) -> bool:
        return True

    def has_render(self, env) -> bool:
        return False

    def max_steps(self, env) -> int:
        return LIMIT

    def group_map(self, env) -> dict:
        return {"agents": [f"agent_{i}" for i in range(N_AGENTS)]}

    def observation_spec(self, env) -> Composite:
        spec = env.full_observation_spec_unbatched.clone()
        del spec["state"]
        del spec[("agents", "action_mask")]
        return spec

    def action_mask_spec(self, env) -> Composite:
        spec = env.full_observation_spec_unbatched.clone()
        del spec["state"]
        del spec[("agents", "observation")]
        return spec

    def state_spec(self, env) -> Composite:
        spec = env.full_observation_spec_unbatched.clone()
        del spec["agents"]
        return spec

    def info_spec(self, env):
        return None

    def action_spec(self, env) -> Composite:
        return env.full_action_spec_unbatched

    @staticmethod
    def env_name() -> str:
        return "scripted"


def played(iterations: int) -> list[list[int]]:
    """Episode lengths played per iteration (one per env)."""
    return [[LENGTHS[i][k] for i in range(N_ENVS)] for k in range(iterations)]


class Recorder(Callback):
    """Records each learner call's outputs and the loss's frame counter."""

    def __init__(self):
        super().__init__()
        self.calls: list[dict] = []

    def on_train_end(self, training_td: TensorDictBase, group: str) -> None:
        loss = self.experiment.losses[group]
        record = {k: float(v.float().mean()) for k, v in training_td.items()}
        record.update(frames=int(loss.total_frames), episodes=int(self.experiment.episodes))
        self.calls.append(record)


def make_experiment(
    tmp_path, algorithm: str = "qmix_lambda", iterations: int = 6, callbacks=(), **regime: int
) -> EpisodeExperiment:
    cfg = compose_config(
        [
            f"algorithm={algorithm}",
            "task=matrix_game/nonmonotonic",  # only for composing; the task is ScriptedTask
            "experiment=pymarl2",
            f"experiment.max_n_iters={iterations}",
            "experiment.max_n_frames=null",
            f"experiment.off_policy_n_envs_per_worker={N_ENVS}",
            "experiment.loggers=[]",
            "experiment.create_json=False",
            "experiment.evaluation=False",
            "experiment.exploration_anneal_frames=1000",
            f"experiment.save_folder={tmp_path}",
        ]
    )
    settings = dict(
        name="episodes",
        buffer_episodes=10,
        batch_episodes=4,
        start_training_episodes=8,
        target_update_episodes=12,
    )
    settings.update(regime)
    algorithm_config = load_algorithm_config_from_hydra(cfg.algorithm)
    if hasattr(algorithm_config, "no_weighted_steps"):
        algorithm_config.no_weighted_steps = 40
    return EpisodeExperiment(
        task=ScriptedTask(name="scripted", config={}),
        algorithm_config=algorithm_config,
        model_config=load_model_config_from_hydra(cfg.model),
        critic_model_config=load_model_config_from_hydra(cfg.critic_model),
        seed=0,
        config=load_experiment_config_from_hydra(cfg.experiment),
        callbacks=list(callbacks),
        regime=RegimeConfig(**settings),
    )


# ----------------------------------------------------------------------------- layout
def test_episodes_from_rollout_layout():
    b, t, limit = 3, 4, 5
    obs = torch.arange(b * t, dtype=torch.float32).reshape(b, t, 1)
    done = torch.zeros(b, t, 1, dtype=torch.bool)
    done[0, 1] = True  # ends after 2 steps; TorchRL repeats the last step afterwards
    done[0, 2:] = True
    done[1, 3] = True  # ends after 4 steps
    # row 2 never ends within the rollout: cut as a time-out at its 4th step
    rollout = TensorDict(
        {
            "obs": obs,
            "next": {"obs": obs + 100, "done": done, "terminated": done.clone()},
        },
        batch_size=[b, t],
    )
    out = episodes_from_rollout(rollout, limit)
    assert out.shape == (b, limit + 1)
    valid = out.get(VALID_KEY).squeeze(-1)
    assert valid.sum(1).tolist() == [2, 4, 4]
    assert out.get("is_init").squeeze(-1)[:, 0].all() and not out.get("is_init")[:, 1:].any()
    # the slot after the last step holds its next observation; padding is zero
    assert out.get("obs")[0, :3].squeeze(-1).tolist() == [0.0, 1.0, 101.0]
    assert out.get("obs")[1, 4].item() == 107.0
    assert out.get("obs")[2, 4].item() == 111.0
    assert (out.get("obs")[0, 3:] == 0).all() and (out.get(("next", "done"))[0, 2:] == 0).all()
    # the cut row is a time-out: done (cuts the trace, bootstraps), not terminated
    assert out.get(("next", "done"))[2, 3].item() and not out.get(("next", "terminated"))[2, 3].item()
    assert truncate_to_longest(out).shape == (b, 5)


# --------------------------------------------------------------------------- schedule
def test_schedule_counts_real_steps_and_finished_episodes(tmp_path):
    recorder = Recorder()
    experiment = make_experiment(tmp_path, callbacks=[recorder], iterations=6)
    copies = []
    updater = experiment._episode_updaters["agents"]
    original = updater.step

    def counting_step():
        copies.append(experiment.episodes)
        original()

    updater.step = counting_step
    experiment.run()

    lengths = played(6)
    assert experiment.total_frames == sum(map(sum, lengths))
    assert experiment.episodes == 6 * N_ENVS
    # training starts once 8 episodes are stored: after iterations 2..6 (one call each)
    assert len(recorder.calls) == 4 and experiment.n_learner_calls == 4
    assert [c["episodes"] for c in recorder.calls] == [6, 9, 12, 15]
    # hard copies when 12 episodes have passed since the last one, checked after the call with
    # the counter before this iteration's episodes (pow_spec.md §7.4): at 12 only
    assert copies == [12]
    # the loss saw the real frame count (POW's warm-up and ε use it too)
    assert [c["frames"] for c in recorder.calls] == [
        sum(map(sum, lengths[: k + 1])) for k in range(2, 6)
    ]
    # ε counts real steps: 1 → 0.05 over 1000 frames
    eps = float(experiment._exploration_layers()["agents"].eps)
    assert eps == pytest.approx(1.0 - 0.95 * experiment.total_frames / 1000, abs=1e-5)

    buffer = experiment.replay_buffers["agents"]
    assert len(buffer) == 10  # the last 10 of 18 episodes
    stored = buffer.storage.get(torch.arange(10))
    stored_lengths = sorted(stored.get(VALID_KEY).squeeze(-1).sum(1).tolist())
    last_ten = [x for row in lengths[2:] for x in row][-10:]
    assert stored_lengths == sorted(last_ten)
    sample = buffer.sample()
    assert sample.shape[0] == 4
    valid = sample.get(VALID_KEY).squeeze(-1)
    assert sample.shape[1] == int(valid.sum(1).max()) + 1  # cut after the longest episode
    assert sample.get("is_init").squeeze(-1)[:, 0].all()
    assert not sample.get("is_init").squeeze(-1)[:, 1:].any()
    # every sampled row starts an episode: its first observation has t = 0
    assert (sample.get(("agents", "observation"))[:, 0, 0, 0] == 0).all()
    # valid steps form a prefix
    assert (valid.long().cummin(1).values == valid.long()).all()


def test_distinct_episodes_per_batch(tmp_path):
    experiment = make_experiment(tmp_path, iterations=4)
    experiment.run()
    buffer = experiment.replay_buffers["agents"]
    for _ in range(20):
        index, _ = buffer.sampler.sample(buffer.storage, 4)
        assert len(set(index.tolist())) == 4


def test_episode_schedule_of_the_preset():
    cfg = compose_config(["algorithm=pow_qmix", "task=predator_prey/punish_4", "experiment=pymarl2"])
    assert cfg.regime.name == "episodes"
    assert (cfg.regime.buffer_episodes, cfg.regime.batch_episodes) == (5000, 128)
    assert (cfg.regime.start_training_episodes, cfg.regime.target_update_episodes) == (128, 200)
    assert cfg.model.name == "rnn_agent" and cfg.experiment.adam_eps == 1e-8
    assert cfg.experiment.off_policy_n_envs_per_worker == 8
    base = compose_config(["algorithm=pow_qmix", "task=predator_prey/punish_4"])
    assert base.regime.name == "frames"
    chosen = compose_config(
        ["algorithm=pow_qmix", "task=predator_prey/punish_4", "experiment=pymarl2", "model=layers/gru"]
    )
    assert chosen.model.name == "gru"


def test_epsilon_schedule_in_real_frames(tmp_path):
    experiment = make_experiment(tmp_path, iterations=1)
    layer = experiment._exploration_layers()["agents"]
    layer.annealing_num_steps = 500_000
    layer.eps.fill_(1.0)
    seen = []
    total = 0
    for frames in (100_000, 150_000, 250_000, 100_000):
        seen.append(round(float(layer.eps), 6))
        layer.step(frames)
        total += frames
    seen.append(round(float(layer.eps), 6))
    assert seen == [1.0, 0.81, 0.525, 0.05, 0.05]


def test_recognition_steps_per_call_and_warm_up(tmp_path):
    recorder = Recorder()
    experiment = make_experiment(tmp_path, algorithm="pow_qmix", callbacks=[recorder], iterations=6)
    optimizer = experiment.optimizers["agents"]["loss_recognition"]
    steps = []
    original = optimizer.step

    def counting_step(*args, **kwargs):
        steps.append(experiment.n_learner_calls)
        return original(*args, **kwargs)

    optimizer.step = counting_step
    experiment.run()
    # 20 Q_r steps in the first learner call, 10 in each later one; none by BenchMARL's loop
    counts = [steps.count(k) for k in range(experiment.n_learner_calls)]
    assert counts == [20, 10, 10, 10]
    # unweighted while the real frame count is <= no_weighted_steps (40), weighted afterwards
    for call in recorder.calls:
        if call["frames"] <= 40:
            assert call["mean_weight"] == 1.0
        else:
            alpha = experiment.losses["agents"].rule.alpha
            fraction = call["fraction_in_recognition_set"]
            expected = fraction + alpha * (1 - fraction)
            assert call["mean_weight"] == pytest.approx(expected, abs=1e-5)
    assert any(c["frames"] <= 40 for c in recorder.calls)
    assert any(c["frames"] > 40 for c in recorder.calls)


# -------------------------------------------------------------- padding and recurrence
def _loss_and_grads(loss, batch) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One learner call's outputs and gradients, leaving the loss (and Q_r's optimiser) as they
    were. No deepcopy: a copied TorchRL loss no longer trains the parameters it lists."""
    tensors = [*loss.parameters(), *loss.buffers()]
    state = [t.detach().clone() for t in tensors]
    optimizer = getattr(loss, "recognition_optimizer", None)
    opt_state = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    loss.zero_grad(set_to_none=True)
    out = loss(batch.clone())
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in loss.named_parameters() if p.grad is not None}
    loss.zero_grad(set_to_none=True)
    with torch.no_grad():
        for tensor, saved in zip(tensors, state):
            tensor.copy_(saved)
    if optimizer is not None:
        optimizer.load_state_dict(opt_state)
    assert grads, "no gradient reached the loss's parameters"
    return {k: float(v) for k, v in out.items()}, grads


@pytest.mark.parametrize("algorithm", ["qmix_lambda", "pow_qmix", "resq"])
def test_padding_changes_nothing(tmp_path, algorithm):
    experiment = make_experiment(tmp_path, algorithm=algorithm, iterations=3)
    experiment.run()
    buffer = experiment.replay_buffers["agents"]
    padded = buffer.storage.get(torch.arange(4))  # stored rows: full length L + 1
    keys = buffer._transform[0].shifted_keys
    short = restore_next(truncate_to_longest(padded).clone(), keys)
    extra = padded[:, -1:].expand(padded.shape[0], 3).clone().zero_()  # 3 more padding slots
    long = restore_next(torch.cat([padded, extra], 1), keys)
    assert long.shape[1] > short.shape[1]
    loss = experiment.losses["agents"]
    loss.train()
    out_short, grads_short = _loss_and_grads(loss, short)
    out_long, grads_long = _loss_and_grads(loss, long)
    for key, value in out_short.items():
        assert out_long[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    for name, grad in grads_short.items():
        torch.testing.assert_close(grads_long[name], grad, rtol=1e-5, atol=1e-6)


def test_recurrence_each_episode_alone(tmp_path):
    """The batch loss is the frame-weighted mean of each episode's loss computed alone."""
    experiment = make_experiment(tmp_path, algorithm="qmix_lambda", iterations=3)
    experiment.run()
    buffer = experiment.replay_buffers["agents"]
    keys = buffer._transform[0].shifted_keys
    rows = restore_next(buffer.storage.get(torch.arange(4)).clone(), keys)
    loss = experiment.losses["agents"]
    together = float(loss(rows.clone())["loss"])
    lengths = rows.get(VALID_KEY).squeeze(-1).sum(1).float()
    alone = torch.tensor([float(loss(rows[i : i + 1].clone())["loss"]) for i in range(4)])
    assert together == pytest.approx(float((alone * lengths).sum() / lengths.sum()), rel=1e-5)
    # and a row is unaffected by what its neighbours hold
    shuffled = torch.cat([rows[1:], rows[:1]])
    assert float(loss(shuffled.clone())["loss"]) == pytest.approx(together, rel=1e-5)


# ------------------------------------------------------------------ agent input sizes
@pytest.mark.parametrize(
    "task, obs_dim, params",
    [
        ("predator_prey/punish_4", 81, 30_598),
        ("highway/intersection", 37, 27_587),
        ("matrix_game/nonmonotonic", 4, 25_475),
    ],
)
def test_agent_input_and_parameter_counts(tmp_path, task, obs_dim, params):
    """PyMARL's agent input (§1.5) and the agent RNN's parameter count of §3.6.4."""
    experiment = compose_experiment(
        [
            "algorithm=pow_qmix",
            f"task={task}",
            "experiment=smoke",
            "model=rnn_agent",
            "experiment.loggers=[]",
            "experiment.create_json=False",
            "experiment.evaluation=False",
        ],
        save_folder=tmp_path,
        callbacks=[],
    )
    assert experiment.algorithm.observation_spec["agents", "observation"].shape[-1] == obs_dim
    assert sum(p.numel() for p in experiment.policy.parameters()) == params
    reset = experiment.test_env.reset()
    assert reset.get(("agents", "observation")).shape[-1] == obs_dim


def test_episode_regime_on_a_non_batched_env(tmp_path):
    """BenchMARL wraps the intersection (one env per process) in a SerialEnv: finished envs are
    not stepped (partial steps) while the agent-input transform widens the observation."""
    experiment = compose_experiment(
        [
            "algorithm=qmix_lambda",
            "task=highway/intersection",
            "experiment=intersection",
            "experiment.max_n_iters=1",
            "experiment.max_n_frames=null",
            "experiment.off_policy_n_envs_per_worker=3",
            "experiment.exploration_eps_init=1.0",
            "experiment.exploration_eps_end=1.0",
            "regime.start_training_episodes=3",
            "regime.batch_episodes=3",
            "experiment.loggers=[]",
            "experiment.create_json=False",
            "experiment.evaluation=False",
        ],
        save_folder=tmp_path,
        callbacks=[],
    )
    experiment.run()
    rows = experiment.replay_buffers["agents"].sample()
    lengths = rows.get(VALID_KEY).squeeze(-1).sum(1)
    assert experiment.total_frames == int(lengths.sum()) and experiment.n_learner_calls == 1
    assert rows.get(("agents", "observation")).shape[-1] == 37
