"""The BenchMARL wiring shared by every algorithm of the weighted mixer loss family.

An algorithm of the family is a mixer (``qmix``, ``vdn`` or ``qplex``), a source of bootstrap
values (the target Q_tot or a central critic Q̂*), optional extra networks (POW's Q_r, ResQ's
residual) and a weighting rule. :class:`WeightedMixerAlgorithm` builds the policy, exploration,
networks and :class:`~benchmarl_pow.objectives.WeightedMixerLoss` from those choices; a concrete
algorithm overrides a few class attributes and :meth:`make_rule`, nothing else.

Task presets: where the spec fixes a value per task (POW's threshold C, the CW/OW weight α and
POW's unweighted warm-up, pow_spec.md §0), the config value ``null`` means "the preset of the
task's environment" from :data:`TASK_PRESETS`; any number given overrides it.
"""

import copy
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass
from typing import Any, ClassVar

import torch
from benchmarl.algorithms.common import Algorithm, AlgorithmConfig
from benchmarl.models.common import ModelConfig
from benchmarl.utils import _read_yaml_config
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import Composite, Unbounded
from torchrl.envs import Compose, EnvBase, TransformedEnv
from torchrl.modules import QValueModule
from torchrl.objectives import LossModule

from benchmarl_pow.modules import (
    CentralMixer,
    DmaqMixer,
    LinearEGreedyModule,
    QmixMixer,
    RecognitionMixer,
    VdnMixer,
)
from benchmarl_pow.objectives import WeightedMixerLoss, WeightingRule
from custom_envs.agent_inputs import AgentInputs
from custom_envs.common import conf_root

#: Per-environment defaults used where a config key is ``null`` (pow_spec.md §0 and App. F).
TASK_PRESETS: dict[str, dict[str, Any]] = {
    # the matrix env appends the agent id itself (its observe_agent_id), so no input is added
    "matrix_game": {
        "threshold": 0.05, "other_actions_weight": 0.0, "no_weighted_steps": 0,
        "obs_last_action": False, "obs_agent_id": False,
    },
    "predator_prey": {
        "threshold": 1.0, "other_actions_weight": 0.1, "no_weighted_steps": 100_000,
        "obs_last_action": True, "obs_agent_id": False,
    },
    "highway": {"threshold": 0.1, "other_actions_weight": 0.1, "no_weighted_steps": 100_000},
    "smacv2": {"threshold": 0.05, "other_actions_weight": 0.1, "no_weighted_steps": 100_000},
    # SMAC v1 maps: the paper's C = 0.05 (its code's default is 0.1, pow_spec.md §5.4); SMAX and
    # the fake SMACv2 test env stand in for SMAC and take the same preset.
    "smac": {"threshold": 0.05, "other_actions_weight": 0.1, "no_weighted_steps": 100_000},
    "smax": {"threshold": 0.05, "other_actions_weight": 0.1, "no_weighted_steps": 100_000},
    "fake_smacv2": {"threshold": 0.05, "other_actions_weight": 0.1, "no_weighted_steps": 100_000},
}
#: Defaults for any other environment (the released algorithm defaults; PyMARL's agent input
#: has both the last action and the agent id, pow_spec.md §1.1).
DEFAULT_PRESET: dict[str, Any] = {
    "threshold": 0.1,
    "other_actions_weight": 0.1,
    "no_weighted_steps": 100_000,
    "obs_last_action": True,
    "obs_agent_id": True,
}

MIXERS = ("qmix", "vdn", "qplex")


def task_preset(env_name: str, key: str, value: Any) -> Any:
    """``value`` if given, else the preset of ``env_name`` for ``key``."""
    if value is not None:
        return value
    return TASK_PRESETS.get(env_name, DEFAULT_PRESET).get(key, DEFAULT_PRESET[key])


