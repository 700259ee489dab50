"""benchmarl-pow: POW and its baselines as a BenchMARL/TorchRL extension.

Importing this package registers our algorithms (``pow_qmix``, ``qmix_lambda``, ...) and tasks
(``matrix_game/*``, ...) with BenchMARL, so its ``Experiment``, ``Benchmark`` and Hydra entry points
find them by name.
"""

from benchmarl_pow.registration import register

register()

__version__ = "0.1.0"
__all__ = ["register", "__version__"]
