"""BenchMARL callbacks that the CLI attaches by task (Python API users can pass them too)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
from benchmarl.experiment.callback import Callback
from tensordict import TensorDictBase

from benchmarl_pow.diagnostics import action_letter, is_matrix_task, joint_value_tables
from benchmarl_pow.evaluation_log import EvaluationLine, ResumeEvaluationJson
from benchmarl_pow.probe import PredatorPreyProbe
from custom_envs.intersection import IntersectionMetricsCallback

TABLES_JSONL = "matrix_game_tables.jsonl"
TABLES_CSV = "matrix_game_tables.csv"


class MatrixGameDiagnostics(Callback):
    """Log per-joint-action tables on ``matrix_game/*`` tasks after every training iteration.

    Tables (rows: agent 0's action): ``Q_tot`` (ResQ: ``Q_jt``), ``Q_r`` and ``weight`` (POW),
    ``Q_star`` (algorithms with a central critic), and ``Q_i`` (``[n_agents, |A|]``). Written to
    ``matrix_game_tables.jsonl`` (one JSON object per iteration) and ``matrix_game_tables.csv``
    (long format: iteration, frames, table, row, column, value) in the experiment folder.
    Does nothing on other tasks.
    """

    def on_setup(self) -> None:
        self.enabled = is_matrix_task(self.experiment)
        if not self.enabled:
            return
        folder = Path(self.experiment.folder_name)
        self.jsonl_path = folder / TABLES_JSONL
        self.csv_path = folder / TABLES_CSV
        if not self.csv_path.exists():
            with open(self.csv_path, "w", newline="") as f:
                csv.writer(f).writerow(["iteration", "frames", "table", "row", "column", "value"])

    def on_train_end(self, training_td: TensorDictBase, group: str) -> None:
        if not getattr(self, "enabled", False):
            return
        tables = {k: v.cpu() for k, v in joint_value_tables(self.experiment).items()}
        iteration, frames = self.experiment.n_iters_performed, self.experiment.total_frames
        broken = [name for name, table in tables.items() if not torch.isfinite(table).all()]
        if broken:  # stop rather than write NaN into the results
            raise FloatingPointError(
                f"non-finite {', '.join(broken)} table(s) at iteration {iteration} ({frames} "
                "frames): the networks produce NaN/inf; lower the learning rate or check rewards"
            )
        with open(self.jsonl_path, "a") as f:
            record = {"iteration": iteration, "frames": frames}
            record.update({k: v.tolist() for k, v in tables.items()})
            f.write(json.dumps(record) + "\n")
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.writer(f)
            for name, table in tables.items():
                for i, row in enumerate(table.tolist()):
                    row_name = f"agent_{i}" if name == "Q_i" else action_letter(i)
                    for j, value in enumerate(row):
                        writer.writerow([iteration, frames, name, row_name, action_letter(j), value])


def default_callbacks(task_name: str) -> list[Callback]:
    """The callbacks our CLI adds for ``task_name`` (``<env>/<task>``)."""
    env_name = task_name.split("/")[0]
    common: list[Callback] = [EvaluationLine(), ResumeEvaluationJson()]
    if env_name == "matrix_game":
        return [MatrixGameDiagnostics(), *common]
    if env_name == "highway":
        return [IntersectionMetricsCallback(), *common]
    if env_name == "predator_prey":
        return [PredatorPreyProbe(), *common]
    if env_name in ("smacv2", "smac", "smax", "fake_smacv2"):  # evaluation win rate (starcraft.py)
        from benchmarl_pow.starcraft import BattleWonCallback

        return [BattleWonCallback(), *common]
    return common
