"""Cost of one POW Q_r inner step: eager vs ``torch.compile``, fp32 vs bf16 autocast (issue 11).

One step = forward of :class:`~benchmarl_pow.modules.recognition_mixer.RecognitionMixer` on
``--samples`` valid samples, 0.5·mean squared error, backward, global grad-norm clip at 10 and a
fused Adam step: what ``WeightedMixerLoss._update_recognition`` does ten times per learner call.
Shapes of the stag hunt (8 agents, 6 actions, state 300: hypernet input 348). The variants run in
one process, interleaved over ``--rounds``, each with its own copy of the network; the table gives
the median seconds per step and the ratio to eager fp32.

    OMP_NUM_THREADS=1 python benchmarks/recognition_step.py [--samples 25600] [--no-compile]

Measured 2026-12-02, 2-core CPU, one thread, background runs paused: eager fp32 0.635 s, compiled
fp32 0.587 s (1.08x; first call 27 s), eager bf16 0.491 s (1.29x), compiled bf16 0.323 s (1.97x).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarl_pow.modules.recognition_mixer import RecognitionMixer

N_AGENTS, N_ACTIONS, STATE = 8, 6, 300


def make_step(net: RecognitionMixer, bf16: bool, compiled: bool) -> Callable[..., float]:
    """One Q_r step on (ΔQ, state, one-hot actions, targets); returns the loss."""
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-4, fused=True)
    params = list(net.parameters())

    def loss_fn(dq, s, oh, y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            q_r, _ = net(dq, s, oh)
        return 0.5 * (q_r - y).pow(2).mean()

    forward = torch.compile(loss_fn, dynamic=True) if compiled else loss_fn

    def step(dq, s, oh, y) -> float:
        loss = forward(dq, s, oh, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        return float(loss.detach())

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=25_600)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    n = args.samples
    data = (
        -torch.rand(n, N_AGENTS),
        torch.randn(n, STATE),
        F.one_hot(torch.randint(N_ACTIONS, (n, N_AGENTS)), N_ACTIONS).float(),
        torch.randn(n, 1),
    )
    base = RecognitionMixer(N_AGENTS, N_ACTIONS, STATE)
    variants = {"eager fp32": (False, False), "eager bf16": (True, False)}
    if not args.no_compile:
        variants.update({"compiled fp32": (False, True), "compiled bf16": (True, True)})
    steps, first = {}, {}
    for name, (bf16, compiled) in variants.items():
        steps[name] = make_step(copy.deepcopy(base), bf16, compiled)
        start = time.perf_counter()
        steps[name](*data)
        first[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step(*data)
            times[name].append((time.perf_counter() - start) / args.steps)
    ref = statistics.median(times["eager fp32"])
    print(f"Q_r step, {n} samples, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"{'variant':<16} {'s/step':>8} {'vs eager fp32':>14} {'first call':>11}")
    for name in variants:
        t = statistics.median(times[name])
        print(f"{name:<16} {t:8.3f} {ref / t:13.2f}x {first[name]:10.1f}s")


if __name__ == "__main__":
    main()
