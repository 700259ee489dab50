"""Matrix-game diagnostics: the learned greedy joint action and per-joint-action value tables.

Works for any discrete value-based algorithm on a ``matrix_game/*`` task: ours (whose losses
provide :meth:`joint_action_tables`), BenchMARL's ``qmix``/``vdn`` (through their mixer) and
mixer-free ones such as ``iql`` (where the table is the sum of the agents' utilities, labelled so).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives import QMixerLoss

GROUP = "agents"


def action_letter(index: int) -> str:
    """0 -> 'A', 1 -> 'B', ... (the paper's action names)."""
    return chr(ord("A") + index)


def is_matrix_task(experiment: Any) -> bool:
    return experiment.task.env_name() == "matrix_game"


def payoff_table(experiment: Any) -> torch.Tensor:
    return torch.tensor(experiment.task.config["payoff"], dtype=torch.float32)


def _first_state(experiment: Any) -> TensorDictBase:
    """The reset observation of one game (batch [1]), with RNN keys where the model needs them."""
    td = experiment.test_env.reset()
    return td[:1].to(experiment.config.train_device)


@torch.no_grad()
def agent_action_values(experiment: Any, td: TensorDictBase | None = None) -> TensorDictBase:
    """Run the greedy (loss) policy at the first step; returns the td with action values.

    ``td[(agents, "action_value")]`` is ``[1, n_agents, n_actions]``.
    """
    if td is None:
        td = _first_state(experiment)
    policy = experiment.algorithm.get_policy_for_loss(GROUP)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        return policy(td.clone())


def joint_actions(n_actions: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """All joint actions of two agents, row-major: ``[n_actions**2, 2]``."""
    grid = torch.cartesian_prod(torch.arange(n_actions), torch.arange(n_actions))
    return grid.to(device)


@torch.no_grad()
def joint_value_tables(
    experiment: Any, td: TensorDictBase | None = None
) -> dict[str, torch.Tensor]:
    """Learned values of every joint action at the game's state, as ``[A, A]`` tables.

    Our losses name their tables themselves (``Q_tot``, ``Q_r``, ``Q_star``, ...); BenchMARL's
    QMIX/VDN give ``Q_tot`` from their mixer; anything else gives ``sum_Q_i``. ``td``: the output
    of :func:`agent_action_values` (computed when None).
    """
    if td is None:
        td = agent_action_values(experiment)
    q = td.get((GROUP, "action_value"))[0]  # [n, A]
    n_actions = q.shape[-1]
    loss = experiment.losses[GROUP]
    if hasattr(loss, "joint_action_tables"):
        return loss.joint_action_tables(td, payoff_table(experiment))
    joint = joint_actions(n_actions, q.device)  # [A*A, 2]
    chosen = q[torch.arange(2, device=q.device), joint]  # [A*A, 2]
    if isinstance(loss, QMixerLoss):
        batch = TensorDict(
            {loss.tensor_keys.local_value: chosen.unsqueeze(-1)}, batch_size=[joint.shape[0]]
        )
        for key in loss.mixer_network.in_keys:  # the state, for QMIX (VDN has none)
            if key != loss.tensor_keys.local_value:
                state = td.get(key)[0]
                batch.set(key, state.expand(joint.shape[0], *state.shape))
        with loss.mixer_network_params.to_module(loss.mixer_network):
            values = loss.mixer_network(batch).get(loss.tensor_keys.global_value)
        return {"Q_tot": values.reshape(n_actions, n_actions)}
    return {"sum_Q_i": chosen.sum(-1).reshape(n_actions, n_actions)}


@torch.no_grad()
def greedy_joint_action(experiment: Any, td: TensorDictBase | None = None) -> tuple[int, ...]:
    """Each agent's greedy available action at the first step (the executed joint action).

    It is the action the greedy policy's ``QValueModule`` chose (masks honoured); ``td``: the
    output of :func:`agent_action_values` (computed when None).
    """
    if td is None:
        td = agent_action_values(experiment)
    return tuple(int(a) for a in td.get((GROUP, "action"))[0])


def format_table(table: torch.Tensor, title: str, row_names: list[str] | None = None) -> str:
    """A small fixed-width table; columns are actions A, B, C, ..."""
    n_rows, n_cols = table.shape
    if row_names is None:
        row_names = [action_letter(i) for i in range(n_rows)]
    header = f"{title:>12} " + " ".join(f"{action_letter(j):>8}" for j in range(n_cols))
    rows = [
        f"{row_names[i]:>12} " + " ".join(f"{float(v):8.2f}" for v in table[i])
        for i in range(n_rows)
    ]
    return "\n".join([header, *rows])


def matrix_report(experiment: Any, out_dir: str | Path | None = None) -> str:
    """Print-ready summary: the greedy joint action line and the learned tables next to the payoff.

    Also writes ``matrix_game_final.json`` into ``out_dir`` (default: the experiment folder).
    """
    td = agent_action_values(experiment)
    greedy = greedy_joint_action(experiment, td)
    tables = joint_value_tables(experiment, td)
    payoff = payoff_table(experiment)
    lines = [f"greedy joint action: ({', '.join(action_letter(a) for a in greedy)})"]
    lines.append("rows: agent 0's action, columns: agent 1's action")
    for name, table in tables.items():
        if name == "Q_i":
            agents = [f"agent {i}" for i in range(table.shape[0])]
            lines.append(format_table(table.cpu(), "Q_i", agents))
        else:
            lines.append(format_table(table.cpu(), name))
    lines.append(format_table(payoff, "payoff"))
    out_dir = Path(out_dir) if out_dir is not None else Path(experiment.folder_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    heatmap = save_heatmaps(
        tables,
        payoff,
        out_dir / "matrix_game_heatmaps.png",
        title=f"{experiment.algorithm_name} on {experiment.task_name}, seed {experiment.seed}",
    )
    lines.append(f"heatmaps: {heatmap}")
    with open(out_dir / "matrix_game_final.json", "w") as f:
        json.dump(
            {
                "greedy_joint_action": [action_letter(a) for a in greedy],
                "tables": {k: v.cpu().tolist() for k, v in tables.items()},
                "payoff": payoff.tolist(),
            },
            f,
            indent=2,
        )
    return "\n".join(lines)


def save_heatmaps(
    tables: dict[str, torch.Tensor], payoff: torch.Tensor, path: str | Path, title: str = ""
) -> Path:
    """Save the joint-action tables and the payoff side by side as annotated heatmaps (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, v) for k, v in tables.items() if k != "Q_i"] + [("payoff", payoff)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), squeeze=False)
    for ax, (name, table) in zip(axes[0], panels):
        data = table.detach().cpu().float().numpy()
        ax.imshow(data, cmap="viridis")
        n_rows, n_cols = data.shape
        ax.set_xticks(range(n_cols), [action_letter(j) for j in range(n_cols)])
        ax.set_yticks(range(n_rows), [action_letter(i) for i in range(n_rows)])
        ax.set_xlabel("agent 1")
        ax.set_ylabel("agent 0")
        ax.set_title(name)
        for i in range(n_rows):
            for j in range(n_cols):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
