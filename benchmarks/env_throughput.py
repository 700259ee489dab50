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

SMAX (:func:`smax_rows`, 64 battles, one XLA thread) has one line per variant: ``fused`` (the env
as used), ``unfused`` (``fuse_reset=False``: the partial reset is a second JAX call) and, with
``--smax-baseline REV``, ``custom_envs/smax.py`` as of a git revision, all timed in one process
with interleaved windows; under the table, the ratios (best windows; in brackets, the median of
the per-round ratios) and ``full/raw``, the share of the raw step's rate that the TorchRL loop
keeps. Figures of the change that packs the outputs into one array, carries the enemies'
observations over and fuses the partial reset into the step (``--smax-baseline a3a48b3``; taken
on a 2-core machine with two training runs in the background: absolute rates are about 2x noisy,
the same-process ratios are the comparable part):

    map             env-steps/s       before    after   after/before (median)
    3s_vs_5z        full loop         13,000   20,800   x1.60 (x1.66)
                    raw _step         26,700   34,000   x1.27 (x1.36)
    smacv2_5_units  full loop          7,400   12,900   x1.75 (x1.63)
                    raw _step         15,100   20,600   x1.36 (x1.36)

Idle machine (training runs paused), ``--batch-sizes 64 --window 2 --smax-baseline a3a48b3``,
2026-12-02: 3s_vs_5z full loop 13,490 -> 22,084 (x1.64), raw ``_step`` 22,767 -> 31,258 (x1.37);
smacv2_5_units full loop 9,711 -> 15,239 (x1.57), raw 17,529 -> 22,157 (x1.26). The issue's
reference (≈23k env steps/s at 64 battles on 3s_vs_5z, stepped through DLPack) is passed by the
raw step (31k) and nearly reached by the whole TorchRL loop (22.1k, 0.96x).

