"""Plan and launch a set: which runs are finished, which resume, and the Hydra multiruns for the rest.

Layout under the output folder ``<out>``::

    <out>/<env>/<task>/<algorithm>/seed_<k>/           a run's seed folder = its Hydra job folder
        status.json, attempts.jsonl, COMPLETED          written by RunStatusCallback
        .hydra/, run.log                                Hydra's job records
        <benchmarl run>/<benchmarl run>.json            the marl-eval JSON (the source of all curves)
        <benchmarl run>/checkpoints/checkpoint_<frames>.pt
        <benchmarl run>/evaluations.log, probe.jsonl    console lines; predator-prey probe

Runs whose seed folder holds ``COMPLETED`` are skipped (or extended, see :func:`plan_runs`). All
the others are launched through
``run.py -m`` (Hydra multirun) with ``experiment.restore_file`` bound to the
``pow_last_checkpoint`` resolver, so each job continues from its own newest checkpoint if it has
one. The runs left to do are grouped into as few Cartesian sweeps (tasks x algorithms x seeds) as
possible; each sweep is one ``run.py -m`` call, whose launcher (joblib, submitit, basic) runs its
jobs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarl_pow.machine import alive_here, on_this_machine
from benchmarl_pow.reproduce.hydra_callbacks import (
    COMPLETED,
    RESOLVER,
    checkpoints,
    is_completed,
    last_checkpoint,
    read_status,
    run_folders,
    seed_folders,
)

LAUNCHERS = ("joblib", "submitit_slurm", "submitit_local", "basic")
SUBDIR = "${hydra.runtime.choices.task}/${hydra.runtime.choices.algorithm}/seed_${seed}"
CALLBACK = "benchmarl_pow.reproduce.hydra_callbacks.RunStatusCallback"


def seed_folder(out: str | Path, task: str, algorithm: str, seed: int) -> Path:
    """``<out>/<env>/<task>/<algorithm>/seed_<seed>``."""
    return Path(out) / task / algorithm / f"seed_{seed}"


@dataclass(frozen=True)
class RunPlan:
    """The state of one run before launching.

    Attributes:
        task, algorithm, seed: the run.
        folder: its seed folder.
        action: ``skip`` (finished), ``resume`` (interrupted: from ``checkpoint``), ``extend``
            (finished with a shorter length: from ``checkpoint``), ``start`` (from scratch),
            ``busy`` (a live process on this host is running it) or ``conflict`` (the folder
            holds a finished run of another experiment preset or model).
        checkpoint: the checkpoint a ``resume`` continues from.
    """

    task: str
    algorithm: str
    seed: int
    folder: Path
    action: str
    checkpoint: str | None = None


#: overrides that define *which* experiment a run is: a seed folder whose marker names other values
#: belongs to another budget (its checkpoints would not load)
IDENTITY_KEYS = ("experiment", "model")
#: overrides that only set a run's length: a finished run asked for more continues ("extend")
LENGTH_KEYS = ("experiment.max_n_frames", "experiment.max_n_iters")


def _values(overrides: Sequence[str], keys: Sequence[str]) -> dict[str, str]:
    """The last value given to each of ``keys`` in ``overrides`` (``key=value`` strings)."""
    found = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.lstrip("+~") in keys:
            found[key.lstrip("+~")] = value
    return found


def plan_runs(
    out: str | Path,
    tasks: Sequence[str],
    algorithms: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
) -> list[RunPlan]:
    """The :class:`RunPlan` of every (task, algorithm, seed), from the seed folders on disk.

    A seed folder with the ``COMPLETED`` marker is ``skip`` if its run had the same length
    overrides as ``overrides`` (:data:`LENGTH_KEYS`), ``extend`` (resume from its last checkpoint)
    if only those differ, and ``conflict`` if the experiment preset or model differ.
    """
    plans = []
    for task in tasks:
        for algorithm in algorithms:
            for seed in seeds:
                folder = seed_folder(out, task, algorithm, seed)
                status = read_status(folder)
                if status.get("status") == "running" and alive_here(status):
                    plans.append(RunPlan(task, algorithm, seed, folder, "busy"))
                    continue
                checkpoint = last_checkpoint(folder)
                if is_completed(folder):
                    done = read_status(folder, COMPLETED)
                    previous = list(done.get("overrides", []))
                    if _values(previous, IDENTITY_KEYS) != _values(overrides, IDENTITY_KEYS):
                        action = "conflict"
                    elif _values(previous, LENGTH_KEYS) != _values(overrides, LENGTH_KEYS):
                        action = "extend" if checkpoint else "conflict"
                    else:
                        action = "skip"
                    plans.append(RunPlan(task, algorithm, seed, folder, action, checkpoint))
                    continue
                action = "resume" if checkpoint else "start"
                plans.append(RunPlan(task, algorithm, seed, folder, action, checkpoint))
    return plans


def discard_unresumable(plan: RunPlan) -> list[Path]:
    """Move run folders without a checkpoint out of the way of a ``start`` (into
    ``<seed folder>/discarded/``, which the results reader ignores). Returns the moved folders."""
    moved = []
    if plan.action != "start":
        return moved
    for run in run_folders(plan.folder):
        target = plan.folder / "discarded" / f"{run.name}_{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(run), str(target))
        moved.append(target)
    return moved


def group_sweeps(plans: Sequence[RunPlan]) -> list[tuple[list[str], list[str], list[int]]]:
    """Group the runs to launch into Cartesian sweeps ``(tasks, algorithms, seeds)``.

    Algorithms with the same remaining seeds form one sweep per task; tasks with identical
    remaining (algorithm, seeds) sets are merged. A fresh set is therefore a single sweep.
    """
    todo = [p for p in plans if p.action in ("start", "resume", "extend")]
    per_task: dict[str, dict[str, list[int]]] = {}
    for p in todo:
        per_task.setdefault(p.task, {}).setdefault(p.algorithm, []).append(p.seed)
    by_shape: dict[tuple, list[str]] = {}
    for task, algs in per_task.items():
        by_seeds: dict[tuple[int, ...], list[str]] = {}
        for alg, seeds in algs.items():
            by_seeds.setdefault(tuple(sorted(seeds)), []).append(alg)
        shape = tuple(sorted((seeds, tuple(a)) for seeds, a in by_seeds.items()))
        by_shape.setdefault(shape, []).append(task)
    sweeps = []
    for shape, tasks in by_shape.items():
        for seeds, algs in shape:
            sweeps.append((list(tasks), list(algs), list(seeds)))
    return sweeps


def launcher_overrides(launcher: str, jobs: int) -> list[str]:
    """Hydra overrides selecting the launcher."""
    if launcher == "joblib":
        return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    if launcher == "submitit_slurm":
        return ["hydra/launcher=pow_slurm"]
    if launcher == "submitit_local":  # submitit's local executor: the SLURM path, on this machine
        return ["hydra/launcher=submitit_local"]
    if launcher == "basic":
        return []
    raise ValueError(f"unknown launcher {launcher!r}; choose from {list(LAUNCHERS)}")


@dataclass(frozen=True)
class SetRequest:
    """What ``reproduce <set>`` was asked to run.

    Attributes:
        out: the set's output folder.
        tasks, algorithms, seeds: the runs (their Cartesian product).
        budget_overrides: the budget's Hydra overrides (:func:`~benchmarl_pow.reproduce.sets.budget_overrides`).
        launcher: one of :data:`LAUNCHERS`.  jobs: parallel runs of the joblib launcher.
        extra: further ``key=value`` overrides for every run.
    """

    out: Path
    tasks: Sequence[str]
    algorithms: Sequence[str]
    seeds: Sequence[int]
    budget_overrides: Sequence[str]
    launcher: str = "joblib"
    jobs: int = 2
    extra: Sequence[str] = ()


def multirun_command(
    request: SetRequest, tasks: Sequence[str], algorithms: Sequence[str], seeds: Sequence[int]
) -> list[str]:
    """The ``run.py -m`` command line of one sweep of ``request`` (a sub-product of its runs; a
    list for :func:`subprocess.run`)."""
    out = Path(request.out).resolve()
    return [
        sys.executable,
        "-m",
        "benchmarl_pow.run",
        "-m",
        # Hydra sweeps the Cartesian product with the first key varying slowest: per task and
        # seed, all algorithms run side by side (the first finished seeds compare them)
        f"task={','.join(tasks)}",
        f"seed={','.join(str(s) for s in seeds)}",
        f"algorithm={','.join(algorithms)}",
        *request.budget_overrides,
        "experiment.save_folder=${hydra:runtime.output_dir}",
        # quoted: Hydra's override grammar does not parse a nested interpolation unquoted
        f"experiment.restore_file='${{{RESOLVER}:${{hydra:runtime.output_dir}}}}'",
        f"hydra.sweep.dir={out}",
        f"hydra.sweep.subdir={SUBDIR}",
        f"+hydra.callbacks.pow_run_status._target_={CALLBACK}",
        *launcher_overrides(request.launcher, request.jobs),
        *request.extra,
    ]


def format_plan(plans: Sequence[RunPlan]) -> str:
    """One line per run: action, task, algorithm, seed (and the checkpoint a resume uses)."""
    lines = []
    for p in plans:
        line = f"  {p.action:<8} {p.task} {p.algorithm} seed {p.seed}"
        if p.checkpoint:
            line += f"  <- {Path(p.checkpoint).name}"
        lines.append(line)
    return "\n".join(lines)


def run_set(request: SetRequest, dry_run: bool = False) -> int:
    """Plan, print the plan, and launch the sweeps one after the other.

    Returns:
        0 when every sweep's ``run.py -m`` exited with 0 (or nothing was left to do), else the
        first non-zero exit code.
    """
    out = Path(request.out).resolve()
    plans = plan_runs(
        out,
        request.tasks,
        request.algorithms,
        request.seeds,
        [*request.budget_overrides, *request.extra],
    )
    print(f"reproduce: {len(plans)} runs under {out}")
    print(format_plan(plans), flush=True)
    conflicts = [p for p in plans if p.action == "conflict"]
    if conflicts:
        print(
            "reproduce: these seed folders hold finished runs of another experiment preset or "
            "model (see their COMPLETED file); use another --out or remove them:\n"
            + "\n".join(f"  {p.folder}" for p in conflicts),
            file=sys.stderr,
        )
        return 2
    sweeps = group_sweeps(plans)
    if not sweeps:
        print("reproduce: nothing to launch (every run is finished or busy)")
        return 0
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("HYDRA_FULL_ERROR", "1")
    code = 0
    for task_list, alg_list, seed_list in sweeps:
        command = multirun_command(request, task_list, alg_list, seed_list)
        print("reproduce: " + shlex.join(command), flush=True)
        if dry_run:
            continue
        for p in plans:
            if p.task in task_list and p.algorithm in alg_list and p.seed in seed_list:
                for moved in discard_unresumable(p):
                    print(f"reproduce: no checkpoint, moved {moved.name} to {moved.parent}")
                if p.action == "extend":
                    (p.folder / COMPLETED).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(command, env=env)
        if result.returncode != 0 and code == 0:
            code = result.returncode
    return code


def status_lines(out: str | Path) -> list[str]:
    """One line per seed folder under ``out`` (those with a ``status.json``): the run, its job
    status (``running?`` for a job started on another machine, which this one cannot check),
    the frames of its newest checkpoint and its last evaluation line."""
    lines = []
    for folder in seed_folders(out):
        status = read_status(folder)
        state = status.get("status", "?")
        if state == "running" and on_this_machine(status):
            if not alive_here(status):
                state = "interrupted"
        elif state == "running":  # another machine's job (a cluster node, or a carried pack)
            state = "running?"
        if is_completed(folder):
            state = "completed"
        found = checkpoints(folder)
        last_eval = ""
        for run in run_folders(folder):
            log = run / "evaluations.log"
            if log.exists():
                text = log.read_text().strip().splitlines()
                last_eval = text[-1].split("] ", 1)[-1] if text else ""
        frames = found[-1][0] if found else 0
        lines.append(
            f"{str(folder.relative_to(out)):<45} {state:<11} ckpt {frames:>9}  {last_eval}"
        )
    return lines
