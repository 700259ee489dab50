"""POW-QPLEX: POW with the DMAQ mixer (3 attention hypernet layers, pow_spec.md §3.6, D11)."""

from dataclasses import dataclass
from typing import ClassVar

from benchmarl_pow.algorithms.common import PowFields, QplexFields, WeightedMixerConfig
from benchmarl_pow.algorithms.pow_qmix import PowAlgorithm


class PowQplex(PowAlgorithm):
    """POW with the QPLEX mixer. Config: :class:`PowQplexConfig`."""

    mixer_kind = "qplex"


@dataclass
class PowQplexConfig(WeightedMixerConfig, PowFields, QplexFields):
    """Configuration of :class:`PowQplex` (yaml: ``conf/algorithm/pow_qplex.yaml``)."""

    registry_name: ClassVar[str] = "pow_qplex"

    @staticmethod
    def associated_class():
        return PowQplex
