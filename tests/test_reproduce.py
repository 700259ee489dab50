"""The reproduction workflow (benchmarl_pow/reproduce) end to end on the smoke budget.

One module-scoped set run (predator_prey/punish_4, pow_qmix and qmix_lambda, seeds 0 and 1, Hydra's
joblib launcher with 2 workers, one iteration each) is then plotted, called again (everything is
skipped), and one of its runs is "interrupted" (marker removed, status left at running by a dead
process) and continued for one more iteration from its checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from benchmarl_pow.evaluation_log import merge_previous_evaluations
from benchmarl_pow.reproduce.__main__ import main
from benchmarl_pow.reproduce.hydra_callbacks import COMPLETED, STATUS
from benchmarl_pow.reproduce.launch import RunPlan, group_sweeps, plan_runs, status_lines
from benchmarl_pow.reproduce.plot import make_report
from benchmarl_pow.reproduce.results import load_runs, markdown_table, mean_ci, table_rows
from benchmarl_pow.reproduce.sets import PAPER_VALUES, SETS, budget_overrides

pytestmark = pytest.mark.slow

TASK = "predator_prey/punish_4"


def cli_args(
    out: Path,
    algorithms: tuple[str, ...] = ("pow_qmix", "qmix_lambda"),
    seeds: tuple[int, ...] = (0, 1),
    launcher: str = "joblib",
    iterations: int = 1,
) -> list[str]:
    """``python -m benchmarl_pow.reproduce predator_prey --budget smoke ...`` arguments."""
    return [
        "predator_prey",
        "--budget",
        "smoke",
        "--tasks",
        TASK,
        "--algorithms",
        *algorithms,
        "--seeds",
        *(str(s) for s in seeds),
        "--jobs",
        "2",
        "--launcher",
        launcher,
        "--out",
        str(out),
        "experiment.loggers=[]",
        f"experiment.max_n_iters={iterations}",
    ]


def _json_steps(seed_folder: Path) -> list[int]:
    (path,) = [p for p in seed_folder.glob("*/*.json") if p.stem == p.parent.name]
    data = json.loads(path.read_text())
    run = next(iter(next(iter(next(iter(data.values())).values())).values()))
    (steps,) = run.values()
    return sorted(v["step_count"] for k, v in steps.items() if k.startswith("step_"))


@pytest.fixture(scope="module")
def smoke_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reproduce")
    assert main(cli_args(out)) == 0
    return out


def test_runs_written(smoke_set: Path) -> None:
    for algorithm in ("pow_qmix", "qmix_lambda"):
        for seed in (0, 1):
            folder = smoke_set / TASK / algorithm / f"seed_{seed}"
            assert (folder / COMPLETED).exists()
            assert json.loads((folder / STATUS).read_text())["status"] == "completed"
            assert _json_steps(folder) == [20]
            assert list(folder.glob("*/checkpoints/checkpoint_20.pt"))
            assert list(folder.glob("*/evaluations.log"))
    assert list((smoke_set / TASK / "pow_qmix" / "seed_0").glob("*/probe.jsonl"))


def test_status(smoke_set: Path) -> None:
    lines = status_lines(smoke_set)
    assert len(lines) == 4 and all(" completed " in line for line in lines)
    assert all("ckpt        20" in line and "| return " in line for line in lines)


def test_plot_and_table(smoke_set: Path) -> None:
    report = make_report([smoke_set], smoke_set / "report")
    assert report["runs"] == 4
    assert (smoke_set / "report" / "curves_predator_prey_punish_4.png").stat().st_size > 0
    assert len(report["probes"]) == 4
    table = Path(report["table"]).read_text()
    assert "| pow_qmix | 40 |" in table and "| qmix_lambda | 0 |" in table
    assert "2 (2)" in table  # two seeds, both finished
    summary = json.loads(Path(report["summary"]).read_text())
    pow_curve = summary["curves"][f"{TASK}|pow_qmix"]
    assert pow_curve["n"] == [2]
    # a CI band: two seeds with different returns give a positive half-width
    curves = [summary["curves"][f"{TASK}|{a}"] for a in ("pow_qmix", "qmix_lambda")]
    assert any(c["ci"][0] > 0 for c in curves)


def test_second_call_skips_finished(smoke_set: Path, capsys: pytest.CaptureFixture) -> None:
    before = {p: p.stat().st_mtime_ns for p in smoke_set.rglob("*.json")}
    assert main(cli_args(smoke_set)) == 0
    printed = capsys.readouterr().out
    assert printed.count("skip") == 4
    assert "nothing to launch" in printed
    assert before == {p: p.stat().st_mtime_ns for p in smoke_set.rglob("*.json")}


def test_interrupted_run_resumes_from_checkpoint(
    smoke_set: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = smoke_set / TASK / "pow_qmix" / "seed_0"
    (folder / COMPLETED).unlink()
    status = json.loads((folder / STATUS).read_text())
    status.update(status="running", pid=2**22 + 12345)  # a process that no longer exists
    (folder / STATUS).write_text(json.dumps(status))
    # continue to 2 iterations: the run was "interrupted" after its first
    args = cli_args(smoke_set, ("pow_qmix",), (0,), launcher="basic", iterations=2)
    assert main(args) == 0
    assert "resume   predator_prey/punish_4 pow_qmix seed 0  <- checkpoint_20.pt" in (
        capsys.readouterr().out
    )
    status = json.loads((folder / STATUS).read_text())
    assert status["status"] == "completed"
    assert status["resumed_from"].endswith("checkpoint_20.pt")
    assert (folder / COMPLETED).exists()
    attempts = [json.loads(x) for x in (folder / "attempts.jsonl").read_text().splitlines()]
    assert [a["frames_at_last_checkpoint"] for a in attempts] == [20, 40]
    # the evaluation before the interruption is kept in the JSON, the new one appended
    assert _json_steps(folder) == [20, 40]
    (probe,) = folder.glob("*/probe.jsonl")
    assert [json.loads(line)["frames"] for line in probe.read_text().splitlines()] == [20, 40]
    assert len(list(folder.glob("*/config.pkl"))) == 1  # the same run folder, continued


def test_pack_carries_runs_without_replay_and_they_resume(
    smoke_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from benchmarl_pow.reproduce.pack import MANIFEST

    dest = tmp_path / "pack"
    assert main(["pack", str(smoke_set), str(dest)]) == 0
    assert "packed 4 runs" in capsys.readouterr().out
    manifest = json.loads((dest / MANIFEST).read_text())
    assert {r["seed_folder"] for r in manifest["runs"]} == {
        f"{TASK}/{a}/seed_{s}" for a in ("pow_qmix", "qmix_lambda") for s in (0, 1)
    }
    for run in manifest["runs"]:
        folder = dest / run["seed_folder"]
        (carried,) = folder.glob("*/checkpoints/*")  # the newest checkpoint only
        assert carried.name == Path(run["checkpoint"]).name and run["frames"] > 0
        assert (folder / COMPLETED).exists() == (smoke_set / run["seed_folder"] / COMPLETED).exists()
        assert list(folder.glob("*/evaluations.log")) and list(folder.glob("*/*.json"))
    assert not list(dest.rglob("*.buffers*"))
    assert main(["pack", str(smoke_set), str(smoke_set / "inside")]) == 2
    assert "is inside out" in capsys.readouterr().err

    # another machine: the pack copied under a new output folder, one run extended
    out = tmp_path / "elsewhere"
    shutil.copytree(dest, out)
    status_file = out / TASK / "pow_qmix" / "seed_1" / STATUS
    status_file.write_text(json.dumps({"status": "running", "host": "node-7", "pid": 1}))
    (status_file.parent / COMPLETED).unlink()
    assert " running? " in next(line for line in status_lines(out) if "pow_qmix/seed_1" in line)
    folder = out / TASK / "qmix_lambda" / "seed_1"
    args = cli_args(out, ("qmix_lambda",), (1,), launcher="basic", iterations=2)
    assert main(args) == 0
    assert "extend   predator_prey/punish_4 qmix_lambda seed 1  <- checkpoint_20.pt" in (
        capsys.readouterr().out
    )
    status = json.loads((folder / STATUS).read_text())
    assert status["resumed_from"].endswith("checkpoint_20.pt")
    assert Path(status["resumed_from"]).is_relative_to(folder.resolve())
    assert status["replay"] == "restored"  # the frames regime keeps its buffer in the checkpoint
    assert _json_steps(folder) == [20, 40]


def test_pack_of_a_live_run_leaves_its_process_behind(tmp_path: Path) -> None:
    """A run packed while it trains: the pack drops its live marker (running.json) and records
    the job as interrupted, so that the machine it goes to resumes it rather than taking some
    process of its own with the same pid for it."""
    import torch

    from benchmarl_pow.machine import process_record
    from benchmarl_pow.reproduce.pack import pack

    seed = tmp_path / "out" / TASK / "pow_qmix" / "seed_0"
    run = seed / "run_a"
    dump = run / "checkpoints" / "checkpoint_16.buffers" / "agents"  # a whole replay dump
    dump.mkdir(parents=True)
    (dump / "buffer_metadata.json").write_text("{}")
    (run / "config.pkl").write_bytes(b"")
    for frames in (8, 16):
        torch.save({"state": {}}, run / "checkpoints" / f"checkpoint_{frames}.pt")
    live = {"status": "running", **process_record()}
    (seed / STATUS).write_text(json.dumps(live))
    (run / "running.json").write_text(json.dumps(process_record()))
    manifest = pack(tmp_path / "out", tmp_path / "pack")
    assert [(r["checkpoint"], r["frames"]) for r in manifest["runs"]] == [
        ("run_a/checkpoints/checkpoint_16.pt", 16)
    ]
    packed = tmp_path / "pack" / TASK / "pow_qmix" / "seed_0"
    assert sorted(p.name for p in (packed / "run_a").rglob("*")) == [
        "checkpoint_16.pt", "checkpoints", "config.pkl"
    ]  # fmt: skip
    status = json.loads((packed / STATUS).read_text())
    assert status["status"] == "interrupted" and "packed" in status
    assert json.loads((seed / STATUS).read_text())["status"] == "running"  # the source untouched
    plan = plan_runs(tmp_path / "pack", [TASK], ["pow_qmix"], [0])
    assert [(p.action, Path(p.checkpoint).name) for p in plan] == [("resume", "checkpoint_16.pt")]


def test_a_process_record_is_checked_only_on_its_machine_and_boot() -> None:
    import subprocess
    import sys

    from benchmarl_pow.machine import alive_here, on_this_machine, process_record

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {**process_record(), "pid": child.pid}
        assert on_this_machine(record) and alive_here(record)
        assert not alive_here({**record, "boot": "another-boot"})  # same host name, other machine
        assert not alive_here({**record, "host": "node-7"})
        assert alive_here({k: v for k, v in record.items() if k != "boot"})  # older records
        assert not alive_here(process_record())  # this process itself
    finally:
        child.kill()
        child.wait()
    assert not alive_here(record)


def test_replay_on_resume_names_a_refill() -> None:
    from omegaconf import OmegaConf

    from benchmarl_pow.reproduce.hydra_callbacks import replay_on_resume

    def config(regime: str, exclude: bool = False):
        return OmegaConf.create(
            {"regime": {"name": regime}, "experiment": {"exclude_buffer_from_checkpoint": exclude}}
        )

    assert replay_on_resume(config("episodes"), None) is None
    assert replay_on_resume(config("frames"), "/x/checkpoints/checkpoint_8.pt") == "restored"
    assert replay_on_resume(config("frames", True), "/x/checkpoints/checkpoint_8.pt") == "refilled"
    assert replay_on_resume(config("episodes"), "/nowhere/checkpoint_8.pt") == "refilled"


def test_replay_on_resume_finds_the_dump(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from benchmarl_pow.reproduce.hydra_callbacks import replay_on_resume

    checkpoint = tmp_path / "checkpoint_8.pt"
    (tmp_path / "checkpoint_8.buffers" / "agents").mkdir(parents=True)
    cfg = OmegaConf.create({"regime": {"name": "episodes"}, "experiment": {}})
    assert replay_on_resume(cfg, str(checkpoint)) == "restored"


# ----------------------------------------------------------------------------- fast unit tests
def test_plan_extend_and_conflict(tmp_path: Path) -> None:
    folder = tmp_path / TASK / "pow_qmix" / "seed_0"
    run = folder / "run_a"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.pkl").write_bytes(b"")
    import zipfile

    with zipfile.ZipFile(run / "checkpoints" / "checkpoint_40.pt", "w") as z:
        z.writestr("x", "y")
    smoke = budget_overrides("predator_prey", "smoke")
    marker = {"overrides": [*smoke, "experiment.max_n_iters=2"]}
    (folder / COMPLETED).write_text(json.dumps(marker))
    plan = lambda extra: plan_runs(tmp_path, [TASK], ["pow_qmix"], [0], [*smoke, *extra])[0]  # noqa: E731
    assert plan(["experiment.max_n_iters=2"]).action == "skip"
    extend = plan(["experiment.max_n_iters=5"])
    assert extend.action == "extend" and extend.checkpoint.endswith("checkpoint_40.pt")
    assert plan(["experiment=pymarl2", "experiment.max_n_iters=2"]).action == "conflict"
    os.remove(folder / COMPLETED)
    assert plan([]).action == "resume"


def test_group_sweeps() -> None:
    def p(task: str, alg: str, seed: int, action: str = "start") -> RunPlan:
        return RunPlan(task, alg, seed, Path("."), action)

    plans = [p(t, a, s) for t in ("t1", "t2") for a in ("a", "b") for s in (0, 1)]
    assert group_sweeps(plans) == [(["t1", "t2"], ["a", "b"], [0, 1])]
    plans[0] = p("t1", "a", 0, "skip")
    sweeps = group_sweeps(plans)
    covered = {(t, a, s) for ts, as_, ss in sweeps for t in ts for a in as_ for s in ss}
    assert covered == {(x.task, x.algorithm, x.seed) for x in plans[1:]}


def test_mean_ci_and_paper_values() -> None:
    assert mean_ci([1.0]) == (1.0, 0.0)
    mean, half = mean_ci([0.0, 2.0])
    assert mean == 1.0 and half == pytest.approx(12.706)
    # Table 1 as printed in the paper
    assert PAPER_VALUES["predator_prey/punish_4"]["cw_qmix"] == 16.0
    assert PAPER_VALUES["predator_prey/punish_5"]["resq"] == 0.0
    assert PAPER_VALUES["highway/intersection"]["pow_qmix"] == 0.92
    assert PAPER_VALUES["highway/intersection"]["qmix_lambda"] == 0.28
    for name in SETS:
        for budget in ("paper", "quick", "smoke"):
            assert any("checkpoint_interval" in o for o in budget_overrides(name, budget))


def test_merge_previous_evaluations(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    old = {
        "step_1": {"step_count": 20, "return": [1.0]},
        "step_2": {"step_count": 40, "return": [5.0]},
    }
    path.write_text(json.dumps({"e": {"t": {"a": {"seed_0": {"absolute_metrics": {}, **old}}}}}))
    run_data = {"absolute_metrics": {}}
    merge_previous_evaluations(run_data, path, max_frames=20)
    assert set(run_data) == {"absolute_metrics", "step_1"}  # step_2 is after the checkpoint
    assert run_data["absolute_metrics"] == {"return": [1.0]}


def test_table_from_json(tmp_path: Path) -> None:
    for seed, values in ((0, [0.0, 40.0]), (1, [0.0, 20.0])):
        run = tmp_path / f"r{seed}"
        run.mkdir()
        steps = {
            f"step_{i + 1}": {"step_count": 16000 * (i + 1), "return": [v, v]}
            for i, v in enumerate(values)
        }
        data = {"predator_prey": {"punish_5": {"powqmix": {f"seed_{seed}": steps}}}}
        (run / "r.json").write_text("{}")
        (run / f"r{seed}.json").write_text(json.dumps(data))
    rows = table_rows(load_runs([tmp_path]))
    (row,) = rows
    assert row.algorithm == "pow_qmix" and row.paper == 40.0 and row.seeds == 2
    assert row.final[0] == 30.0 and row.first_positive == [32000, 32000]
    assert "| pow_qmix | 40 | 30.0 ± 127.1 |" in markdown_table(rows)


def test_runs_with_their_own_algorithm_settings_are_a_separate_variant(tmp_path: Path) -> None:
    """The faithful POW seed 0 and a seed 0 run with ``algorithm.recognition_batch_fraction=0.4``
    are two rows (never averaged, never one hiding the other); a JSON file named directly is read
    (the committed copies under docs/results/*/json/ are not in run folders)."""
    data = lambda v: {  # noqa: E731
        "predator_prey": {"punish_4": {"powqmix": {"seed_0": {
            "step_1": {"step_count": 16000, "return": [v, v]}}}}}
    }  # fmt: skip
    faithful = tmp_path / "copies" / "powqmix_punish_4_a.json"
    faithful.parent.mkdir()
    faithful.write_text(json.dumps(data(30.0)))
    seed_folder = tmp_path / "set" / "seed_0"
    run = seed_folder / "run_b"
    run.mkdir(parents=True)
    (run / "run_b.json").write_text(json.dumps(data(10.0)))
    overrides = ["seed=0", "algorithm=pow_qmix", "algorithm.recognition_batch_fraction=0.4"]
    (seed_folder / STATUS).write_text(json.dumps({"status": "running", "overrides": overrides}))
    assert load_runs([tmp_path / "copies"]) == []  # not a run folder: only named files count
    rows = table_rows(load_runs([faithful, tmp_path / "set"]))
    assert [(r.algorithm, r.final[0], r.paper) for r in rows] == [
        ("pow_qmix", 30.0, 40.0),
        ("pow_qmix[recognition_batch_fraction=0.4]", 10.0, 40.0),
    ]
    report = make_report([faithful, tmp_path / "set"], tmp_path / "report")
    assert report["runs"] == 2


def test_episode_metrics_cut_at_first_done() -> None:
    import torch
    from tensordict import TensorDict

    from benchmarl_pow.evaluation_log import episode_returns, final_info

    done = torch.tensor([False, True, False, True]).view(4, 1)
    rollout = TensorDict(
        {
            "next": {
                "done": done,
                "agents": TensorDict({"reward": torch.ones(4, 2, 1)}, batch_size=[4, 2]),
                "info": {"captures": torch.tensor([0, 3, 0, 7]).view(4, 1)},
            }
        },
        batch_size=[4],
    )
    assert episode_returns([rollout], {"agents": ["a", "b"]}).tolist() == [2.0]
    assert final_info([rollout], "captures").tolist() == [3.0]
    assert final_info([rollout], "win") is None


def test_slurm_launcher_config_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="benchmarl_pow.conf", version_base=None):
        cfg = compose(
            config_name="config",
            overrides=[
                "algorithm=pow_qmix",
                "task=predator_prey/punish_4",
                "hydra/launcher=pow_slurm",
                "hydra.launcher.partition=cpu",
            ],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "cpu" and launcher.max_num_timeout > 0


@pytest.mark.parametrize("set_name", sorted(SETS))
def test_every_budget_composes_and_validates(set_name: str) -> None:
    """Each (set, budget, task, algorithm) is a valid run.py command line: it composes and passes
    the project's config validation (no repeated key, no invalid value)."""
    from benchmarl_pow.compose import compose_config
    from benchmarl_pow.validation import choices_from_overrides, validate_config

    spec = SETS[set_name]
    for budget in ("paper", "quick", "smoke"):
        overrides = budget_overrides(set_name, budget)
        keys = [o.split("=", 1)[0] for o in overrides]
        assert len(keys) == len(set(keys)), (budget, keys)
        for task in spec.tasks:
            for algorithm in spec.algorithms[:2]:
                line = [f"task={task}", f"algorithm={algorithm}", *overrides]
                validate_config(compose_config(line), choices_from_overrides(line))


def test_checkpoint_with_a_cut_short_replay_dump_is_skipped(tmp_path: Path) -> None:
    """A kill while an older version wrote a replay dump in place left it incomplete: the workflow
    resumes from the newest checkpoint whose dump (if any) is whole."""
    import torch

    from benchmarl_pow.reproduce.hydra_callbacks import last_checkpoint

    run = tmp_path / "seed_0" / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.pkl").write_bytes(b"")
    for frames in (10, 20, 30):
        torch.save({"state": {}}, run / "checkpoints" / f"checkpoint_{frames}.pt")
    whole = run / "checkpoints" / "checkpoint_20.buffers" / "agents"
    (whole / "storage").mkdir(parents=True)
    (whole / "buffer_metadata.json").write_text("{}")
    cut = run / "checkpoints" / "checkpoint_30.buffers" / "agents" / "storage"
    cut.mkdir(parents=True)
    (cut / "observation.memmap").write_bytes(b"\0" * 8)
    assert last_checkpoint(tmp_path / "seed_0").endswith("checkpoint_20.pt")


def test_wall_time_from_the_runs_own_clock(tmp_path: Path) -> None:
    """Attempts killed at a session's end record nothing; the run's checkpointed clock does."""
    from benchmarl_pow.reproduce.results import _logged_total_time

    assert _logged_total_time(tmp_path) is None
    scalars = tmp_path / "run" / "scalars"
    scalars.mkdir(parents=True)
    (scalars / "timers_total_time.csv").write_text("0,10.5\n1,21.0\n2,7300.25\n")
    assert _logged_total_time(tmp_path / "run") == 7300.25


def test_curves_show_each_seed_and_clip_a_wide_few_seed_band(tmp_path, monkeypatch):
    """With two seeds far apart the 95 % CI (t = 12.7) dwarfs them: each seed is drawn, and the
    y axis is limited to the seeds' values (and the paper's), saying so in the title."""
    from benchmarl_pow.reproduce import plot as plot_module
    from benchmarl_pow.reproduce.results import Run

    frames = [10_000 * i for i in range(1, 6)]
    runs = [
        Run("predator_prey/punish_4", "pow_qmix", seed, tmp_path / f"{seed}.json", frames,
            {"return": values})
        for seed, values in ((0, [0.0, -50.0, -100.0, 10.0, 20.0]), (1, [0.0, -400.0, 0.0, 0.0, 0.0]))
    ]
    figures = []
    real_pyplot = plot_module._pyplot

    def keep_figures():
        plt = real_pyplot()
        real_subplots = plt.subplots

        def subplots(*args, **kwargs):
            fig, axes = real_subplots(*args, **kwargs)
            figures.append(axes[0][0])
            return fig, axes

        monkeypatch.setattr(plt, "subplots", subplots)
        return plt

    monkeypatch.setattr(plot_module, "_pyplot", keep_figures)
    (path,) = plot_module.plot_curves(runs, tmp_path)
    assert path.is_file()
    (ax,) = figures
    bottom, top = ax.get_ylim()
    assert -440 < bottom <= -400 and 40 <= top < 80  # seeds -400..20, paper 40
    assert "clipped" in ax.get_title()
    assert len(ax.lines) >= 3  # two seeds and the mean (plus the paper's line)
