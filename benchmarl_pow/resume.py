"""Resume a checkpointed run: ``python benchmarl_pow/resume.py path/to/checkpoint_N.pt``.

BenchMARL's own ``resume.py`` composes from BenchMARL's config folder and cannot find this
project's tasks; ``Experiment.reload_from_file`` can, once our package is imported. Networks,
target networks, replay buffer, counters and (for our algorithms) the optimisers are restored.
"""

from __future__ import annotations

import argparse

import torch
from benchmarl.experiment import Experiment

import benchmarl_pow  # noqa: F401  (registers our algorithms and tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint_*.pt file inside a run folder")
    parser.add_argument("--evaluate", action="store_true", help="only run one evaluation")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    experiment = Experiment.reload_from_file(args.checkpoint)
    if args.evaluate:
        experiment.evaluate()
    else:
        experiment.run()


if __name__ == "__main__":
    main()
