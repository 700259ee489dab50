"""Exact resume, shared by both training regimes: what BenchMARL's checkpoint lacks.

BenchMARL's ``Experiment.state_dict`` holds the losses (networks and target networks; this
project's losses also their optimisers and ``n_learner_calls``), the replay buffers (storage,
sampler, writer and the buffer's own generator, unless ``exclude_buffer_from_checkpoint``), the
collector's frame counters and the experiment's counters. :class:`ResumableMixin` adds what a
run needs to continue exactly as if it had never stopped:

* the exploration modules' state (ε and its frame count);
* the optimisers of losses that do not carry them (BenchMARL's ``qmix``, ``vdn``, ...);
* the target updaters' step counters (``HardUpdate`` copies every n-th step);
* the torch (CPU and CUDA), numpy and python random states, applied when the collection loop
  starts (BenchMARL's ``run()`` reseeds everything first);
* on load, the run folder's files are rewound to the checkpoint (CSV scalars, the callbacks'
  JSONL/CSV tables, the marl-eval JSON), so that a run interrupted after its checkpoint logs no
  row twice, and the list of written checkpoints is rebuilt so that ``keep_checkpoints_num`` keeps
  counting.

Each regime adds its own part: :class:`~benchmarl_pow.episodes.EpisodeExperiment` its episode
counters and the memory-mapped replay dump, :class:`~benchmarl_pow.frames_experiment.FramesExperiment`
the collector's carried tensordict and the environments' own state. An environment takes part
through PyTorch's extra-state hook (``get_extra_state`` / ``set_extra_state``, which TorchRL
envs inherit from ``nn.Module``), so that ``env.state_dict()`` holds its whole running state
(:func:`env_state`); the envs know nothing of this module.

Checkpoints hold tensors and plain Python values only: they load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import warnings
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchmarl.experiment import Experiment
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictSequential
from torchrl.envs import EnvBase, TransformedEnv

from benchmarl_pow.episodes.config import RegimeConfig
from benchmarl_pow.episodes.run_files import rewind_records, rewind_scalars
from benchmarl_pow.evaluation_log import EVALUATIONS_LOG, merge_previous_evaluations
from benchmarl_pow.machine import alive_here, process_record
from benchmarl_pow.validation import IDENTITY_FILE, ConfigError

#: the run folder's record of its regime (:class:`RegimeConfig` as JSON)
REGIME_FILE = "regime.json"
#: the checkpoint entry holding :meth:`ResumableMixin._resume_state`'s additions
RESUME_KEY = "resume"
#: In a run folder while a process trains it: ``{"pid", "host", "boot"}`` (removed when ``run``
#: returns; :mod:`benchmarl_pow.machine`).
RUNNING_FILE = "running.json"


_FRAMES_FIELD = re.compile(r"\bframes (\d+)\b")


# ------------------------------------------------------------------------------ run files
def live_owner(run_folder: str | Path) -> int | None:
    """The pid of a process on this machine that is training ``run_folder`` now, or None (no
    ``running.json``, another machine or boot, or a process that is gone)."""
    try:
        with open(Path(run_folder) / RUNNING_FILE) as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return None
    return int(owner["pid"]) if isinstance(owner, dict) and alive_here(owner) else None


def check_not_live(checkpoint: str | Path, key: str = "checkpoint") -> None:
    """Refuse to restore ``checkpoint`` while a process trains its run folder: restoring rewinds
    that folder's files to the checkpoint. Raises :class:`ConfigError` naming ``key``."""
    owner = live_owner(Path(checkpoint).resolve().parent.parent)
    if owner is not None:
        raise ConfigError(
            key,
            str(checkpoint),
            f"its run is still in progress (pid {owner}); stop it first "
            "(`python -m benchmarl_pow.evaluate` scores a checkpoint of a live run)",
        )


def rewind_text_log(path: Path, frames: int) -> None:
    """Drop the lines of a text log (``evaluations.log``: ``... frames N ...``) logged after
    ``frames``; lines without a frame count are kept."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        match = _FRAMES_FIELD.search(line)
        if match is None or int(match.group(1)) <= frames:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


# ------------------------------------------------------------------------------ random states
def capture_rng() -> dict[str, Any]:
    """The torch (CPU and, once initialised, CUDA), numpy and python random states, as tensors
    and plain values (``weights_only``-loadable)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: Mapping[str, Any]) -> None:
    """Set the random states captured by :func:`capture_rng`."""
    torch.set_rng_state(rng["torch"].cpu())
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = rng.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([state.cpu() for state in cuda])


# ------------------------------------------------------------------------------ environments
def base_env(env: EnvBase) -> EnvBase:
    """The env below every :class:`~torchrl.envs.TransformedEnv` wrapper (a task's own env, or
    the ``SerialEnv``/``ParallelEnv`` BenchMARL builds around an unbatched one)."""
    while isinstance(env, TransformedEnv):
        env = env.base_env
    return env


def _declares_state(state: Any) -> bool:
    """Whether a (possibly per-worker nested) env state dict has an extra-state entry."""
    if not isinstance(state, Mapping):
        return False
    return any(
        str(key).endswith("_extra_state") or _declares_state(value) for key, value in state.items()
    )