(10 interleaved rounds; the ratios moved by up to about 0.15 between runs. The fused reset alone:
full loop x1.1-1.2 over ``unfused``, raw ``_step`` x0.93-0.98.) Where the full loop's time goes
at 64 battles on 3s_vs_5z after the change: the jitted step about 60% (in it, JaxMARL's step with
its 8 world steps about 70%, observations / action mask / world state about 20%, the packing and
the fused reset's pass the rest), the env's torch side (action conversion, the DLPack conversion,
views, TensorDict construction, the fused reset's row copies) about 20%, TorchRL's own step /
``step_mdp`` / partial-reset bookkeeping (``_update_during_reset``'s ``where`` over every key)
about 15%, the random-action policy about 4%.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
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


def _full_loop(env, gen: torch.Generator) -> Callable[[int], None]:
    """``n`` steps of the whole TorchRL loop (random available actions, then
    ``step_and_maybe_reset``), carrying the tensordict from one call to the next; starts from a
    reset of ``env``."""
    from custom_envs.predator_prey import random_available_actions

    state = {"td": env.reset()}

    def full(n: int) -> None:
        td = state["td"]
        for _ in range(n):
            td["agents", "action"] = random_available_actions(td["agents", "action_mask"], gen)
            _, td = env.step_and_maybe_reset(td)
        state["td"] = td

    return full


def _raw_loop(env, gen: torch.Generator) -> Callable[[int], None]:
    """``n`` raw ``env._step`` calls on one tensordict from a reset, cycling four random available
    action sets drawn now (no spec checks, no reset: finished episodes are stepped on)."""
    from custom_envs.predator_prey import random_available_actions

    td = env.reset()
    actions = [random_available_actions(td["agents", "action_mask"], gen).clone() for _ in range(4)]

    def raw(n: int) -> None:
        for i in range(n):
            td.set(("agents", "action"), actions[i % 4])
            env._step(td)

    return raw


def predator_prey_rows(
    batch_sizes=DEFAULT_BATCH_SIZES, device: str | torch.device = "cpu", window_s: float = 0.3
) -> list[dict]:
    """Throughput rows of :class:`custom_envs.predator_prey.PredatorPreyEnv` (stag hunt, 8 agents).

    Returns one dict per batch size with keys ``batch``, ``steps_per_s``, ``env_steps_per_s`` and
    ``raw_env_steps_per_s``.
    """
    from custom_envs.predator_prey import PredatorPreyEnv

    device = torch.device(device)
    rows = []
    for batch in batch_sizes:
        env = PredatorPreyEnv(batch, seed=0, miscapture_punishment=-4.0, device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        full = _full_loop(env, gen)
        full(3)
        full_rate = _best_rate(full, device, window_s)
        raw = _raw_loop(env, gen)  # (the same env, reset again)
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


def _smax_module(baseline: str | None):
    """``custom_envs.smax``, or (``baseline``: a git revision) that module as it was at the
    revision, loaded from ``git show`` under another name: before/after in one process."""
    import importlib

    if baseline is None:
        return importlib.import_module("custom_envs.smax")
    import subprocess
    import types

    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(
        ["git", "show", f"{baseline}:custom_envs/smax.py"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType(f"_smax_at_{baseline}")
    module.__file__ = f"{baseline}:custom_envs/smax.py"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def smax_rows(
    batch_sizes=(64,),
    map_name: str = "3s_vs_5z",
    window_s: float = 0.3,
    baseline: str | None = None,
    repeats: int = 7,
) -> list[dict]:
    """Throughput rows of :class:`custom_envs.smax.SmaxEnv` (JaxMARL's SMAX, CPU JAX).

    The columns of :func:`predator_prey_rows` plus ``variant``: ``fused`` (the env as used: the
    partial reset of finished battles computed inside the jitted step), ``unfused``
    (``fuse_reset=False``: a separate jitted reset call) and, with ``baseline`` (a git revision),
    ``baseline`` (``custom_envs/smax.py`` at that revision). The variants' timing windows are
    interleaved (A, B, C, A, B, C, ...; ``repeats`` rounds) so that a changing background load hits
    them alike; each figure is the variant's best window, ``paired`` holds every round's rates.
    XLA is kept to one thread when this process has not set ``XLA_FLAGS`` before importing JAX;
    the one-off compilations are excluded from the timing.
    """
    os.environ.setdefault(
        "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )

    config = dict(
        map_name=map_name,
        max_steps=100,
        won_battle_bonus=1.0,
        walls_cause_death=True,
        see_enemy_actions=True,
        attack_mode="closest",
    )
    current = _smax_module(None)
    makers = {
        "fused": lambda b: current.SmaxEnv(b, seed=0, **config),
        "unfused": lambda b: current.SmaxEnv(b, seed=0, fuse_reset=False, **config),
    }
    if baseline is not None:
        old = _smax_module(baseline)
        makers["baseline"] = lambda b: old.SmaxEnv(b, seed=0, **config)
    rows = []
    for batch in batch_sizes:
        loops = {}
        for variant, make in makers.items():
            gen = torch.Generator().manual_seed(0)
            full = _full_loop(make(batch), gen)
            # a second env for the raw steps (battles stepped on after their end, no reset)
            raw = _raw_loop(make(batch), gen)
            full(150)  # compiles the step and the (partial) resets
            raw(3)
            loops[variant] = {"full": full, "raw": raw}
        # steps per window, from the first variant
        counts = {}
        for kind in ("full", "raw"):
            n = 4
            while True:
                start = time.perf_counter()
                loops["fused"][kind](n)
                if time.perf_counter() - start >= window_s / 4:
                    break
                n *= 2
            counts[kind] = n * 4
        paired = {variant: {"full": [], "raw": []} for variant in loops}
        for _ in range(repeats):
            for variant, fns in loops.items():
                for kind, run in fns.items():
                    start = time.perf_counter()
                    run(counts[kind])
                    paired[variant][kind].append(counts[kind] / (time.perf_counter() - start))
        for variant, rates in paired.items():
            full_rate, raw_rate = max(rates["full"]), max(rates["raw"])
            rows.append(
                {
                    "variant": variant,
                    "batch": batch,
                    "steps_per_s": full_rate,
                    "env_steps_per_s": full_rate * batch,
                    "raw_env_steps_per_s": raw_rate * batch,
                    "paired": rates,
                }
            )
    return rows


def format_smax(rows: list[dict]) -> str:
    """The SMAX table: one line per variant and batch size, then the ratios (best windows; in
    brackets, the median of the per-round ratios)."""
    import statistics

    lines = [
        f"{'variant':>9} | {'batch':>5} | {'steps/s':>8} | {'env-steps/s':>11} | "
        f"{'raw _step env-steps/s':>21} | {'full/raw':>8}",
        f"{'-' * 9}-+-{'-' * 5}-+-{'-' * 8}-+-{'-' * 11}-+-{'-' * 21}-+-{'-' * 8}",
    ]
    for r in rows:
        lines.append(
            f"{r['variant']:>9} | {r['batch']:>5} | {r['steps_per_s']:>8,.0f} | "
            f"{r['env_steps_per_s']:>11,.0f} | {r['raw_env_steps_per_s']:>21,.0f} | "
            f"{r['env_steps_per_s'] / r['raw_env_steps_per_s']:>8.2f}"
        )
    by_key = {(r["variant"], r["batch"]): r for r in rows}
    for batch in sorted({r["batch"] for r in rows}):
        fused = by_key[("fused", batch)]
        for other in ("unfused", "baseline"):
            if (other, batch) not in by_key:
                continue
            before = by_key[(other, batch)]
            parts = []
            for kind, key, short in (
                ("full loop", "env_steps_per_s", "full"),
                ("raw _step", "raw_env_steps_per_s", "raw"),
            ):
                median = statistics.median(
                    a / b for a, b in zip(fused["paired"][short], before["paired"][short])
                )
                parts.append(f"{kind} x{fused[key] / before[key]:.2f} ({median:.2f})")
            lines.append(f"fused / {other}, batch {batch}: " + ", ".join(parts))
    return "\n".join(lines)


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
    parser.add_argument(
        "--smax-baseline",
        metavar="REV",
        help="also time custom_envs/smax.py as of this git revision (before/after, one process)",
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
                print(format_smax(smax_rows((64,), map_name, args.window, args.smax_baseline)))

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
