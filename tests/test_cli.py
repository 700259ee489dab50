"""The Hydra CLI end to end: our tasks with BenchMARL's algorithms, BenchMARL's tasks, multirun."""

import csv
from pathlib import Path

import pytest


def _scalars(root: Path) -> dict[str, list[float]]:
    files = list(root.rglob("scalars/*.csv"))
    assert files, f"no CSV scalars under {root}"
    out = {}
    for f in files:
        with open(f) as fh:
            out[f.stem] = [float(row[1]) for row in csv.reader(fh) if len(row) >= 2]
    return out


@pytest.mark.parametrize("algorithm", ["qmix", "vdn", "iql"])
def test_benchmarl_algorithms_on_the_matrix_game(run_cli, tmp_path, algorithm):
    proc = run_cli(f"algorithm={algorithm}", "task=matrix_game/nonmonotonic", "experiment=smoke")
    assert proc.returncode == 0, proc.stderr[-3000:]
    scalars = _scalars(tmp_path / "run")
    assert len(scalars["counters_iter"]) == 2  # two iterations were logged
    assert any(k.startswith("train_agents_loss") for k in scalars)
    assert "eval_reward_episode_reward_mean" in scalars
    # every matrix run ends with the greedy joint action and the learned table
    assert "greedy joint action: (" in proc.stdout
    assert "payoff" in proc.stdout
    assert list((tmp_path / "run").rglob("matrix_game_final.json"))
    assert "Loaded config" not in proc.stdout  # quiet by default (verbose=true prints it)


def test_benchmarl_task_with_benchmarl_algorithm(run_cli, tmp_path):
    proc = run_cli(
        "algorithm=qmix", "task=vmas/balance", "experiment=smoke", "experiment.max_n_iters=1"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(_scalars(tmp_path / "run")["counters_iter"]) == 1


def test_multirun(run_cli, tmp_path):
    proc = run_cli(
        "-m", "algorithm=qmix", "task=matrix_game/penalty", "experiment=smoke",
        "experiment.max_n_iters=1", "seed=0,1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {p.parent.parent for p in (tmp_path / "multirun").rglob("scalars/*.csv")}
    assert len(runs) == 2


def test_unknown_algorithm_or_task_is_a_clear_error(run_cli):
    proc = run_cli("algorithm=no_such_algorithm", "task=matrix_game/nonmonotonic")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown algorithm 'no_such_algorithm'; choices: cw_qmix, iddpg, ippo, iql, isac, "
        "maddpg, mappo, masac, ow_qmix, pow_qmix, pow_qplex, pow_vdn, qmix, qmix_lambda, qplex, "
        "resq, vdn, vdn_lambda"
    ]
    proc = run_cli("algorithm=qmix", "task=matrix_game/no_such_task")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "unknown task 'matrix_game/no_such_task'" in line and "matrix_game/nonmonotonic" in line
    assert "Loaded config" not in proc.stdout


def test_custom_payoff_from_the_command_line(run_cli):
    proc = run_cli(
        "algorithm=qmix", "task=matrix_game/nonmonotonic", "experiment=smoke",
        "task.payoff=[[1.0,0.0],[0.0,5.0]]",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "greedy joint action: (" in proc.stdout
    assert "5.00" in proc.stdout
