"""The weighted mixer loss family: sequence targets, weighting rules and the loss module."""

from benchmarl_pow.objectives.targets import (
    available_or_all,
    gather_actions,
    masked_argmax,
    td_lambda_targets,
)
from benchmarl_pow.objectives.weighted_mixer_loss import WeightedMixerLoss
from benchmarl_pow.objectives.weighting import (
    CentralWeightingRule,
    OptimisticWeightingRule,
    RecognitionSetRule,
    WeightingRule,
    WeightInputs,
    residual_mask,
)

__all__ = [
    "CentralWeightingRule",
    "OptimisticWeightingRule",
    "RecognitionSetRule",
    "WeightInputs",
    "WeightedMixerLoss",
    "WeightingRule",
    "available_or_all",
    "gather_actions",
    "masked_argmax",
    "residual_mask",
    "td_lambda_targets",
]
