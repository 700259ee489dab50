"""Evaluate a checkpoint: ``python -m benchmarl_pow.evaluate path/to/checkpoint_N.pt [--episodes N]``.

Runs the checkpoint's greedy policy (the run's evaluation settings) for ``N`` episodes, prints the
mean episode return and writes ``<run folder>/evaluations/<checkpoint>_eval.json`` (or
``--output``). The run's own results (CSV scalars, marl-eval JSON, tables, checkpoints,
``config.pkl``) are never rewritten: the experiment is rebuilt in a temporary folder with no
logger. The same checks as :mod:`benchmarl_pow.resume` apply to the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from benchmarl.experiment.callback import Callback
from tensordict import TensorDictBase

from benchmarl_pow.resume import fail, load_run
from benchmarl_pow.validation import ConfigError, quiet_known_warnings


class _CollectRollouts(Callback):
    """Keeps the rollouts of the evaluation."""

    def __init__(self) -> None:
        super().__init__()
        self.rollouts: list[TensorDictBase] = []

    def on_evaluation_end(self, rollouts: list[TensorDictBase]) -> None:
        self.rollouts = list(rollouts)


def episode_returns(rollouts: Sequence[TensorDictBase], groups: Sequence[str]) -> list[float]:
    """The return of each evaluation episode (one rollout each): the sum over time of the reward,
    averaged over the agents of each group and over the groups (BenchMARL's episode reward)."""
    returns = []
    for rollout in rollouts:
        keys = set(rollout.keys(True, True))
        per_group = []
        for group in groups:
            key = ("next", group, "reward") if ("next", group, "reward") in keys else ("next", "reward")
            reward = rollout.get(key).float()
            per_group.append(reward.sum(0).mean())
        returns.append(float(torch.stack(per_group).mean()))
    return returns


def evaluate_checkpoint(
    checkpoint: str | Path, episodes: int | None = None, output: str | Path | None = None
) -> dict[str, Any]:
    """Evaluate ``checkpoint``; write and return the result record.

    Args:
        checkpoint: ``<run folder>/checkpoints/checkpoint_N.pt``.
        episodes: evaluation episodes (default: the run's ``evaluation_episodes``).
        output: the JSON file to write (default ``<run folder>/evaluations/<stem>_eval.json``).
    """
    if episodes is not None and episodes < 1:
        raise ConfigError("--episodes", episodes, "expected an integer >= 1")
    checkpoint = Path(checkpoint)
    run_folder = checkpoint.resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="benchmarl_pow_eval_") as scratch:
        patch: dict[str, Any] = {
            "save_folder": scratch,  # config.pkl and any callback file go here, not into the run
            "loggers": [],
            "create_json": False,
            "render": False,
            "checkpoint_interval": 0,
            "checkpoint_at_end": False,
            "exclude_buffer_from_checkpoint": True,  # an evaluation needs no replay
            "evaluation": True,
        }
        if episodes is not None:
            patch["evaluation_episodes"] = episodes
        experiment = load_run(checkpoint, experiment_patch=patch)
        collect = _CollectRollouts()
        collect.experiment = experiment
        experiment.callbacks.append(collect)
        try:
            experiment.evaluate()
        finally:
            experiment.close()
    returns = episode_returns(collect.rollouts, list(experiment.group_map))
    record = {
        "checkpoint": str(checkpoint.resolve()),
        "run": experiment.name,
        "algorithm": experiment.algorithm_name,
        "task": f"{experiment.environment_name}/{experiment.task_name}",
        "model": experiment.model_name,
        "seed": experiment.seed,
        "total_frames": int(experiment.total_frames),
        "iterations": int(experiment.n_iters_performed),
        "episodes": len(returns),
        "deterministic_actions": bool(experiment.config.evaluation_deterministic_actions),
        "mean_return": sum(returns) / len(returns) if returns else float("nan"),
        "returns": returns,
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = Path(output) if output is not None else (
        run_folder / "evaluations" / f"{checkpoint.stem}_eval.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    record["file"] = str(path)
    return record


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarl_pow.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("checkpoint", help="a checkpoints/checkpoint_N.pt file inside a run folder")
    parser.add_argument("--episodes", type=int, default=None, help="evaluation episodes")
    parser.add_argument("--output", default=None, help="JSON file to write")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    quiet_known_warnings()
    try:
        record = evaluate_checkpoint(args.checkpoint, args.episodes, args.output)
    except ConfigError as err:
        fail(err)
    print(
        f"{record['algorithm']} on {record['task']} ({record['total_frames']} frames, "
        f"{record['iterations']} iterations): mean return {record['mean_return']:.4f} over "
        f"{record['episodes']} episodes"
    )
    print(f"written: {record['file']}")


if __name__ == "__main__":
    main()