def env_state(env: EnvBase) -> dict[str, Any] | None:
    """``state_dict()`` of the env below the transforms when it declares its whole running state
    (PyTorch's ``get_extra_state`` hook; for a ``SerialEnv``/``ParallelEnv``, its workers'),
    else ``None``: then a resumed run cannot continue that env's episodes exactly.

    The transforms' own state is not included (BenchMARL's collector state holds the training
    env's, and BenchMARL's transforms keep theirs in the carried tensordict)."""
    try:
        state = base_env(env).state_dict()
    except Exception:  # noqa: BLE001  (a closed or remote env: its state is unknown)
        return None
    return dict(state) if _declares_state(state) else None


def load_env_state(env: EnvBase, state: Mapping[str, Any]) -> None:
    """Restore :func:`env_state`'s output into ``env`` (raises if it is not that env's)."""
    base_env(env).load_state_dict(state)


# ------------------------------------------------------------------------------ tensordicts
def _holds_non_tensors(state: Mapping[str, Any]) -> bool:
    return any(
        key == "_non_tensordict" or (isinstance(value, Mapping) and _holds_non_tensors(value))
        for key, value in state.items()
    )


def tensordict_state(td: TensorDictBase) -> dict[str, Any]:
    """A tensordict as nested dicts of tensors with each level's batch size and device
    (TensorDict's own ``state_dict``): ``weights_only``-loadable, unlike a TensorDict.

    Raises:
        ValueError: ``td`` holds non-tensor data (which might not load with
            ``weights_only=True`` and would make the whole checkpoint unreadable).
    """
    state = td.state_dict()
    if _holds_non_tensors(state):
        raise ValueError("the tensordict holds non-tensor data")
    return state


def tensordict_from_state(state: Mapping[str, Any]) -> TensorDict:
    """Rebuild the tensordict of :func:`tensordict_state`, nested batch sizes and device
    included."""
    entries = {
        key: tensordict_from_state(value) if isinstance(value, Mapping) else value
        for key, value in state.items()
        if key not in ("__batch_size", "__device")
    }
    return TensorDict(entries, batch_size=state["__batch_size"], device=state.get("__device"))


