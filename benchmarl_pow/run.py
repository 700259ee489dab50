"""Hydra entry point: ``python benchmarl_pow/run.py algorithm=<name> task=<env>/<task>``.

It is BenchMARL's own ``run.py`` with our package imported first (which registers our algorithms
and tasks) and our config tree as the primary one; BenchMARL's config tree stays on the search
path, so ``algorithm=qmix task=vmas/balance`` works as well as ``algorithm=pow_qmix
task=matrix_game/nonmonotonic``. Multirun (``-m``) works as in BenchMARL.
"""

from __future__ import annotations

import hydra
import torch
from benchmarl.hydra_config import load_experiment_from_hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import benchmarl_pow  # noqa: F401  (registers our algorithms and tasks)
from benchmarl_pow.callbacks import default_callbacks
from benchmarl_pow.diagnostics import is_matrix_task, matrix_report


@hydra.main(version_base=None, config_path="pkg://benchmarl_pow.conf", config_name="config")
def hydra_experiment(cfg: DictConfig) -> None:
    """Build the experiment from the composed config, run it, and report matrix-game results."""
    if cfg.get("torch_threads") is not None:
        torch.set_num_threads(int(cfg.torch_threads))
    choices = HydraConfig.get().runtime.choices
    task_name = choices.task
    print(f"\nAlgorithm: {choices.algorithm}, Task: {task_name}")
    print("\nLoaded config:\n")
    print(OmegaConf.to_yaml(cfg))

    experiment = load_experiment_from_hydra(
        cfg, task_name=task_name, callbacks=default_callbacks(task_name)
    )
    experiment.run()
    if is_matrix_task(experiment):
        print(matrix_report(experiment))


def main() -> None:
    hydra_experiment()


if __name__ == "__main__":
    main()
