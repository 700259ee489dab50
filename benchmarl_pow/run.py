"""Hydra entry point: ``python benchmarl_pow/run.py algorithm=<name> task=<env>/<task>``.

It is BenchMARL's own ``run.py`` with our package imported first (which registers our algorithms
and tasks) and our config tree as the primary one; BenchMARL's config tree stays on the search
path, so ``algorithm=qmix task=vmas/balance`` works as well as ``algorithm=pow_qmix
task=matrix_game/nonmonotonic``. Multirun (``-m``) works as in BenchMARL.

A configuration mistake stops the run before anything is built, with one line naming the key, the
value and what is valid (``HYDRA_FULL_ERROR=1`` shows the full trace). ``verbose=true`` prints the
composed config and the known harmless warnings.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import benchmarl_pow  # noqa: F401  (registers our algorithms and tasks)
from benchmarl_pow.callbacks import default_callbacks
from benchmarl_pow.compose import build_experiment, compose_config
from benchmarl_pow.diagnostics import is_matrix_task, matrix_report
from benchmarl_pow.validation import (
    ConfigError,
    available_choices,
    check_overrides,
    quiet_known_warnings,
    validate_config,
)

USAGE = """\
usage: python benchmarl_pow/run.py algorithm=<name> task=<env>/<task> [experiment=<preset>]
                                  [model=<model>] [seed=<int>] [key=value ...] [-m (multirun)]

Examples:
  python benchmarl_pow/run.py algorithm=pow_qmix task=matrix_game/nonmonotonic experiment=matrix_game
  python benchmarl_pow/run.py algorithm=pow_qmix task=predator_prey/punish_4 experiment=pymarl2 \\
      model=layers/gru
  python benchmarl_pow/run.py -m algorithm=pow_qmix,qmix_lambda task=matrix_game/nonmonotonic \\
      experiment=matrix_game seed=0,1,2

Top-level keys: seed (int, 0), torch_threads (int >= 1 or null, 1), verbose (print the config and
known harmless warnings, false). Experiment keys: experiment.<key>=... (e.g. experiment.max_n_iters=5).
Resume: python -m benchmarl_pow.resume <checkpoint>; evaluate: python -m benchmarl_pow.evaluate
<checkpoint> [--episodes N]. Hydra's own help: --hydra-help.
"""


def _wrap(names: Sequence[str], indent: str = "  ", width: int = 100) -> str:
    lines, line = [], indent
    for name in names:
        if len(line) + len(name) + 2 > width and line.strip():
            lines.append(line.rstrip())
            line = indent
        line += name + ", "
    lines.append(line.rstrip().rstrip(","))
    return "\n".join(lines)


def help_text() -> str:
    """Usage, then the algorithm, task, model and experiment names ``run.py`` accepts."""
    parts = [USAGE]
    for group in ("algorithm", "model", "experiment"):
        parts.append(f"{group}s:\n{_wrap(available_choices(group))}\n")
    tasks: dict[str, list[str]] = {}
    for name in available_choices("task"):
        env, task = name.split("/", 1)
        tasks.setdefault(env, []).append(task)
    parts.append("tasks (<env>/<task>):")
    parts.extend(f"  {env}/\n{_wrap(names, indent='    ')}" for env, names in tasks.items())
    return "\n".join(parts)


def check_composes(args: Sequence[str]) -> None:
    """Compose the config of a single run once, so that Hydra's own refusals (an unknown key, a
    value of the wrong type) also end in one line. Multirun sweeps are left to Hydra."""
    if any(a in ("-m", "--multirun") for a in args):
        return
    overrides = [a for a in args if not a.startswith("-") and "hydra" not in a.split("=", 1)[0]]
    try:
        compose_config(overrides)
    except (HydraException, OmegaConfBaseException) as err:
        text = f"{err}\n{err.__cause__}" if err.__cause__ is not None else str(err)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        skip = ("Set the environment", "object_type")
        raise CompositionError("; ".join(x for x in lines if not x.startswith(skip))) from err


class CompositionError(ConfigError):
    """Hydra refused an override (unknown key, wrong type); the message is Hydra's, on one line."""

    def __init__(self, message: str) -> None:
        self.key, self.value, self.valid = "override", None, message
        ValueError.__init__(self, f"invalid override: {message}")


def _fail(err: ConfigError) -> NoReturn:
    """One line on stderr and exit status 2 (the full trace with ``HYDRA_FULL_ERROR=1``)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


@hydra.main(version_base=None, config_path="pkg://benchmarl_pow.conf", config_name="config")
def hydra_experiment(cfg: DictConfig) -> None:
    """Validate the composed config, build the experiment, run it, report matrix-game results."""
    choices = HydraConfig.get().runtime.choices
    try:
        validate_config(cfg, choices)
    except ConfigError as err:
        _fail(err)
    verbose = bool(cfg.get("verbose", False))
    quiet_known_warnings(verbose)
    if cfg.get("torch_threads") is not None:
        torch.set_num_threads(int(cfg.torch_threads))
    task_name = choices.task
    print(f"\nAlgorithm: {choices.algorithm}, Task: {task_name}")
    if verbose:
        print("\nLoaded config:\n")
        print(OmegaConf.to_yaml(cfg))

    experiment = build_experiment(cfg, task_name, callbacks=default_callbacks(task_name))
    try:
        experiment.run()
    except FloatingPointError as err:  # a non-finite loss or Q-value: one line, no traceback
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "iteration" not in message:
            message = f"training stopped at iteration {experiment.n_iters_performed}: {message}"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(3)
    if is_matrix_task(experiment):
        print(matrix_report(experiment))


def main(argv: Sequence[str] | None = None) -> None:
    """``--help`` prints :func:`help_text`; group names are checked before Hydra composes."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" in args or "-h" in args:
        print(help_text())
        return
    if not any(a.startswith(("--hydra-help", "--info", "--cfg", "-c", "--shell-completion"))
               for a in args):
        try:
            check_overrides(args)
            check_composes(args)
        except ConfigError as err:
            _fail(err)
    # StarCraft hook (benchmarl_pow/starcraft.py): exits with install hints when a smacv2/smac task
    # lacks the smacv2 package or the game; for smacv2/smac/smax without experiment=, appends the
    # paper's regime (experiment=pymarl2, model=rnn_agent, ...).
    from benchmarl_pow.starcraft import prepare_cli

    if (completed := prepare_cli(args)) != args:
        sys.argv[1:] = completed
    hydra_experiment()


if __name__ == "__main__":
    main()
