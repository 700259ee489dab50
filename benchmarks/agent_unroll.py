"""Forward+backward cost of one training unroll of the agent network, BenchMARL ``layers/gru`` vs ``rnn_agent``.

The unroll is the one our recurrent losses make per learner call (benchmarl_pow/objectives/sequence.py):
chunks ``[128, 201]`` (200 stored steps + the next observation), 8 agents, 75-dim observations,
hidden 64, 6 actions, one episode boundary inside each chunk. Each model runs on one CPU thread in
training mode (no hidden state in the td), then ``backward`` of a random projection of its output.
Printed per model: seconds per forward+backward, analytic matmul FLOPs (2·M·K·N forward, twice that
backward) and the achieved GFLOP/s, with its ratio to the same process's rate for a plain
25,600 x 348 x 128 float32 matmul. Other processes may share the CPU, so every figure is the best
(minimum time) of several runs, and the reference is measured before each model and after the
last one; the ratio uses the best reference rate.

    OMP_NUM_THREADS=1 python benchmarks/agent_unroll.py [--repeats 5] [--skip-gru] [--profile]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from benchmarl.models import GruConfig
from tensordict import TensorDict
from torchrl.data import Categorical, Composite, Unbounded

from benchmarl_pow.models import RnnAgentConfig

B, T, N_AGENTS, OBS, HIDDEN, N_ACTIONS = 128, 201, 8, 75, 64, 6
GROUP = "agents"


def best_seconds(fn, repeats: int) -> float:
    """Minimum wall time of ``repeats`` calls of ``fn`` (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def reference_matmul_gflops(repeats: int = 20) -> float:
    a, b = torch.randn(25_600, 348), torch.randn(348, 128)
    return 2 * 25_600 * 348 * 128 / best_seconds(lambda: a @ b, repeats) / 1e9


def build(model_config):
    return model_config.get_model(
        input_spec=Composite(
            {GROUP: Composite({"observation": Unbounded(shape=(N_AGENTS, OBS))}, shape=(N_AGENTS,))}
        ),
        output_spec=Composite(
            {GROUP: Composite({"action_value": Unbounded(shape=(N_AGENTS, N_ACTIONS))}, shape=(N_AGENTS,))}
        ),
        agent_group=GROUP,
        input_has_agent_dim=True,
        n_agents=N_AGENTS,
        centralised=False,
        share_params=True,
        device="cpu",
        action_spec=Composite(
            {GROUP: Composite({"action": Categorical(N_ACTIONS, shape=(N_AGENTS,))}, shape=(N_AGENTS,))}
        ),
    )


def batch(seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    is_init = torch.zeros(B, T, 1, dtype=torch.bool)
    is_init[:, 0] = True
    is_init[torch.arange(B), torch.randint(1, T, (B,), generator=g)] = True
    obs = (torch.rand(B, T, N_AGENTS, OBS, generator=g) < 0.1).float()
    return TensorDict({GROUP: {"observation": obs}, "is_init": is_init}, batch_size=[B, T])


def dense_flops(*dims: int) -> int:
    return sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))


def forward_flops(name: str, config) -> int:
    rows = B * T * N_AGENTS
    if name.strip() == "rnn_agent":
        gru_in = config.input_embed if config.input_embed > 0 else OBS
        embed = dense_flops(OBS, config.input_embed) if config.input_embed > 0 else 0
        per_row = embed + dense_flops(gru_in, 3 * HIDDEN) + dense_flops(HIDDEN, 3 * HIDDEN) + dense_flops(HIDDEN, N_ACTIONS)
    else:
        per_row = dense_flops(OBS, 3 * HIDDEN) + dense_flops(HIDDEN, 3 * HIDDEN)
        per_row += dense_flops(HIDDEN, *config.mlp_num_cells, N_ACTIONS)
    return rows * per_row


def time_model(model, td: TensorDict, repeats: int) -> float:
    weights = torch.randn(B, T, N_AGENTS, N_ACTIONS)

    def step():
        out = model(td.clone(False)).get((GROUP, "action_value"))
        (out * weights).sum().backward()

    return best_seconds(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model (best is kept)")
    parser.add_argument("--skip-gru", action="store_true", help="time rnn_agent only")
    parser.add_argument("--profile", action="store_true", help="torch.profiler table of one rnn_agent call")
    args = parser.parse_args()

    torch.manual_seed(0)
    td = batch()
    gru = GruConfig.get_from_yaml()  # BenchMARL's yaml: GRU, then an MLP [256, 256]
    gru.hidden_size = HIDDEN
    gru_small = dataclasses.replace(gru, mlp_num_cells=[])  # GRU(75→64), then Linear(64→6)
    configs = {"layers/gru": gru, "layers/gru ": gru_small, "rnn_agent": RnnAgentConfig.get_from_yaml()}
    if args.skip_gru:
        configs = {"rnn_agent": configs["rnn_agent"]}

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, chunks [{B}, {T}] x {N_AGENTS} agents, "
          f"obs {OBS}, hidden {HIDDEN}, actions {N_ACTIONS}")
    references = [reference_matmul_gflops()]
    results = {}
    for name, config in configs.items():
        model = build(config)
        repeats = args.repeats if name == "rnn_agent" else 2
        results[name] = (config, time_model(model, td, repeats))
        references.append(reference_matmul_gflops())
    reference = max(references)
    print("reference matmul 25600x348x128: " + ", ".join(f"{r:.1f}" for r in references)
          + f" GFLOP/s (best {reference:.1f})")
    for name, (config, seconds) in results.items():
        gflop = 3 * forward_flops(name, config) / 1e9
        rate = gflop / seconds
        extra = f" (mlp {list(config.mlp_num_cells)})" if name.startswith("layers/gru") else ""
        print(f"{name.strip() + extra:>26}: {seconds:.3f} s fwd+bwd, {gflop:.1f} GFLOP, {rate:.1f} GFLOP/s, "
              f"{rate / reference:.0%} of the reference matmul")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        model = build(configs["rnn_agent"])
        weights = torch.randn(B, T, N_AGENTS, N_ACTIONS)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = model(td.clone(False)).get((GROUP, "action_value"))
            (out * weights).sum().backward()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
