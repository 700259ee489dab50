"""The reproduction workflow of the paper's experiments (issue 10).

``python -m benchmarl_pow.reproduce <set>`` runs a set (``matrix``, ``predator_prey``,
``intersection``) through Hydra multirun — every run an ordinary ``run.py`` run with its own folder
``<out>/<env>/<task>/<algorithm>/seed_<k>`` — locally with Hydra's joblib launcher or on SLURM with
its submitit launcher; finished runs are skipped, interrupted ones continue from their last
checkpoint. ``python -m benchmarl_pow.reproduce plot <folders>`` turns the runs' marl-eval JSON
into learning curves (mean and 95 % CI over seeds) and a Table-1-style table beside the paper's
values, plus the predator-prey mechanism probe over training.

It sits on top of the package, like ``benchmarks/``: it drives ``run.py`` in subprocesses and reads
output folders; nothing else imports it.

Modules: :mod:`.sets` (sets, budgets, paper values), :mod:`.launch` (plan, multirun commands),
:mod:`.hydra_callbacks` (status markers, resume resolver), :mod:`.results` (JSON reading,
aggregation, table), :mod:`.plot` (figures), :mod:`.__main__` (the command line).
"""

from benchmarl_pow.reproduce.sets import BUDGETS, PAPER_VALUES, SETS

__all__ = ["BUDGETS", "PAPER_VALUES", "SETS"]
