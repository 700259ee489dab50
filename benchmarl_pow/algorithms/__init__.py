"""Our BenchMARL algorithms. ``ALGORITHMS`` maps the registry name to the config dataclass."""

from benchmarl_pow.algorithms.common import WeightedMixerAlgorithm, WeightedMixerConfig
from benchmarl_pow.algorithms.cw_qmix import CwQmix, CwQmixConfig
from benchmarl_pow.algorithms.ow_qmix import OwQmix, OwQmixConfig
from benchmarl_pow.algorithms.pow_qmix import PowQmix, PowQmixConfig
from benchmarl_pow.algorithms.pow_qplex import PowQplex, PowQplexConfig
from benchmarl_pow.algorithms.pow_vdn import PowVdn, PowVdnConfig
from benchmarl_pow.algorithms.qmix_lambda import QmixLambda, QmixLambdaConfig
from benchmarl_pow.algorithms.qplex import Qplex, QplexConfig
from benchmarl_pow.algorithms.resq import Resq, ResqConfig
from benchmarl_pow.algorithms.vdn_lambda import VdnLambda, VdnLambdaConfig

ALGORITHMS: dict[str, type[WeightedMixerConfig]] = {
    config.registry_name: config
    for config in (
        PowQmixConfig,
        PowVdnConfig,
        PowQplexConfig,
        QmixLambdaConfig,
        VdnLambdaConfig,
        QplexConfig,
        CwQmixConfig,
        OwQmixConfig,
        ResqConfig,
    )
}

__all__ = [
    "ALGORITHMS",
    "CwQmix",
    "CwQmixConfig",
    "OwQmix",
    "OwQmixConfig",
    "PowQmix",
    "PowQmixConfig",
    "PowQplex",
    "PowQplexConfig",
    "PowVdn",
    "PowVdnConfig",
    "QmixLambda",
    "QmixLambdaConfig",
    "Qplex",
    "QplexConfig",
    "Resq",
    "ResqConfig",
    "VdnLambda",
    "VdnLambdaConfig",
    "WeightedMixerAlgorithm",
    "WeightedMixerConfig",
]
