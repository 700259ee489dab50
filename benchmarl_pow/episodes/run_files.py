"""Rewind a run folder's files to a checkpoint, so that a resumed run continues them exactly.

A run interrupted after its last checkpoint has already written rows for the iterations that the
resumed run will play again: BenchMARL's CSV scalars (one ``step,value`` line per iteration), the
callbacks' JSONL/CSV tables (records carrying ``frames``). These helpers drop what lies after the
checkpoint (the marl-eval JSON: :func:`benchmarl_pow.evaluation_log.merge_previous_evaluations`).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path


def rewind_scalars(folder: Path, n_iters: int) -> None:
    """Keep the lines of every ``scalars/*.csv`` (``step,value``) whose step is < ``n_iters``."""
    for path in folder.rglob("scalars/*.csv"):
        lines = path.read_text().splitlines()
        kept = [line for line in lines if line and int(float(line.split(",", 1)[0])) < n_iters]
        path.write_text("".join(line + "\n" for line in kept))


def rewind_records(folder: Path, frames: int) -> None:
    """Drop records with ``frames`` > ``frames`` from the folder's JSONL files and from CSV
    tables with a ``frames`` column (the callbacks' per-iteration and per-evaluation files)."""
    for path in folder.glob("*.jsonl"):
        kept = []
        for line in path.read_text().splitlines():
            if line.strip() and json.loads(line).get("frames", 0) <= frames:
                kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))
    for path in folder.glob("*.csv"):
        rows = list(csv.reader(io.StringIO(path.read_text())))
        if not rows or "frames" not in rows[0]:
            continue
        column = rows[0].index("frames")
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(rows[0])
        writer.writerows(r for r in rows[1:] if r and float(r[column]) <= frames)
        path.write_text(out.getvalue())
