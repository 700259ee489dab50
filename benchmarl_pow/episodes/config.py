"""Config of the training regime (Hydra group ``regime``): BenchMARL's frames or PyMARL2's episodes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RegimeConfig:
    """``regime=frames`` (BenchMARL's loop, the default) or ``regime=episodes`` (PyMARL2's).

    In the episode regime (pow_spec.md §1.2-1.4) every iteration plays exactly one episode in
    each of ``experiment.off_policy_n_envs_per_worker`` envs, a finished env waits for the
    longest one, and the replay holds whole episodes. The frame-counted keys
    ``off_policy_collected_frames_per_batch``, ``off_policy_train_batch_size``,
    ``off_policy_memory_size``, ``off_policy_n_optimizer_steps`` and
    ``hard_target_update_frequency`` are then unused; these keys take their place.

    Attributes:
        name: ``"frames"`` or ``"episodes"``.
        buffer_episodes: replay capacity in whole episodes (PyMARL2: 5000).
        batch_episodes: distinct episodes per learner call (128).
        start_training_episodes: stored episodes needed before the first learner call (128).
        target_update_episodes: hard target copy every this many finished episodes (200).
        learner_calls_per_iteration: learner calls after each iteration's episodes (1).
    """

    name: str = "frames"
    buffer_episodes: int = 5000
    batch_episodes: int = 128
    start_training_episodes: int = 128
    target_update_episodes: int = 200
    learner_calls_per_iteration: int = 1

    def __post_init__(self) -> None:
        if self.name not in ("frames", "episodes"):
            raise ValueError(f"regime.name={self.name!r} is not valid; expected 'frames' or 'episodes'")
        for key in (
            "buffer_episodes",
            "batch_episodes",
            "start_training_episodes",
            "target_update_episodes",
            "learner_calls_per_iteration",
        ):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"regime.{key}={value!r} is not valid; expected an integer >= 1")
        if self.batch_episodes > self.buffer_episodes:
            raise ValueError(
                f"regime.batch_episodes={self.batch_episodes} is not valid; expected at most "
                f"regime.buffer_episodes={self.buffer_episodes}"
            )
        if self.start_training_episodes < self.batch_episodes:
            raise ValueError(
                f"regime.start_training_episodes={self.start_training_episodes} is not valid; "
                f"expected at least regime.batch_episodes={self.batch_episodes} (a batch is "
                "made of distinct episodes)"
            )

    @property
    def episodic(self) -> bool:
        return self.name == "episodes"
