"""CW-QMIX (centrally weighted QMIX), pow_spec.md §3.4: weight 1 when the taken joint action is
the greedy one or its target beats the target Q̂* of the greedy one, α otherwise."""

from dataclasses import dataclass
from typing import ClassVar

from benchmarl_pow.algorithms.common import (
    CentralCriticFields,
    WeightedMixerAlgorithm,
    WeightedMixerConfig,
)
from benchmarl_pow.objectives import CentralWeightingRule


class CwQmix(WeightedMixerAlgorithm):
    """CW-QMIX. Config: :class:`CwQmixConfig`. Q_tot loss without the 0.5 factor (§3.4)."""

    mixer_kind = "qmix"
    bootstrap = "central"
    mixer_loss_coef = 1.0

    def make_rule(self) -> CentralWeightingRule:
        return CentralWeightingRule(alpha=self.preset("other_actions_weight"))


@dataclass
class CwQmixConfig(WeightedMixerConfig, CentralCriticFields):
    """Configuration of :class:`CwQmix`. ``other_actions_weight`` null = task preset (α)."""

    other_actions_weight: float | None = None
    registry_name: ClassVar[str] = "cw_qmix"

    @staticmethod
    def associated_class():
        return CwQmix
