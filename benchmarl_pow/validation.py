"""Checks of a composed run config that stop a mistake before anything is built.

Every check raises :class:`ConfigError`, whose message is one line naming the key, the value and
what is valid (``experiment.gamma=1.5 is invalid: expected a number in (0, 1]``). ``run.py`` and
:func:`benchmarl_pow.compose.compose_experiment` call :func:`check_overrides` on the command-line
overrides (unknown algorithm/task/model/experiment names, with the real choices and close matches)
and :func:`validate_config` on the composed config, before the experiment is built.

Covered: the top-level keys (``seed``, ``torch_threads``, ``verbose``), BenchMARL's experiment keys
this project relies on (discount, exploration, sizes, intervals, loggers, devices, ``restore_file``),
the fields of our algorithms, task configs (through their dataclasses, plus predator-prey's
two-agent minimum) and the sizes of models. Checkpoints are opened with ``weights_only=True``
(:func:`check_checkpoint_file`) and refused when their run folder names another algorithm, task or
model (:func:`check_checkpoint_matches`). During training, :func:`check_finite_training_values`
stops a learner call with a NaN/inf term (:class:`NonFiniteValueError`).
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import benchmarl
import torch
from benchmarl.algorithms import algorithm_config_registry
from benchmarl.environments import task_config_registry
from benchmarl.experiment.callback import Callback
from benchmarl.models import model_config_registry
from omegaconf import DictConfig, ListConfig, OmegaConf
from tensordict import TensorDictBase

from custom_envs import TASKS
from custom_envs.common import conf_root

#: Config groups whose option names are checked before Hydra composes.
GROUPS = ("algorithm", "task", "model", "experiment", "regime")

#: Loggers BenchMARL knows, with the module each needs.
LOGGER_MODULES = {"csv": None, "wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow"}

#: Warnings every run prints that say nothing about the user's run (shown with ``verbose=true``);
#: each is a regular expression matched at the start of the message (``warnings.filterwarnings``).
KNOWN_HARMLESS_WARNINGS = (
    "TaskConfig python dataclass not found",
    "SyncDataCollector has been deprecated",
    # BenchMARL's note for frame-counted iterations shorter than an episode ("this is normal")
    "No episode terminated this iteration",
    # BenchMARL nests TransformedEnvs for RNN models; TorchRL still unwraps them (we rely on nothing
    # else) and warns that a later version may not
    "The default behavior of TransformedEnv will change",
    # TorchRL's PettingZoo import tries every family; those we do not use (Atari, SISL, ...) need
    # packages that the `pettingzoo` extra leaves out
    "PettingZoo failed to load all modules",
    r"\w+ environments failed to load with error message",
)


class ConfigError(ValueError):
    """An invalid configuration value, reported as one line: key, value and what is valid."""

    def __init__(self, key: str, value: Any, valid: str) -> None:
        self.key, self.value, self.valid = key, value, valid
        super().__init__(f"{key}={_show(value)} is invalid: {valid}")


class UnknownChoiceError(ConfigError):
    """A config group option (``algorithm=...``) that does not exist."""

    def __init__(self, group: str, value: str, choices: Sequence[str]) -> None:
        self.key, self.value = group, value
        close = difflib.get_close_matches(_normalise_name(value), choices, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        self.valid = f"{hint}choices: {summarise_choices(group, choices, value)}"
        ValueError.__init__(self, f"unknown {group} '{value}'; {self.valid}")


class MissingChoiceError(ConfigError):
    """A required config group (``algorithm``, ``task``) that was not given."""

    def __init__(self, group: str, choices: Sequence[str]) -> None:
        self.key, self.value = group, None
        self.valid = f"choices: {summarise_choices(group, choices)}"
        ValueError.__init__(self, f"{group} is required ({group}=<name>); {self.valid}")


class TaskConfigError(ConfigError):
    """A task config value refused by the task's own dataclass (its message names the key)."""

    def __init__(self, task_name: str, message: str) -> None:
        self.key, self.value, self.valid = "task", task_name, message
        ValueError.__init__(self, f"task {task_name}: {message}")


