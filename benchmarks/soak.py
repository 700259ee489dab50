"""Soak: resident memory of a long ``pow_qmix`` run in the paper's regime (issue "Runs that survive").

``pow_qmix`` on ``predator_prey/punish_4`` with ``experiment=pymarl2`` (episode regime, 5,000-episode
replay, a checkpoint every 32k frames with the replay dumped beside the newest) for ``--frames``
real frames (default 1M). Records the process's resident memory (RSS) at the start, after every
evaluation, when the replay first holds ``--buffer`` episodes, and at the end, into
``<out>/soak_records.jsonl`` as it goes; then prints the growth after the buffer was full (target
< 10 %), the peak (``ru_maxrss``) and every warning raised. A long run: start it in the background,

    OMP_NUM_THREADS=1 nohup python benchmarks/soak.py --out /tmp/soak > soak.log 2>&1 &

and, if it was interrupted, continue it from its newest checkpoint with ``--resume`` (same
``--out``): the records go on in the same file, labelled with the process that wrote them, and the
growth is measured within the last process (a resumed one reloads a full replay).
With 200-step episodes a 5,000-episode replay fills at exactly 1M frames, so ``--buffer 2500``
leaves the second half of a 1M-frame soak to measure growth with a full replay.
``--frames 40000 --buffer 150`` gives a short check of the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
import warnings
from pathlib import Path

from benchmarl.experiment.callback import Callback

from benchmarl_pow.compose import compose_experiment
from benchmarl_pow.reproduce.hydra_callbacks import last_checkpoint
from benchmarl_pow.resume import load_run

RECORDS = "soak_records.jsonl"


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux ``/proc``)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


class MemoryProbe(Callback):
    """Records (frames, RSS) at every evaluation and when the replay first fills up, appending
    each record to ``log`` (JSON lines)."""

    def __init__(self, log: str | Path) -> None:
        super().__init__()
        self.log = str(log)
        self.full_at: int | None = None

    def record(self, label: str) -> None:
        frames = int(getattr(self.experiment, "total_frames", 0))  # (set when the loop starts)
        rss = rss_mb()
        with open(self.log, "a") as f:
            f.write(json.dumps({"label": label, "frames": frames, "rss_mib": round(rss, 1),
                                "pid": os.getpid(), "time": round(time.time(), 1)}) + "\n")
        print(f"[soak] {label:>12s} frames {frames:>9d}  rss {rss:8.1f} MiB", flush=True)

    def on_setup(self) -> None:
        if not self.experiment.config.restore_file:  # (a resume records once it has loaded)
            self.record("start")

    def on_train_end(self, training_td, group: str) -> None:
        buffer = self.experiment.replay_buffers[group]
        if self.full_at is None and len(buffer) >= buffer.storage.max_size:
            self.full_at = int(self.experiment.total_frames)
            self.record("buffer full")

    def on_evaluation_end(self, rollouts) -> None:
        self.record("evaluation")


def summary(log: Path, seconds: float) -> None:
    """The first start, and the growth from the last process's first full-buffer record to its
    end."""
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    end = records[-1]
    last = [r for r in records if r["pid"] == end["pid"]]
    print(f"[soak] start {records[0]['rss_mib']:.1f} MiB at {records[0]['frames']} frames; "
          f"end {end['rss_mib']:.1f} MiB at {end['frames']} frames ({len(records)} records, "
          f"{len({r['pid'] for r in records})} process(es); this one ran {seconds:.0f} s)")
    full = next((r for r in last if r["label"] == "buffer full"), None)
    if full is None:
        print("[soak] the replay never filled up in this process (raise --frames or lower --buffer)")
        return
    after = [r["rss_mib"] for r in last if r["frames"] >= full["frames"]]
    print(f"[soak] growth after the buffer was full ({full['frames']} frames): "
          f"{100 * (end['rss_mib'] - full['rss_mib']) / full['rss_mib']:+.1f} % "
          f"({full['rss_mib']:.1f} -> {end['rss_mib']:.1f} MiB; range {min(after):.1f}-"
          f"{max(after):.1f} MiB over {len(after)} records)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--buffer", type=int, default=5000, help="replay capacity in episodes")
    parser.add_argument("--out", default="/tmp/soak", help="run folder parent")
    parser.add_argument("--resume", action="store_true",
                        help="continue the soak in --out from its newest checkpoint")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / RECORDS
    start = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.resume:
            checkpoint = last_checkpoint(out)
            if checkpoint is None:
                parser.error(f"--resume: no readable checkpoint under {out}")
            # the probe comes back from the run folder's config.pkl, as pickled at the start
            experiment = load_run(checkpoint, experiment_patch={"max_n_frames": args.frames})
            probe = next(c for c in experiment.callbacks if isinstance(c, MemoryProbe))
            probe.record("resumed")  # the checkpoint's frames, its replay loaded
        else:
            if log.exists():
                parser.error(f"{log} exists: continue that soak with --resume, or pick another --out")
            probe = MemoryProbe(log)
            experiment = compose_experiment(
                [
                    "algorithm=pow_qmix",
                    "task=predator_prey/punish_4",
                    "experiment=pymarl2",
                    f"experiment.max_n_frames={args.frames}",
                    f"regime.buffer_episodes={args.buffer}",
                    "experiment.evaluation_interval=50000",
                ],
                save_folder=str(out),
                callbacks=[probe],
            )
        experiment.run()
    probe.record("end")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"[soak] {experiment.total_frames} frames; peak of this process {peak:.1f} MiB")
    summary(log, time.time() - start)
    messages = sorted({f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught})
    print(f"[soak] {len(caught)} warnings, {len(messages)} distinct:")
    for message in messages:
        print("   ", message)


if __name__ == "__main__":
    main()
