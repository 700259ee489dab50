"""QMIX as PyMARL2 runs it (the paper's QMIX baseline), pow_spec.md §3.1.

Differs from BenchMARL's ``qmix`` in four ways: 2-layer hypernetworks in the mixer, double-Q
bootstrapping (online greedy next action scored by the target Q_tot), TD(λ) targets over stored
sequences, and the 0.5·MSE loss.
"""

from dataclasses import dataclass
from typing import ClassVar

from benchmarl_pow.algorithms.common import WeightedMixerAlgorithm, WeightedMixerConfig


class QmixLambda(WeightedMixerAlgorithm):
    """QMIX with TD(λ) and double-Q targets; unweighted. Config: :class:`QmixLambdaConfig`."""

    mixer_kind = "qmix"
    bootstrap = "mixer"


@dataclass
class QmixLambdaConfig(WeightedMixerConfig):
    """Configuration of :class:`QmixLambda` (yaml: ``conf/algorithm/qmix_lambda.yaml``)."""

    registry_name: ClassVar[str] = "qmix_lambda"

    @staticmethod
    def associated_class():
        return QmixLambda
