"""BenchMARL's ``Experiment`` with PyMARL2's episode schedule (``regime=episodes``).

One iteration (pow_spec.md §1.4): every env plays exactly one episode from a reset (TorchRL's
``rollout(break_when_all_done=True)``: a finished env is no longer stepped while the others go
on), the episodes are stored whole (:mod:`~benchmarl_pow.episodes.layout`), and once the buffer
holds ``start_training_episodes`` one learner call trains on ``batch_episodes`` distinct
episodes. Targets are hard-copied when ``target_update_episodes`` finished episodes have passed
since the last copy, checked after the learner call as PyMARL2 does. Every counter (ε, POW's
warm-up through the loss's ``total_frames``, ``max_n_frames``, evaluation and checkpoint
intervals, the logged ``counters/total_frames``) counts real env steps, never padding.

Everything else is BenchMARL's: policies, exploration module, losses, optimisers, the
optimiser loop (``_optimizer_loop``), evaluation, loggers, callbacks and checkpoints.
"""

from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from benchmarl.experiment import Experiment, ExperimentConfig
from tensordict.nn import TensorDictSequential
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives import HardUpdate

from benchmarl_pow.episodes.config import RegimeConfig
from benchmarl_pow.episodes.layout import VALID_KEY, episodes_from_rollout
from benchmarl_pow.episodes.replay import make_episode_buffer, replay_dump_dir
from benchmarl_pow.resumable import REGIME_FILE, ResumableMixin, reload_run
from benchmarl_pow.validation import check_replay_dump

__all__ = ["REGIME_FILE", "EpisodeExperiment", "EpisodeExperimentConfig"]


def _is_private(key) -> bool:
    parts = (key,) if isinstance(key, str) else key
    return any(str(part).startswith("_") for part in parts)


def _owner(key) -> str | None:
    """The group a nested key belongs to (its first name), None for a root key."""
    return key[0] if isinstance(key, tuple) and len(key) > 1 else None


@dataclass
class EpisodeExperimentConfig(ExperimentConfig):
    """BenchMARL's experiment config, validated for the episode loop: evaluation and checkpoint
    intervals are counted in real env steps and fire once that many have passed, so they need
    not be multiples of a (here unused) collector batch."""

    def validate(self, on_policy: bool) -> None:
        if self.keep_checkpoints_num is not None and self.keep_checkpoints_num <= 0:
            raise ValueError("keep_checkpoints_num must be greater than zero or null")
        if self.max_n_frames is None and self.max_n_iters is None:
            raise ValueError("max_n_frames and max_n_iters are both not set")

    @classmethod
    def of(cls, config: ExperimentConfig) -> EpisodeExperimentConfig:
        if isinstance(config, cls):
            return config
        return cls(**{f.name: getattr(config, f.name) for f in fields(ExperimentConfig)})


