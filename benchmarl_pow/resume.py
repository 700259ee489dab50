"""Resume a checkpointed run: ``python -m benchmarl_pow.resume path/to/checkpoint_N.pt``.

BenchMARL's own ``resume.py`` composes from BenchMARL's config folder and cannot find this
project's tasks; ``Experiment.reload_from_file`` can, once our package is imported. The run folder's
``regime.json`` chooses the experiment class (:func:`benchmarl_pow.resumable.reload_run`), and the
run continues in its own folder exactly as if it had not stopped (networks, targets, optimisers,
replay, exploration, counters, random states, the envs' and the collector's state; rows logged
after the checkpoint are rewound; see the README's resume paragraph for what is exact). ``--evaluate`` runs one evaluation without touching the run's
results (see :mod:`benchmarl_pow.evaluate`).

The checkpoint is first opened with ``torch.load(..., weights_only=True)``; a missing file, a file
that is not a checkpoint or a run folder without ``config.pkl`` stop with one line. The run folder's
``config.pkl`` is a pickle written by BenchMARL: loading it runs code, so only resume runs you trust.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from benchmarl.experiment import Experiment

import benchmarl_pow  # noqa: F401  (registers our algorithms and tasks)
from benchmarl_pow.resumable import check_not_live, reload_run
from benchmarl_pow.validation import (
    ConfigError,
    check_checkpoint_file,
    checkpoint_identity,
    quiet_known_warnings,
)


def load_run(checkpoint: str | Path, experiment_patch: dict[str, Any] | None = None) -> Experiment:
    """The experiment of ``checkpoint``'s run folder with the checkpoint's state loaded.

    Args:
        checkpoint: ``<run folder>/checkpoints/checkpoint_N.pt``.
        experiment_patch: experiment config keys to change (BenchMARL's ``experiment_patch``).

    Raises:
        ConfigError: a missing or unreadable checkpoint, no ``config.pkl`` next to it, or a
            checkpoint whose networks do not fit the run folder's algorithm, task or model.
    """
    path = Path(checkpoint)
    check_checkpoint_file(
        path, with_replay=not (experiment_patch or {}).get("exclude_buffer_from_checkpoint", False)
    )
    run_folder = path.resolve().parent.parent
    if not (run_folder / "config.pkl").is_file():
        raise ConfigError(
            "checkpoint",
            str(checkpoint),
            f"no config.pkl in its run folder {run_folder} (expected <run>/checkpoints/<file>.pt)",
        )
    if not (experiment_patch or {}).get("save_folder"):  # (another folder: nothing rewound)
        check_not_live(path)
    try:
        # dispatches on the run folder's regime.json: EpisodeExperiment or FramesExperiment
        return reload_run(str(path), experiment_patch=experiment_patch)
    except (RuntimeError, KeyError, AttributeError, TypeError) as err:
        run = checkpoint_identity(path)
        run_name = "/".join(run) if run else run_folder.name
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            "checkpoint",
            str(checkpoint),
            f"its state does not fit the run folder's experiment ({run_name}): "
            f"{type(err).__name__}: {first[:200]}",
        ) from err


def fail(err: Exception) -> NoReturn:
    """One line on stderr and exit status 2 (a traceback with ``HYDRA_FULL_ERROR=1``)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarl_pow.resume", description=__doc__.splitlines()[0]
    )
    parser.add_argument("checkpoint", help="a checkpoints/checkpoint_N.pt file inside a run folder")
    parser.add_argument(
        "--evaluate", action="store_true",
        help="only run one evaluation (python -m benchmarl_pow.evaluate; writes a separate file)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    quiet_known_warnings()
    if args.evaluate:
        from benchmarl_pow.evaluate import main as evaluate_main

        evaluate_main([args.checkpoint, "--threads", str(args.threads)])
        return
    try:
        experiment = load_run(args.checkpoint)
    except ConfigError as err:
        fail(err)
    experiment.run()


if __name__ == "__main__":
    main()
