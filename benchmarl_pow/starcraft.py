"""StarCraft tasks on the command line: a preflight check and the paper's training regime.

Two things happen before Hydra composes anything (see :func:`prepare_cli`, called by
``run.py``'s ``main``):

* **Preflight.** ``smacv2/*`` (BenchMARL's SMACv2 tasks) and ``smac/*`` (SMAC v1 maps through
  TorchRL's SMACv2 wrapper) need the ``smacv2`` Python package *and* the StarCraft II binary
  (``$SC2PATH``, default ``~/StarCraftII``, with its ``Versions`` folder). TorchRL and BenchMARL only
  check the package (``find_spec``), and fail deep inside the experiment with a traceback.
  :func:`starcraft_problem` says, in one short message, what is missing, how to install it and
  which StarCraft-free tasks (``smax/*``) to run instead; the CLI prints it and exits with status 1
  before any config dump or run folder.
* **Regime.** For the SMAC family (``smacv2/*``, ``smac/*``, ``smax/*``) the paper trained with
  PyMARL2's regime. When the user names no ``experiment=``, :func:`regime_overrides` adds
  ``experiment=pymarl2``, the paper's agent network (``model=rnn_agent``, unless ``model=`` is
  given), its budget ``t_max`` = 10.05M frames and 32 test episodes (unless the user set those
  keys). An explicit ``experiment=...`` is always left as the user wrote it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from benchmarl.experiment.callback import Callback
from tensordict import TensorDictBase

#: Environments that run the real StarCraft II game.
STARCRAFT_ENVS: tuple[str, ...] = ("smacv2", "smac")
#: Environments trained with the paper's PyMARL2 regime when no ``experiment=`` is given.
REGIME_ENVS: tuple[str, ...] = ("smacv2", "smac", "smax")
#: The StarCraft-free stand-ins suggested by the preflight message.
STARCRAFT_FREE_TASKS: tuple[str, ...] = (
    "smax/3s_vs_5z",
    "smax/2s3z",
    "smax/6h_vs_8z",
    "smax/3s5z_vs_3s6z",
    "smax/smacv2_5_units",
)
#: Overrides of the paper's SMAC/SMACv2 runs (pow_spec.md §5.4-5.5), each added only when the
#: user's command line does not already set that key.
REGIME_DEFAULTS: tuple[tuple[str, str], ...] = (
    ("experiment", "pymarl2"),
    ("model", "rnn_agent"),
    ("experiment.max_n_frames", "10050000"),
    ("experiment.evaluation_episodes", "32"),
    # faster than predator-prey per frame (shorter episodes, fewer agents): pymarl2's 32k would
    # dump the replay every minute or so
    ("experiment.checkpoint_interval", "200000"),
)

SMACV2_REPO = "https://github.com/oxwhirl/smacv2"
SC2_LINUX_URL = "https://blzdistsc2-a.akamaihd.net/Linux/SC2.4.10.zip"
SMAC_MAPS_URL = "https://github.com/oxwhirl/smac/releases/download/v0.1-beta1/SMAC_Maps.zip"

#: Hydra flags after which nothing is trained (no preflight needed).
_INFO_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion")


def env_of(task_name: str) -> str:
    """``"smacv2"`` for ``"smacv2/protoss_5_vs_5"`` (the part before the first ``/``)."""
    return task_name.split("/", 1)[0]


def sc2_path() -> Path:
    """Where StarCraft II is expected: ``$SC2PATH``, else ``~/StarCraftII`` (as pysc2 looks)."""
    return Path(os.environ.get("SC2PATH") or Path.home() / "StarCraftII").expanduser()


def smacv2_installed() -> bool:
    """Whether the ``smacv2`` package is importable (found without importing it)."""
    return importlib.util.find_spec("smacv2") is not None


def game_installed() -> bool:
    """Whether the StarCraft II binary is unpacked at :func:`sc2_path` (its ``Versions`` folder)."""
    return (sc2_path() / "Versions").is_dir()


def maps_installed() -> bool:
    """Whether the SMAC map folder ``$SC2PATH/Maps/SMAC_Maps`` exists."""
    return (sc2_path() / "Maps" / "SMAC_Maps").is_dir()


def starcraft_available() -> tuple[bool, str]:
    """``(True, "")`` when ``smacv2`` imports and ``$SC2PATH/Versions`` exists, else
    ``(False, reason)`` (for test skips)."""
    missing = []
    try:
        importlib.import_module("smacv2")
    except Exception:  # noqa: BLE001  (absent, or broken: either way the game cannot run)
        missing.append("the smacv2 package does not import")
    if not game_installed():
        missing.append(f"{sc2_path() / 'Versions'} does not exist (StarCraft II not installed)")
    return (not missing, "; ".join(missing))


def starcraft_problem(task_name: str) -> str | None:
    """The message to stop with when ``task_name`` needs StarCraft II and it cannot run here.

    Returns ``None`` for tasks that do not need the game, or when both the ``smacv2`` package and
    ``$SC2PATH/Versions`` are present.
    """
    if env_of(task_name) not in STARCRAFT_ENVS:
        return None
    package, game = smacv2_installed(), game_installed()
    maps = not game or maps_installed()  # only reported once the game is there
    if package and game and maps:
        return None
    missing = []
    if not package:
        missing.append("the smacv2 Python package")
    if not game:
        where = "$SC2PATH" if os.environ.get("SC2PATH") else "~/StarCraftII (or $SC2PATH)"
        missing.append(f"the StarCraft II game (no Versions/ folder in {where}: {sc2_path()})")
    if not maps:
        missing.append(f"the SMAC maps (no {sc2_path() / 'Maps' / 'SMAC_Maps'})")
    lines = [
        f"Task '{task_name}' needs StarCraft II. Missing: {' and '.join(missing)}.",
        "To install:",
    ]
    if not package:
        lines.append(f"  pip install git+{SMACV2_REPO}.git")
    if not game:
        lines.append(
            f"  StarCraft II 4.10 for Linux ({SC2_LINUX_URL}, password 'iagreetotheeula'), "
            "unpacked to ~/StarCraftII or to a folder named by $SC2PATH"
        )
    if not maps:
        lines.append(
            f"  SMAC_Maps.zip ({SMAC_MAPS_URL}) and smacv2's maps "
            "(smacv2/env/starcraft2/maps/SMAC_Maps in its repository) into $SC2PATH/Maps/SMAC_Maps"
        )
    lines.append(
        "Without StarCraft II, run a SMAC-style task of JaxMARL's SMAX instead "
        '(pip install ".[smax]"): ' + ", ".join(STARCRAFT_FREE_TASKS) + "."
    )
    return "\n".join(lines)


# ------------------------------------------------------------------ evaluation metric
class BattleWonCallback(Callback):
    """Log the evaluation win rate of SMAC-style tasks (BenchMARL ``Callback``).

    BenchMARL's evaluation logs returns only; the paper's SMAC metric is the test win rate
    (``test_battle_won_mean``). On every evaluation this logs ``eval/info/win_rate`` (the mean of
    ``("next", "info", "battle_won")`` over the evaluation episodes' last steps) and adds the
    per-episode ``win_rate`` list to the evaluation JSON. It does nothing on rollouts without
    ``battle_won`` (other tasks).
    """

    def on_evaluation_end(self, rollouts: list[TensorDictBase]) -> None:
        key = ("next", "info", "battle_won")
        if not rollouts or key not in rollouts[0].keys(True, True):
            return
        outcomes = []
        for rollout in rollouts:
            done = rollout.get(("next", "done")).reshape(rollout.shape)
            outcomes.append(rollout.get(key).reshape(rollout.shape)[done].float())
        wins = torch.cat(outcomes)
        if wins.numel() == 0:
            return
        experiment = self.experiment
        experiment.logger.log(
            {"eval/info/win_rate": wins.mean().item()}, step=experiment.n_iters_performed
        )
        writer = getattr(experiment.logger, "json_writer", None)
        if writer is not None:
            writer.write(
                metrics={"win_rate": wins},
                total_frames=experiment.total_frames,
                evaluation_step=experiment.total_frames // experiment.config.evaluation_interval,
            )


# ------------------------------------------------------------------ command line
def _values(overrides: Sequence[str], key: str) -> list[str] | None:
    """The values a command line gives ``key`` (``key=a,b`` -> ``[a, b]``), or None if unset."""
    for item in overrides:
        name, sep, value = item.partition("=")
        if sep and name.lstrip("+~") == key:
            return [v.strip() for v in value.split(",") if v.strip()]
    return None


def regime_overrides(overrides: Sequence[str]) -> list[str]:
    """Overrides to append so that SMAC-family tasks train with the paper's regime.

    Nothing is added when the user gave ``experiment=...``, or when some task of the command line
    (a multirun sweep may name several) is not of :data:`REGIME_ENVS`.
    """
    tasks = _values(overrides, "task")
    if not tasks or _values(overrides, "experiment") is not None:
        return []
    if not all(env_of(task) in REGIME_ENVS for task in tasks):
        return []
    return [f"{key}={value}" for key, value in REGIME_DEFAULTS if _values(overrides, key) is None]


def prepare_cli(argv: Sequence[str]) -> list[str]:
    """Check and complete a ``run.py`` command line (``argv`` without the program name).

    Exits with status 1 and the :func:`starcraft_problem` message when a task needs StarCraft II
    and it is absent; otherwise returns ``argv`` with :func:`regime_overrides` appended.
    """
    argv = list(argv)
    if not any(flag in argv for flag in _INFO_FLAGS):
        for task in _values(argv, "task") or []:
            problem = starcraft_problem(task)
            if problem is not None:
                print(problem, file=sys.stderr)
                raise SystemExit(1)
    return argv + regime_overrides(argv)
