"""benchmarl-pow: POW and its baselines as a BenchMARL/TorchRL extension.

Importing this package registers our algorithms (``pow_qmix``, ``qmix_lambda``, ...) and tasks
(``matrix_game/*``, ...) with BenchMARL, so its ``Experiment``, ``Benchmark`` and Hydra entry points
find them by name.
"""

from benchmarl_pow.registration import register

register()


def experiment_config(preset: str = "base", **overrides):
    """This project's experiment preset as a BenchMARL ``ExperimentConfig`` (keyword arguments
    override keys); see :func:`benchmarl_pow.compose.experiment_config`."""
    from benchmarl_pow.compose import experiment_config as _experiment_config

    return _experiment_config(preset, **overrides)


__version__ = "0.1.0"
__all__ = ["experiment_config", "register", "__version__"]
