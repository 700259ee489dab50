"""Every algorithm on BenchMARL's PettingZoo task ``pettingzoo/simple_spread`` (discrete actions,
no global state: the mixers get the concatenated observations); skipped without the extra."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import pytest

from benchmarl_pow.algorithms import ALGORITHMS

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pettingzoo") is None
    or importlib.util.find_spec("pettingzoo.mpe") is None,
    reason="the `pettingzoo` extra (pettingzoo 1.24 with MPE) is not installed: "
    'pip install ".[pettingzoo]"',
)

#: every algorithm of the project, and BenchMARL's own QMIX and VDN
ALL_ALGORITHMS = [*ALGORITHMS, "qmix", "vdn"]


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_every_algorithm_on_simple_spread(algorithm, tmp_path):
    from benchmarl_pow.compose import compose_experiment

    experiment = compose_experiment(
        [
            f"algorithm={algorithm}",
            "task=pettingzoo/simple_spread",
            "experiment=smoke",
            # 10-step episodes: each of the 2 envs ends one episode per 20-frame iteration
            "task.max_cycles=10",
        ],
        save_folder=tmp_path,
    )
    assert experiment.task.supports_discrete_actions() and not experiment.continuous_actions
    experiment.run()
    assert experiment.n_iters_performed == 2
    files = list(Path(experiment.folder_name).rglob("scalars/collection_*episode_reward_mean.csv"))
    assert files
    with open(files[0]) as f:
        values = [float(row[1]) for row in csv.reader(f)]
    assert values and all(math.isfinite(v) for v in values)


def test_cli_run_is_quiet(tmp_path):
    """The CLI on a PettingZoo task prints no library warning and no SDL error line (headless)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "SDL_VIDEODRIVER")}
    result = subprocess.run(
        [sys.executable, "benchmarl_pow/run.py", "algorithm=qmix_lambda",
         "task=pettingzoo/simple_spread", "experiment=smoke", "task.max_cycles=10",
         f"experiment.save_folder={tmp_path}"],
        capture_output=True, text=True, env=env, timeout=600,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "Warning" not in output and "XDG_RUNTIME_DIR" not in output, output[-2000:]
