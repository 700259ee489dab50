"""OW-QMIX (optimistically weighted QMIX), pow_spec.md §3.4: weight 1 where Q_tot
under-estimates the target, α otherwise."""

from dataclasses import dataclass
from typing import ClassVar

from benchmarl_pow.algorithms.common import (
    CentralCriticFields,
    WeightedMixerAlgorithm,
    WeightedMixerConfig,
)
from benchmarl_pow.objectives import OptimisticWeightingRule


class OwQmix(WeightedMixerAlgorithm):
    """OW-QMIX. Config: :class:`OwQmixConfig`. Q_tot loss without the 0.5 factor (§3.4)."""

    mixer_kind = "qmix"
    bootstrap = "central"
    mixer_loss_coef = 1.0

    def make_rule(self) -> OptimisticWeightingRule:
        return OptimisticWeightingRule(alpha=self.preset("other_actions_weight"))


@dataclass
class OwQmixConfig(WeightedMixerConfig, CentralCriticFields):
    """Configuration of :class:`OwQmix`. ``other_actions_weight`` null = task preset (α)."""

    other_actions_weight: float | None = None
    registry_name: ClassVar[str] = "ow_qmix"

    @staticmethod
    def associated_class():
        return OwQmix
