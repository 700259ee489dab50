"""Figures and tables of the reproduction workflow (``python -m benchmarl_pow.reproduce plot``).

Writes under the output folder:

* ``curves_<env>_<task>.png``: per task, the evaluation metric (return, or win rate on the
  intersection) against env frames, mean over seeds with a shaded 95 % CI band, one line per
  algorithm, the paper's value as a dotted line of the same colour;
* ``table.md``: the Table-1-style table (:func:`~benchmarl_pow.reproduce.results.markdown_table`);
* ``summary.json``: the table's numbers and the curves, machine-readable;
* ``probe_<env>_<task>_<algorithm>_seed<k>.png`` for every run with a ``probe.jsonl``: the
  predator-prey mechanism probe over training (Q_tot, Q̂*, Q_r per joint action; filled markers
  where the joint action is in A_r; dashed: the immediate reward).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarl_pow.reproduce.results import (
    Run,
    base_algorithm,
    curve,
    load_runs,
    markdown_table,
    table_rows,
)
from benchmarl_pow.reproduce.sets import PAPER_VALUES, metric_for


def read_probe_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``probe.jsonl`` (see :mod:`benchmarl_pow.probe`), one per frame count (a
    resumed run's later record replaces an earlier one with the same frames), sorted by frames."""
    by_frames: dict[int, dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                by_frames[int(record["frames"])] = record
    return [by_frames[k] for k in sorted(by_frames)]


def _frame_axis(frames: Sequence[int]) -> tuple[float, str]:
    """Scale and label of an env-frames axis (millions once frames reach 100k)."""
    return (1e6, "env frames [M]") if frames and max(frames) >= 100_000 else (1.0, "env frames")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(name: str) -> str:
    """A task or variant label as a file-name part (``predator_prey_punish_4``)."""
    for char in "/[],= ":
        name = name.replace(char, "_")
    return name.strip("_")


def _band(ax: Any, runs: Sequence[Run], metric: str, scale: float, color: str, **kw: Any) -> int:
    """Each seed's curve (thin), the mean line and the shaded 95 % CI of ``metric`` over the
    runs; returns the number of seeds."""
    c = curve(runs, metric)
    if not c.frames:
        return 0
    if len(runs) > 1:
        for run in runs:
            ys = run.metrics.get(metric, [])
            xs = [f / scale for f in run.frames[: len(ys)]]
            ax.plot(xs, ys, color=color, linewidth=0.6, alpha=0.45, linestyle=kw.get("linestyle"))
    x = [f / scale for f in c.frames]
    ax.plot(x, c.mean, color=color, **kw)
    low = [m - h for m, h in zip(c.mean, c.ci)]
    high = [m + h for m, h in zip(c.mean, c.ci)]
    ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
    return max(c.n)


def _seed_range(runs: Sequence[Run], metrics: Sequence[str]) -> tuple[float, float] | None:
    """The range of the seeds' own values of ``metrics`` (NaN ignored), or None."""
    values = [
        v for r in runs for m in metrics for v in r.metrics.get(m, []) if not math.isnan(v)
    ]
    return (min(values), max(values)) if values else None


def _clip_to_seeds(ax: Any, value_range: tuple[float, float] | None) -> bool:
    """Limit the y axis to the seeds' values (plus a margin) where a few-seed CI band would
    otherwise flatten them; returns whether it clipped."""
    if value_range is None:
        return False
    lo, hi = value_range
    margin = 0.08 * (hi - lo) if hi > lo else 1.0
    bottom, top = ax.get_ylim()
    if bottom >= lo - 2 * margin and top <= hi + 2 * margin:
        return False
    ax.set_ylim(lo - margin, hi + margin)
    return True


def plot_curves(runs: Sequence[Run], out: Path) -> list[Path]:
    """One PNG per task (with a second panel of captures and mis-captures per evaluation episode
    where the JSON has them); returns the paths."""
    plt = _pyplot()
    paths = []
    for task in sorted({r.task for r in runs}):
        metric = metric_for(task)
        task_runs = [r for r in runs if r.task == task]
        captures = any(r.metrics.get("captures") for r in task_runs)
        fig, axes = plt.subplots(
            1, 2 if captures else 1, figsize=(13 if captures else 7.5, 4.5), squeeze=False
        )
        ax = axes[0][0]
        algorithms = sorted({r.algorithm for r in task_runs})
        scale, xlabel = _frame_axis([f for r in task_runs for f in r.frames])
        for i, algorithm in enumerate(algorithms):
            group = [r for r in task_runs if r.algorithm == algorithm]
            color = f"C{i % 10}"
            seeds = _band(ax, group, metric, scale, color)
            if not seeds:
                continue
            ax.lines[-1].set_label(f"{algorithm} (n = {seeds} seeds)")
            paper = PAPER_VALUES.get(task, {}).get(base_algorithm(algorithm))
            if paper is not None:
                ax.axhline(paper, color=color, linestyle=":", linewidth=1)
            if captures:
                _band(axes[0][1], group, "captures", scale, color, label=f"{algorithm} captures")
                _band(axes[0][1], group, "miscaptures", scale, color, linestyle="--")
        ax.set_ylabel("evaluation win rate" if metric == "win_rate" else "evaluation return")
        paper_values = [
            v for a, v in PAPER_VALUES.get(task, {}).items() if a in algorithms and v is not None
        ]
        value_range = _seed_range(task_runs, [metric])
        if value_range is not None and paper_values:
            value_range = (min(value_range[0], *paper_values), max(value_range[1], *paper_values))
        clipped = _clip_to_seeds(ax, value_range)
        ax.set_title(
            f"{task}: seeds (thin), mean and 95% CI (dotted: paper, Table 1)"
            + ("\nCI band clipped to the seeds' range" if clipped else ""),
            fontsize=10,
        )
        panels = [ax]
        if captures:
            clipped = _clip_to_seeds(
                axes[0][1], _seed_range(task_runs, ["captures", "miscaptures"])
            )
            axes[0][1].set_ylabel("per evaluation episode")
            axes[0][1].set_title(
                "captures (solid) and mis-captures (dashed)"
                + ("\nCI band clipped to the seeds' range" if clipped else ""),
                fontsize=10,
            )
            panels.append(axes[0][1])
        for panel in panels:
            panel.set_xlabel(xlabel)
            panel.grid(alpha=0.3)
            panel.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"curves_{_slug(task)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_probe(path: str | Path, out_png: str | Path, title: str = "") -> Path:
    """Draw one run's ``probe.jsonl`` over training (scenes as rows, networks as columns)."""
    records = read_probe_records(path)
    plt = _pyplot()
    scenes = list(records[0]["scenes"]) if records else []
    values = [
        v
        for v in ("Q_tot", "Q_star", "Q_r")
        if records and any(v in row for row in _rows(records[0], scenes[0]).values())
    ]
    fig, axes = plt.subplots(
        len(scenes), max(1, len(values)), figsize=(4.2 * max(1, len(values)), 3.2 * len(scenes)),
        squeeze=False,
    )  # fmt: skip
    scale, xlabel = _frame_axis([r["frames"] for r in records])
    frames = [r["frames"] / scale for r in records]
    for row_i, scene in enumerate(scenes):
        labels = list(_rows(records[0], scene))
        for col_i, value in enumerate(values):
            ax = axes[row_i][col_i]
            for k, label in enumerate(labels):
                color = f"C{k % 10}"
                ys = [_rows(r, scene)[label].get(value) for r in records]
                ax.plot(frames, ys, color=color, label=label, linewidth=1.2)
                inside = [
                    (x, y)
                    for x, y, r in zip(frames, ys, records)
                    if _rows(r, scene)[label].get("in_A_r")
                ]
                if inside:
                    ax.scatter(*zip(*inside), color=color, s=12, zorder=3)
                reward = _rows(records[0], scene)[label]["reward"]
                ax.axhline(reward, color=color, linestyle="--", linewidth=0.7, alpha=0.6)
            ax.set_title(f"{scene}: {value}", fontsize=9)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.grid(alpha=0.3)
            if col_i == 0:
                ax.legend(fontsize=7)
    if title:
        fig.suptitle(title + "  (dots: in A_r; dashed: immediate reward)", fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def _rows(record: dict[str, Any], scene: str) -> dict[str, dict[str, Any]]:
    return record["scenes"][scene]["joint_actions"]


def plot_probes(runs: Sequence[Run], out: Path) -> list[Path]:
    """:func:`plot_probe` for every run with a ``probe.jsonl`` next to its JSON."""
    paths = []
    for run in runs:
        probe = run.path.parent / "probe.jsonl"
        if probe.exists() and probe.stat().st_size > 0:
            name = f"probe_{_slug(run.task)}_{_slug(run.algorithm)}_seed{run.seed}.png"
            title = f"{run.algorithm} on {run.task}, seed {run.seed}"
            paths.append(plot_probe(probe, out / name, title))
    return paths


def make_report(folders: Iterable[str | Path], out: str | Path) -> dict[str, Any]:
    """Curves, table, probe figures and ``summary.json`` for the runs under ``folders``.

    Returns:
        ``{"runs": n, "table": path, "curves": [paths], "probes": [paths], "summary": path}``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(folders)
    rows = table_rows(runs)
    table = out / "table.md"
    table.write_text("# Reproduction results\n\n" + markdown_table(rows))
    curves = plot_curves(runs, out)
    probes = plot_probes(runs, out)
    summary = out / "summary.json"
    with open(summary, "w") as f:
        json.dump(
            {
                "rows": [asdict(r) for r in rows],
                "curves": {
                    f"{task}|{algorithm}": asdict(
                        curve(
                            [r for r in runs if r.task == task and r.algorithm == algorithm],
                            metric_for(task),
                        )
                    )
                    for task, algorithm in sorted({(r.task, r.algorithm) for r in runs})
                },
                "runs": [
                    {
                        "task": r.task,
                        "algorithm": r.algorithm,
                        "seed": r.seed,
                        "json": str(r.path),
                        "completed": r.completed,
                        "last_frames": r.frames[-1] if r.frames else None,
                        "wall_s": r.wall_s,
                        "hosts": r.hosts,
                        "overrides": r.overrides,
                    }
                    for r in runs
                ],
            },
            f,
            indent=2,
            default=str,
        )
    return {
        "runs": len(runs),
        "table": table,
        "curves": curves,
        "probes": probes,
        "summary": summary,
    }
