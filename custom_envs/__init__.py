"""TorchRL environments of benchmarl-pow and their BenchMARL tasks.

Nothing here imports ``benchmarl_pow``: environments know no learning algorithm. The
intersection task imports ``highway_env`` lazily, so this package imports without the extra.
"""

from custom_envs.common import ProjectTask, conf_root
from custom_envs.fake_smacv2 import FakeSmacv2Env, FakeSmacv2Task
from custom_envs.intersection import HighwayTask
from custom_envs.matrix_game import MatrixGameEnv, MatrixGameTask
from custom_envs.predator_prey import PredatorPreyEnv, PredatorPreyTask
from custom_envs.smac import SmacTask, Smacv2PaperTask
from custom_envs.smax import SmaxEnv, SmaxTask

#: Every task enum of this project; ``benchmarl_pow`` registers them with BenchMARL.
TASKS: list[type[ProjectTask]] = [
    MatrixGameTask,
    PredatorPreyTask,
    HighwayTask,
    FakeSmacv2Task,
    SmaxTask,
    SmacTask,
    Smacv2PaperTask,
]

__all__ = [
    "TASKS",
    "FakeSmacv2Env",
    "FakeSmacv2Task",
    "HighwayTask",
    "MatrixGameEnv",
    "MatrixGameTask",
    "PredatorPreyEnv",
    "PredatorPreyTask",
    "ProjectTask",
    "SmacTask",
    "Smacv2PaperTask",
    "SmaxEnv",
    "SmaxTask",
    "conf_root",
]
