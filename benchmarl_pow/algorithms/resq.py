"""ResQ (pow_spec.md §3.5): Q_jt = Q_tot + w_r·Q_r with a non-positive residual Q_r = −|R(s,a)|
masked to 0 at the greedy joint action, so argmax Q_jt = argmax Q_tot.

Deviation: Adam, as the paper says (the release's RMSprop is a bug, D16). ResQ's L_noopt term is
identically zero with the negative-abs residual and is omitted.
"""

from dataclasses import MISSING, dataclass
from typing import ClassVar

from benchmarl_pow.algorithms.common import (
    CentralCriticFields,
    WeightedMixerAlgorithm,
    WeightedMixerConfig,
)


class Resq(WeightedMixerAlgorithm):
    """ResQ. Config: :class:`ResqConfig`. All squared errors without the 0.5 factor."""

    mixer_kind = "qmix"
    bootstrap = "central"
    uses_residual = True
    mixer_loss_coef = 1.0
    central_loss_coef = 1.0


@dataclass
class ResqConfig(WeightedMixerConfig, CentralCriticFields):
    """Configuration of :class:`Resq` (yaml: ``conf/algorithm/resq.yaml``).

    Attributes:
        residual_mixing_embed_dim: width of the residual head R(s, a) (128).
    """

    residual_mixing_embed_dim: int = MISSING
    registry_name: ClassVar[str] = "resq"

    @staticmethod
    def associated_class():
        return Resq
