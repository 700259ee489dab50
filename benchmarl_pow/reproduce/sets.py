"""The paper's experiment sets, their budgets, and the paper's reported values (Table 1, Fig. 2).

A *set* is a list of tasks and a default list of algorithms (the paper's for that figure/table);
a *budget* says how long each run is: ``paper`` (the paper's training regime and length),
``quick`` (a shorter budget that fits a working session or two) and ``smoke`` (a few tiny
iterations, for tests). Each (set, budget) is a list of Hydra overrides for ``run.py``.

Every budget checkpoints often enough that an interrupted run loses at most about ten minutes of
work, writes a checkpoint at the end, and keeps the two newest checkpoints. Measured on a shared
2-core CPU, a ``pymarl2`` predator-prey iteration (8 episodes of up to 200 steps, one POW-QMIX
learner call, ``model=rnn_agent``) takes 11–14 s, so 32k frames are 4–5 minutes while episodes
last 200 steps and stay under ten while they are longer than ~90 steps; intersection episodes last
at most 100 steps (far fewer when cars crash), hence 16k frames. The intervals are multiples of
1,600 frames, so that ``regime=frames`` (BenchMARL's check: a multiple of the collected batch)
accepts them too. In the episode regime the replay buffer is dumped beside the newest checkpoint as
TorchRL memory-mapped files (``EpisodeExperiment._save_experiment``: seconds for the 4 GB of the
paper's 5,000-episode buffer), so a resumed run continues exactly; ``--no-buffer`` leaves it out
(a resumed run then refills its buffer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmarl_pow.starcraft import REGIME_DEFAULTS

BUDGETS = ("paper", "quick", "smoke")


@dataclass(frozen=True)
class ExperimentSet:
    """One reproducible experiment set.

    Attributes:
        name: the set's name on the command line.
        tasks: BenchMARL task names (``<env>/<task>``).
        algorithms: the paper's algorithms for this set (config names, ``algorithm=``).
        budgets: budget -> Hydra overrides (experiment preset, model, length, checkpointing).
        metric: the JSON metric the table and curves report (``return`` or ``win_rate``).
        source: where the paper's values come from.
    """

    name: str
    tasks: tuple[str, ...]
    algorithms: tuple[str, ...]
    budgets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    metric: str = "return"
    source: str = "Table 1"


#: Checkpointing shared by every budget (the interval is set per budget).
CHECKPOINTING = (
    "experiment.checkpoint_at_end=True",
    "experiment.keep_checkpoints_num=2",
)

#: Table 1's main comparison (POW-VDN / POW-QPLEX are its ablation rows, see PAPER_VALUES).
TABLE1_ALGORITHMS = (
    "pow_qmix",
    "qmix_lambda",
    "vdn_lambda",
    "qplex",
    "cw_qmix",
    "ow_qmix",
    "resq",
)

SMOKE = ("experiment=smoke", "experiment.checkpoint_interval=20")

#: The paper's SMAC/SMACv2 regime, as ``run.py`` completes a ``smax/*`` command line, less its
#: length (``experiment.max_n_frames``: 10.05M frames) and checkpoint interval, which each budget
#: sets.
SMAC_REGIME = tuple(
    f"{key}={value}"
    for key, value in REGIME_DEFAULTS
    if key not in ("experiment.max_n_frames", "experiment.checkpoint_interval")
)
SMAC_PAPER_FRAMES = dict(REGIME_DEFAULTS)["experiment.max_n_frames"]

SETS: dict[str, ExperimentSet] = {
    "matrix": ExperimentSet(
        name="matrix",
        tasks=("matrix_game/nonmonotonic",),
        # Fig. 2's panels: POW-QMIX, QMIX, OW-QMIX, CW-QMIX, QPLEX, ResQ
        algorithms=("pow_qmix", "qmix_lambda", "ow_qmix", "cw_qmix", "qplex", "resq"),
        budgets={
            # the paper's matrix protocol (epsilon = 1, 25 iterations of 128 one-step episodes)
            "paper": ("experiment=matrix_game", "experiment.checkpoint_interval=1280"),
            "quick": ("experiment=matrix_game", "experiment.checkpoint_interval=1280"),
            "smoke": SMOKE,
        },
        source="Fig. 2 (return of the learned greedy joint action)",
    ),
    "predator_prey": ExperimentSet(
        name="predator_prey",
        tasks=("predator_prey/stag_hunt", "predator_prey/punish_4", "predator_prey/punish_5"),
        algorithms=TABLE1_ALGORITHMS,
        budgets={
            # PyMARL2's regime and the paper's t_max of 5.05M frames (the preset's length)
            "paper": (
                "experiment=pymarl2",
                "model=rnn_agent",
                "experiment.checkpoint_interval=32000",
            ),
            "quick": (
                "experiment=pymarl2",
                "model=rnn_agent",
                "experiment.max_n_frames=2000000",
                "experiment.checkpoint_interval=32000",
            ),
            "smoke": SMOKE,
        },
    ),
    "intersection": ExperimentSet(
        name="intersection",
        tasks=("highway/intersection",),
        algorithms=TABLE1_ALGORITHMS,
        budgets={
            # experiment=intersection: the pymarl2 regime (model=rnn_agent) with epsilon fixed at
            # 0.1 and the paper's 5.05M frames
            "paper": (
                "experiment=intersection",
                "model=rnn_agent",
                "experiment.checkpoint_interval=16000",
            ),
            "quick": (
                "experiment=intersection",
                "model=rnn_agent",
                "experiment.max_n_frames=1000000",
                "experiment.checkpoint_interval=16000",
            ),
            "smoke": SMOKE,
        },
        metric="win_rate",
    ),
    # StarCraft-free SMAC (JaxMARL's SMAX, extra `smax`): not the paper's benchmark (other unit
    # stats, no corridor/MMM2), so no paper value; the paper's SMAC regime (pow_spec.md §5.4:
    # pymarl2, 10.05M frames, 32 test episodes), the same overrides `run.py` adds for smax/*.
    "smax": ExperimentSet(
        name="smax",
        tasks=("smax/3s_vs_5z", "smax/smacv2_5_units"),
        algorithms=("pow_qmix", "qmix_lambda"),
        budgets={
            "paper": (
                *SMAC_REGIME,
                f"experiment.max_n_frames={SMAC_PAPER_FRAMES}",
                "experiment.checkpoint_interval=32000",
            ),
            "quick": (
                *SMAC_REGIME,
                "experiment.max_n_frames=1000000",
                "experiment.checkpoint_interval=32000",
            ),
            "smoke": SMOKE,
        },
        metric="win_rate",
        source="none: SMAX stands in for SMAC (Table 1's SMAC rows are StarCraft II)",
    ),
}

#: The paper's reported values. Table 1 (final performance): predator-prey returns (optimum 40),
#: Crossroads (= highway/intersection) win rates; no value for the stag hunt without penalty (only
#: Fig. 3's curves). The matrix game's values are the payoffs of the greedy joint actions of
#: Fig. 2's learned tables as pow_spec.md §7.2 reads them (POW-QMIX, CW-QMIX, ResQ recover
#: (A, A) = 8; QMIX, OW-QMIX, QPLEX end at the trap (C, C) = 7.9; CW-QMIX's printed table is
#: identical to POW-QMIX's, ambiguity A4).
PAPER_VALUES: dict[str, dict[str, float]] = {
    "predator_prey/punish_4": {
        "qmix_lambda": 0.0,
        "vdn_lambda": 0.0,
        "qplex": 0.0,
        "resq": 40.0,
        "cw_qmix": 16.0,
        "ow_qmix": 8.0,
        "pow_qmix": 40.0,
        "pow_vdn": 40.0,
        "pow_qplex": 40.0,
    },
    "predator_prey/punish_5": {
        "qmix_lambda": 0.0,
        "vdn_lambda": 0.0,
        "qplex": 0.0,
        "resq": 0.0,
        "cw_qmix": 8.0,
        "ow_qmix": 0.0,
        "pow_qmix": 40.0,
        "pow_vdn": 40.0,
        "pow_qplex": 40.0,
    },
    "highway/intersection": {
        "qmix_lambda": 0.28,
        "vdn_lambda": 0.73,
        "qplex": 0.26,
        "resq": 0.88,
        "cw_qmix": 0.43,
        "ow_qmix": 0.88,
        "pow_qmix": 0.92,
        "pow_vdn": 0.81,
        "pow_qplex": 0.93,
    },
    "matrix_game/nonmonotonic": {
        "pow_qmix": 8.0,
        "qmix_lambda": 7.9,
        "ow_qmix": 7.9,
        "cw_qmix": 8.0,
        "qplex": 7.9,
        "resq": 8.0,
    },
}

# Table 1's SMAC (win rates) and SMACv2 (returns) columns, for the StarCraft sets to come.
_ORDER = (
    "qmix_lambda",
    "vdn_lambda",
    "qplex",
    "resq",
    "cw_qmix",
    "ow_qmix",
    "pow_qmix",
    "pow_vdn",
    "pow_qplex",
)
_TABLE1_SC = {
    "smac/3s_vs_5z": (1.00, 0.97, 0.96, 1.00, 0.99, 1.00, 1.00, 0.96, 1.00),
    "smac/corridor": (0.69, 0.87, 0.30, 0.00, 0.79, 0.70, 0.95, 0.87, 0.94),
    "smac/mmm2": (0.98, 0.81, 0.00, 0.90, 0.92, 0.98, 0.98, 0.90, 0.93),
    "smacv2/protoss_5_vs_5": (18.3, 17.5, 19.2, 17.7, 17.2, 18.4, 18.8, 17.9, 19.9),
    "smacv2/terran_5_vs_5": (17.1, 17.0, 17.3, 16.3, 16.0, 16.3, 19.0, 17.0, 19.4),
    "smacv2/zerg_5_vs_5": (17.6, 15.5, 0.0, 17.5, 15.7, 16.9, 18.4, 16.8, 18.1),
}
for _task, _values in _TABLE1_SC.items():
    PAPER_VALUES[_task] = dict(zip(_ORDER, _values))

#: The metric of Table 1 per task environment.
TASK_METRIC = {"highway": "win_rate", "smac": "win_rate", "smax": "win_rate"}


def metric_for(task: str) -> str:
    """The metric the paper reports for ``task`` (``<env>/<task>``)."""
    return TASK_METRIC.get(task.split("/")[0], "return")


def budget_overrides(set_name: str, budget: str, keep_buffer: bool = True) -> list[str]:
    """Hydra overrides of a set's budget, with the shared checkpointing settings."""
    if set_name not in SETS:
        raise ValueError(f"unknown set {set_name!r}; choose from {sorted(SETS)}")
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose from {list(BUDGETS)}")
    overrides = [*SETS[set_name].budgets[budget], *CHECKPOINTING]
    overrides.append(f"experiment.exclude_buffer_from_checkpoint={not keep_buffer}")
    return overrides
