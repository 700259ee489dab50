"""Environment throughput: env steps per second with random available actions.

One env step = every agent of one environment acts once. For each batch size the table shows

* ``steps/s``: batched steps per second of the full TorchRL loop as a collector runs it
  (``random available actions -> env.step_and_maybe_reset``: the step, observation / state / action
  mask construction, ``step_mdp`` and partial resets of finished environments);
* ``env-steps/s``: ``steps/s`` times the batch size;
* ``raw _step env-steps/s``: the env's own ``_step`` alone (rules + observation building, no TorchRL
  wrapping, fixed pre-drawn actions).

Each figure is the best of 3 timing windows (the machines are shared and noisy). Run

    OMP_NUM_THREADS=1 python benchmarks/env_throughput.py [--device cuda] [--batch-sizes 1 64 ...]

``predator_prey_rows(batch_sizes, device)`` returns the rows as dicts, so other environments (e.g.
the intersection task, see ``benchmarks/intersection_throughput.py``) can add their own section to
:func:`main`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

if __package__ in (None, ""):  # run as a script from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

DEFAULT_BATCH_SIZES = (1, 4, 16, 64, 256, 1024, 4096)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_rate(run_steps, device: torch.device, window_s: float, repeats: int = 3) -> float:
    """Best steps/s over ``repeats`` windows of at least ``window_s`` seconds."""
    best = 0.0
    n = 2
    for _ in range(repeats):
        while True:
            _sync(device)
            start = time.perf_counter()
            run_steps(n)
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= window_s:
                break
            n = max(n * 2, int(n * window_s / max(elapsed, 1e-6) * 1.1))
        best = max(best, n / elapsed)
    return best


def predator_prey_rows(
    batch_sizes=DEFAULT_BATCH_SIZES, device: str | torch.device = "cpu", window_s: float = 0.3
) -> list[dict]:
    """Throughput rows of :class:`custom_envs.predator_prey.PredatorPreyEnv` (stag hunt, 8 agents).

    Returns one dict per batch size with keys ``batch``, ``steps_per_s``, ``env_steps_per_s`` and
    ``raw_env_steps_per_s``.
    """
    from custom_envs.predator_prey import PredatorPreyEnv, random_available_actions

    device = torch.device(device)
    rows = []
    for batch in batch_sizes:
        env = PredatorPreyEnv(batch, seed=0, miscapture_punishment=-4.0, device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        state = {"td": env.reset()}

        def full(n: int, env=env, gen=gen, state=state) -> None:
            td = state["td"]
            for _ in range(n):
                td["agents", "action"] = random_available_actions(td["agents", "action_mask"], gen)
                _, td = env.step_and_maybe_reset(td)
            state["td"] = td

        full(3)
        full_rate = _best_rate(full, device, window_s)

        td = env.reset()
        actions = [
            random_available_actions(td["agents", "action_mask"], gen).clone() for _ in range(4)
        ]

        def raw(n: int, env=env, td=td, actions=actions) -> None:
            for i in range(n):
                td.set(("agents", "action"), actions[i % 4])
                env._step(td)

        raw(3)
        raw_rate = _best_rate(raw, device, window_s)
        rows.append(
            {
                "batch": batch,
                "steps_per_s": full_rate,
                "env_steps_per_s": full_rate * batch,
                "raw_env_steps_per_s": raw_rate * batch,
            }
        )
    return rows


def format_predator_prey(rows: list[dict]) -> str:
    lines = [
        f"{'batch':>6} | {'steps/s':>10} | {'env-steps/s':>12} | {'raw _step env-steps/s':>22}",
        f"{'-' * 6}-+-{'-' * 10}-+-{'-' * 12}-+-{'-' * 22}",
    ]
    for r in rows:
        lines.append(
            f"{r['batch']:>6} | {r['steps_per_s']:>10,.0f} | {r['env_steps_per_s']:>12,.0f} | "
            f"{r['raw_env_steps_per_s']:>22,.0f}"
        )
    return "\n".join(lines)


def smax_rows(
    batch_sizes=(64,), map_name: str = "3s_vs_5z", window_s: float = 0.3
) -> list[dict]:
    """Throughput rows of :class:`custom_envs.smax.SmaxEnv` (JaxMARL's SMAX, CPU JAX).

    Same columns as :func:`predator_prey_rows`. XLA is kept to one thread when this process has not
    set ``XLA_FLAGS`` before importing JAX; the one-off compilation is excluded from the timing.
    """
    os.environ.setdefault(
        "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )
    from custom_envs.predator_prey import random_available_actions
    from custom_envs.smax import SmaxEnv

    config = dict(
        map_name=map_name,
        max_steps=100,
        won_battle_bonus=1.0,
        walls_cause_death=True,
        see_enemy_actions=True,
        attack_mode="closest",
    )
    cpu = torch.device("cpu")
    rows = []
    for batch in batch_sizes:
        env = SmaxEnv(batch, seed=0, **config)
        gen = torch.Generator().manual_seed(0)
        state = {"td": env.reset()}

        def full(n: int, env=env, gen=gen, state=state) -> None:
            td = state["td"]
            for _ in range(n):
                td["agents", "action"] = random_available_actions(td["agents", "action_mask"], gen)
                _, td = env.step_and_maybe_reset(td)
            state["td"] = td

        full(50)  # compiles step and partial reset
        full_rate = _best_rate(full, cpu, window_s)
        td = env.reset()
        actions = [
            random_available_actions(td["agents", "action_mask"], gen).clone() for _ in range(4)
        ]

        def raw(n: int, env=env, td=td, actions=actions) -> None:
            for i in range(n):
                td.set(("agents", "action"), actions[i % 4])
                env._step(td)

        raw(3)
        raw_rate = _best_rate(raw, cpu, window_s)
        rows.append(
            {
                "batch": batch,
                "steps_per_s": full_rate,
                "env_steps_per_s": full_rate * batch,
                "raw_env_steps_per_s": raw_rate * batch,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCH_SIZES), metavar="B"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--window", type=float, default=0.3, help="seconds per timing window (best of 3)"
    )
    parser.add_argument(
        "--skip-intersection", action="store_true", help="only the predator-prey table"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({where}), torch threads: {torch.get_num_threads()}")

    print("\npredator-prey (stag hunt, 8 agents, 8 stags, 10x10), random available actions")
    print(format_predator_prey(predator_prey_rows(args.batch_sizes, device, args.window)))

    if args.device == "cpu" and not args.skip_intersection:
        import importlib.util

        if importlib.util.find_spec("jaxmarl") is None:
            print('\nsmax skipped: the `smax` extra is not installed (pip install ".[smax]")')
        else:
            for map_name in ("3s_vs_5z", "smacv2_5_units"):
                print(f"\nsmax/{map_name} (JaxMARL SMAX, one XLA thread), random available actions")
                print(format_predator_prey(smax_rows((64,), map_name, args.window)))

    if args.device == "cpu" and not args.skip_intersection:
        # The intersection env is numpy inside (one process, or BenchMARL's parallel workers).
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        try:
            from intersection_throughput import format_rows, intersection_rows
        except ImportError as err:  # the optional `intersection` extra is missing
            print(f"\nhighway/intersection skipped: {err}")
        else:
            print("\nhighway/intersection (4 vehicles), random actions, one process and 2 workers")
            print(format_rows(intersection_rows(steps=1000)))


if __name__ == "__main__":
    main()
