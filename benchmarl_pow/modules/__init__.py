"""Pure ``torch.nn`` networks: the factorised mixers, the central critic head and POW's recognition mixer.

Nothing here knows how it is trained (no imports from ``objectives``/``algorithms`` or BenchMARL).
"""

from .central_critic import CentralMixer
from .dmaq import DmaqMixer, SiWeight, dmaq_combine, dmaq_parts
from .exploration import LinearEGreedyModule
from .mlp import GroupedMLP, build_mlp
from .qmix_mixer import QmixMixer
from .recognition_mixer import RecognitionMixer, lambdas_from_hypernet_outputs, recognition_value
from .vdn import VdnMixer

__all__ = [
    "CentralMixer",
    "DmaqMixer",
    "GroupedMLP",
    "LinearEGreedyModule",
    "QmixMixer",
    "RecognitionMixer",
    "SiWeight",
    "VdnMixer",
    "build_mlp",
    "dmaq_combine",
    "dmaq_parts",
    "lambdas_from_hypernet_outputs",
    "recognition_value",
]
