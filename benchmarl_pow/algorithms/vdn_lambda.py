"""VDN as PyMARL2 runs it (the paper's VDN baseline), pow_spec.md §3.2: Q_tot = Σ_i Q_i with
double-Q bootstrapping from the target agents and TD(λ) targets over stored sequences."""

from dataclasses import dataclass
from typing import ClassVar

from benchmarl_pow.algorithms.common import WeightedMixerAlgorithm, WeightedMixerConfig


class VdnLambda(WeightedMixerAlgorithm):
    """VDN with TD(λ) and double-Q targets; unweighted. Config: :class:`VdnLambdaConfig`."""

    mixer_kind = "vdn"
    bootstrap = "mixer"


@dataclass
class VdnLambdaConfig(WeightedMixerConfig):
    """Configuration of :class:`VdnLambda` (yaml: ``conf/algorithm/vdn_lambda.yaml``)."""

    registry_name: ClassVar[str] = "vdn_lambda"

    @staticmethod
    def associated_class():
        return VdnLambda
