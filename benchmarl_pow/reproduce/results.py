"""Read the runs' marl-eval JSON files and aggregate them over seeds (mean and 95 % CI).

The source of every curve and table is BenchMARL's evaluation JSON ``<run>/<run>.json`` (marl-eval
format: ``{env: {task: {algorithm: {seed_k: {"step_i": {"step_count": frames, "return": [per
evaluation episode], "win_rate": [...], "captures": [...], ...}}}}}}``). A run's value at an
evaluation is the mean over its evaluation episodes; curves and table entries are then the mean
over seeds with a Student-t 95 % confidence interval.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarl_pow.reproduce.hydra_callbacks import read_attempts, read_status
from benchmarl_pow.reproduce.sets import PAPER_VALUES, TABLE1_ALGORITHMS, metric_for

#: two-sided 97.5 % Student-t quantiles by degrees of freedom (1..30); 1.96 beyond
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip

#: our algorithm config names (Table 1's, the POW ablations, BenchMARL's value-based ones); the
#: JSON names them by class, lowercased without underscores
KNOWN_ALGORITHMS = (*TABLE1_ALGORITHMS, "pow_vdn", "pow_qplex", "qmix", "vdn", "iql")
_BY_CLASS = {name.replace("_", ""): name for name in KNOWN_ALGORITHMS}


def variant_label(algorithm: str, overrides: Sequence[str]) -> str:
    """``algorithm`` with the run's own ``algorithm.*`` overrides, e.g.
    ``pow_qmix[recognition_batch_fraction=0.4]``: runs of one algorithm with different settings
    are separate curves and table rows, never averaged as seeds of one another."""
    own = sorted(o.removeprefix("algorithm.") for o in overrides if o.startswith("algorithm."))
    return f"{algorithm}[{','.join(own)}]" if own else algorithm


def base_algorithm(label: str) -> str:
    """The algorithm config name of a :func:`variant_label` (for the paper's values)."""
    return label.split("[", 1)[0]


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % Student-t confidence interval (0 for one value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    return mean, t * math.sqrt(var / n)


@dataclass
class Run:
    """One run's evaluation history.

    Attributes:
        task: ``<env>/<task>``.  algorithm: config name (``pow_qmix``), with the run's
        ``algorithm.*`` overrides when it had some (:func:`variant_label`).  seed: the seed.
        path: the JSON file.
        frames: evaluation frame counts, increasing.
        metrics: metric -> one value per evaluation (mean over evaluation episodes).
        completed: the seed folder holds the workflow's ``COMPLETED`` marker.
        wall_s: summed wall time of the workflow's job attempts (``attempts.jsonl``), or None.
        hosts: the machines that ran those attempts.
        overrides: the Hydra overrides of the last attempt (``status.json``).
    """

    task: str
    algorithm: str
    seed: int
    path: Path
    frames: list[int] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    completed: bool = False
    wall_s: float | None = None
    hosts: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)


def _job_records(run: Run) -> None:
    """Fill ``wall_s``, ``hosts`` and ``overrides`` from the seed folder's job records."""
    seed_folder = run.path.parent.parent
    attempts = read_attempts(seed_folder)
    walls = [a["wall_s"] for a in attempts if a.get("wall_s") is not None]
    run.wall_s = sum(walls) if walls else None
    # BenchMARL's own clock (checkpointed, so it spans resumes, and it also covers attempts that
    # were killed before they could record themselves, e.g. at the end of a working session)
    logged = _logged_total_time(run.path.parent)
    if logged is not None and (run.wall_s is None or logged > run.wall_s):
        run.wall_s = logged
    run.hosts = sorted({a["host"] for a in attempts if a.get("host")})
    run.overrides = list(read_status(seed_folder).get("overrides", []))


def _logged_total_time(run_folder: Path) -> float | None:
    """The last ``timers/total_time`` (seconds of training iterations, evaluations included) that
    the run's CSV logger wrote, or None."""
    for path in Path(run_folder).rglob("timers_total_time.csv"):
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        try:
            return float(rows[-1].split(",")[1])
        except (IndexError, ValueError):
            return None
    return None


def _mean(values: list) -> float:
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(values) / len(values) if values else math.nan


def read_json(path: str | Path) -> list[Run]:
    """Every run recorded in one marl-eval JSON file (BenchMARL writes one run per file)."""
    path = Path(path)
    with open(path) as f:
        data = json.load(f)
    runs = []
    for env, tasks in data.items():
        for task, algorithms in tasks.items():
            for algorithm, seeds in algorithms.items():
                for seed_key, steps in seeds.items():
                    entries = sorted(
                        (v for k, v in steps.items() if k.startswith("step_")),
                        key=lambda v: int(v["step_count"]),
                    )
                    run = Run(
                        task=f"{env}/{task}",
                        algorithm=_BY_CLASS.get(algorithm, algorithm),
                        seed=int(seed_key.removeprefix("seed_")),
                        path=path,
                        completed=(path.parent.parent / "COMPLETED").exists(),
                    )
                    for entry in entries:
                        run.frames.append(int(entry["step_count"]))
                        for metric, values in entry.items():
                            if metric == "step_count" or not isinstance(values, list):
                                continue
                            run.metrics.setdefault(metric, [])
                    for entry in entries:
                        for metric in run.metrics:
                            run.metrics[metric].append(_mean(entry.get(metric, [])))
                    _job_records(run)
                    run.algorithm = variant_label(run.algorithm, run.overrides)
                    runs.append(run)
    return runs


def find_json_files(folders: Iterable[str | Path]) -> list[Path]:
    """BenchMARL evaluation JSON files (``<run>/<run>.json``) under ``folders``, skipping runs
    moved to ``discarded/`` folders by the workflow; a file named directly is taken as it is
    (e.g. the copies under ``docs/results/*/json/``)."""
    found = []
    for folder in folders:
        folder = Path(folder)
        if folder.is_file():
            found.append(folder)
            continue
        for path in folder.rglob("*.json"):
            if path.stem == path.parent.name and "discarded" not in path.parts:
                found.append(path)
    return sorted(set(found))


def load_runs(folders: Iterable[str | Path]) -> list[Run]:
    """All runs under ``folders``; several files of one (task, algorithm, seed) keep the one
    with the most evaluation frames."""
    best: dict[tuple[str, str, int], Run] = {}
    for path in find_json_files(folders):
        for run in read_json(path):
            key = (run.task, run.algorithm, run.seed)
            last = run.frames[-1] if run.frames else -1
            if key not in best or last > (best[key].frames[-1] if best[key].frames else -1):
                best[key] = run
    return [best[k] for k in sorted(best)]


@dataclass
class Curve:
    """Mean and 95 % CI over seeds at each evaluation frame count where at least one seed has a
    value; ``n`` seeds contributed at each point."""

    frames: list[int]
    mean: list[float]
    ci: list[float]
    n: list[int]


def curve(runs: Sequence[Run], metric: str) -> Curve:
    """Aggregate the runs (one task, one algorithm, several seeds) into a :class:`Curve`."""
    by_frame: dict[int, list[float]] = {}
    for run in runs:
        for frame, value in zip(run.frames, run.metrics.get(metric, [])):
            if not math.isnan(value):
                by_frame.setdefault(frame, []).append(value)
    frames = sorted(by_frame)
    stats = [mean_ci(by_frame[f]) for f in frames]
    return Curve(
        frames=frames,
        mean=[m for m, _ in stats],
        ci=[c for _, c in stats],
        n=[len(by_frame[f]) for f in frames],
    )


@dataclass
class Row:
    """One line of the Table-1-style table."""

    task: str
    algorithm: str
    metric: str
    paper: float | None
    final: tuple[float, float]
    best: tuple[float, float]
    seeds: int
    completed: int
    frames: tuple[int, int]
    first_positive: list[int | None]
    extra: dict[str, tuple[float, float]] = field(default_factory=dict)
    wall_hours: float | None = None


def _valid(run: Run, metric: str) -> list[tuple[int, float]]:
    return [(f, v) for f, v in zip(run.frames, run.metrics.get(metric, [])) if not math.isnan(v)]


def table_rows(runs: Sequence[Run], metric: str | None = None) -> list[Row]:
    """One :class:`Row` per (task, algorithm): final and best evaluation value (per seed, then
    mean ± 95 % CI over seeds), number of seeds, frames reached (min, max over seeds), the first
    evaluation frame count with a positive value per seed, and the paper's value."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.task, run.algorithm), []).append(run)
    rows = []
    for (task, algorithm), group in sorted(groups.items()):
        m = metric or metric_for(task)
        series = [(r, _valid(r, m)) for r in group]
        series = [(r, s) for r, s in series if s]
        if not series:
            continue
        finals = [s[-1][1] for _, s in series]
        bests = [max(v for _, v in s) for _, s in series]
        last_frames = [s[-1][0] for _, s in series]
        first_pos = [next((f for f, v in s if v > 0), None) for _, s in series]
        extra = {}
        for name in ("captures", "miscaptures"):
            values = [r.metrics[name][-1] for r, _ in series if r.metrics.get(name)]
            values = [v for v in values if not math.isnan(v)]
            if values:
                extra[name] = mean_ci(values)
        rows.append(
            Row(
                task=task,
                algorithm=algorithm,
                metric=m,
                paper=PAPER_VALUES.get(task, {}).get(base_algorithm(algorithm)),
                final=mean_ci(finals),
                best=mean_ci(bests),
                seeds=len(series),
                completed=sum(r.completed for r, _ in series),
                frames=(min(last_frames), max(last_frames)),
                first_positive=first_pos,
                extra=extra,
                wall_hours=_mean_wall([r for r, _ in series]),
            )
        )
    return rows


def _mean_wall(runs: Sequence[Run]) -> float | None:
    walls = [r.wall_s for r in runs if r.wall_s is not None]
    return sum(walls) / len(walls) / 3600 if walls else None


def _fmt(value: float, ci: float, metric: str) -> str:
    if math.isnan(value):
        return "—"
    digits = 2 if metric == "win_rate" or abs(value) < 10 else 1
    return f"{value:.{digits}f} ± {ci:.{digits}f}"


def _frames(f: int | None) -> str:
    if f is None:
        return "—"
    if f >= 100_000:
        return f"{f / 1e6:.2f}M"
    return f"{f / 1e3:.1f}k" if f >= 1000 else str(f)


def markdown_table(rows: Sequence[Row]) -> str:
    """The Table-1-style Markdown table (one section per task)."""
    lines: list[str] = []
    for task in sorted({r.task for r in rows}):
        task_rows = [r for r in rows if r.task == task]
        metric = task_rows[0].metric
        has_captures = any("captures" in r.extra for r in task_rows)
        lines.append(f"### {task} ({'win rate' if metric == 'win_rate' else 'evaluation return'})")
        lines.append("")
        header = ["algorithm", "paper", "final (mean ± 95% CI)", "best (mean ± 95% CI)"]
        if has_captures:
            header += ["final captures", "final mis-captures"]
        header += ["seeds (finished)", "frames", "first eval > 0 (per seed)", "wall h / run"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for r in task_rows:
            paper = "—" if r.paper is None else (f"{r.paper:g}")
            cells = [r.algorithm, paper, _fmt(*r.final, metric), _fmt(*r.best, metric)]
            if has_captures:
                for name in ("captures", "miscaptures"):
                    cells.append(_fmt(*r.extra[name], name) if name in r.extra else "—")
            low, high = r.frames
            frames = _frames(low) if low == high else f"{_frames(low)}–{_frames(high)}"
            cells += [
                f"{r.seeds} ({r.completed})",
                frames,
                ", ".join(_frames(f) for f in r.first_positive),
                "—" if r.wall_hours is None else f"{r.wall_hours:.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        "final: each seed's last evaluation (mean over its evaluation episodes); best: each seed's "
        "best evaluation; then mean ± Student-t 95 % CI over seeds (± 0 for one seed). paper: "
        "Table 1 (predator-prey returns, intersection = Crossroads win rates); matrix game: payoff "
        "of the greedy joint action of Fig. 2's learned tables. frames: env frames at the last "
        "evaluation (the paper trained 5.05M). wall h / run: the run's own training clock "
        "(BenchMARL's timers/total_time, which spans resumes) or, if larger, the summed wall time "
        "of its job attempts; mean over seeds (machines and overrides: summary.json)."
    )
    return "\n".join(lines) + "\n"
