"""POW-VDN: POW (see :mod:`benchmarl_pow.algorithms.pow_qmix`) with Q_tot = Σ_i Q_i."""

from dataclasses import dataclass
from typing import ClassVar

from benchmarl_pow.algorithms.common import PowFields, WeightedMixerConfig
from benchmarl_pow.algorithms.pow_qmix import PowAlgorithm


class PowVdn(PowAlgorithm):
    """POW with the VDN sum. Config: :class:`PowVdnConfig`."""

    mixer_kind = "vdn"


@dataclass
class PowVdnConfig(WeightedMixerConfig, PowFields):
    """Configuration of :class:`PowVdn` (yaml: ``conf/algorithm/pow_vdn.yaml``)."""

    registry_name: ClassVar[str] = "pow_vdn"

    @staticmethod
    def associated_class():
        return PowVdn
