"""Hydra-side pieces of the reproduction workflow: run status markers and automatic resume.

Every run of a set is an ordinary ``run.py`` job of a Hydra multirun whose output folder is the
run's *seed folder* ``<out>/<task>/<algorithm>/seed_<k>`` (BenchMARL's run folder goes inside).
The workflow adds two things to those jobs through Hydra's own extension points, so ``run.py``
knows nothing of it:

* the OmegaConf resolver ``pow_last_checkpoint`` (registered when this module is imported, which
  Hydra does in every job process when it instantiates :class:`RunStatusCallback`):
  ``experiment.restore_file=${pow_last_checkpoint:${hydra:runtime.output_dir}}`` resolves, at the
  start of the job, to the newest readable checkpoint in the seed folder, or null. A job that is
  started again (a second ``reproduce`` call, a SLURM requeue) therefore continues from its last
  checkpoint instead of starting over;
* :class:`RunStatusCallback` (``hydra.callbacks``) writes ``status.json`` in the seed folder when a
  job starts and ends, appends the attempt (host, start, end, wall time, the checkpoint it resumed
  from) to ``attempts.jsonl``, and writes the marker file ``COMPLETED`` when ``run.py`` returned
  normally: the workflow skips seed folders that have it. A job killed outright (SIGKILL, power
  loss) leaves ``status.json`` at ``running`` and no attempt line.
"""

from __future__ import annotations

import json
import os
import re
import time
import zipfile
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from benchmarl_pow.episodes.replay import replay_dump_cut_short, replay_dump_dir
from benchmarl_pow.machine import process_record

COMPLETED = "COMPLETED"
STATUS = "status.json"
#: one JSON line per finished job attempt (start, end, wall time, host, resumed checkpoint)
ATTEMPTS = "attempts.jsonl"
RESOLVER = "pow_last_checkpoint"
_CHECKPOINT = re.compile(r"checkpoint_(\d+)\.pt$")


def run_folders(seed_folder: str | Path) -> list[Path]:
    """BenchMARL run folders (they hold ``config.pkl``) directly inside a seed folder."""
    folder = Path(seed_folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / "config.pkl").exists())


def seed_folders(out: str | Path) -> list[Path]:
    """The seed folders under a set's output folder (those with a ``status.json``), leaving out
    runs the workflow moved to ``discarded/``."""
    out = Path(out)
    return sorted(
        p.parent for p in out.rglob(STATUS) if "discarded" not in p.relative_to(out).parts
    )


def checkpoints(seed_folder: str | Path) -> list[tuple[int, Path]]:
    """``(frames, path)`` of every readable checkpoint of the seed folder's runs, oldest first.

    A checkpoint is readable when it is a complete zip archive (``torch.save``'s format) and the
    replay dump beside it, if there is one, is whole: a file or dump cut short by a kill during
    the save is skipped.
    """
    found = []
    for run in run_folders(seed_folder):
        for path in (run / "checkpoints").glob("checkpoint_*.pt"):
            match = _CHECKPOINT.search(path.name)
            if replay_dump_cut_short(path):
                continue
            if match and zipfile.is_zipfile(path):
                found.append((int(match.group(1)), path))
    return sorted(found)


def last_checkpoint(seed_folder: str | Path) -> str | None:
    """The newest readable checkpoint of the seed folder (absolute path), or None."""
    found = checkpoints(seed_folder)
    return str(found[-1][1].resolve()) if found else None


def is_completed(seed_folder: str | Path) -> bool:
    return (Path(seed_folder) / COMPLETED).exists()


def read_attempts(seed_folder: str | Path) -> list[dict[str, Any]]:
    """The seed folder's finished job attempts (``attempts.jsonl``), oldest first."""
    path = Path(seed_folder) / ATTEMPTS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_status(seed_folder: str | Path, name: str = STATUS) -> dict[str, Any]:
    """The seed folder's ``status.json`` (or the ``COMPLETED`` marker with ``name=COMPLETED``;
    both hold the job's status record), or ``{}``."""
    try:
        with open(Path(seed_folder) / name) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def _register_resolver() -> None:
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, last_checkpoint, use_cache=False)


_register_resolver()


def replay_on_resume(config: DictConfig, restore: str | None) -> str | None:
    """What a job resuming from ``restore`` does with its replay: ``"restored"`` (the episode
    regime's dump beside the checkpoint, or BenchMARL's buffer inside it), ``"refilled"`` (no
    dump, e.g. a run carried by ``reproduce pack``, or ``exclude_buffer_from_checkpoint``: it
    starts empty), None for a job that starts from scratch."""
    if restore is None:
        return None
    if config.experiment.get("exclude_buffer_from_checkpoint", False):
        return "refilled"
    if config.get("regime", {}).get("name") != "episodes":
        return "restored"
    return "restored" if replay_dump_dir(restore).is_dir() else "refilled"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


class RunStatusCallback(HydraCallback):
    """Hydra callback: ``status.json`` at job start/end and ``COMPLETED`` after a normal return."""

    def __init__(self) -> None:
        _register_resolver()
        self._started = 0.0

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        _register_resolver()
        self._started = time.time()
        folder = Path(config.hydra.runtime.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        restore = last_checkpoint(folder)
        _write_json(
            folder / STATUS,
            {
                "status": "running",
                **process_record(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "resumed_from": restore,
                "replay": replay_on_resume(config, restore),
                "overrides": list(config.hydra.overrides.task),
            },
        )

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        folder = Path(config.hydra.runtime.output_dir)
        status = read_status(folder)
        found = checkpoints(folder)
        status.update(
            {
                "status": "completed" if job_return.status == JobStatus.COMPLETED else "failed",
                "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "wall_s": round(time.time() - self._started, 1),
                "frames_at_last_checkpoint": found[-1][0] if found else None,
            }
        )
        if job_return.status != JobStatus.COMPLETED:
            status["error"] = repr(job_return._return_value)
        _write_json(folder / STATUS, status)
        with open(folder / ATTEMPTS, "a") as f:
            f.write(json.dumps({k: v for k, v in status.items() if k != "overrides"}) + "\n")
        if job_return.status == JobStatus.COMPLETED:
            _write_json(folder / COMPLETED, status)