class _NoCollector:
    """Stands in for BenchMARL's collector, which the episode loop does not use (it rolls out
    the env itself); keeps the parent's ``close``/``state_dict`` working unchanged."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def update_policy_weights_(self) -> None:
        pass


class EpisodeExperiment(ResumableMixin, Experiment):
    """An :class:`~benchmarl.experiment.Experiment` trained on PyMARL2's episode schedule.

    Resumes exactly (:class:`~benchmarl_pow.resumable.ResumableMixin`, plus the episode counters
    and the replay dumped beside the checkpoint): every iteration starts from a reset, so no
    env or collector state crosses an iteration boundary.

    Args:
        regime: the episode regime's numbers (:class:`RegimeConfig`, ``name="episodes"``).
        *args, **kwargs: as for :class:`~benchmarl.experiment.Experiment`.
    """

    def __init__(self, *args: Any, regime: RegimeConfig, **kwargs: Any):
        if not regime.episodic:
            raise ValueError(f"EpisodeExperiment needs regime.name='episodes', got {regime.name!r}")
        self.regime = regime
        #: finished training episodes so far (PyMARL's ``episode`` counter)
        self.episodes = 0
        self.n_learner_calls = 0
        self.last_target_update_episode = 0
        self.last_evaluation_frames: int | None = None
        self.last_checkpoint_frames = 0
        if "config" in kwargs:
            kwargs["config"] = EpisodeExperimentConfig.of(kwargs["config"])
        super().__init__(*args, **kwargs)
        self._write_run_files()

    # ------------------------------------------------------------------ set-up
    def _setup_algorithm(self) -> None:
        super()._setup_algorithm()
        if not self.algorithm.has_rnn:
            raise ValueError(
                f"regime=episodes trains on whole episodes, but algorithm "
                f"'{type(self.algorithm).__name__}' stores flat transitions; use one of this "
                "project's algorithms (e.g. qmix_lambda instead of qmix) or regime=frames"
            )
        observation_keys = [
            k
            for k in self.test_env.full_observation_spec.keys(True, True)
            if not _is_private(k) and "info" not in ((k,) if isinstance(k, str) else k)
        ]
        self._episode_updaters: dict[str, HardUpdate | None] = {}
        for group in self.group_map:
            loss = self.losses[group]
            if getattr(getattr(loss, "tensor_keys", None), "valid", None) != VALID_KEY:
                raise ValueError(
                    f"regime=episodes needs a loss that masks padding (a '{VALID_KEY}' key); "
                    f"{type(loss).__name__} of '{type(self.algorithm).__name__}' does not: use "
                    "one of this project's algorithms or regime=frames"
                )
            self.replay_buffers[group] = make_episode_buffer(
                self.regime.buffer_episodes,
                self.regime.batch_episodes,
                [k for k in observation_keys if _owner(k) in (group, None)],
                device=self.config.buffer_device,
            )
            updater = self.target_updaters[group]
            if updater is not None and not isinstance(updater, HardUpdate):
                raise ValueError(
                    "regime=episodes copies the target networks every "
                    f"regime.target_update_episodes={self.regime.target_update_episodes} "
                    "episodes; set experiment.soft_target_update=False"
                )
            if updater is not None:
                # Copy on every step() call; the loop calls it when the episode count is due.
                updater.value_network_update_interval = 0
                updater.counter = 0
            self._episode_updaters[group] = updater
            self.target_updaters[group] = None  # not stepped by BenchMARL's optimiser loop

    def _setup_collector(self) -> None:
        self.policy = self.algorithm.get_policy_for_collection()
        self.group_policies = {}
        for group in self.group_map.keys():
            group_policy = self.policy.select_subsequence(out_keys=[(group, "action")])
            self.group_policies[group] = group_policy[0]
        self.rollout_env = self.env_func().to(self.config.sampling_device)
        self.collector = _NoCollector()

    def close(self) -> None:
        self.rollout_env.close()
        super().close()

    # -------------------------------------------------------------- checkpoint
    @staticmethod
    def buffer_dir(checkpoint: str | Path) -> Path:
        """Where the replay of ``checkpoint_N.pt`` is dumped: ``checkpoint_N.buffers/<group>``."""
        return replay_dump_dir(checkpoint)

    def _save_experiment(self) -> None:
        """BenchMARL's checkpoint, with each group's replay dumped beside it by
        ``ReplayBuffer.dumps`` (memory-mapped files).

        The dump is written first, under a temporary name renamed when complete, and the
        checkpoint after it, so the newest checkpoint always has its whole replay (a kill during
        the dump leaves the previous pair intact). Only the newest checkpoint keeps a dump (one replay is gigabytes); older ones hold the
        networks and counters, and resuming from one refills the replay (a warning says so).
        """
        if self.config.exclude_buffer_from_checkpoint:
            super()._save_experiment()
            return
        checkpoint_folder = self.folder_name / "checkpoints"
        checkpoint_folder.mkdir(parents=False, exist_ok=True)
        folder = self.buffer_dir(checkpoint_folder / f"checkpoint_{self.total_frames}.pt")
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        for group, buffer in self.replay_buffers.items():
            if len(buffer):
                buffer.dumps(partial / group)
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        super()._save_experiment()
        for dump in checkpoint_folder.glob("*.buffers*"):
            if dump != folder:
                shutil.rmtree(dump, ignore_errors=True)

    def _load_buffers(self) -> None:
        restore = self.config.restore_file
        if not restore or self.config.exclude_buffer_from_checkpoint:
            return
        folder = self.buffer_dir(restore)
        if not folder.is_dir():
            warnings.warn(
                f"{restore} has no replay dump beside it ({folder.name}: only the newest "
                "checkpoint keeps one); the replay starts empty and refills",
                stacklevel=2,
            )
            return
        for group, buffer in self.replay_buffers.items():
            if (folder / group).is_dir():
                buffer.loads(folder / group)

    def state_dict(self):
        """The shared resume state (:class:`~benchmarl_pow.resumable.ResumableMixin`: BenchMARL's
        checkpoint, exploration, random states) plus the episode counters. The replay is not
        pickled into it: :meth:`_save_experiment` dumps it beside the checkpoint (memory-mapped
        files)."""
        exclude = self.config.exclude_buffer_from_checkpoint
        self.config.exclude_buffer_from_checkpoint = True
        try:
            state = super().state_dict()
        finally:
            self.config.exclude_buffer_from_checkpoint = exclude
        state["episodes"] = {
            "episodes": self.episodes,
            "n_learner_calls": self.n_learner_calls,
            "last_target_update_episode": self.last_target_update_episode,
            "last_evaluation_frames": self.last_evaluation_frames,
            "last_checkpoint_frames": self.last_checkpoint_frames,
        }
        return state

    def load_state_dict(self, state_dict) -> None:
        restore = self.config.restore_file
        if restore and not self.config.exclude_buffer_from_checkpoint:
            check_replay_dump(restore)  # before the run's files are rewound below
        super().load_state_dict(state_dict)
        self._load_buffers()
        for key, value in state_dict.get("episodes", {}).items():
            setattr(self, key, value)

    @staticmethod
    def reload_from_file(restore_file: str, experiment_patch: dict | None = None) -> Experiment:
        """Like :meth:`Experiment.reload_from_file`, for a run of either regime (the run folder's
        ``regime.json`` tells which; :func:`~benchmarl_pow.resumable.reload_run`)."""
        return reload_run(restore_file, experiment_patch)

    # -------------------------------------------------------------------- loop
    def _done(self) -> bool:
        max_frames = self.config.max_n_frames
        max_iters = self.config.max_n_iters
        return (max_frames is not None and self.total_frames >= max_frames) or (
            max_iters is not None and self.n_iters_performed >= max_iters
        )

    def _iteration_seed(self, salt: int) -> int:
        """A seed derived from the run's seed and a counter (iteration or frames)."""
        return (int(self.seed) * 1_000_003 + 7_919 * (salt + 1)) % (2**31 - 1)

    def _collect(self):
        """One episode per env from a reset: ``[n_envs, L + 1]`` rows (layout module).

        The envs are reseeded from (seed, iteration) first, so that a run resumed from a
        checkpoint plays exactly the episodes the uninterrupted run would have played (each env
        still gets its own derived seed).
        """
        self.rollout_env.set_seed(self._iteration_seed(self.n_iters_performed))
        with set_exploration_type(ExplorationType.RANDOM), torch.no_grad():
            rollout = self.rollout_env.rollout(
                max_steps=self.max_steps,
                policy=self.policy,
                auto_cast_to_device=True,
                break_when_any_done=False,
                break_when_all_done=True,
                auto_reset=True,
            )
        return episodes_from_rollout(rollout, self.max_steps)

    def _evaluation_loop(self) -> None:
        """BenchMARL's evaluation, with the test env reseeded from (seed, frames) so that it is
        the same after a resume."""
        try:
            self.test_env.set_seed(self._iteration_seed(self.total_frames))
        except NotImplementedError:
            pass
        super()._evaluation_loop()

    def _copy_targets_if_due(self) -> None:
        """PyMARL2's check after each learner call: a hard copy once ``target_update_episodes``
        episodes have passed since the last one (the counter excludes this iteration's)."""
        due = (self.episodes - self.last_target_update_episode) / self.regime.target_update_episodes
        if due >= 1.0:
            for updater in self._episode_updaters.values():
                if updater is not None:
                    updater.step()
            self.last_target_update_episode = self.episodes

    def _collection_loop(self) -> None:
        self._restore_rng()  # a resumed run continues the random streams of the original
        while not self._done():
            iteration_start = time.time()
            batch = self._collect()
            collection_time = time.time() - iteration_start
            valid = batch.get(VALID_KEY).squeeze(-1)
            current_frames = int(valid.sum())
            n_episodes = batch.shape[0]
            self.total_frames += current_frames
            self.mean_return = self.logger.log_collection(
                batch[valid], total_frames=self.total_frames, task=self.task,
                step=self.n_iters_performed,
            )
            self._on_batch_collected(batch)

            training_start = time.time()
            trained = False
            for group in self.train_group_map.keys():
                group_batch = batch.exclude(*self._get_excluded_keys(group)).to(
                    self.config.train_device
                )
                group_batch = self.algorithm.process_batch(group, group_batch)
                buffer = self.replay_buffers[group]
                buffer.extend(group_batch.to(buffer.storage.device))
                if len(buffer) >= self.regime.start_training_episodes:
                    training_tds = [
                        self._optimizer_loop(group)
                        for _ in range(self.regime.learner_calls_per_iteration)
                    ]
                    trained = True
                    training_td = torch.stack(training_tds)
                    self.logger.log_training(group, training_td, step=self.n_iters_performed)
                    self._on_train_end(training_td, group)
                policy = self.group_policies[group]
                explore_layer = policy[-1] if isinstance(policy, TensorDictSequential) else policy
                if hasattr(explore_layer, "step"):  # ε counts real env steps
                    explore_layer.step(current_frames)
            if trained:
                self.n_learner_calls += 1
                self._copy_targets_if_due()
            self.episodes += n_episodes
            training_time = time.time() - training_start

            if self.config.evaluation and (
                self.last_evaluation_frames is None
                or self.total_frames - self.last_evaluation_frames
                >= self.config.evaluation_interval
            ) and (len(self.config.loggers) or self.config.create_json):
                self.last_evaluation_frames = self.total_frames
                self._evaluation_loop()

            iteration_time = time.time() - iteration_start
            self.total_time += iteration_time
            self.logger.log(
                {
                    "timers/collection_time": collection_time,
                    "timers/training_time": training_time,
                    "timers/iteration_time": iteration_time,
                    "timers/total_time": self.total_time,
                    "counters/current_frames": current_frames,
                    "counters/total_frames": self.total_frames,
                    "counters/iter": self.n_iters_performed,
                    "counters/episodes": self.episodes,
                    "counters/learner_calls": self.n_learner_calls,
                },
                step=self.n_iters_performed,
            )
            self.n_iters_performed += 1
            self.logger.commit()
            if (
                self.config.checkpoint_interval > 0
                and self.total_frames - self.last_checkpoint_frames
                >= self.config.checkpoint_interval
            ):
                self.last_checkpoint_frames = self.total_frames
                self._save_experiment()
        if self.config.checkpoint_at_end:
            self._save_experiment()
        self.close()
