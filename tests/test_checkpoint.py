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
