"""BenchMARL's frame-counted loop (``regime=frames``) with an exact resume.

BenchMARL's ``Experiment`` already checkpoints the losses, the replay buffers and the collector's
frame counters. Its collector (a TorchRL ``SyncDataCollector``) keeps the training envs
mid-episode between iterations, so a run that stops after iteration k and resumes must also give
back, besides what :class:`~benchmarl_pow.resumable.ResumableMixin` adds for both regimes
(exploration, optimisers BenchMARL misses, target-updater counters, random states, rewound run
files):

* the collector's carried tensordict (the observation the next step acts on, the recurrent
  hidden states, the running episode returns, the ``is_init`` flags, the trajectory ids) and its
  trajectory counter;
* the training env's own running state (for this project's envs: their state tensors, step
  counters and random generators) and the evaluation env's (its generator decides the
  evaluation episodes), through the envs' ``state_dict()`` (PyTorch's extra-state hook, see
  :func:`~benchmarl_pow.resumable.env_state`).

An env that does not declare its state (``get_extra_state``) cannot be put back mid-episode:
the resumed run then starts new episodes at the checkpoint (one warning says so), and is exact
up to that. So is a run with ``experiment.collect_with_grad=True`` (BenchMARL's rollout loop
resets its envs when it starts).

BenchMARL's validation is unchanged (``checkpoint_interval`` a multiple of the frames collected
per iteration, ...).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from benchmarl.experiment import Experiment
from torchrl.collectors import Collector

from benchmarl_pow.episodes.config import RegimeConfig
from benchmarl_pow.resumable import (
    ResumableMixin,
    base_env,
    env_state,
    load_env_state,
    reload_run,
    tensordict_from_state,
    tensordict_state,
)

__all__ = ["FramesExperiment"]


def _carrier_name(collector: Collector) -> str:
    """The collector's attribute holding the carried tensordict (``_carrier`` in TorchRL 0.11,
    ``_shuttle`` before)."""
    return "_carrier" if hasattr(collector, "_carrier") else "_shuttle"


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


class FramesExperiment(ResumableMixin, Experiment):
    """BenchMARL's :class:`~benchmarl.experiment.Experiment`, unchanged in training, whose
    checkpoints resume exactly (see the module docstring).

    Args:
        regime: the regime config (``name="frames"``; default :class:`RegimeConfig`()), written to
            the run folder's ``regime.json``.
        *args, **kwargs: as for :class:`~benchmarl.experiment.Experiment`.
    """

    def __init__(self, *args: Any, regime: RegimeConfig | None = None, **kwargs: Any):
        regime = regime if regime is not None else RegimeConfig()
        if regime.episodic:
            raise ValueError(
                f"FramesExperiment needs regime.name='frames', got {regime.name!r} "
                "(use benchmarl_pow.episodes.EpisodeExperiment)"
            )
        self.regime = regime
        super().__init__(*args, **kwargs)
        self._write_run_files()

    # -------------------------------------------------------------- checkpoint
    def _live_collector(self) -> Collector | None:
        """BenchMARL's collector while it can still step (None with ``collect_with_grad``, after
        ``close()``, or for another collector type)."""
        collector = getattr(self, "collector", None)
        if (
            self.config.collect_with_grad
            or not isinstance(collector, Collector)
            or getattr(collector, "closed", False)
        ):
            return None
        return collector

    def _resume_state(self) -> dict[str, Any]:
        """The shared resume state plus the envs' running states and the collector's carried
        tensordict (``"frames"``)."""
        state = super()._resume_state()
        frames: dict[str, Any] = {"test_env": env_state(self.test_env)}
        collector = self._live_collector()
        if collector is not None:
            frames["train_env"] = env_state(collector.env)
            try:
                frames["carrier"] = tensordict_state(getattr(collector, _carrier_name(collector)))
            except ValueError as err:  # the checkpoint must stay loadable with weights_only
                frames["carrier"] = None
                if not getattr(self, "_warned_carrier", False):
                    self._warned_carrier = True
                    warnings.warn(
                        f"the collector's carried tensordict is left out of checkpoints ({err}): "
                        "a resumed run starts new episodes",
                        stacklevel=2,
                    )
            frames["traj_id"] = int(collector._traj_pool._traj_id)
        state["frames"] = frames
        return state

    def _load_resume_state(self, state: Mapping[str, Any]) -> None:
        super()._load_resume_state(state)
        frames = state.get("frames")
        if frames is None:
            warnings.warn(
                "the checkpoint holds no env or collector state (written before exact resume): "
                "the training envs start new episodes",
                stacklevel=3,
            )
            return
        if frames.get("test_env") is not None:
            try:
                load_env_state(self.test_env, frames["test_env"])
            except (ValueError, RuntimeError, KeyError):
                # another evaluation_episodes (e.g. benchmarl_pow.evaluate --episodes): the
                # evaluation envs keep their fresh state; training is not affected
                pass
        collector = self._live_collector()
        if collector is None:
            if self.config.collect_with_grad:
                warnings.warn(
                    "experiment.collect_with_grad=True: BenchMARL's rollout loop resets its envs "
                    "when it starts, so the resumed run starts new episodes at the checkpoint",
                    stacklevel=3,
                )
            return
        if "traj_id" in frames:
            collector._traj_pool._traj_id.fill_(int(frames["traj_id"]))
        problem = self._restore_training_env(collector, frames)
        if problem is not None:
            warnings.warn(
                f"resume is exact up to the training envs' mid-episode state: {problem}; the "
                "envs start new episodes at the checkpoint",
                stacklevel=3,
            )
            self._restart_trajectories(collector)

    def _restore_training_env(
        self, collector: Collector, frames: Mapping[str, Any]
    ) -> str | None:
        """Put the training env and the collector's carried tensordict back; the reason when
        that cannot be done (None when done)."""
        saved_env, saved_carrier = frames.get("train_env"), frames.get("carrier")
        if saved_env is None:
            return (
                f"{type(base_env(collector.env)).__name__} does not declare its running state "
                "(get_extra_state/set_extra_state)"
            )
        if saved_carrier is None:
            return "the checkpoint holds no collector state"
        name = _carrier_name(collector)
        try:
            carrier = tensordict_from_state(saved_carrier)
        except (ValueError, RuntimeError, KeyError, TypeError) as err:
            return f"the collector's saved state cannot be rebuilt ({_first_line(err)})"
        if carrier.batch_size != getattr(collector, name).batch_size:
            return (
                f"the checkpoint's envs have batch size {tuple(carrier.batch_size)}, these "
                f"{tuple(getattr(collector, name).batch_size)}"
            )
        try:
            load_env_state(collector.env, saved_env)
        except (ValueError, RuntimeError, KeyError) as err:
            return f"its saved state does not fit ({_first_line(err)})"
        setattr(collector, name, carrier)
        return None

    @staticmethod
    def _restart_trajectories(collector: Collector) -> None:
        """Give the fresh episodes of a resumed collector new trajectory ids (continuing the
        restored counter), as its own resets would."""
        carrier = getattr(collector, _carrier_name(collector))
        ids = collector._traj_pool.get_traj_and_increment(
            collector.n_env, device=collector.storing_device
        )
        carrier.set(("collector", "traj_ids"), ids.view(collector.env.batch_size))

    @staticmethod
    def reload_from_file(restore_file: str, experiment_patch: dict | None = None) -> Experiment:
        """Like :meth:`Experiment.reload_from_file`, for a run of either regime (the run folder's
        ``regime.json`` tells which; :func:`~benchmarl_pow.resumable.reload_run`)."""
        return reload_run(restore_file, experiment_patch)

    # -------------------------------------------------------------------- loop
    def _collection_loop(self) -> None:
        self._restore_rng()  # a resumed run continues the random streams of the original
        super()._collection_loop()
