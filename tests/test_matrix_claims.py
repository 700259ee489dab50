"""Paper Fig. 2 claims on the matrix game that our 10-seed comparison reproduces robustly.

Only claims where the paper and ``docs/results/matrix_game.md`` (``benchmarks/matrix_table.py``)
agree in at least 9 of 10 seeds are tested, with the shipped ``experiment=matrix_game`` preset and
the task presets unchanged (CW α = 0 on the matrix game, paper App. F.2). Each threshold sits two
seeds below what this machine measures, so that one or two seeds drifting on another CPU (float
rounding) do not turn CI red: CW-QMIX 9/10 measured, tested >= 7/10; POW-QPLEX 9/10 measured over
seeds 0-9 and 5/5 over seeds 0-4, tested >= 3/5 (five seeds, ~20 s each, to keep the suite under
ten minutes). POW-QMIX's and QMIX's own claims live in ``tests/test_reproduction.py``. Not tested, because our table disagrees with the
paper: ResQ recovering (A, A) (0/10 here), OW-QMIX failing (it reaches (A, A) in 4/10) and QPLEX
over-estimating (A, A) and (C, C) (its mean Q_tot there is 3.14 and 5.71, below the true 8 and 7.9).
"""

import pytest

from benchmarl_pow.compose import train_matrix_game

OPTIMUM = (0, 0)


def run(algorithm: str, seed: int, tmp_path):
    return train_matrix_game(algorithm, seed, tmp_path / f"{algorithm}_{seed}")


@pytest.mark.slow
def test_cw_qmix_recovers_the_optimum(tmp_path):
    """Paper: CW-QMIX recovers (A, A) with Q_tot(A, A) = 8 (ours: 9/10 seeds, mean Q_tot(A, A) 7.98)."""
    results = [run("cw_qmix", seed, tmp_path) for seed in range(10)]
    successes = [tables for greedy, tables in results if greedy == OPTIMUM]
    assert len(successes) >= 7, [greedy for greedy, _ in results]
    for tables in successes:
        assert abs(float(tables["Q_tot"][0, 0]) - 8.0) < 0.5  # Q_tot(A, A) ≈ Q*(A, A) = 8
        assert abs(float(tables["Q_star"][0, 0]) - 8.0) < 0.5  # the central Q̂* knows the optimum


@pytest.mark.slow
def test_pow_qplex_recovers_the_optimum(tmp_path):
    """Paper Fig. 2: POW-QPLEX recovers (A, A) with Q_tot(A, A) = 8, where QPLEX does not (0/10
    here). Ours: 9/10 seeds (0-9), 5/5 over seeds 0-4, Q_tot(A, A) = 8.00 in each success."""
    results = [run("pow_qplex", seed, tmp_path) for seed in range(5)]
    successes = [tables for greedy, tables in results if greedy == OPTIMUM]
    assert len(successes) >= 3, [greedy for greedy, _ in results]
    for tables in successes:
        assert abs(float(tables["Q_tot"][0, 0]) - 8.0) < 0.5
        assert abs(float(tables["Q_star"][0, 0]) - 8.0) < 0.5
        assert float(tables["weight"][0, 0]) == 1.0  # the optimum is in the recognition set
