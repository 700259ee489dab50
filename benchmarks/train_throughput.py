"""Training throughput in real env frames per second, collection and learning included (issue 11).

``predator_prey/punish_4`` in the paper's regime (``experiment=pymarl2``: ``regime=episodes``,
``model=rnn_agent``; every iteration plays one whole episode in each of 8 envs, then one learner
call on 128 whole episodes) for ``qmix_lambda``, ``pow_qmix`` (faithful: 10 Q_r steps on every
valid sample), ``pow_qmix`` with ``recognition_batch_fraction=0.4`` (the documented cheap
option: per learner call it selects the faithful A_r on ≈98 % of samples,
benchmarks/recognition_agreement.py) and ``pow_qmix`` with ``recognition_bf16=true`` (bf16 matmuls in the Q_r steps), built in one process and timed
back to back on one torch thread, interleaved in rounds so that a changing machine load hits all
of them alike.

Steady state without a long warm-up: the replay is prefilled by collection-only iterations (the
real loop with training switched off) up to ``regime.start_training_episodes`` (128), one untimed
iteration makes the first learner call (POW's 20 Q_r steps), then ``--iters`` iterations are
timed per variant. POW's unweighted warm-up is off (``no_weighted_steps=0``: the weighted loss),
the replay holds ``--buffer`` episodes (not 5,000: memory; the learner call samples 128 of them
either way). The time of every iteration is split into collection (rollout of 8 episodes), the
Q_r update and the rest of the learner call.

Frames per second of wall time and per second of the process's CPU time (the latter is less
sensitive to other processes on a shared machine); ratios to ``qmix_lambda``.
Printed beside the figures: the process's single-thread float32 and bfloat16 matmul rates
(25,600 x 348 x 128, ``agent_unroll.reference_matmul_gflops``), ``uptime`` before and after.
``--side-by-side`` then runs two processes at once, one core each (``sched_setaffinity``), each
timing faithful ``pow_qmix`` alone: the way reproductions run two seeds on this 2-core machine.

    OMP_NUM_THREADS=1 python benchmarks/train_throughput.py [--iters 4] [--rounds 2] [--side-by-side]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from tempfile import mkdtemp

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_unroll import best_seconds, reference_matmul_gflops  # noqa: E402

from benchmarl_pow.compose import compose_experiment  # noqa: E402

TASK = "predator_prey/punish_4"
#: the documented cheap recognition option (README "POW's settings")
CHEAP = ["algorithm.recognition_batch_fraction=0.4"]
VARIANTS = {
    "qmix_lambda": ["algorithm=qmix_lambda"],
    "pow_qmix": ["algorithm=pow_qmix", "algorithm.no_weighted_steps=0"],
    "pow_qmix_cheap": ["algorithm=pow_qmix", "algorithm.no_weighted_steps=0", *CHEAP],
    "pow_qmix_bf16": ["algorithm=pow_qmix", "algorithm.no_weighted_steps=0",
                      "algorithm.recognition_bf16=true"],
}


def bf16_matmul_gflops(repeats: int = 20) -> float:
    a = torch.randn(25_600, 348).bfloat16()
    b = torch.randn(348, 128).bfloat16()
    return 2 * 25_600 * 348 * 128 / best_seconds(lambda: a @ b, repeats) / 1e9


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


class Timed:
    """One experiment, its replay prefilled, with timers around collection and the Q_r update."""

    def __init__(self, name: str, overrides: list[str], buffer: int, seed: int):
        self.name = name
        self.experiment = compose_experiment(
            [
                f"task={TASK}",
                "experiment=pymarl2",
                "experiment.loggers=[]",
                "experiment.create_json=False",
                "experiment.evaluation=False",
                "experiment.checkpoint_interval=0",  # (pymarl2 checkpoints: not timed here)
                f"regime.buffer_episodes={buffer}",
                f"seed={seed}",
                *overrides,
            ],
            save_folder=mkdtemp(),
            callbacks=[],
        )
        exp = self.experiment
        self.close = exp.close
        exp.close = lambda: None  # _collection_loop closes at its end; we run it several times
        self.seconds = {"collection": 0.0, "recognition": 0.0, "learner": 0.0}
        self._wrap(exp, "_collect", "collection")
        self._wrap(exp, "_optimizer_loop", "learner")
        loss = exp.losses["agents"]
        if getattr(loss, "recognition_mixer", None) is not None:
            self._wrap(loss, "_update_recognition", "recognition")
        self.frames = 0
        self.iters = 0
        self.wall = 0.0
        self.cpu = 0.0

    def _wrap(self, owner, attr: str, key: str) -> None:
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - start

        setattr(owner, attr, timed)

    def _run(self, iterations: int) -> None:
        exp = self.experiment
        exp.config.max_n_iters = exp.n_iters_performed + iterations
        exp._collection_loop()

    def prefill(self) -> None:
        """Collection-only iterations up to 128 stored episodes, then one untimed learner call."""
        exp = self.experiment
        start_training = exp.regime.start_training_episodes
        exp.regime.start_training_episodes = 10**9
        self._run(-(-start_training // exp.config.off_policy_n_envs_per_worker))
        exp.regime.start_training_episodes = start_training
        self._run(1)  # the first learner call (20 Q_r steps for POW)
        self.seconds = dict.fromkeys(self.seconds, 0.0)

    def timed(self, iterations: int) -> None:
        exp = self.experiment
        frames = exp.total_frames
        start, cpu = time.perf_counter(), time.process_time()
        self._run(iterations)
        self.wall += time.perf_counter() - start
        self.cpu += time.process_time() - cpu
        self.frames += exp.total_frames - frames
        self.iters += iterations

    def result(self) -> dict:
        s = self.seconds
        return {
            "name": self.name,
            "frames_per_s": self.frames / self.wall,
            "frames_per_cpu_s": self.frames / self.cpu,
            "iters": self.iters,
            "frames": self.frames,
            "s_per_iter": self.wall / self.iters,
            "collection_s_per_iter": s["collection"] / self.iters,
            "learner_s_per_iter": s["learner"] / self.iters,
            "recognition_s_per_iter": s["recognition"] / self.iters,
        }


def measure(names: list[str], iters: int, rounds: int, buffer: int, seed: int) -> list[dict]:
    runs = [Timed(n, VARIANTS[n], buffer, seed) for n in names]
    for run in runs:
        run.prefill()
    for _ in range(rounds):
        for run in runs:
            run.timed(iters)
    results = [run.result() for run in runs]
    for run in runs:
        run.close()
    return results


def print_results(results: list[dict], reference: str = "qmix_lambda") -> None:
    base = next((r for r in results if r["name"] == reference), None)
    print(
        f"{'variant':>16s} {'frames/s':>9s} {'vs ' + reference:>15s} {'per CPU-s':>9s} {'vs':>6s} {'s/iter':>7s} "
        f"{'collect':>8s} {'learner':>8s} {'  of it Q_r':>11s} {'iters':>5s} {'frames':>7s}"
    )
    for r in results:
        ratio = f"{r['frames_per_s'] / base['frames_per_s']:.2f}x" if base else "-"
        cpu_ratio = f"{r['frames_per_cpu_s'] / base['frames_per_cpu_s']:.2f}x" if base else "-"
        print(
            f"{r['name']:>16s} {r['frames_per_s']:9.1f} {ratio:>15s} {r['frames_per_cpu_s']:9.1f} "
            f"{cpu_ratio:>6s} {r['s_per_iter']:7.2f} "
            f"{r['collection_s_per_iter']:8.2f} {r['learner_s_per_iter']:8.2f} "
            f"{r['recognition_s_per_iter']:11.2f} {r['iters']:5d} {r['frames']:7d}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per variant and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (variants interleaved)")
    parser.add_argument("--buffer", type=int, default=512, help="replay size in episodes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--side-by-side", action="store_true",
                        help="also time faithful pow_qmix in two processes at once, one core each")
    parser.add_argument("--skip-main", action="store_true", help="only the side-by-side runs")
    parser.add_argument("--child-core", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.child_core is not None:  # one of the side-by-side processes
        os.sched_setaffinity(0, {args.child_core})
        results = measure(args.only, args.iters, args.rounds, args.buffer, args.seed)
        print("RESULT " + json.dumps(results))
        return

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cores {os.cpu_count()}")
    print(f"load before: {uptime()}")
    fp32, bf16 = reference_matmul_gflops(), bf16_matmul_gflops()
    print(f"single-thread matmul 25,600x348x128: fp32 {fp32:.1f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s")
    if not args.skip_main:
        print(f"\none process, one thread: {args.rounds} rounds x {args.iters} iterations per variant "
              f"(cheap option: {' '.join(CHEAP)})")
        print_results(measure(args.only, args.iters, args.rounds, args.buffer, args.seed))
        print(f"load after: {uptime()}")
    if args.side_by_side:
        print("\nside by side: two processes, one core each, faithful pow_qmix (seeds 0 and 1)")
        cmd = [sys.executable, __file__, "--only", "pow_qmix", "--iters", str(args.iters),
               "--rounds", str(args.rounds), "--buffer", str(args.buffer)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs = [
            subprocess.Popen([*cmd, "--child-core", str(core), "--seed", str(core)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
            for core in range(min(2, os.cpu_count() or 1))
        ]
        for core, proc in enumerate(procs):
            out, _ = proc.communicate()
            lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
            if not lines:
                print(f"core {core}: no result (exit {proc.returncode})")
                continue
            for r in json.loads(lines[-1][len("RESULT "):]):
                r["name"] = f"pow_qmix core{core}"
                print_results([r], reference="-")
        print(f"load after: {uptime()}")


if __name__ == "__main__":
    main()
