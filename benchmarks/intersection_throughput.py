"""Throughput of the highway-env intersection task (env steps per second, random actions).

Rows:
* ``sim only``: :class:`custom_envs.intersection_sim.PowIntersectionEnv` stepped directly (physics,
  reward and the 30-value observation/60-value state, no TorchRL);
* ``TorchRL, 1 process``: :class:`HighwayIntersectionEnv` through ``env.rollout`` (random actions,
  the full TorchRL step incl. observation, state, flags and auto-reset);
* ``TorchRL ParallelEnv, 2 workers``: what BenchMARL's ``experiment.parallel_collection`` builds,
  a ``ParallelEnv`` of 2 envs; steps summed across the workers, worker start-up excluded;
* ``stock intersection-multi-agent-v1``: upstream highway-env's multi-agent intersection (its
  defaults: 15 Hz simulation / 1 Hz policy, background traffic, pandas ``Kinematics`` observation),
  for reference; one step there is one policy step (15 simulation frames).

Run ``OMP_NUM_THREADS=1 python benchmarks/intersection_throughput.py [--steps N] [--no-parallel]``.
``intersection_rows()`` returns the rows as dicts (keys ``name``, ``steps``, ``seconds``,
``steps_per_s``) for ``benchmarks/env_throughput.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

if __package__ in (None, ""):  # run as a script from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _row(name: str, steps: int, seconds: float) -> dict:
    return {"name": name, "steps": steps, "seconds": seconds, "steps_per_s": steps / seconds}


def bench_sim(steps: int, seed: int = 0) -> dict:
    from custom_envs.intersection_sim import PowIntersectionEnv

    env = PowIntersectionEnv()
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(rng.integers(0, 3, env.n_vehicles))
        if terminated or truncated:
            env.reset()
    return _row("sim only (PowIntersectionEnv, no TorchRL)", steps, time.perf_counter() - start)


def bench_torchrl(steps: int, seed: int = 0) -> dict:
    from custom_envs.intersection import HighwayIntersectionEnv

    env = HighwayIntersectionEnv(seed=seed)
    env.rollout(50, break_when_any_done=False)  # warm-up
    start = time.perf_counter()
    env.rollout(steps, break_when_any_done=False)
    seconds = time.perf_counter() - start
    env.close()
    return _row("TorchRL HighwayIntersectionEnv, 1 process", steps, seconds)


def bench_parallel(steps: int, workers: int = 2, seed: int = 0) -> dict:
    from torchrl.envs import ParallelEnv

    from custom_envs.intersection import HighwayTask

    task = HighwayTask.INTERSECTION.get_from_yaml()
    env = ParallelEnv(workers, task.get_env_fun(workers, False, seed, "cpu"))
    try:
        env.rollout(20, break_when_any_done=False)  # starts the workers; excluded from the timing
        start = time.perf_counter()
        env.rollout(steps, break_when_any_done=False)
        seconds = time.perf_counter() - start
    finally:
        env.close()
    return _row(f"TorchRL ParallelEnv, {workers} workers (summed)", steps * workers, seconds)


def bench_stock(steps: int, seed: int = 0) -> dict:
    import gymnasium as gym
    import highway_env  # noqa: F401  (registers the envs)

    env = gym.make("intersection-multi-agent-v1")
    env.reset(seed=seed)
    env.action_space.seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    seconds = time.perf_counter() - start
    env.close()
    return _row("stock highway-env intersection-multi-agent-v1", steps, seconds)


def intersection_rows(
    steps: int = 2000, parallel: bool = True, stock_steps: int = 100
) -> list[dict]:
    """Measure every row (see the module docstring); ``steps`` per measurement."""
    torch.set_num_threads(1)
    rows = [bench_sim(steps), bench_torchrl(steps)]
    if parallel:
        rows.append(bench_parallel(steps // 2))
    rows.append(bench_stock(stock_steps))
    return rows


def format_rows(rows: list[dict]) -> str:
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'highway/intersection':<{width}}  {'steps':>7}  {'seconds':>8}  {'steps/s':>9}"]
    for r in rows:
        lines.append(
            f"{r['name']:<{width}}  {r['steps']:>7d}  {r['seconds']:>8.2f}  {r['steps_per_s']:>9.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--stock-steps", type=int, default=100)
    parser.add_argument("--no-parallel", action="store_true")
    args = parser.parse_args(argv)
    rows = intersection_rows(args.steps, not args.no_parallel, args.stock_steps)
    print(format_rows(rows))


if __name__ == "__main__":
    main()
