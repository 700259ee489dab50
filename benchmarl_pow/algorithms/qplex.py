"""QPLEX (DMAQ mixer with attention λ, 2 hypernet layers), pow_spec.md §2.4 and §3.3.

The bootstrap is the target DMAQ at the online greedy next action, whose advantage part uses the
target network's own per-agent maxima.
"""

from dataclasses import dataclass
from typing import ClassVar

from benchmarl_pow.algorithms.common import QplexFields, WeightedMixerAlgorithm, WeightedMixerConfig


class Qplex(WeightedMixerAlgorithm):
    """QPLEX; unweighted. Config: :class:`QplexConfig`."""

    mixer_kind = "qplex"
    bootstrap = "mixer"


@dataclass
class QplexConfig(WeightedMixerConfig, QplexFields):
    """Configuration of :class:`Qplex` (yaml: ``conf/algorithm/qplex.yaml``)."""

    registry_name: ClassVar[str] = "qplex"

    @staticmethod
    def associated_class():
        return Qplex
