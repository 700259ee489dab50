"""Soak: resident memory of a long ``pow_qmix`` run in the paper's regime (issue "Runs that survive").

``pow_qmix`` on ``predator_prey/punish_4`` with ``experiment=pymarl2`` (episode regime, 5,000-episode
replay) for ``--frames`` real frames (default 1M). Prints the process's resident memory (RSS) at the
start, after every evaluation, when the replay first holds ``buffer_episodes`` episodes, and at the
end, the growth after the buffer was full (target < 10 %), the peak (``ru_maxrss``) and every
warning raised during the run. A long run: start it in the background, e.g.

    OMP_NUM_THREADS=1 nohup python benchmarks/soak.py --out /tmp/soak > soak.log 2>&1 &

``--frames 50000 --buffer 100`` gives a short check of the script itself.
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings
from pathlib import Path

from benchmarl.experiment.callback import Callback

from benchmarl_pow.compose import compose_experiment


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux ``/proc``)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


class MemoryProbe(Callback):
    """Records (frames, RSS) at every evaluation and when the replay first fills up."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, int, float]] = []
        self.full_at: int | None = None

    def _record(self, label: str) -> None:
        frames = int(getattr(self.experiment, "total_frames", 0))  # (set when the loop starts)
        self.records.append((label, frames, rss_mb()))
        print(f"[soak] {label:>12s} frames {frames:>9d}  rss {rss_mb():8.1f} MiB", flush=True)

    def on_setup(self) -> None:
        self._record("start")

    def on_train_end(self, training_td, group: str) -> None:
        buffer = self.experiment.replay_buffers[group]
        if self.full_at is None and len(buffer) >= buffer.storage.max_size:
            self.full_at = int(self.experiment.total_frames)
            self._record("buffer full")

    def on_evaluation_end(self, rollouts) -> None:
        self._record("evaluation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--buffer", type=int, default=5000, help="replay capacity in episodes")
    parser.add_argument("--out", default="/tmp/soak", help="run folder parent")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    probe = MemoryProbe()
    start = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        experiment = compose_experiment(
            [
                "algorithm=pow_qmix",
                "task=predator_prey/punish_4",
                "experiment=pymarl2",
                f"experiment.max_n_frames={args.frames}",
                f"regime.buffer_episodes={args.buffer}",
                "experiment.evaluation_interval=50000",
            ],
            save_folder=args.out,
            callbacks=[probe],
        )
        experiment.run()
    probe._record("end")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"[soak] {experiment.total_frames} frames in {time.time() - start:.0f} s; peak {peak:.1f} MiB")
    if probe.full_at is not None:
        full = next(r for r in probe.records if r[0] == "buffer full")[2]
        end = probe.records[-1][2]
        print(f"[soak] growth after the buffer was full ({probe.full_at} frames): "
              f"{100 * (end - full) / full:+.1f} % ({full:.1f} -> {end:.1f} MiB)")
    else:
        print("[soak] the replay never filled up (raise --frames or lower --buffer)")
    messages = sorted({f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught})
    print(f"[soak] {len(caught)} warnings, {len(messages)} distinct:")
    for message in messages:
        print("   ", message)


if __name__ == "__main__":
    main()