class WeightedMixerAlgorithm(Algorithm):
    """Base BenchMARL algorithm of the family. Subclasses set the class attributes below.

    Config fields arrive as keyword arguments (see :class:`WeightedMixerConfig`) and are stored
    as attributes of the same name.
    """

    #: "qmix" (2-layer hypernet monotonic mixer), "vdn" (sum) or "qplex" (DMAQ)
    mixer_kind: ClassVar[str] = "qmix"
    #: "mixer" (target Q_tot, as QMIX) or "central" (target Q̂*, as WQMIX/ResQ/POW)
    bootstrap: ClassVar[str] = "mixer"
    #: whether POW's recognition network Q_r is used
    uses_recognition: ClassVar[bool] = False
    #: whether ResQ's residual network is used
    uses_residual: ClassVar[bool] = False
    #: 0.5 or 1 in front of the squared errors (pow_spec.md §3)
    mixer_loss_coef: ClassVar[float] = 0.5
    central_loss_coef: ClassVar[float] = 0.5

    def __init__(self, **kwargs):
        experiment = kwargs.pop("experiment")
        super().__init__(experiment=experiment)
        for name, value in kwargs.items():
            setattr(self, name, value)
        if self.mixer_kind not in MIXERS:
            raise ValueError(f"unknown mixer {self.mixer_kind!r}; expected one of {MIXERS}")
        # TD(λ) needs sequences: BenchMARL stores chunks of consecutive steps when has_rnn is set.
        self.has_rnn = self.has_rnn or self.lmbda > 0
        self.env_name = experiment.task.env_name()
        self._agent_inputs = self._make_agent_inputs()

    # ------------------------------------------------------------- agent input
    def _make_agent_inputs(self) -> dict[str, AgentInputs]:
        """PyMARL's agent input per group (pow_spec.md §1.5): the observation spec our networks
        see grows by the appended features, and :meth:`process_env_fun` appends them."""
        last_action, agent_id = self.preset("obs_last_action"), self.preset("obs_agent_id")
        if not (last_action or agent_id):
            return {}
        inputs = {}
        self.observation_spec = self.observation_spec.clone()
        for group in self.group_map:
            obs_keys = list(self.observation_spec[group].keys())
            if len(obs_keys) != 1 or self._n_actions_or_none(group) is None:
                continue  # several observation entries or non-discrete actions: left as they are
            transform = AgentInputs(
                group,
                obs_keys[0],
                len(self.group_map[group]),
                self._n_actions(group),
                last_action=bool(last_action),
                agent_id=bool(agent_id),
            )
            spec = Composite({group: self.observation_spec[group].clone()})
            self.observation_spec[group] = transform.transform_observation_spec(spec)[group]
            inputs[group] = transform
        return inputs

    def agent_inputs(self, group: str) -> AgentInputs | None:
        """The transform that builds ``group``'s agent input from the env's observation (None
        when nothing is appended): ``agent_inputs(g)._append(obs, last_action)`` for hand-built
        observations (probes, diagnostics)."""
        return self._agent_inputs.get(group)

    def _n_actions_or_none(self, group: str) -> int | None:
        space = getattr(self.action_spec[group, "action"], "space", None)
        return getattr(space, "n", None)

    def process_env_fun(self, env_fun: Callable[[], EnvBase]) -> Callable[[], EnvBase]:
        """Append PyMARL's agent inputs to the observations of training and evaluation envs."""
        if not self._agent_inputs:
            return env_fun
        transforms = list(self._agent_inputs.values())

        def make_env() -> EnvBase:
            # auto_unwrap=True: the task's own transforms and these form one TransformedEnv
            # (TorchRL's current default, stated so that it does not warn about its change).
            return TransformedEnv(
                env_fun(), Compose(*[t.clone() for t in transforms]), auto_unwrap=True
            )

        return make_env

    # ------------------------------------------------------------ subclass hooks
    def make_rule(self) -> WeightingRule:
        """The weighting rule (default: unweighted)."""
        return WeightingRule()

    def preset(self, key: str) -> Any:
        return task_preset(self.env_name, key, getattr(self, key, None))

    # ------------------------------------------------------------------- policy
    def _n_actions(self, group: str) -> int:
        return int(self.action_spec[group, "action"].space.n)

    def _agent_model(self, group: str, out_name: str, model_config: ModelConfig) -> TensorDictModule:
        """A per-agent network from the experiment's model config writing ``(group, out_name)``."""
        n_agents = len(self.group_map[group])
        out_shape = [*self.action_spec[group, "action"].shape, self._n_actions(group)]
        return model_config.get_model(
            input_spec=Composite({group: self.observation_spec[group].clone().to(self.device)}),
            output_spec=Composite(
                {group: Composite({out_name: Unbounded(shape=out_shape)}, shape=(n_agents,))}
            ),
            agent_group=group,
            input_has_agent_dim=True,
            n_agents=n_agents,
            centralised=False,
            share_params=self.experiment_config.share_policy_params,
            device=self.device,
            action_spec=self.action_spec,
        )

    def _action_mask_key(self, group: str):
        return (group, "action_mask") if self.action_mask_spec is not None else None

    def _get_policy_for_loss(
        self, group: str, model_config: ModelConfig, continuous: bool
    ) -> TensorDictModule:
        if continuous:
            raise ValueError(
                f"{type(self).__name__} needs discrete actions, but group '{group}' of task "
                f"'{self.experiment.task.name.lower()}' has continuous ones"
            )
        actor = self._agent_model(group, "action_value", model_config)
        value_module = QValueModule(
            action_value_key=(group, "action_value"),
            action_mask_key=self._action_mask_key(group),
            out_keys=[(group, "action"), (group, "action_value"), (group, "chosen_action_value")],
            spec=self.action_spec[group, "action"],
            action_space=None,
        )
        return TensorDictSequential(actor, value_module)

    def _get_policy_for_collection(
        self, policy_for_loss: TensorDictModule, group: str, continuous: bool
    ) -> TensorDictModule:
        greedy = LinearEGreedyModule(
            annealing_num_steps=self.experiment_config.get_exploration_anneal_frames(
                self.on_policy
            ),
            action_key=(group, "action"),
            spec=self.action_spec[(group, "action")],
            action_mask_key=self._action_mask_key(group),
            eps_init=self.experiment_config.exploration_eps_init,
            eps_end=self.experiment_config.exploration_eps_end,
            device=self.device,
        )
        return TensorDictSequential(*policy_for_loss, greedy)

    # --------------------------------------------------------------------- loss
    def _state_key_and_dim(self, group: str) -> tuple[Any, int]:
        if self.state_spec is not None:
            key = list(self.state_spec.keys(True, True))[0]
            return key, int(torch.Size(self.state_spec[key].shape).numel())
        obs_keys = list(self.observation_spec[group].keys(True, True))
        if len(obs_keys) != 1:
            raise ValueError(
                f"task '{self.experiment.task.name.lower()}' has no global state and group "
                f"'{group}' has {len(obs_keys)} observation keys {obs_keys}; the mixer needs a "
                "state or exactly one observation key to concatenate"
            )
        shape = self.observation_spec[group, obs_keys[0]].shape
        return None, int(torch.Size(shape).numel())

    def _make_mixer(self, n_agents: int, n_actions: int, state_dim: int) -> nn.Module:
        if self.mixer_kind == "vdn":
            return VdnMixer(n_agents)
        if self.mixer_kind == "qplex":
            return DmaqMixer(
                n_agents,
                n_actions,
                state_dim,
                hypernet_embed=self.hypernet_embed,
                adv_hypernet_layers=self.adv_hypernet_layers,
                adv_hypernet_embed=self.adv_hypernet_embed,
                num_kernel=self.num_kernel,
            )
        return QmixMixer(
            n_agents, state_dim, embed_dim=self.mixing_embed_dim, hypernet_embed=self.hypernet_embed
        )

    def _get_loss(
        self, group: str, policy_for_loss: TensorDictModule, continuous: bool
    ) -> tuple[LossModule, bool]:
        n_agents = len(self.group_map[group])
        n_actions = self._n_actions(group)
        state_key, state_dim = self._state_key_and_dim(group)
        agent_network = policy_for_loss[0]
        extra: dict[str, Any] = {}
        if self.bootstrap == "central" or getattr(self, "central_mixing_embed_dim", None):
            extra["central_agent"] = self._agent_model(group, "central_value", self.model_config)
            extra["central_mixer"] = CentralMixer(n_agents, state_dim, self.central_mixing_embed_dim)
        if self.uses_residual:
            residual_agent = self._agent_model(group, "residual_value", self.model_config)
            # ResQ's residual agent starts as a copy of the decentralised agent (pow_spec.md §3.5).
            residual_agent.load_state_dict(copy.deepcopy(agent_network.state_dict()))
            extra["residual_agent"] = residual_agent
            extra["residual_mixer"] = CentralMixer(
                n_agents, state_dim, self.residual_mixing_embed_dim
            )
        if self.uses_recognition:
            extra["recognition_mixer"] = RecognitionMixer(
                n_agents,
                n_actions,
                state_dim,
                hypernet_embed=self.lambda_hypernet_embed_dim,
                mixing_embed=self.lambda_mixing_embed_dim,
                v_embed=self.v_embed_dim,
            ).to(self.device)
            extra.update(
                recognition_updates=self.recognition_updates,
                first_recognition_updates=self.first_recognition_updates,
                recognition_batch_fraction=self.recognition_batch_fraction,
                recognition_clip=self.experiment_config.clip_grad_val,
                recognition_lr=self.experiment_config.lr,
            )
        for name in ("central_mixer", "residual_mixer"):
            if name in extra:
                extra[name] = extra[name].to(self.device)
        loss = WeightedMixerLoss(
            agent_network,
            self._make_mixer(n_agents, n_actions, state_dim).to(self.device),
            n_agents=n_agents,
            n_actions=n_actions,
            gamma=self.experiment_config.gamma,
            lmbda=self.lmbda,
            bootstrap=self.bootstrap,
            rule=self.make_rule(),
            recurrent=self.model_config.is_rnn,
            state_key=state_key,
            mixer_loss_coef=self.mixer_loss_coef,
            central_loss_coef=self.central_loss_coef,
            group=group,
            **extra,
        )
        loss.set_keys(
            action=(group, "action"),
            action_mask=(group, "action_mask"),
            action_value=(group, "action_value"),
            observation=(group, list(self.observation_spec[group].keys())[0]),
            central_value=(group, "central_value"),
            residual_value=(group, "residual_value"),
            priority=(group, "td_error"),
        )
        if self.uses_recognition:  # the loss reads it in _update_recognition
            loss.recognition_bf16 = bool(getattr(self, "recognition_bf16", False))
        return loss, True

    def _get_parameters(self, group: str, loss: LossModule) -> dict[str, Iterable]:
        main = [p for n, p in loss.named_parameters() if not n.startswith("recognition_mixer.")]
        params: dict[str, Iterable] = {"loss": main}
        if self.uses_recognition:
            params["loss_recognition"] = list(loss.recognition_mixer.parameters())
        return params

    # --------------------------------------------------------------- batches
    def process_batch(self, group: str, batch: TensorDictBase) -> TensorDictBase:
        """Global reward/done/terminated as BenchMARL's QMIX does; hand the loss its context."""
        keys = set(batch.keys(True, True))
        if ("next", "done") not in keys:
            batch.set(("next", "done"), batch.get(("next", group, "done")).any(-2))
        if ("next", "terminated") not in keys:
            batch.set(("next", "terminated"), batch.get(("next", group, "terminated")).any(-2))
        if ("next", "reward") not in keys:
            batch.set(("next", "reward"), batch.get(("next", group, "reward")).mean(-2))
        loss = self.get_loss_and_updater(group)[0]
        loss.total_frames = int(self.experiment.total_frames)
        optimizers = getattr(self.experiment, "optimizers", {}).get(group, {})
        if optimizers and loss._optimizers != optimizers:
            loss.attach_optimizers(optimizers)
        return batch

    def process_loss_vals(self, group: str, loss_vals: TensorDictBase) -> TensorDictBase:
        """Stop on a non-finite term, warn on an empty recognition set, drop Q_r's loss.

        Raises:
            benchmarl_pow.validation.NonFiniteValueError: a loss term or a logged Q-value mean is
                NaN/inf (naming the iteration, the term and the previous call's finite values),
                before anything of this iteration is logged.
        """
        import math
        import warnings

        from benchmarl_pow.validation import check_finite_training_values

        last = getattr(self, "_last_finite_loss_vals", {}).get(group)
        finite = check_finite_training_values(
            loss_vals, int(self.experiment.n_iters_performed), last, group
        )
        self.__dict__.setdefault("_last_finite_loss_vals", {})[group] = finite
        if finite.get("n_in_recognition_set") == 0.0:
            counts = self.__dict__.setdefault("_empty_recognition_set_calls", {})
            counts[group] = counts.get(group, 0) + 1
            if math.log10(counts[group]).is_integer():  # 1st, 10th, 100th, ... call
                warnings.warn(
                    f"POW: the recognition set A_r is empty for a whole batch (group '{group}', "
                    f"iteration {int(self.experiment.n_iters_performed)}; {counts[group]} "
                    "learner call(s) so far): no sample gets weight 1; check algorithm.threshold",
                    RuntimeWarning,
                    stacklevel=2,
                )
        # Q_r was already stepped inside the loss (its inner updates must precede the weights);
        # keep its loss for logging only, out of BenchMARL's optimiser loop.
        if "loss_recognition" in loss_vals.keys():
            loss_vals = loss_vals.exclude("loss_recognition")
        return loss_vals


