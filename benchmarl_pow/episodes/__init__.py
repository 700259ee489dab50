"""The paper's training regime: episode-synchronous collection, whole-episode replay, a schedule
counted in finished episodes, padding marked by the ``"valid"`` key (``regime=episodes``).

Knows nothing of losses or algorithms (architecture.md): a loss learns about padding from the
``"valid"`` key alone.
"""

from benchmarl_pow.episodes.config import RegimeConfig
from benchmarl_pow.episodes.experiment import EpisodeExperiment
from benchmarl_pow.episodes.layout import (
    IS_INIT_KEY,
    VALID_KEY,
    EpisodeStorageTransform,
    episodes_from_rollout,
    truncate_to_longest,
)
from benchmarl_pow.episodes.replay import DistinctSampler, make_episode_buffer

__all__ = [
    "IS_INIT_KEY",
    "VALID_KEY",
    "DistinctSampler",
    "EpisodeExperiment",
    "EpisodeStorageTransform",
    "RegimeConfig",
    "episodes_from_rollout",
    "make_episode_buffer",
    "truncate_to_longest",
]
