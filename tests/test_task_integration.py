"""Our algorithms on our environments through the CLI's composition path (smoke preset)."""

import math

import pytest

from benchmarl_pow.compose import compose_experiment


def _run(algorithm: str, task: str, tmp_path, *extra: str):
    experiment = compose_experiment(
        [f"algorithm={algorithm}", f"task={task}", "experiment=smoke", *extra],
        save_folder=tmp_path,
    )
    losses = []
    original = experiment.losses["agents"].forward

    def forward(td):
        out = original(td)
        losses.append(float(out["loss"].detach()))
        return out

    experiment.losses["agents"].forward = forward
    experiment.run()
    assert experiment.n_iters_performed == 2
    assert losses and all(math.isfinite(v) for v in losses)
    return experiment


@pytest.mark.parametrize("algorithm", ["pow_qmix", "qmix_lambda"])
@pytest.mark.parametrize("model", ["layers/mlp", "layers/gru"])
def test_predator_prey_punish_4(algorithm, model, tmp_path):
    experiment = _run(algorithm, "predator_prey/punish_4", tmp_path, f"model={model}")
    if algorithm == "pow_qmix":
        # the per-task preset: C = 1.0 on predator-prey (pow_spec.md §0)
        assert experiment.losses["agents"].rule.threshold == 1.0


@pytest.mark.parametrize("algorithm", ["pow_qmix", "qmix_lambda"])
def test_highway_intersection(algorithm, tmp_path):
    pytest.importorskip("highway_env", reason="the `intersection` extra (highway-env) is not installed")
    experiment = _run(
        algorithm, "highway/intersection", tmp_path,
        "experiment.off_policy_collected_frames_per_batch=20",
    )
    if algorithm == "pow_qmix":
        assert experiment.losses["agents"].rule.threshold == 0.1