@dataclass
class WeightedMixerConfig(AlgorithmConfig):
    """Fields shared by every algorithm of the family.

    Attributes:
        lmbda: TD(λ) trace; 0 gives one-step targets. λ > 0 makes BenchMARL store chunks.
        mixing_embed_dim: QMIX mixer embedding (32).
        hypernet_embed: hidden width of the QMIX/QPLEX hypernetworks (64).
        obs_last_action, obs_agent_id: PyMARL's agent input (pow_spec.md §1.5): append the
            one-hot last action / the one-hot agent id to each observation; ``null`` = the
            task's preset (predator-prey: last action only, input 81; matrix game: neither, its
            env appends the id itself; any other task: both, PyMARL's default).
    """

    lmbda: float = MISSING
    mixing_embed_dim: int = MISSING
    hypernet_embed: int = MISSING
    obs_last_action: bool | None = MISSING
    obs_agent_id: bool | None = MISSING

    #: registry / yaml name, e.g. "pow_qmix"
    registry_name: ClassVar[str] = ""

    @classmethod
    def get_from_yaml(cls, path: str | None = None):
        """Load from ``conf/algorithm/<registry_name>.yaml`` (or ``path``)."""
        if path is None:
            path = str(conf_root() / "algorithm" / f"{cls.registry_name}.yaml")
        return cls(**_read_yaml_config(path))

    def __post_init__(self) -> None:
        if isinstance(self.lmbda, (int, float)) and not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"lmbda must be in [0, 1], got {self.lmbda}")

    @staticmethod
    def supports_continuous_actions() -> bool:
        return False

    @staticmethod
    def supports_discrete_actions() -> bool:
        return True

    @staticmethod
    def on_policy() -> bool:
        return False


