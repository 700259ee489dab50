"""POW-QMIX (pow_spec.md §3.6): QMIX trained on the potentially optimal joint actions.

A recognition network Q_r (IGM with respect to the agents' own utilities) is fitted to the
TD(λ) target of an unrestricted central critic Q̂* with its own optimiser, ``recognition_updates``
steps per learner call. Samples whose joint action is within C of Q_r's greedy value form the
recognition set A_r and get weight 1 in the Q_tot loss; the others get α (0).
"""

from dataclasses import dataclass
from typing import ClassVar

from benchmarl_pow.algorithms.common import PowFields, WeightedMixerAlgorithm, WeightedMixerConfig
from benchmarl_pow.objectives import RecognitionSetRule


class PowAlgorithm(WeightedMixerAlgorithm):
    """Shared POW wiring: Q̂* bootstrap, Q_r, recognition-set weights. Mixer set by subclasses."""

    bootstrap = "central"
    uses_recognition = True

    def make_rule(self) -> RecognitionSetRule:
        return RecognitionSetRule(
            threshold=self.preset("threshold"),
            alpha=self.other_actions_weight if self.other_actions_weight is not None else 0.0,
            no_weighted_steps=self.preset("no_weighted_steps"),
        )


class PowQmix(PowAlgorithm):
    """POW with the monotonic QMIX mixer. Config: :class:`PowQmixConfig`."""

    mixer_kind = "qmix"


@dataclass
class PowQmixConfig(WeightedMixerConfig, PowFields):
    """Configuration of :class:`PowQmix` (yaml: ``conf/algorithm/pow_qmix.yaml``)."""

    registry_name: ClassVar[str] = "pow_qmix"

    @staticmethod
    def associated_class():
        return PowQmix
