"""Shared test set-up: one torch thread (10-100x faster than the default pool on 2 cores)."""

import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# Property tests: derandomized in CI (CI=true), so that a red run replays exactly; random locally.
settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

import benchmarl_pow  # noqa: E402,F401  (registers our algorithms and tasks)

REPO = Path(__file__).resolve().parent.parent
RUN_PY = REPO / "benchmarl_pow" / "run.py"


@pytest.fixture
def run_cli(tmp_path):
    """Run ``benchmarl_pow/run.py`` with Hydra overrides in ``tmp_path``; return the process."""
    import subprocess

    def _run(*overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        return subprocess.run(
            [sys.executable, str(RUN_PY), *overrides, f"hydra.run.dir={tmp_path}/run",
             f"hydra.sweep.dir={tmp_path}/multirun"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return _run