@dataclass
class QplexFields:
    """DMAQ mixer fields (pow_spec.md §2.4)."""

    adv_hypernet_layers: int = MISSING
    adv_hypernet_embed: int = MISSING
    num_kernel: int = MISSING


@dataclass
class CentralCriticFields:
    """Width E of the central critic's feed-forward head (pow_spec.md §2.5)."""

    central_mixing_embed_dim: int = MISSING


@dataclass
class PowFields(CentralCriticFields):
    """POW's fields (pow_spec.md §3.6.4). ``null`` threshold / warm-up = the task preset.

    Attributes:
        threshold: C of the recognition set A_r = {a : |λΔQ(s,a)| < C}.
        other_actions_weight: α, the weight outside A_r (0 in the paper).
        no_weighted_steps: frames of unweighted Q_tot training at the start.
        recognition_updates / first_recognition_updates: Q_r steps per learner call (10 / 20).
        recognition_batch_fraction: fraction of the batch used by each Q_r step (1.0 = faithful).
        recognition_bf16: Q_r steps with bf16 matmuls, fp32 accumulation (False = faithful fp32).
        lambda_hypernet_embed_dim, lambda_mixing_embed_dim, v_embed_dim: Q_r widths (128/64/128).
    """

    threshold: float | None = MISSING
    other_actions_weight: float | None = MISSING
    no_weighted_steps: int | None = MISSING
    recognition_updates: int = MISSING
    first_recognition_updates: int = MISSING
    recognition_batch_fraction: float = MISSING
    recognition_bf16: bool = MISSING
    lambda_hypernet_embed_dim: int = MISSING
    lambda_mixing_embed_dim: int = MISSING
    v_embed_dim: int = MISSING
