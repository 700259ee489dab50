"""The matrix-game diagnostics never write a non-finite table."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import benchmarl_pow.callbacks as callbacks


def test_matrix_tables_refuse_non_finite_values(tmp_path, monkeypatch):
    callback = callbacks.MatrixGameDiagnostics()
    callback.experiment = SimpleNamespace(n_iters_performed=3, total_frames=384)
    callback.enabled = True
    callback.jsonl_path = tmp_path / "tables.jsonl"
    callback.csv_path = tmp_path / "tables.csv"
    table = torch.zeros(3, 3)
    table[1, 2] = float("nan")
    monkeypatch.setattr(callbacks, "joint_value_tables", lambda experiment: {"Q_r": table})
    with pytest.raises(FloatingPointError, match="non-finite Q_r table.*iteration 3"):
        callback.on_train_end(None, "agents")
    assert not callback.jsonl_path.exists() and not callback.csv_path.exists()
