"""Configuration mistakes stop a run before anything is built, with one line naming the key,
the value and what is valid (issue 13, "clear errors, early").

The table runs the same checks as ``run.py`` and ``compose_experiment`` in-process (override
names, then the composed config); a few cases go through the real command line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarl_pow.compose import compose_config, compose_experiment
from benchmarl_pow.validation import (
    ConfigError,
    check_overrides,
    choices_from_overrides,
    validate_config,
)

REPO = Path(__file__).resolve().parent.parent
RUN_PY = REPO / "benchmarl_pow" / "run.py"
MATRIX = ["algorithm=pow_qmix", "task=matrix_game/nonmonotonic", "experiment=smoke"]
PREY = ["algorithm=pow_qmix", "task=predator_prey/punish_4", "experiment=smoke"]
HAS_WANDB = importlib.util.find_spec("wandb") is not None


def config_error(overrides: list[str]) -> str:
    """The one-line message the run would stop with ('' when the config is valid)."""
    try:
        check_overrides(overrides)
        cfg = compose_config(overrides)
        validate_config(cfg, choices_from_overrides(overrides))
    except ConfigError as err:
        return str(err)
    return ""


# (overrides, fragments the message must contain)
CASES = [
    # accepted silently before
    (MATRIX + ["experiment.gamma=1.5"], ["experiment.gamma=1.5", "(0, 1]"]),
    (MATRIX + ["experiment.gamma=0.0"], ["experiment.gamma=0.0", "(0, 1]"]),
    (MATRIX + ["experiment.exploration_eps_init=2.0"], ["exploration_eps_init=2.0", "[0, 1]"]),
    (MATRIX + ["experiment.exploration_eps_end=-0.1"], ["exploration_eps_end=-0.1", "[0, 1]"]),
    (MATRIX + ["algorithm.no_weighted_steps=-5"], ["algorithm.no_weighted_steps=-5", ">= 0"]),
    (
        MATRIX + ["experiment.off_policy_train_batch_size=2000"],
        ["off_policy_train_batch_size=2000", "at most off_policy_memory_size=1000"],
    ),
    (MATRIX + ["experiment.max_n_frames=0"], ["experiment.max_n_frames=0", ">= 1"]),
    (MATRIX + ["experiment.max_n_iters=0"], ["experiment.max_n_iters=0", ">= 1"]),
    (MATRIX + ["experiment.max_n_iters=null"], ["max_n_frames", "max_n_iters"]),
    (PREY + ["task.n_agents=1"], ["task.n_agents=1", "at least 2"]),
    # crashed mid-run before
    (MATRIX + ["algorithm.mixing_embed_dim=0"], ["algorithm.mixing_embed_dim=0", ">= 1"]),
    (MATRIX + ["experiment.off_policy_train_batch_size=0"], ["off_policy_train_batch_size=0"]),
    # unclear before
    (MATRIX + ["experiment.off_policy_n_envs_per_worker=0"], ["off_policy_n_envs_per_worker=0"]),
    (MATRIX + ["seed=abc"], ["seed='abc'", "integer"]),
    (MATRIX + ["torch_threads=0"], ["torch_threads=0", ">= 1 or null"]),
    # unknown names: the real choices and close matches
    (["algorithm=pow_qmx", "task=matrix_game/nonmonotonic"], ["'pow_qmx'", "did you mean pow_qmix"]),
    (
        ["algorithm=pow_qmix", "task=matrix_game_nonmonotonic_config"],
        ["did you mean matrix_game/nonmonotonic", "predator_prey/punish_4"],
    ),
    (["algorithm=qmix", "task=matrix_game/nonmonotonc"], ["did you mean matrix_game/nonmonotonic"]),
    (MATRIX + ["model=layers/mlpp"], ["unknown model 'layers/mlpp'", "layers/mlp"]),
    (["algorithm=qmix", "task=matrix_game/penalty", "experiment=smok"], ["did you mean smoke"]),
    (["algorithm=qmix", "task=vmas/balanc"], ["did you mean vmas/balance"]),
    (["algorithm=pow_qmix"], ["task is required", "matrix_game/nonmonotonic"]),
    (["task=matrix_game/nonmonotonic"], ["algorithm is required", "pow_qmix"]),
    # experiment keys
    (MATRIX + ["experiment.lr=0.0"], ["experiment.lr=0.0", "(0, inf)"]),
    (MATRIX + ["experiment.polyak_tau=0.0"], ["experiment.polyak_tau=0.0", "(0, 1]"]),
    (MATRIX + ["experiment.hard_target_update_frequency=0"], ["hard_target_update_frequency=0"]),
    (MATRIX + ["experiment.exploration_anneal_frames=0"], ["exploration_anneal_frames=0"]),
    (MATRIX + ["experiment.off_policy_memory_size=0"], ["off_policy_memory_size=0", ">= 1"]),
    (MATRIX + ["experiment.off_policy_n_optimizer_steps=0"], ["off_policy_n_optimizer_steps=0"]),
    (
        MATRIX + ["experiment.off_policy_collected_frames_per_batch=1"],
        ["off_policy_collected_frames_per_batch=1", "off_policy_n_envs_per_worker=2"],
    ),
    (MATRIX + ["experiment.evaluation_interval=30"], ["evaluation_interval=30", "multiple of"]),
    (MATRIX + ["experiment.evaluation_episodes=0"], ["evaluation_episodes=0"]),
    (MATRIX + ["experiment.checkpoint_interval=30"], ["checkpoint_interval=30", "multiple of"]),
    (MATRIX + ["experiment.keep_checkpoints_num=0"], ["keep_checkpoints_num=0", "or null"]),
    (MATRIX + ["experiment.loggers=[csv,foo]"], ["experiment.loggers", "unknown logger 'foo'"]),
    (MATRIX + ["experiment.train_device=gpu0"], ["experiment.train_device='gpu0'", "torch device"]),
    (MATRIX + ["experiment.save_folder=/no/such/folder"], ["save_folder", "existing folder"]),
    (MATRIX + ["experiment.restore_file=/no/such/checkpoint_1.pt"], ["restore_file", "no such file"]),
    (MATRIX + ["verbose=maybe"], ["verbose='maybe'", "true or false"]),
    # our algorithms' keys
    (MATRIX + ["algorithm.lmbda=1.5"], ["algorithm.lmbda=1.5", "[0, 1]"]),
    (MATRIX + ["algorithm.threshold=-0.1"], ["algorithm.threshold=-0.1", "(0, inf) or null"]),
    (MATRIX + ["algorithm.other_actions_weight=2.0"], ["other_actions_weight=2.0", "[0, 1]"]),
    (MATRIX + ["algorithm.recognition_batch_fraction=0.0"], ["recognition_batch_fraction=0.0"]),
    (MATRIX + ["algorithm.recognition_updates=0"], ["algorithm.recognition_updates=0"]),
    (MATRIX + ["algorithm.central_mixing_embed_dim=-1"], ["central_mixing_embed_dim=-1"]),
    (
        ["algorithm=qplex", "task=matrix_game/nonmonotonic", "experiment=smoke",
         "algorithm.num_kernel=0"],
        ["algorithm.num_kernel=0"],
    ),
    (
        ["algorithm=pow_qmix", "task=predator_prey/punish_4", "experiment=pymarl2",
         "regime.batch_episodes=6000"],
        ["regime.batch_episodes=6000", "at most regime.buffer_episodes=5000"],
    ),
    # tasks and models
    (MATRIX + ["task.payoff=[[1.0]]"], ["task matrix_game/nonmonotonic: payoff", "[[1.0]]", "2x2"]),
    (PREY + ["task.episode_limit=0"], ["episode_limit", ">= 1"]),
    (PREY + ["task.miscapture_punishment=4.0"], ["miscapture_punishment", "<= 0", "4.0"]),
    (
        ["algorithm=qmix", "task=matrix_game/nonmonotonic", "task.unavailable_actions=[[0,1,2],[]]"],
        ["unavailable_actions[0]", "no available action"],
    ),
    (MATRIX + ["model.num_cells=[64,0]"], ["model.num_cells=[64, 0]", "integers >= 1"]),
    (MATRIX + ["model=layers/gru", "model.hidden_size=0"], ["model.hidden_size=0"]),
]
if not HAS_WANDB:
    CASES += [
        (MATRIX + ["experiment.loggers=[wandb]"], ["experiment.loggers", "pip install wandb"]),
        (
            ["algorithm=pow_qmix", "task=matrix_game/nonmonotonic", "experiment=base_experiment"],
            ["experiment.loggers=['csv', 'wandb']", "experiment.loggers=[csv]"],
        ),
    ]


@pytest.mark.parametrize(
    ("overrides", "fragments"), CASES, ids=[" ".join(c[0][2:] or c[0]) for c in CASES]
)
def test_invalid_config_is_one_clear_line(overrides, fragments):
    message = config_error(overrides)
    assert message, f"accepted: {overrides}"
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("experiment.bogus=1", ["Could not override 'experiment.bogus'", "not in 'ExperimentConfig'"]),
        ("algorithm.recognition_updates=many", ["'many'", "Integer", "algorithm.recognition_updates"]),
        ("experiment.gamma=abc", ["'abc'", "Float", "experiment.gamma"]),
    ],
)
def test_hydra_refusals_are_one_line_too(override, fragments):
    from benchmarl_pow.run import check_composes

    with pytest.raises(ConfigError) as info:
        check_composes([*MATRIX, override, "hydra.run.dir=."])
    message = str(info.value)
    assert "\n" not in message and message.startswith("invalid override: ")
    for fragment in fragments:
        assert fragment in message, message


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize(
    "overrides",
    [
        MATRIX,
        PREY,
        ["algorithm=qmix", "task=vmas/balance", "experiment=smoke"],
        ["algorithm=pow_qplex", "task=matrix_game/nonmonotonic", "experiment=matrix_game"],
        ["algorithm=resq", "task=predator_prey/stag_hunt", "experiment=pymarl2"],
        ["algorithm=cw_qmix", "task=matrix_game/climbing", "experiment=base"],
    ],
)
def test_shipped_presets_are_valid(overrides):
    assert config_error(overrides) == ""


def _fake_checkpoint(root: Path, run_name: str, payload: object) -> Path:
    checkpoint = root / run_name / "checkpoints" / "checkpoint_20.pt"
    checkpoint.parent.mkdir(parents=True)
    if isinstance(payload, bytes):
        checkpoint.write_bytes(payload)
    else:
        torch.save(payload, checkpoint)
    return checkpoint


def test_restore_file_of_another_algorithm_or_task_is_refused(tmp_path):
    state = {"state": {"total_frames": 20}}
    other_alg = _fake_checkpoint(tmp_path, "qmixlambda_nonmonotonic_mlp__ab_1", state)
    message = config_error(MATRIX + [f"experiment.restore_file={other_alg}"])
    assert "algorithm 'qmixlambda'" in message and "powqmix/nonmonotonic/mlp" in message
    other_task = _fake_checkpoint(tmp_path, "powqmix_penalty_mlp__cd_2", state)
    message = config_error(MATRIX + [f"experiment.restore_file={other_task}"])
    assert "task 'penalty'" in message and "this run is task 'nonmonotonic'" in message
    other_model = _fake_checkpoint(tmp_path, "powqmix_nonmonotonic_gru__ef_3", state)
    message = config_error(MATRIX + [f"experiment.restore_file={other_model}"])
    assert "model 'gru'" in message
    same = _fake_checkpoint(tmp_path, "powqmix_nonmonotonic_mlp__gh_4", state)
    assert config_error(MATRIX + [f"experiment.restore_file={same}"]) == ""


def test_renamed_run_folder_is_recognised_by_its_identity_file(tmp_path):
    state = {"state": {"total_frames": 20}}
    renamed = _fake_checkpoint(tmp_path, "my_best_run", state)
    assert config_error(MATRIX + [f"experiment.restore_file={renamed}"]) == ""  # nothing to tell
    identity = {"algorithm": "qmixlambda", "task": "nonmonotonic", "model": "mlp"}
    (renamed.parent.parent / "identity.json").write_text(json.dumps(identity))
    message = config_error(MATRIX + [f"experiment.restore_file={renamed}"])
    assert "algorithm 'qmixlambda'" in message and "powqmix/nonmonotonic/mlp" in message


def test_run_folder_records_its_identity(tmp_path):
    experiment = compose_experiment(MATRIX + ["experiment.max_n_iters=1"], save_folder=tmp_path)
    folder = Path(experiment.folder_name)
    found = json.loads((folder / "identity.json").read_text())
    assert folder.name.startswith("_".join(found.values()) + "__")
    experiment.close()


def test_restore_file_of_random_bytes_is_refused(tmp_path):
    junk = _fake_checkpoint(tmp_path, "powqmix_nonmonotonic_mlp__ab_1", os.urandom(256))
    message = config_error(MATRIX + [f"experiment.restore_file={junk}"])
    assert "restore_file" in message and "not a checkpoint" in message


def test_compose_experiment_refuses_before_building(tmp_path):
    with pytest.raises(ConfigError, match=r"experiment\.gamma=1\.5"):
        compose_experiment(MATRIX + ["experiment.gamma=1.5"], save_folder=tmp_path)
    assert not any(tmp_path.iterdir())  # no run folder was created


# ------------------------------------------------------------------------ the command line
def _cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RUN_PY), *args, f"hydra.run.dir={cwd}/run"],
        cwd=cwd,
        env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_error_is_one_line_without_traceback_or_config_dump(tmp_path):
    proc = _cli(*MATRIX, "experiment.gamma=1.5", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: experiment.gamma=1.5 is invalid: expected a number in (0, 1]"
    assert "Loaded config" not in proc.stdout and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").glob("*__*"))


def test_cli_unknown_task_lists_real_names(capsys):
    from benchmarl_pow.run import main

    with pytest.raises(SystemExit) as info:
        main(["algorithm=pow_qmix", "task=matrix_game_nonmonotonic_config"])
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "did you mean matrix_game/nonmonotonic" in lines[0]
    assert "_config," not in lines[0]


def test_cli_full_trace_on_request(monkeypatch):
    from benchmarl_pow.run import main

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match="unknown algorithm 'nope'"):
        main(["algorithm=nope", "task=matrix_game/nonmonotonic"])


def test_cli_help_lists_algorithms_and_tasks(capsys):
    from benchmarl_pow.run import main

    main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage:")
    for name in ("pow_qmix", "qmix_lambda", "resq", "matrix_game/", "nonmonotonic", "punish_4",
                 "vmas/", "layers/gru", "rnn_agent", "pymarl2"):
        assert name in out


# ------------------------------------------------------------------ no silent failure
def _pow_experiment(tmp_path):
    return compose_experiment(
        MATRIX + ["experiment.loggers=[]", "experiment.create_json=False"],
        save_folder=tmp_path, callbacks=[],
    )


def test_non_finite_loss_term_stops_training_naming_iteration_term_and_last_values(tmp_path):
    from tensordict import TensorDict

    from benchmarl_pow.validation import NonFiniteValueError

    algorithm = _pow_experiment(tmp_path).algorithm
    good = TensorDict({"loss": torch.tensor(1.5), "q_tot_taken_mean": torch.tensor(7.9)}, [])
    algorithm.process_loss_vals("agents", good)
    bad = TensorDict({"loss": torch.tensor(2.0), "q_tot_taken_mean": torch.tensor(float("nan"))}, [])
    with pytest.raises(NonFiniteValueError) as info:
        algorithm.process_loss_vals("agents", bad)
    message = str(info.value)
    assert "iteration 0" in message and "q_tot_taken_mean=nan" in message
    assert "last finite values" in message and "loss=1.5" in message and "q_tot_taken_mean=7.9" in message


def test_empty_recognition_set_warns_with_the_count(tmp_path):
    from tensordict import TensorDict

    algorithm = _pow_experiment(tmp_path).algorithm
    vals = TensorDict({"loss": torch.tensor(1.0), "n_in_recognition_set": torch.tensor(0.0)}, [])
    with pytest.warns(RuntimeWarning, match=r"A_r is empty.*1 learner call"):
        algorithm.process_loss_vals("agents", vals)
    full = TensorDict({"loss": torch.tensor(1.0), "n_in_recognition_set": torch.tensor(5.0)}, [])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        algorithm.process_loss_vals("agents", full)


def test_known_harmless_warnings_are_hidden_unless_verbose():
    import warnings

    from benchmarl_pow.validation import quiet_known_warnings

    emitted = [
        "TaskConfig python dataclass not found, task is being loaded without type checks",
        "SyncDataCollector has been deprecated and will be removed in v0.13.",
        "No episode terminated this iteration and thus the episode rewards will be NaN, ...",
        "The default behavior of TransformedEnv will change in version 0.9. Nested ...",
        "PettingZoo failed to load all modules with error message No module named 'x', ...",
        "Atari environments failed to load with error message No module named 'x'.",
        "something else",
    ]
    for verbose, expected in ((False, emitted[6:]), (True, emitted)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_known_warnings(verbose=verbose)
            for message in emitted:
                warnings.warn(message, stacklevel=1)
        assert [str(w.message) for w in caught] == expected


def test_quiet_gives_sdl_a_dummy_driver_only_without_a_display(monkeypatch):
    from benchmarl_pow.validation import quiet_known_warnings

    for display, preset, expected in (
        (None, None, "dummy"), (":0", None, None), (None, "x11", "x11"),
    ):  # fmt: skip
        for key, value in (("DISPLAY", display), ("SDL_VIDEODRIVER", preset)):
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
        quiet_known_warnings(verbose=False)
        assert os.environ.get("SDL_VIDEODRIVER") == expected


def test_agent_inputs_on_a_transformed_task_env_do_not_warn(tmp_path):
    """Predator-prey's env is already a TransformedEnv; appending the agent inputs nests one in
    another, which TorchRL warns about (FutureWarning) unless the unwrapping is stated. (BenchMARL's
    own RNN transforms nest the same way; that warning is in KNOWN_HARMLESS_WARNINGS.)"""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        experiment = compose_experiment(
            ["algorithm=pow_qmix", "task=predator_prey/punish_4", "experiment=smoke",
             "experiment.loggers=[]", "experiment.create_json=False"],
            save_folder=tmp_path, callbacks=[],
        )
    assert experiment.test_env is not None


def test_non_finite_parameters_stop_the_run_before_other_callbacks(tmp_path):
    from benchmarl_pow.validation import FiniteTrainingGuard, NonFiniteValueError

    experiment = _pow_experiment(tmp_path)
    guard = experiment.callbacks[0]
    assert isinstance(guard, FiniteTrainingGuard)  # first: before any table is written
    guard.on_train_end(None, "agents")  # finite: nothing happens
    param = next(experiment.losses["agents"].parameters())
    with torch.no_grad():
        param.view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteValueError, match=r"non-finite parameter .* iteration 0"):
        guard.on_train_end(None, "agents")


def test_experiment_config_helper_checks_its_preset_and_keywords():
    import benchmarl_pow

    config = benchmarl_pow.experiment_config("matrix_game", max_n_iters=3)
    assert config.max_n_iters == 3 and config.loggers == ["csv"]  # no wandb
    with pytest.raises(ConfigError, match=r"did you mean matrix_game"):
        benchmarl_pow.experiment_config("matrix_gam")
    with pytest.raises(ConfigError, match=r"experiment\.gamma=2\.0 is invalid"):
        benchmarl_pow.experiment_config("matrix_game", gamma=2.0)
    with pytest.raises(ConfigError, match=r"max_iters=3 .*not a key of ExperimentConfig"):
        benchmarl_pow.experiment_config("matrix_game", max_iters=3)


def test_resuming_a_live_run_is_refused(tmp_path):
    """A run folder some live process is training (its running.json) cannot be resumed: the
    resume would rewind the files that process is writing. Evaluation stays possible."""
    import socket
    import subprocess as sp

    from benchmarl_pow.resume import load_run

    experiment = compose_experiment(MATRIX + ["experiment.max_n_iters=1",
                                              "experiment.checkpoint_at_end=True"],
                                    save_folder=tmp_path)
    experiment.run()
    folder = Path(experiment.folder_name)
    assert not (folder / "running.json").exists()  # removed when run() returned
    (checkpoint,) = (folder / "checkpoints").glob("*.pt")
    other = sp.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = {"pid": other.pid, "host": socket.gethostname()}
        (folder / "running.json").write_text(json.dumps(owner))
        with pytest.raises(ConfigError, match=f"still in progress \\(pid {other.pid}\\)"):
            load_run(checkpoint)
        message = config_error(MATRIX + [f"experiment.restore_file={checkpoint}"])
        assert "still in progress" in message
    finally:
        other.kill()
        other.wait()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    load_run(checkpoint, experiment_patch={"save_folder": str(scratch)}).close()


def test_checkpoint_with_a_cut_short_replay_dump_is_refused_before_anything(tmp_path):
    """Refused with one line before the run folder is touched; without the replay it loads."""
    from benchmarl_pow.validation import check_checkpoint_file

    checkpoint = _fake_checkpoint(tmp_path, "powqmix_nonmonotonic_mlp__ab_1", {"state": {}})
    cut = checkpoint.with_suffix(".buffers") / "agents" / "storage"
    cut.mkdir(parents=True)
    message = config_error(MATRIX + [f"experiment.restore_file={checkpoint}"])
    assert "replay dump checkpoint_20.buffers is incomplete" in message
    assert config_error(
        MATRIX + [f"experiment.restore_file={checkpoint}",
                  "experiment.exclude_buffer_from_checkpoint=true"]
    ) == ""
    with pytest.raises(ConfigError, match="incomplete"):
        check_checkpoint_file(checkpoint)
    (cut.parent / "buffer_metadata.json").write_text("{}")
    assert check_checkpoint_file(checkpoint) == {"state": {}}
