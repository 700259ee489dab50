"""Carry a set's unfinished runs to another machine without their replay: ``reproduce pack``.

A run folder's replay dump (``checkpoint_N.buffers``, the paper's 5,000 episodes: about 4 GB on
predator-prey) is what makes a resume exact, and what makes a run folder too big to move. Where
the machine that ran a set is not the one that continues it (a working session on a fresh
machine, a cluster whose scratch space is purged), ``pack`` copies each seed folder of ``<out>``
with everything but the replay: its status files, BenchMARL's run folder (config, CSV scalars,
marl-eval JSON, evaluation log, probe records) and only the newest readable checkpoint (a few MB).
Copied back under a set's output folder (``cp -r <dest>/. <out>/``), the same ``reproduce``
command resumes each run from that checkpoint: networks, optimiser state, exploration and
episode counters and random states continue, and the replay starts empty and refills (a warning
says so, and ``attempts.jsonl`` records ``"replay": "refilled"`` for that attempt). That is not
the exact resume of a run that kept its machine: say so beside any curve it produced.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarl_pow.reproduce.hydra_callbacks import (
    STATUS,
    checkpoints,
    read_status,
    run_folders,
    seed_folders,
)
from benchmarl_pow.resumable import RUNNING_FILE

#: written at the top of a pack: where it came from and what each run carries
MANIFEST = "PACKED.json"


def _copy_run_folder(run: Path, target: Path, keep: Path | None) -> None:
    """Copy BenchMARL's run folder ``run`` to ``target``: every file but the checkpoints, and of
    those only ``keep`` (without its replay dump)."""
    # running.json names the process training the folder on this machine: it means nothing there
    ignore = shutil.ignore_patterns("checkpoints", RUNNING_FILE)
    shutil.copytree(run, target, ignore=ignore, dirs_exist_ok=True)
    if keep is not None and keep.parent.parent == run:
        (target / "checkpoints").mkdir(exist_ok=True)
        shutil.copy2(keep, target / "checkpoints" / keep.name)


def pack(out: str | Path, dest: str | Path) -> dict[str, Any]:
    """Copy every seed folder of ``out`` to ``dest`` with its newest checkpoint and no replay.

    Returns:
        The manifest written to ``<dest>/PACKED.json``: ``source``, ``packed`` (time) and one
        entry per run with its seed folder, the checkpoint carried and its frames (None when the
        run has no checkpoint yet: it will start over).

    Raises:
        ValueError: ``out`` holds no seed folders, or ``dest`` is inside ``out``.
    """
    out, dest = Path(out).resolve(), Path(dest).resolve()
    if dest == out or out in dest.parents:
        raise ValueError(f"dest={dest} is inside out={out}; pack to another folder")
    folders = seed_folders(out)
    if not folders:
        raise ValueError(f"out={out} holds no runs of a set (no {STATUS} under it)")
    runs = []
    for folder in folders:
        relative = folder.relative_to(out)
        target = dest / relative
        target.mkdir(parents=True, exist_ok=True)
        found = checkpoints(folder)
        newest = found[-1][1] if found else None
        runs_here = run_folders(folder)
        for path in folder.iterdir():
            if path.is_file():
                shutil.copy2(path, target / path.name)
            elif path in runs_here:
                _copy_run_folder(path, target / path.name, newest)
            elif path.is_dir() and path.name != "discarded":  # Hydra's .hydra/ records
                shutil.copytree(path, target / path.name, dirs_exist_ok=True)
        status = read_status(target)
        if status.get("status") == "running":  # its process stays here: over there it stopped
            status.update(status="interrupted", packed=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            (target / STATUS).write_text(json.dumps(status, indent=2))
        runs.append(
            {
                "seed_folder": str(relative),
                "checkpoint": str(newest.relative_to(folder)) if newest else None,
                "frames": found[-1][0] if found else None,
            }
        )
    manifest = {"source": str(out), "packed": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": runs}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def folder_size(path: str | Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
