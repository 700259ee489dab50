"""What the two exact-resume tests (``test_episode_resume``, ``test_frames_resume``) compare
between a straight run folder and an interrupted-and-resumed one."""

from __future__ import annotations

import json
from pathlib import Path

#: the run files compared (the checkpoints folder is not)
COMPARED_SUFFIXES = (".csv", ".json", ".jsonl", ".log")


def run_files(folder: Path) -> dict[str, str]:
    """``{relative path (run name replaced by RUN): text}`` of every compared file; JSON files
    with sorted keys (``regime.json`` as written)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in COMPARED_SUFFIXES and "checkpoints" not in path.parts:
            text = path.read_text()
            if path.suffix == ".json" and path.name != "regime.json":
                text = json.dumps(json.loads(text), sort_keys=True)
            out[str(path.relative_to(folder)).replace(folder.name, "RUN")] = text
    return out


def json_returns(folder: Path) -> dict[str, tuple]:
    """``{"step_i": (step_count, returns)}`` of the run's marl-eval JSON (one task, algorithm,
    seed)."""
    (tasks,) = json.loads((folder / f"{folder.name}.json").read_text()).values()
    (algos,) = tasks.values()
    (seeds,) = algos.values()
    (run,) = seeds.values()
    return {k: (v["step_count"], v["return"]) for k, v in run.items() if k.startswith("step_")}


def assert_same_run_files(straight: Path, resumed: Path) -> None:
    """The same files with the same text (timers and JSON apart: wall times differ), the same
    evaluations once each in the marl-eval JSON, and every iteration's counters row once."""
    files_a, files_b = run_files(straight), run_files(resumed)
    assert set(files_a) == set(files_b)
    for name, text in files_a.items():
        if "timers" in name or name.endswith(".json"):
            continue
        assert files_b[name] == text, name
    assert json_returns(straight) == json_returns(resumed)
    rows_a = next(straight.rglob("scalars/counters_iter.csv")).read_text().split()
    rows_b = next(resumed.rglob("scalars/counters_iter.csv")).read_text().split()
    assert rows_b == rows_a
    iterations = [int(r.split(",")[0]) for r in rows_b]
    assert iterations == list(range(len(iterations)))