def summarise_choices(group: str, choices: Sequence[str], value: str = "") -> str:
    """``choices`` on one line; tasks of environments other than ours and the one named in
    ``value`` are summarised as ``vmas/* (28 tasks)`` (``run.py --help`` lists them all)."""
    if group != "task":
        return ", ".join(choices)
    ours = {t.env_name() for t in TASKS} | {_normalise_name(value).split("/")[0]}
    listed = [c for c in choices if c.split("/")[0] in ours]
    others: dict[str, int] = {}
    for c in choices:
        env = c.split("/")[0]
        if env not in ours:
            others[env] = others.get(env, 0) + 1
    summary = ", ".join(f"{env}/* ({n} tasks)" for env, n in sorted(others.items()))
    return ", ".join(listed) + (f"; BenchMARL's {summary} (all: run.py --help)" if summary else "")


def _show(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _normalise_name(name: str) -> str:
    """A schema name (``matrix_game_nonmonotonic_config``) as the option a user meant."""
    name = name.strip()
    if name.endswith("_config"):
        name = name[: -len("_config")]
    for env in sorted({t.split("/")[0] for t in task_config_registry}, key=len, reverse=True):
        if name.startswith(env + "_") and "/" not in name:
            return f"{env}/{name[len(env) + 1:]}"
    return name


# ------------------------------------------------------------------------------------- choices
def _yaml_options(root: Path, group: str) -> set[str]:
    folder = root / group
    if not folder.is_dir():
        return set()
    return {p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml")}


def available_choices(group: str) -> list[str]:
    """The options a user can give for ``group`` (names, never Hydra schema names), sorted."""
    benchmarl_conf = Path(benchmarl.__file__).parent / "conf"
    options = _yaml_options(conf_root(), group) | _yaml_options(benchmarl_conf, group)
    if group == "algorithm":
        options &= set(algorithm_config_registry)
    elif group == "task":
        options &= set(task_config_registry)
    return sorted(options)


def check_choice(group: str, value: str) -> None:
    """Raise :class:`UnknownChoiceError` unless ``value`` is an option of ``group``."""
    choices = available_choices(group)
    if value not in choices:
        raise UnknownChoiceError(group, value, choices)


def check_overrides(overrides: Iterable[str]) -> None:
    """Check the group options named in command-line ``overrides`` (sweeps: each value).

    Also requires ``algorithm=`` and ``task=``, which have no default.
    """
    given: set[str] = set()
    for item in overrides:
        if "=" not in item or item.startswith(("hydra.", "hydra/", "-")):
            continue
        key, value = item.split("=", 1)
        key = key.lstrip("+~")
        if key not in GROUPS:
            continue
        given.add(key)
        values = value.split(",") if value else [value]
        for one in values:
            check_choice(key, one.strip())
    for group in ("algorithm", "task"):
        if group not in given:
            raise MissingChoiceError(group, available_choices(group))


# ------------------------------------------------------------------------------ value checks
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _int_at_least(key: str, value: Any, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not _is_int(value) or value < minimum:
        null = " or null" if optional else ""
        raise ConfigError(key, value, f"expected an integer >= {minimum}{null}")


def _in_range(
    key: str,
    value: Any,
    low: float,
    high: float | None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> None:
    if optional and value is None:
        return
    ok = _is_number(value)
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (
            high is None or (v < high if high_open else v <= high)
        )
    if not ok:
        left = "(" if low_open else "["
        right = "inf)" if high is None else (f"{high:g})" if high_open else f"{high:g}]")
        null = " or null" if optional else ""
        raise ConfigError(key, value, f"expected a number in {left}{low:g}, {right}{null}")


def _check_top_level(cfg: DictConfig) -> None:
    seed = cfg.get("seed")
    if not _is_int(seed):
        raise ConfigError("seed", seed, "expected an integer (e.g. seed=0)")
    _int_at_least("torch_threads", cfg.get("torch_threads"), 1, optional=True)
    verbose = cfg.get("verbose", False)
    if not isinstance(verbose, bool):
        raise ConfigError("verbose", verbose, "expected true or false")


def _on_policy(algorithm: str | None) -> bool | None:
    config_class = algorithm_config_registry.get(algorithm) if algorithm else None
    return None if config_class is None else bool(config_class.on_policy())


def _check_regime(regime: DictConfig | None) -> None:
    """The ``regime=episodes`` sizes (PyMARL2's schedule, counted in whole episodes)."""
    if regime is None or regime.get("name") != "episodes":
        return
    for key in ("buffer_episodes", "batch_episodes", "target_update_episodes",
                "learner_calls_per_iteration"):
        if key in regime:
            _int_at_least(f"regime.{key}", regime[key], 1)
    if "start_training_episodes" in regime:
        _int_at_least("regime.start_training_episodes", regime.start_training_episodes, 0)
    if regime.get("batch_episodes", 0) > regime.get("buffer_episodes", math.inf):
        raise ConfigError(
            "regime.batch_episodes",
            regime.batch_episodes,
            f"expected at most regime.buffer_episodes={regime.buffer_episodes}",
        )


def _check_experiment(exp: DictConfig, on_policy: bool | None) -> None:
    p = "experiment."
    _in_range(p + "gamma", exp.gamma, 0.0, 1.0, low_open=True)
    _in_range(p + "lr", exp.lr, 0.0, None, low_open=True)
    _in_range(p + "adam_eps", exp.adam_eps, 0.0, None)
    _in_range(p + "clip_grad_val", exp.clip_grad_val, 0.0, None, low_open=True, optional=True)
    _in_range(p + "polyak_tau", exp.polyak_tau, 0.0, 1.0, low_open=True)
    _int_at_least(p + "hard_target_update_frequency", exp.hard_target_update_frequency, 1)
    _in_range(p + "exploration_eps_init", exp.exploration_eps_init, 0.0, 1.0)
    _in_range(p + "exploration_eps_end", exp.exploration_eps_end, 0.0, 1.0)
    _int_at_least(p + "exploration_anneal_frames", exp.exploration_anneal_frames, 1, optional=True)
    _int_at_least(p + "max_n_iters", exp.max_n_iters, 1, optional=True)
    _int_at_least(p + "max_n_frames", exp.max_n_frames, 1, optional=True)
    if exp.max_n_iters is None and exp.max_n_frames is None:
        raise ConfigError(
            p + "max_n_frames", None, "set experiment.max_n_frames or experiment.max_n_iters"
        )
    for key in (
        "off_policy_collected_frames_per_batch",
        "off_policy_n_envs_per_worker",
        "off_policy_n_optimizer_steps",
        "off_policy_train_batch_size",
        "off_policy_memory_size",
        "on_policy_collected_frames_per_batch",
        "on_policy_n_envs_per_worker",
        "on_policy_n_minibatch_iters",
        "on_policy_minibatch_size",
    ):
        _int_at_least(p + key, exp[key], 1)
    _int_at_least(p + "off_policy_init_random_frames", exp.off_policy_init_random_frames, 0)
    _in_range(p + "off_policy_prb_alpha", exp.off_policy_prb_alpha, 0.0, None)
    _in_range(p + "off_policy_prb_beta", exp.off_policy_prb_beta, 0.0, 1.0)
    prefix = "on_policy_" if on_policy else "off_policy_"
    frames, n_envs = exp[prefix + "collected_frames_per_batch"], exp[prefix + "n_envs_per_worker"]
    if frames < n_envs:
        raise ConfigError(
            p + prefix + "collected_frames_per_batch",
            frames,
            f"expected at least {prefix}n_envs_per_worker={n_envs} (one step per environment)",
        )
    if on_policy is False and exp.off_policy_train_batch_size > exp.off_policy_memory_size:
        raise ConfigError(
            p + "off_policy_train_batch_size",
            exp.off_policy_train_batch_size,
            f"expected at most off_policy_memory_size={exp.off_policy_memory_size}",
        )
    if on_policy and exp.on_policy_minibatch_size > exp.on_policy_collected_frames_per_batch:
        raise ConfigError(
            p + "on_policy_minibatch_size",
            exp.on_policy_minibatch_size,
            f"expected at most on_policy_collected_frames_per_batch={frames}",
        )
    if exp.evaluation:
        _int_at_least(p + "evaluation_episodes", exp.evaluation_episodes, 1)
        _int_at_least(p + "evaluation_interval", exp.evaluation_interval, 1)
        if on_policy is not None and exp.evaluation_interval % frames:
            raise ConfigError(
                p + "evaluation_interval",
                exp.evaluation_interval,
                f"expected a multiple of {prefix}collected_frames_per_batch={frames}",
            )
    _int_at_least(p + "checkpoint_interval", exp.checkpoint_interval, 0)
    if on_policy is not None and exp.checkpoint_interval and exp.checkpoint_interval % frames:
        raise ConfigError(
            p + "checkpoint_interval",
            exp.checkpoint_interval,
            f"expected 0 (off) or a multiple of {prefix}collected_frames_per_batch={frames}",
        )
    _int_at_least(p + "keep_checkpoints_num", exp.keep_checkpoints_num, 1, optional=True)
    for logger in exp.loggers:
        if logger not in LOGGER_MODULES:
            raise ConfigError(
                p + "loggers", exp.loggers, f"unknown logger '{logger}'; choices: {', '.join(LOGGER_MODULES)}"
            )
        module = LOGGER_MODULES[logger]
        if module is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(
                p + "loggers",
                exp.loggers,
                f"'{logger}' needs `pip install {module}`; or use experiment.loggers=[csv]",
            )
    for key in ("sampling_device", "train_device", "buffer_device"):
        _check_device(p + key, exp[key])
    if exp.save_folder is not None and not Path(exp.save_folder).is_dir():
        raise ConfigError(p + "save_folder", exp.save_folder, "expected an existing folder or null")


def check_experiment_config(config: Any, on_policy: bool | None = None) -> None:
    """Check a BenchMARL ``ExperimentConfig`` (dataclass) built in Python, as the CLI would."""
    _check_experiment(OmegaConf.structured(config), on_policy)


def _check_device(key: str, value: Any) -> None:
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise ConfigError(key, value, "expected a torch device such as 'cpu' or 'cuda:0'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(key, value, "CUDA is not available on this machine; use 'cpu'")


#: Our algorithm fields that are positive integers (layer widths, counts).
_POSITIVE_INT_FIELDS = (
    "mixing_embed_dim",
    "hypernet_embed",
    "central_mixing_embed_dim",
    "residual_mixing_embed_dim",
    "lambda_hypernet_embed_dim",
    "lambda_mixing_embed_dim",
    "v_embed_dim",
    "adv_hypernet_layers",
    "adv_hypernet_embed",
    "num_kernel",
    "recognition_updates",
    "first_recognition_updates",
)


def _check_algorithm(alg: DictConfig) -> None:
    p = "algorithm."
    keys = set(alg.keys())
    for key in _POSITIVE_INT_FIELDS:
        if key in keys:
            _int_at_least(p + key, alg[key], 1)
    if "lmbda" in keys:
        _in_range(p + "lmbda", alg.lmbda, 0.0, 1.0)
    if "threshold" in keys:
        _in_range(p + "threshold", alg.threshold, 0.0, None, low_open=True, optional=True)
    if "other_actions_weight" in keys:
        _in_range(p + "other_actions_weight", alg.other_actions_weight, 0.0, 1.0, optional=True)
    if "no_weighted_steps" in keys:
        _int_at_least(p + "no_weighted_steps", alg.no_weighted_steps, 0, optional=True)
    for key in ("obs_last_action", "obs_agent_id"):
        if key in keys and alg[key] is not None and not isinstance(alg[key], bool):
            raise ConfigError(p + key, alg[key], "expected true, false or null (the task's preset)")
    if "recognition_batch_fraction" in keys:
        _in_range(
            p + "recognition_batch_fraction", alg.recognition_batch_fraction, 0.0, 1.0, low_open=True
        )


def _check_task(task_cfg: DictConfig, task_name: str) -> None:
    env_name = task_name.split("/")[0]
    try:
        checked = OmegaConf.to_object(task_cfg)
    except (ValueError, TypeError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TaskConfigError(task_name, message) from None
    if env_name == "predator_prey":
        n_agents = checked.n_agents if hasattr(checked, "n_agents") else checked["n_agents"]
        if n_agents < 2:
            raise ConfigError(
                "task.n_agents", n_agents, "expected at least 2 (a stag needs two predators)"
            )


def _check_model(model: DictConfig, key: str = "model") -> None:
    if "layers" in model:
        for name, layer in model.layers.items():
            _check_model(layer, f"{key}.layers.{name}")
        return
    for field in ("hidden_size", "input_embed", "n_layers"):
        if field in model:
            _int_at_least(f"{key}.{field}", model[field], 1)
    for field in ("num_cells", "mlp_num_cells"):
        cells = model.get(field)
        if cells is not None and not all(_is_int(c) and c >= 1 for c in cells):
            raise ConfigError(f"{key}.{field}", cells, "expected a list of integers >= 1")


# --------------------------------------------------------------------------------- checkpoints
def run_identity(algorithm: str, task: str, model: str | None) -> tuple[str, str, str | None]:
    """``(algorithm, task, model)`` as BenchMARL names a run folder (``powqmix``, ``nonmonotonic``,
    ``mlp``) for config names (``pow_qmix``, ``matrix_game/nonmonotonic``, ``mlp`` or
    ``layers/mlp``); model None (unknown) is not compared."""
    alg = algorithm_config_registry[algorithm].associated_class().__name__.lower()
    task_id = task_config_registry[task].name.lower()
    model_id = None
    if model is not None:
        model_class = model_config_registry.get(model.split("/")[-1])
        if model_class is not None:
            model_id = model_class.associated_class().__name__.lower()
    return alg, task_id, model_id


#: Written into every run folder (``ResumableMixin``): the run's ``(algorithm, task, model)``
#: as BenchMARL names them, so that a renamed run folder is still recognised.
IDENTITY_FILE = "identity.json"


def checkpoint_identity(checkpoint: str | Path) -> tuple[str, str, str] | None:
    """``(algorithm, task, model)`` of the run folder holding ``checkpoint``: from its
    ``identity.json``, else from the folder's name (``<algorithm>_<task>_<model>__<id>``, as
    BenchMARL names it), or None when neither tells."""
    folder = Path(checkpoint).resolve().parent.parent
    try:
        with open(folder / IDENTITY_FILE) as f:
            found = json.load(f)
        return str(found["algorithm"]), str(found["task"]), str(found["model"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    name = folder.name
    prefix = name.split("__", 1)[0]
    parts = prefix.split("_")
    if "__" not in name or len(parts) < 3:
        return None
    return parts[0], "_".join(parts[1:-1]), parts[-1]


def check_checkpoint_file(
    checkpoint: str | Path, key: str = "checkpoint", with_replay: bool = True
) -> dict[str, Any]:
    """Load ``checkpoint`` with ``weights_only=True`` (memory-mapped) and check it is an
    experiment checkpoint whose replay dump, if it has one and ``with_replay``, is whole; return
    its state dict. Raises :class:`ConfigError` otherwise, before anything is built or rewound."""
    path = Path(checkpoint)
    if not path.is_file():
        raise ConfigError(key, str(checkpoint), "no such file (expected .../checkpoints/checkpoint_N.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001  (torch raises many types for a file that is not a checkpoint)
        raise ConfigError(
            key, str(checkpoint), "not a checkpoint written by an experiment (cannot be loaded)"
        ) from None
    if not isinstance(state, Mapping) or "state" not in state:
        raise ConfigError(key, str(checkpoint), "not an experiment checkpoint (no 'state' entry)")
    if with_replay:
        check_replay_dump(path, key)
    return dict(state)


def check_replay_dump(checkpoint: str | Path, key: str = "checkpoint") -> None:
    """Refuse ``checkpoint`` when the replay dump beside it (``checkpoint_N.buffers``) exists but
    was cut short while it was written. Raises :class:`ConfigError`."""
    from benchmarl_pow.episodes.replay import (  # (it imports this module)
        replay_dump_cut_short,
        replay_dump_dir,
    )

    if replay_dump_cut_short(checkpoint):
        raise ConfigError(
            key,
            str(checkpoint),
            f"its replay dump {replay_dump_dir(checkpoint).name} is incomplete (cut short while it was written): resume "
            "from an older checkpoint, or without the replay "
            "(experiment.exclude_buffer_from_checkpoint=true)",
        )


def check_checkpoint_matches(
    checkpoint: str | Path, expected: tuple[str, str, str | None], key: str = "checkpoint"
) -> None:
    """Refuse ``checkpoint`` when its run folder names another algorithm, task or model."""
    found = checkpoint_identity(checkpoint)
    if found is None:
        return
    labels = ("algorithm", "task", "model")
    for label, want, have in zip(labels, expected, found):
        if want is not None and want != have:
            raise ConfigError(
                key,
                str(checkpoint),
                f"it is a checkpoint of {label} '{have}' ({'/'.join(found)}), "
                f"but this run is {label} '{want}' ({'/'.join(x or '?' for x in expected)})",
            )


# -------------------------------------------------------------------------------------- entry
def validate_config(cfg: DictConfig, choices: Mapping[str, Any]) -> None:
    """Check a composed primary config; raise :class:`ConfigError` on the first invalid value.

    Args:
        cfg: the composed config (``seed``, ``experiment``, ``algorithm``, ``task``, ``model``...).
        choices: the group options it was composed from (``HydraConfig.get().runtime.choices``
            or :func:`choices_from_overrides`); ``algorithm`` and ``task`` are used.
    """
    algorithm, task = choices.get("algorithm"), choices.get("task")
    for group in ("algorithm", "task"):
        if choices.get(group) is not None:
            check_choice(group, str(choices[group]))
    _check_top_level(cfg)
    # regime=episodes does not use the frame-counted batch keys (benchmarl_pow/episodes/config.py)
    episodic = cfg.get("regime") is not None and cfg.regime.get("name") == "episodes"
    _check_regime(cfg.get("regime"))
    _check_experiment(cfg.experiment, None if episodic else _on_policy(algorithm))
    _check_algorithm(cfg.algorithm)
    if task is not None:
        _check_task(cfg.task, str(task))
    _check_model(cfg.model)
    if "critic_model" in cfg:
        _check_model(cfg.critic_model, "critic_model")
    restore = cfg.experiment.restore_file
    if restore is not None:
        key = "experiment.restore_file"
        check_checkpoint_file(
            restore, key, with_replay=not cfg.experiment.get("exclude_buffer_from_checkpoint", False)
        )
        from benchmarl_pow.resumable import check_not_live  # (it imports this module)

        check_not_live(restore, key)
        if algorithm is not None and task is not None:
            model = cfg.model.get("name") if "layers" not in cfg.model else None
            check_checkpoint_matches(restore, run_identity(algorithm, task, model), key)


def choices_from_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """The group options named in ``overrides`` (``{"algorithm": "pow_qmix", ...}``)."""
    choices = {}
    for item in overrides:
        key, _, value = item.partition("=")
        if key.lstrip("+") in GROUPS and value:
            choices[key.lstrip("+")] = value
    return choices


def quiet_known_warnings(verbose: bool = False) -> None:
    """Hide :data:`KNOWN_HARMLESS_WARNINGS` and TorchRL's info logs unless ``verbose``. On a
    machine without a display, also give SDL (pygame, PettingZoo's MPE renderer) its ``dummy``
    video driver unless ``SDL_VIDEODRIVER`` is set: otherwise SDL prints an error line
    (``XDG_RUNTIME_DIR is invalid``) for every env it creates; rendering to arrays still works."""
    if verbose:
        return
    for message in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


# ----------------------------------------------------------------------------- during training
class NonFiniteValueError(FloatingPointError):
    """A loss term or logged value (Q-value mean, target) became NaN or infinite in training."""


def check_finite_training_values(
    values: Mapping[str, Any], iteration: int, last_finite: Mapping[str, float] | None, group: str
) -> dict[str, float]:
    """Raise :class:`NonFiniteValueError` naming the iteration, the non-finite terms and the last
    finite values when any scalar of ``values`` (a learner call's loss outputs) is not finite;
    return the scalars as floats (the next call's ``last_finite``)."""
    scalars: dict[str, float] = {}
    for key, value in values.items():
        if torch.is_tensor(value) and value.numel() == 1:
            scalars[str(key)] = float(value.detach())
    bad = {k: v for k, v in scalars.items() if not math.isfinite(v)}
    if bad:
        terms = ", ".join(f"{k}={v}" for k, v in bad.items())
        if last_finite:
            shown = ", ".join(f"{k}={v:.6g}" for k, v in last_finite.items() if k in bad or k.startswith("loss"))
            before = f"last finite values (previous learner call): {shown}"
        else:
            before = "no finite values yet (first learner call)"
        raise NonFiniteValueError(
            f"non-finite training value at iteration {iteration} (group '{group}'): {terms}; "
            f"{before}; check rewards, learning rate and gradient clipping"
        )
    return scalars


class FiniteTrainingGuard(Callback):
    """Stops a run whose networks became non-finite during an iteration, before any callback
    writes tables or results from them (put it first in the callback list).

    The loss values are checked per learner call by our algorithms (``process_loss_vals``); an
    optimiser step can still turn finite losses into NaN parameters (e.g. a huge learning rate),
    which this catches once per iteration, for any algorithm.
    """

    def on_train_end(self, training_td: TensorDictBase, group: str) -> None:
        experiment = self.experiment
        for name, param in experiment.losses[group].named_parameters():
            if not bool(torch.isfinite(param).all()):
                last = getattr(experiment.algorithm, "_last_finite_loss_vals", {}).get(group)
                shown = ", ".join(f"{k}={v:.6g}" for k, v in (last or {}).items() if k.startswith("loss"))
                raise NonFiniteValueError(
                    f"non-finite parameter '{name}' after the optimiser steps of iteration "
                    f"{experiment.n_iters_performed} (group '{group}'); last finite loss values: "
                    f"{shown or 'unknown'}; check the learning rate and gradient clipping"
                )
