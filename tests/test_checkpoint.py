"""Checkpoints restore every network, target network and optimiser; a resumed run continues."""

import torch
from benchmarl.experiment import Experiment

from benchmarl_pow.compose import compose_experiment


def _state(experiment):
    loss = experiment.losses["agents"]
    params = {k: v.detach().clone() for k, v in loss.state_dict().items() if torch.is_tensor(v)}
    optim = {
        name: [s["exp_avg"].clone() for s in opt.state_dict()["state"].values()]
        for name, opt in experiment.optimizers["agents"].items()
    }
    steps = {
        name: [float(s["step"]) for s in opt.state_dict()["state"].values()]
        for name, opt in experiment.optimizers["agents"].items()
    }
    return params, optim, steps


def test_resume_restores_networks_targets_optimisers_and_continues(tmp_path):
    experiment = compose_experiment(
        ["algorithm=pow_qmix", "task=matrix_game/nonmonotonic", "experiment=smoke",
         "experiment.checkpoint_at_end=True", "experiment.evaluation=False",
         "experiment.create_json=False", "experiment.loggers=[]"],
        save_folder=tmp_path, callbacks=[],
    )
    experiment.run()
    params, optim, steps = _state(experiment)
    assert set(optim) == {"loss", "loss_recognition"}
    assert any(k.startswith("target_") for k in params)  # target networks are in the checkpoint
    checkpoint = next(tmp_path.rglob("checkpoint_*.pt"))

    resumed = Experiment.reload_from_file(str(checkpoint), experiment_patch={"max_n_iters": 3})
    assert resumed.n_iters_performed == 2 and resumed.total_frames == experiment.total_frames
    r_params, _, _ = _state(resumed)
    for key, value in params.items():
        assert torch.equal(r_params[key], value), key
    # optimiser states are restored when the algorithm hands the optimisers to the loss
    loss = resumed.losses["agents"]
    loss.attach_optimizers(resumed.optimizers["agents"])
    _, r_optim, r_steps = _state(resumed)
    assert r_steps == steps
    for name in optim:
        for a, b in zip(optim[name], r_optim[name]):
            assert torch.equal(a, b)
    assert int(loss.n_learner_calls) == int(experiment.losses["agents"].n_learner_calls)

    resumed.run()
    assert resumed.n_iters_performed == 3
    _, _, after = _state(resumed)
    assert after["loss"][0] > steps["loss"][0]  # the same Adam moments kept counting


# ------------------------------------------------------------- entry points (issue 13)
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from benchmarl_pow.evaluate import evaluate_checkpoint  # noqa: E402
from benchmarl_pow.resume import load_run  # noqa: E402
from benchmarl_pow.validation import ConfigError  # noqa: E402


def _train(algorithm: str, folder: Path) -> Path:
    experiment = compose_experiment(
        [f"algorithm={algorithm}", "task=matrix_game/nonmonotonic", "experiment=smoke",
         "experiment.checkpoint_at_end=True"],
        save_folder=folder,
    )
    experiment.run()
    return next(Path(experiment.folder_name).glob("checkpoints/checkpoint_*.pt"))


@pytest.fixture(scope="module")
def pow_checkpoint(tmp_path_factory) -> Path:
    return _train("pow_qmix", tmp_path_factory.mktemp("pow"))


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in folder.rglob("*") if p.is_file()
    }


def test_evaluate_prints_a_score_into_a_separate_file_and_leaves_the_run_untouched(pow_checkpoint):
    run_folder = pow_checkpoint.parent.parent
    before = _hashes(run_folder)
    record = evaluate_checkpoint(pow_checkpoint, episodes=3)
    after = _hashes(run_folder)
    new = set(after) - set(before)
    assert new == {f"evaluations/{pow_checkpoint.stem}_eval.json"}
    assert {k: after[k] for k in before} == before  # nothing of the run was rewritten
    saved = json.loads((run_folder / next(iter(new))).read_text())
    assert saved["episodes"] == 3 and len(saved["returns"]) == 3
    assert saved["mean_return"] == pytest.approx(record["mean_return"])
    assert saved["algorithm"] == "powqmix" and saved["task"] == "matrix_game/nonmonotonic"


def test_checkpoint_of_another_algorithm_is_refused_naming_both(pow_checkpoint, tmp_path):
    other = _train("qmix_lambda", tmp_path / "qmix_lambda")
    foreign = pow_checkpoint.parent / "checkpoint_foreign.pt"
    shutil.copy(other, foreign)
    try:
        with pytest.raises(ConfigError) as info:
            load_run(foreign)
    finally:
        foreign.unlink()
    message = str(info.value)
    assert "\n" not in message
    assert "checkpoint_foreign.pt" in message and "powqmix/nonmonotonic/mlp" in message


def test_load_run_refuses_missing_and_junk_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_run(tmp_path / "checkpoints" / "checkpoint_1.pt")
    junk = tmp_path / "run" / "checkpoints" / "checkpoint_1.pt"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(os.urandom(512))
    with pytest.raises(ConfigError, match="not a checkpoint written by an experiment"):
        load_run(junk)
    torch.save({"state": {}}, junk)
    with pytest.raises(ConfigError, match="no config.pkl in its run folder"):
        load_run(junk)


def test_resume_module_gives_one_line_on_a_missing_file(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarl_pow.resume", str(tmp_path / "nope.pt")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: checkpoint='{tmp_path / 'nope.pt'}' is invalid: no such file "
        "(expected .../checkpoints/checkpoint_N.pt)"
    ]


def test_evaluate_main_gives_one_line_on_junk(tmp_path, capsys):
    from benchmarl_pow.evaluate import main

    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(64))
    with pytest.raises(SystemExit) as info:
        main([str(junk), "--episodes", "2"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: checkpoint='{junk}' is invalid: not a checkpoint written by an "
                   "experiment (cannot be loaded)"]
