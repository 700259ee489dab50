"""Paper Fig. 2 claims on the matrix game that our 10-seed comparison reproduces robustly.

Only claims where the paper and ``docs/results/matrix_game.md`` (``benchmarks/matrix_table.py``)
agree in at least 9 of 10 seeds are tested, with the shipped ``experiment=matrix_game`` preset and
the task presets unchanged (CW α = 0 on the matrix game, paper App. F.2). POW-QMIX's and QMIX's own
claims live in ``tests/test_reproduction.py``. Not tested, because our table disagrees with the
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
    assert len(successes) >= 9, [greedy for greedy, _ in results]
    for tables in successes:
        assert abs(float(tables["Q_tot"][0, 0]) - 8.0) < 0.5  # Q_tot(A, A) ≈ Q*(A, A) = 8
        assert abs(float(tables["Q_star"][0, 0]) - 8.0) < 0.5  # the central Q̂* knows the optimum
