"""Cost of one learner call of ``pow_qmix`` and ``qmix_lambda`` in the paper's predator-prey regime.

A synthetic batch shaped like PyMARL2's (128 episodes x 200 steps, 8 agents, 6 actions, 75-dim
observations, 300-dim state, PyMARL's agent Linear 64 → GRU 64 → Linear, our ``model=rnn_agent``)
goes through each algorithm's real loss, backward pass and
optimiser step(s), timed back to back in one process on one CPU thread. Printed per call: seconds,
the analytic FLOP count (matmuls only: 2·M·K·N forward, twice that backward), the achieved GFLOP/s
and its ratio to the same process's rate for a plain 25,600 x 348 x 128 float32 matmul.

    OMP_NUM_THREADS=1 python benchmarks/update_cost.py [--calls 3] [--fraction 0.1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from tempfile import mkdtemp

import torch
from agent_unroll import reference_matmul_gflops  # same reference as the agent benchmark
from tensordict import TensorDict

from benchmarl_pow.compose import compose_experiment

B, T, N_AGENTS, N_ACTIONS, OBS, STATE, HIDDEN = 128, 200, 8, 6, 75, 300, 64


def synthetic_batch(seed: int = 0, aligned: bool = False) -> TensorDict:
    """Chunks ``[B, T]`` of 200-step episodes.

    ``aligned=False``: one episode boundary at a random step of every chunk, 70 % of them time-limit
    truncations (episodes drift out of phase with the chunks once some terminate early; the
    truncations inside a chunk make the loss re-run those prefixes). ``aligned=True``: each chunk
    is one whole episode truncated at its last step (PyMARL2's regime before any early
    termination; no re-runs needed).
    """
    g = torch.Generator().manual_seed(seed)
    obs = (torch.rand(B, T, N_AGENTS, OBS, generator=g) < 0.1).float()
    next_obs = torch.cat([obs[:, 1:], (torch.rand(B, 1, N_AGENTS, OBS, generator=g) < 0.1).float()], 1)
    state = (torch.rand(B, T, STATE, generator=g) < 0.1).float()
    next_state = torch.cat([state[:, 1:], (torch.rand(B, 1, STATE, generator=g) < 0.1).float()], 1)
    boundary = torch.full((B,), T) if aligned else torch.randint(1, T, (B,), generator=g)
    done = torch.zeros(B, T, 1, dtype=torch.bool)
    done[torch.arange(B), boundary - 1] = True
    # the rest are time-outs (all of them when aligned)
    terminated = done & (torch.rand(B, 1, 1, generator=g) < (0.0 if aligned else 0.3))
    is_init = torch.zeros(B, T, 1, dtype=torch.bool)
    is_init[:, 0] = True
    if not aligned:
        is_init[torch.arange(B), boundary] = True
    mask = torch.ones(B, T, N_AGENTS, N_ACTIONS, dtype=torch.bool)
    return TensorDict(
        {
            "agents": {
                "observation": obs,
                "action": torch.randint(0, N_ACTIONS, (B, T, N_AGENTS), generator=g),
                "action_mask": mask,
            },
            "state": state,
            "is_init": is_init,
            "next": {
                "agents": {"observation": next_obs, "action_mask": mask.clone()},
                "state": next_state,
                "reward": torch.randn(B, T, 1, generator=g),
                "done": done,
                "terminated": terminated,
            },
        },
        batch_size=[B, T],
    )


def linear_flops(*dims: int) -> int:
    """Forward FLOPs per sample of an MLP with layer widths ``dims``."""
    return sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))


def analytic_gflops(algorithm: str, fraction: float = 1.0, steps: int = 10) -> float:
    """Matmul FLOPs of one learner call (forward x1, backward x2), in GFLOP."""
    samples, agent_steps = B * T, B * (T + 1) * N_AGENTS
    # per agent-step: Linear(75→64), GRU input and hidden projections (64→192 each), Linear(64→6)
    gru = 2 * (OBS * HIDDEN + 3 * HIDDEN * HIDDEN + 3 * HIDDEN * HIDDEN + HIDDEN * N_ACTIONS)
    qmix_mixer = (
        linear_flops(STATE, 64, N_AGENTS * 32) + linear_flops(STATE, 32)
        + linear_flops(STATE, 64, 32) + linear_flops(STATE, 32, 1) + 2 * N_AGENTS * 32 + 2 * 32
    )
    flops = 3 * gru * agent_steps + 3 * qmix_mixer * samples  # online agents + Q_tot, trained
    if algorithm == "qmix_lambda":
        flops += gru * agent_steps + qmix_mixer * samples  # target agents + target mixer
        return flops / 1e9
    central = linear_flops(STATE + N_AGENTS, 64, 64, 64, 1) + linear_flops(STATE, 64, 1)
    flops += 3 * gru * B * T * N_AGENTS + 3 * central * samples  # central Q*, trained
    flops += gru * agent_steps + central * samples  # target central Q*
    x = STATE + N_AGENTS * N_ACTIONS
    q_r = (
        linear_flops(x, 128, 128, 64 * N_AGENTS) + linear_flops(x, 128, 128, 64)
        + linear_flops(STATE, 128, 128, 1) + 2 * N_AGENTS * 64
    )
    flops += steps * 3 * q_r * samples * fraction + q_r * samples  # Q_r steps + the weights
    return flops / 1e9


def build(algorithm: str, fraction: float):
    overrides = [
        f"algorithm={algorithm}", "task=predator_prey/punish_4", "experiment=pymarl2",
        "model=rnn_agent", f"model.hidden_size={HIDDEN}", f"model.input_embed={HIDDEN}",
        "experiment.loggers=[]", "experiment.evaluation=False", "experiment.create_json=False",
        "experiment.checkpoint_interval=0",
    ]
    if algorithm.startswith("pow"):
        overrides.append(f"algorithm.recognition_batch_fraction={fraction}")
    experiment = compose_experiment(overrides, save_folder=Path(mkdtemp()), callbacks=[])
    return experiment


def learner_call(experiment, batch: TensorDict) -> None:
    """What BenchMARL does per optimiser step, minus replay sampling."""
    group = "agents"
    batch = experiment.algorithm.process_batch(group, batch)
    loss_vals = experiment.algorithm.process_loss_vals(group, experiment.losses[group](batch))
    for name, value in loss_vals.items():
        if name in experiment.optimizers[group]:
            optimizer = experiment.optimizers[group][name]
            value.backward()
            experiment._grad_clip(optimizer)
            optimizer.step()
            optimizer.zero_grad()
    experiment.target_updaters[group].step()


def time_calls(algorithm: str, calls: int, fraction: float = 1.0, aligned: bool = False) -> float:
    experiment = build(algorithm, fraction)
    batch = synthetic_batch(aligned=aligned)
    learner_call(experiment, batch)  # warm-up (POW's first call makes 20 Q_r steps)
    start = time.perf_counter()
    for _ in range(calls):
        learner_call(experiment, batch)
    seconds = (time.perf_counter() - start) / calls
    experiment.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3, help="timed calls per algorithm")
    parser.add_argument("--fraction", type=float, default=0.1,
                        help="recognition_batch_fraction of the extra POW run")
    parser.add_argument("--aligned", action="store_true",
                        help="chunks = whole episodes (no truncation inside a chunk)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    reference = reference_matmul_gflops()
    rows = []
    for algorithm, fraction in (("qmix_lambda", 1.0), ("pow_qmix", 1.0), ("pow_qmix", args.fraction)):
        seconds = time_calls(algorithm, args.calls, fraction, args.aligned)
        gflop = analytic_gflops(algorithm, fraction)
        rows.append((algorithm, fraction, seconds, gflop, gflop / seconds))
    reference_after = reference_matmul_gflops()
    reference = max(reference, reference_after)

    layout = "aligned with episodes" if args.aligned else "one random episode boundary each"
    print(f"\nbatch: {B} chunks x {T} steps, {layout}")
    print(f"reference matmul 25600x348x128 fp32, 1 thread: {reference:.1f} GFLOP/s")
    print(f"{'algorithm':<12} {'Q_r frac':>8} {'s/call':>8} {'GFLOP':>8} {'GFLOP/s':>8} {'of ref':>7}")
    for algorithm, fraction, seconds, gflop, rate in rows:
        label = f"{fraction:.2f}" if algorithm.startswith("pow") else "-"
        print(f"{algorithm:<12} {label:>8} {seconds:8.2f} {gflop:8.1f} {rate:8.1f} {rate / reference:7.0%}")
    pow_full = rows[1][2]
    print(f"\npow_qmix / qmix_lambda cost: {pow_full / rows[0][2]:.2f}x; "
          f"fraction {args.fraction} vs 1.0: {rows[2][2] / pow_full:.2f}x")


if __name__ == "__main__":
    main()