# ------------------------------------------------------------------------------ the mixin
class ResumableMixin:
    """State and files for an exact resume, mixed into an
    :class:`~benchmarl.experiment.Experiment` subclass before it (``class X(ResumableMixin,
    Experiment)``).

    ``state_dict`` adds :meth:`_resume_state` under ``"resume"``; ``load_state_dict`` restores it
    and rewinds the run folder's files to the checkpoint; :meth:`_restore_rng` must be called
    when the collection loop starts. The subclass sets ``self.regime`` before
    ``Experiment.__init__`` and calls :meth:`_write_run_files` after it.
    """

    regime: RegimeConfig

    def run(self, *args: Any, **kwargs: Any) -> None:
        """BenchMARL's ``run``, with ``running.json`` in the run folder meanwhile, so that a
        resume of the same folder refuses while this process still writes it."""
        marker = Path(self.folder_name) / RUNNING_FILE
        with open(marker, "w") as f:
            json.dump(process_record(), f)
        try:
            return super().run(*args, **kwargs)
        finally:
            marker.unlink(missing_ok=True)

    # ------------------------------------------------------------- pieces
    def _write_run_files(self) -> None:
        """``regime.json`` in the run folder (:func:`reload_run` builds the right class from it)
        and ``identity.json`` (algorithm, task and model, as the folder's name gives them:
        a checkpoint of a renamed folder is still refused for another run)."""
        folder = Path(self.folder_name)
        with open(folder / REGIME_FILE, "w") as f:
            json.dump(vars(self.regime), f, indent=1)
        identity = {
            "algorithm": self.algorithm_name,
            "task": self.task_name,
            "model": self.model_name,
        }
        with open(folder / IDENTITY_FILE, "w") as f:
            json.dump(identity, f, indent=1)

    def _exploration_layers(self) -> dict[str, Any]:
        """Each group's exploration module (the last module of its policy, when it anneals)."""
        layers = {}
        for group, policy in self.group_policies.items():
            layer = policy[-1] if isinstance(policy, TensorDictSequential) else policy
            if hasattr(layer, "step"):
                layers[group] = layer
        return layers

    def _unsaved_optimizers(self) -> dict[str, dict[str, torch.optim.Optimizer]]:
        """The optimisers that BenchMARL's checkpoint misses: those of losses that do not carry
        their optimisers' state (this project's losses do, through ``attach_optimizers``)."""
        return {
            group: optimizers
            for group, optimizers in self.optimizers.items()
            if not hasattr(self.losses[group], "attach_optimizers")
        }

    def _resume_state(self) -> dict[str, Any]:
        """What BenchMARL's checkpoint lacks (see the module docstring)."""
        return {
            "optimizers": {
                group: {name: opt.state_dict() for name, opt in optimizers.items()}
                for group, optimizers in self._unsaved_optimizers().items()
            },
            "target_updaters": {
                group: int(updater.counter)
                for group, updater in self.target_updaters.items()
                if updater is not None and hasattr(updater, "counter")
            },
        }

    def _load_resume_state(self, state: Mapping[str, Any]) -> None:
        for group, optimizers in state.get("optimizers", {}).items():
            for name, opt_state in optimizers.items():
                if group in self.optimizers and name in self.optimizers[group]:
                    self.optimizers[group][name].load_state_dict(opt_state)
        for group, counter in state.get("target_updaters", {}).items():
            updater = self.target_updaters.get(group)
            if updater is not None and hasattr(updater, "counter"):
                updater.counter = int(counter)

    def _restore_rng(self) -> None:
        """Continue the interrupted run's random streams (once, when the loop starts: BenchMARL's
        ``run()`` reseeds everything before it)."""
        rng, self._pending_rng = getattr(self, "_pending_rng", None), None
        if rng:
            restore_rng(rng)

    def _rewind_run_files(self) -> None:
        """Drop what the interrupted run logged past the checkpoint, keep the rest."""
        folder = Path(self.folder_name)
        rewind_scalars(folder, self.n_iters_performed)
        rewind_records(folder, self.total_frames)
        rewind_text_log(folder / EVALUATIONS_LOG, self.total_frames)
        writer = getattr(self.logger, "json_writer", None)
        if writer is not None:  # BenchMARL's writer starts empty: keep the earlier evaluations
            merge_previous_evaluations(writer.run_data, Path(writer.path), self.total_frames)

    def _restore_checkpoint_list(self) -> None:
        """BenchMARL deletes the oldest of the checkpoints *it wrote* beyond
        ``keep_checkpoints_num``; a resumed run takes over those up to the restored one."""
        folder = Path(self.folder_name) / "checkpoints"
        if not folder.is_dir():
            return
        written = []
        for path in folder.glob("checkpoint_*.pt"):
            frames = path.stem.split("_", 1)[1]
            if frames.isdigit() and int(frames) <= self.total_frames:
                written.append((int(frames), path))
        self._checkpointed_files = deque(path for _, path in sorted(written))

    # ------------------------------------------------------------- Experiment hooks
    def state_dict(self) -> dict[str, Any]:
        """BenchMARL's checkpoint plus the exploration state (``"exploration"``), the random
        states (``"rng"``) and :meth:`_resume_state` (``"resume"``)."""
        state = super().state_dict()
        state["exploration"] = {g: m.state_dict() for g, m in self._exploration_layers().items()}
        state["rng"] = capture_rng()
        state[RESUME_KEY] = self._resume_state()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """BenchMARL's restore, then :meth:`_load_resume_state`, the pending random states and
        the run files rewound to the checkpoint."""
        super().load_state_dict(state_dict)
        for group, layer in self._exploration_layers().items():
            if group in state_dict.get("exploration", {}):
                layer.load_state_dict(state_dict["exploration"][group])
        self._load_resume_state(state_dict.get(RESUME_KEY, {}))
        # applied when the loop starts: BenchMARL's run() reseeds everything first
        self._pending_rng = state_dict.get("rng")
        if self._pending_rng is None:
            warnings.warn(
                "the checkpoint holds no random states (written before exact resume): the "
                "resumed run continues, but not as the uninterrupted one would",
                stacklevel=2,
            )
        self._rewind_run_files()
        self._restore_checkpoint_list()


# ------------------------------------------------------------------------------ reloading
def reload_run(restore_file: str, experiment_patch: dict | None = None) -> Experiment:
    """Like BenchMARL's ``Experiment.reload_from_file``, building the class of the run's regime
    (the run folder's ``regime.json``; a run folder without one, written before this file
    existed, is a ``regime=frames`` run).

    Raises:
        ValueError: no ``config.pkl`` in the run folder, or a patch key the config lacks.
    """
    from benchmarl_pow.episodes.experiment import EpisodeExperiment
    from benchmarl_pow.frames_experiment import FramesExperiment

    folder = Path(restore_file).parent.parent.resolve()
    config_file = folder / "config.pkl"
    if not os.path.exists(config_file):
        raise ValueError(f"{config_file} not found: {restore_file} is not in a run folder")
    with open(config_file, "rb") as f:
        task, task_config, algorithm_config, model_config, seed, experiment_config = (
            pickle.load(f) for _ in range(6)
        )
        critic_model_config = pickle.load(f)
        callbacks = pickle.load(f)
    task.config = task_config
    experiment_config.restore_file = restore_file
    for key, value in (experiment_patch or {}).items():
        if not hasattr(experiment_config, key):
            raise ValueError(f"Experiment config does not have attribute {key}")
        setattr(experiment_config, key, value)
    regime_file = folder / REGIME_FILE
    regime = RegimeConfig()
    if regime_file.exists():
        with open(regime_file) as f:
            regime = RegimeConfig(**json.load(f))
    cls = EpisodeExperiment if regime.episodic else FramesExperiment
    return cls(
        task=task,
        algorithm_config=algorithm_config,
        model_config=model_config,
        seed=seed,
        config=experiment_config,
        callbacks=callbacks,
        critic_model_config=critic_model_config,
        regime=regime,
    )
