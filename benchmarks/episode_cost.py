"""Cost per 1,600 real frames of the frame-counted and the episode regime (issue: the paper's regime).

``pow_qmix`` and ``qmix_lambda`` on ``predator_prey/punish_4`` with ``model=rnn_agent``, in one
process on one CPU thread, for two episode-length profiles: every episode 200 steps (a passive or
untrained policy) and a mean of 60 steps (lengths uniform in [20, 100], as when POW captures).

* ``frames`` (before: BenchMARL's loop with the old ``pymarl2`` numbers): 1,600 collected frames
  (8 envs x 200 steps) and one learner call on 128 chunks of 200 steps, whatever the episodes.
* ``episodes`` (after: ``regime=episodes``): 1,600 / (8·L̄) iterations per 1,600 real frames, each
  a rollout until the longest of 8 episodes ends and one learner call on 128 whole episodes cut
  after the longest one (PyMARL2 cuts the same way).

Learner calls run the algorithm's real loss, backward and optimiser step(s) on synthetic batches in
the episode layout; collection cost is the measured time of one policy + env step of 8 envs times
the number of steps. ``uncut`` is the same learner call on the full 201-slot rows, i.e. what the
call would cost if padding were not cut (PyMARL2's own pads to the batch's longest episode, like
``episodes``).

    OMP_NUM_THREADS=1 python benchmarks/episode_cost.py [--calls 2]
"""

from __future__ import annotations

import argparse
import time
from tempfile import mkdtemp

import torch
from tensordict import TensorDict

from benchmarl_pow.compose import compose_experiment
from benchmarl_pow.episodes.layout import restore_next, truncate_to_longest

B, L, N_AGENTS, N_ACTIONS, OBS, STATE, N_ENVS = 128, 200, 8, 6, 81, 300, 8


def episode_batch(lengths: torch.Tensor, seed: int = 0) -> TensorDict:
    """``[B, L + 1]`` rows in the episode layout with the given lengths (time-outs at 200)."""
    g = torch.Generator().manual_seed(seed)
    b, t = lengths.numel(), L + 1
    steps = torch.arange(t).unsqueeze(0)
    valid = steps < lengths.unsqueeze(1)  # [B, T]
    present = steps <= lengths.unsqueeze(1)  # real steps and the final-observation slot
    obs = (torch.rand(b, t, N_AGENTS, OBS, generator=g) < 0.1).float() * present[..., None, None]
    state = (torch.rand(b, t, STATE, generator=g) < 0.1).float() * present[..., None]
    done = (steps == (lengths - 1).unsqueeze(1)).unsqueeze(-1)
    terminated = done & (lengths < L).view(b, 1, 1)
    is_init = (steps == 0).expand(b, t).unsqueeze(-1)
    td = TensorDict(
        {
            "agents": TensorDict(
                {
                    "observation": obs,
                    "action": torch.randint(0, N_ACTIONS, (b, t, N_AGENTS), generator=g) * valid[..., None],
                    "action_mask": torch.ones(b, t, N_AGENTS, N_ACTIONS, dtype=torch.bool),
                },
                batch_size=[b, t, N_AGENTS],
            ),
            "state": state,
            "is_init": is_init,
            "valid": valid.unsqueeze(-1),
            "next": {
                "reward": torch.randn(b, t, 1, generator=g) * valid.unsqueeze(-1),
                "done": done,
                "terminated": terminated,
            },
        },
        batch_size=[b, t],
    )
    return restore_next(td, [("agents", "observation"), ("agents", "action_mask"), "state"])


def learner_seconds(experiment, batch: TensorDict, calls: int) -> float:
    loss = experiment.losses["agents"]
    optimizers = experiment.optimizers["agents"]
    loss.attach_optimizers(optimizers)
    loss.total_frames = 10**9  # past POW's warm-up: the weighted loss
    best = float("inf")
    for _ in range(calls + 1):  # the first call warms up (and runs 20 Q_r steps)
        start = time.perf_counter()
        out = experiment.algorithm.process_loss_vals("agents", loss(batch.clone()))
        for name, value in out.items():
            if name in optimizers:
                value.backward()
                experiment._grad_clip(optimizers[name])
                optimizers[name].step()
                optimizers[name].zero_grad()
        best = min(best, time.perf_counter() - start)
    return best


def step_seconds(experiment, steps: int = 50) -> float:
    """One policy + env step of the experiment's 8 training envs."""
    env = experiment.rollout_env
    td = env.reset()
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            _, td = env.step_and_maybe_reset(experiment.policy(td))
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2, help="timed learner calls (best of)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    profiles = {
        "200-step episodes": torch.full((B,), L),
        "mean 60 steps": torch.randint(20, 101, (B,), generator=g),
    }
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for algorithm in ("qmix_lambda", "pow_qmix"):
        experiment = compose_experiment(
            [
                f"algorithm={algorithm}",
                "task=predator_prey/punish_4",
                "experiment=pymarl2",
                "experiment.loggers=[]",
                "experiment.create_json=False",
                "experiment.evaluation=False",
                "experiment.checkpoint_interval=0",  # (pymarl2 checkpoints: not timed here)
            ],
            save_folder=mkdtemp(),
            callbacks=[],
        )
        policy_step = step_seconds(experiment)
        for name, lengths in profiles.items():
            mean = float(lengths.float().mean())
            rows = episode_batch(lengths)
            cut = truncate_to_longest(rows)
            t_cut = learner_seconds(experiment, cut, args.calls)
            t_uncut = learner_seconds(experiment, rows, args.calls)
            # before: chunks of 200 steps, one call per 1,600 frames (same cost as the full rows)
            before = 1600 * policy_step / N_ENVS + t_uncut
            # after: one rollout (until the longest of 8 episodes) + one call per 8 episodes
            iterations = 1600 / (N_ENVS * mean)
            longest_of_8 = float(lengths[:N_ENVS].max())
            after = iterations * (longest_of_8 * policy_step + t_cut)
            print(
                f"{algorithm:12s} {name:18s} L̄={mean:5.1f}  learner call: cut [128x{cut.shape[1]}] "
                f"{t_cut:6.2f} s, uncut [128x{rows.shape[1]}] {t_uncut:6.2f} s | per 1,600 real "
                f"frames: frames regime {before:6.2f} s, episode regime {after:6.2f} s "
                f"({iterations:.2f} learner calls)"
            )
        experiment.close()


if __name__ == "__main__":
    main()
