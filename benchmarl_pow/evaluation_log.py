"""Evaluation-time callbacks for long runs: a console line per evaluation, task metrics in the
evaluation JSON, and an evaluation JSON that survives a resume.

* :class:`EvaluationLine` prints one line per evaluation (and appends it to ``evaluations.log``
  in the run folder)::

      [eval powqmix punish_4 seed 0] frames 64000 iter 39 | return 12.50 | captures 1.25 ...

  with frames, the mean evaluation return, the task metric (captures and mis-captures on
  ``predator_prey``, win rate on ``highway`` and the StarCraft tasks: ``smacv2``, ``smac``,
  ``smax``) and, for POW, ``A_r``: the mean fraction of training
  samples in the recognition set over the learner calls since the previous evaluation (the loss
  output ``fraction_in_recognition_set``). On ``predator_prey`` it also adds the per-episode lists
  ``captures`` and ``miscaptures`` to the evaluation JSON step (the intersection task's own
  callback adds ``win_rate``), so that the marl-eval JSON stays the one source of the curves.
* :class:`ResumeEvaluationJson`: BenchMARL's JSON writer starts empty after
  ``experiment.restore_file=...`` and would overwrite the file with the resumed evaluations only.
  This callback loads the evaluation steps up to the restored frame count back into the writer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from benchmarl.experiment.callback import Callback
from tensordict import TensorDictBase

#: the console lines, also appended to this file in the run folder
EVALUATIONS_LOG = "evaluations.log"


def cut_at_done(td: TensorDictBase) -> TensorDictBase:
    """One rollout ``[T, ...]`` up to and including its first global done (BenchMARL's logger
    does the same, in place, but only when something is logged)."""
    done = td.get(("next", "done"), None)
    if done is None:
        return td
    done = done.reshape(done.shape[0], -1).any(-1)  # [T]
    index = done.nonzero()
    return td[: int(index[0]) + 1] if index.numel() else td


def episode_returns(
    rollouts: list[TensorDictBase], group_map: dict[str, list[str]]
) -> torch.Tensor:
    """Return of every evaluation episode, ``[n_episodes]`` (as BenchMARL's evaluation JSON:
    per group, the reward summed over time and averaged over agents; then averaged over groups).

    Each rollout ``[T, ...]`` is cut at its first done (:func:`cut_at_done`).
    """
    returns = []
    for td in rollouts:
        td = cut_at_done(td)
        per_group = []
        for group in group_map:
            reward = td.get(("next", group, "reward"), None)
            if reward is None:
                reward = td.get(("next", "reward"))
            per_group.append(reward.sum(0).float().mean())
        returns.append(torch.stack(per_group).mean())
    return torch.stack(returns) if returns else torch.zeros(0)


def final_info(rollouts: list[TensorDictBase], key: str) -> torch.Tensor | None:
    """``("next", "info", key)`` at the last step of every episode, ``[n_episodes]`` float, or
    None when the rollouts have no such key."""
    if not rollouts or ("next", "info", key) not in rollouts[0].keys(True, True):
        return None
    return torch.stack(
        [cut_at_done(td).get(("next", "info", key))[-1].reshape(-1)[0] for td in rollouts]
    ).float()


class EvaluationLine(Callback):
    """Print one line per evaluation (see the module docstring); add predator-prey capture counts
    to the evaluation JSON."""

    def __init__(self) -> None:
        super().__init__()
        self._fractions: list[float] = []

    def on_train_end(self, training_td: TensorDictBase, group: str) -> None:
        value = training_td.get("fraction_in_recognition_set", None)
        if value is not None:
            self._fractions.append(float(value.float().mean()))

    def on_evaluation_end(self, rollouts: list[TensorDictBase]) -> None:
        experiment = self.experiment
        if not rollouts:
            return
        run = f"{experiment.algorithm_name} {experiment.task_name} seed {experiment.seed}"
        parts = [
            f"[eval {run}] frames {experiment.total_frames} iter {experiment.n_iters_performed}"
        ]
        returns = episode_returns(rollouts, experiment.group_map)
        parts.append(f"return {returns.mean().item():.2f}")
        captures = final_info(rollouts, "captures")
        if captures is not None:
            miscaptures = final_info(rollouts, "miscaptures")
            metric = f"captures {captures.mean().item():.2f}"
            extra: dict[str, torch.Tensor] = {"captures": captures}
            if miscaptures is not None:
                metric += f" miscaptures {miscaptures.mean().item():.2f}"
                extra["miscaptures"] = miscaptures
            parts.append(metric)
            writer = getattr(experiment.logger, "json_writer", None)
            if writer is not None:
                writer.write(
                    metrics=extra,
                    total_frames=experiment.total_frames,
                    evaluation_step=experiment.total_frames
                    // experiment.config.evaluation_interval,
                )
        # the intersection's "win", the StarCraft tasks' (SMACv2, SMAC, SMAX) "battle_won"
        win = final_info(rollouts, "win")
        if win is None:
            win = final_info(rollouts, "battle_won")
        if win is not None:
            parts.append(f"win rate {win.mean().item():.2f}")
        if self._fractions:
            parts.append(f"A_r {sum(self._fractions) / len(self._fractions):.3f}")
            self._fractions = []
        line = " | ".join(parts)
        print(line, flush=True)
        with open(Path(experiment.folder_name) / EVALUATIONS_LOG, "a") as f:
            f.write(line + "\n")


class ResumeEvaluationJson(Callback):
    """Keep the evaluations before a restore in the run's marl-eval JSON (see module docstring)."""

    def on_load_state_dict(self, state_dict: dict[str, Any]) -> None:
        writer = getattr(getattr(self.experiment, "logger", None), "json_writer", None)
        if writer is None or not Path(writer.path).exists():
            return
        frames = int(state_dict["state"]["total_frames"])
        merge_previous_evaluations(writer.run_data, Path(writer.path), frames)


def _run_data(data: dict[str, Any]) -> dict[str, Any] | None:
    """The single ``{env: {task: {algorithm: {seed_k: run_data}}}}`` leaf of a marl-eval JSON."""
    for _ in range(4):
        if not isinstance(data, dict) or len(data) != 1:
            return None
        data = next(iter(data.values()))
    return data if isinstance(data, dict) else None


def merge_previous_evaluations(run_data: dict[str, Any], path: Path, max_frames: int) -> None:
    """Put the ``step_*`` entries of the JSON file at ``path`` with ``step_count <= max_frames``
    into ``run_data`` (entries already there win) and recompute ``absolute_metrics`` (maxima)."""
    try:
        with open(path) as f:
            previous = _run_data(json.load(f))
    except (OSError, json.JSONDecodeError):
        return
    if previous is None:
        return
    for key, value in previous.items():
        if key.startswith("step_") and int(value.get("step_count", math.inf)) <= max_frames:
            run_data.setdefault(key, value)
    maxima: dict[str, list[float]] = {}
    for key, value in run_data.items():
        if not key.startswith("step_"):
            continue
        for metric, values in value.items():
            if metric == "step_count" or not isinstance(values, list) or not values:
                continue
            best = max(values)
            if metric not in maxima or best > maxima[metric][0]:
                maxima[metric] = [best]
    run_data["absolute_metrics"] = maxima
