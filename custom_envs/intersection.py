"""The highway-env unsignalised intersection ("crossroads", spec §5.3) as a TorchRL / BenchMARL task.

BenchMARL task ``highway/intersection`` (:class:`HighwayTask.INTERSECTION`), config
``conf/task/highway/intersection.yaml`` (dataclass :class:`IntersectionConfig`). It needs the optional
extra ``pip install benchmarl-pow[intersection]`` (highway-env 1.12.1); ``highway_env`` is imported only
when an environment is built, so this module imports without it.

The scenario (4 cars, one per approach, team reward -1 per step / +100 when all arrive / -100 on any
crash, 100-step limit, speed-only actions, 30-value observation and 60-value state) is implemented by
:class:`custom_envs.intersection_sim.PowIntersectionEnv`, a small subclass of upstream highway-env's
``IntersectionEnv``; its docstring lists every difference from upstream.

TorchRL layout (unbatched, ``batch_size=[]``; BenchMARL wraps it in ``SerialEnv``/``ParallelEnv``)::

    ("agents", "observation")  float32 [n, 5n + 2*len(route_point_times)]   (n = 4: [4, 30])
    ("agents", "action_mask")  bool    [n, 3]   (always all True)
    ("agents", "action")       Categorical(n=3, shape=(n,))  0 SLOWER, 1 IDLE, 2 FASTER
    ("agents", "reward")       float32 [n, 1]   the team reward, repeated for every agent
    "state"                    float32 [n * (5 + 2*len(route_point_times))]  ([60])
    "done" / "terminated" / "truncated"   bool [1]
    ("info", "collision")      bool [1]  some car crashed (terminal)
    ("info", "all_arrived")    bool [1]  every car has arrived (terminal)
    ("info", "time_out")       bool [1]  the 100-step limit was reached without a crash or all cars
                                         arriving (a truncation, not a terminal)
    ("info", "win")            bool [1]  all_arrived and not collision: the "win rate" of the paper

Seeding: every environment instance has its own random generator. ``set_seed(s)`` reseeds it (used at
the next reset); TorchRL's ``SerialEnv``/``ParallelEnv.set_seed(s)`` gives the sub-environments
``s, g(s), g(g(s)), ...`` (torchrl's seed chain). BenchMARL never calls ``set_seed`` on its
collection environments: it calls ``get_env_fun(seed=s)`` once and builds every copy from that one
function, so :meth:`HighwayIntersectionClass.get_env_fun` returns an :class:`IntersectionEnvFactory`
that gives its k-th environment the seed ``s + k``. ``SerialEnv`` calls it in one process; for
``ParallelEnv`` (``spawn``, torchrl's default start method) each worker receives its own pickled copy
of the factory, and pickling hands out the next index, so worker ``i`` of a ``SerialEnv`` and of a
``ParallelEnv`` get the same seed (the metadata environment that torchrl builds in the main process
takes index 0, the workers 1..n). The authors' runner gave all parallel workers the same seed (spec
quirk Q7).

Metrics: :meth:`HighwayIntersectionClass.log_info` logs ``collection/info/win_rate``,
``collision_rate``, ``time_out_rate`` and ``all_arrived_rate`` over the episodes that ended in a
collected batch (BenchMARL writes them to every logger, CSV included).
:class:`IntersectionMetricsCallback` (add it to ``Experiment(callbacks=[...])``) logs the same rates
for every evaluation as ``eval/info/...`` and adds a per-episode ``win_rate`` list (plus
``collision_rate`` and ``time_out_rate``) to the evaluation JSON next to ``return``, so BenchMARL's
``Benchmark``/marl-eval plots can use ``win_rate`` as a metric.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from benchmarl.environments.common import TaskClass
from benchmarl.experiment.callback import Callback
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from custom_envs.common import task_enum

N_ACTIONS = 3
GROUP = "agents"
INFO_KEYS = ("collision", "all_arrived", "time_out", "win")
INSTALL_HINT = (
    "The highway/intersection task needs highway-env 1.12.1. Install it with "
    "`pip install benchmarl-pow[intersection]` (or `pip install highway-env==1.12.1`)."
)


def require_highway_env() -> None:
    """Raise a clear ImportError when the optional ``highway_env`` package is missing."""
    try:
        importlib.import_module("highway_env")
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err


# --------------------------------------------------------------------------------------- config
@dataclass
class IntersectionConfig:
    """Config of ``highway/intersection`` (defaults = the authors' run, spec §5.3 / §7.1).

    The POW threshold for this task, C = 0.1, is an algorithm setting (see the task yaml).
    """

    n_vehicles: int = 4
    duration: float = 20.0
    simulation_frequency: int = 5
    policy_frequency: int = 5
    target_speeds: list[float] = field(default_factory=lambda: [0.0, 2.0, 4.0, 6.0, 8.0, 10.0])
    initial_speed: float = 10.0
    step_reward: float = -1.0
    all_arrived_reward: float = 100.0
    collision_reward: float = -100.0
    arrive_distance: float = 25.0
    route_point_times: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8, 1.0])
    start_positions: list[float] | None = None
    destinations: list[int] | None = None

    def __post_init__(self) -> None:
        def fail(key: str, value: Any, why: str) -> None:
            raise ValueError(f"highway/intersection config: {key}={value!r} is invalid: {why}")

        n = self.n_vehicles
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 8:
            fail("n_vehicles", n, "expected an integer in 1..8 (cars i and i+4 share an approach)")
        for key in ("simulation_frequency", "policy_frequency"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(key, value, "expected a positive integer (Hz)")
        if self.simulation_frequency % self.policy_frequency:
            fail(
                "simulation_frequency",
                self.simulation_frequency,
                f"must be a multiple of policy_frequency={self.policy_frequency}",
            )
        if not self.duration > 0 or round(self.duration * self.policy_frequency) < 1:
            fail("duration", self.duration, "expected > 0 s and at least one policy step")
        speeds = [float(s) for s in self.target_speeds]
        if len(speeds) < 2 or speeds[0] < 0:
            fail("target_speeds", self.target_speeds, "expected >= 2 non-negative speeds")
        gaps = np.diff(speeds)
        if np.any(gaps <= 0) or not np.allclose(gaps, gaps[0]):
            fail("target_speeds", self.target_speeds, "expected evenly spaced increasing speeds")
        if self.initial_speed < 0:
            fail("initial_speed", self.initial_speed, "expected >= 0")
        if not 0 <= self.arrive_distance <= 100:
            fail("arrive_distance", self.arrive_distance, "expected 0..100 m along the exit lane")
        times = [float(t) for t in self.route_point_times]
        if not times or any(t <= 0 for t in times):
            fail("route_point_times", self.route_point_times, "expected positive times (s)")
        if self.start_positions is not None:
            if len(self.start_positions) != n:
                fail("start_positions", self.start_positions, f"expected {n} values or null")
            if any(not 0 <= float(p) <= 100 for p in self.start_positions):
                fail("start_positions", self.start_positions, "expected 0..100 m on the approach")
        if self.destinations is not None:
            if len(self.destinations) != n:
                fail("destinations", self.destinations, f"expected {n} values or null")
            for i, d in enumerate(self.destinations):
                if int(d) not in range(4) or int(d) == i % 4:
                    fail(
                        "destinations",
                        self.destinations,
                        f"car {i} starts at corner {i % 4}: its destination must be another of 0..3",
                    )

    def max_steps(self) -> int:
        return int(round(self.duration * self.policy_frequency))

    def obs_dim(self) -> int:
        return 5 * self.n_vehicles + 2 * len(self.route_point_times)

    def state_dim(self) -> int:
        return self.n_vehicles * (5 + 2 * len(self.route_point_times))

    def to_highway_config(self) -> dict:
        """The highway-env config dict of :class:`~custom_envs.intersection_sim.PowIntersectionEnv`."""
        return {
            "controlled_vehicles": self.n_vehicles,
            "duration": float(self.duration),
            "simulation_frequency": self.simulation_frequency,
            "policy_frequency": self.policy_frequency,
            "action": {
                "type": "MultiAgentAction",
                "action_config": {
                    "type": "DiscreteMetaAction",
                    "longitudinal": True,
                    "lateral": False,
                    "target_speeds": [float(s) for s in self.target_speeds],
                },
            },
            "initial_speed": float(self.initial_speed),
            "step_reward": float(self.step_reward),
            "all_arrived_reward": float(self.all_arrived_reward),
            "collision_reward": float(self.collision_reward),
            "arrive_distance": float(self.arrive_distance),
            "route_point_times": [float(t) for t in self.route_point_times],
            "start_positions": None
            if self.start_positions is None
            else [float(p) for p in self.start_positions],
            "destinations": None
            if self.destinations is None
            else [int(d) for d in self.destinations],
        }


def _as_config(config: IntersectionConfig | dict | None) -> IntersectionConfig:
    if config is None:
        return IntersectionConfig()
    if isinstance(config, IntersectionConfig):
        return config
    known = {f.name for f in dataclasses.fields(IntersectionConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(
            f"Unknown highway/intersection config key(s) {unknown}; known: {sorted(known)}"
        )
    return IntersectionConfig(**dict(config))


# --------------------------------------------------------------------------------------- env
class HighwayIntersectionEnv(EnvBase):
    """Unbatched TorchRL env of the crossroads scenario (layout in the module docstring).

    Args:
        config: an :class:`IntersectionConfig`, a dict of its keys, or ``None`` for the defaults.
        seed: seed of this environment's generator (``None``: fresh OS entropy).
        device: torch device of the output tensors.
    """

    batch_locked = True

    def __init__(
        self,
        config: IntersectionConfig | dict | None = None,
        seed: int | None = None,
        device: Any = "cpu",
    ) -> None:
        require_highway_env()
        from custom_envs.intersection_sim import PowIntersectionEnv

        self.intersection_config = _as_config(config)
        super().__init__(device=device, batch_size=torch.Size([]))
        self._sim = PowIntersectionEnv(config=self.intersection_config.to_highway_config())
        self.n_agents = self.intersection_config.n_vehicles
        self.max_steps = self.intersection_config.max_steps()
        self.group_map = {GROUP: [f"agent_{i}" for i in range(self.n_agents)]}
        self._pending_seed: int | None = None
        self._make_specs()
        self._mask = torch.ones(self.n_agents, N_ACTIONS, dtype=torch.bool, device=self.device)
        self._set_seed(seed)

    def _make_specs(self) -> None:
        n, dev = self.n_agents, self.device
        flag = lambda: Categorical(2, shape=(1,), dtype=torch.bool, device=dev)  # noqa: E731
        self.observation_spec = Composite(
            {
                GROUP: Composite(
                    observation=Unbounded(
                        (n, self.intersection_config.obs_dim()), dtype=torch.float32, device=dev
                    ),
                    action_mask=Categorical(2, shape=(n, N_ACTIONS), dtype=torch.bool, device=dev),
                    shape=(n,),
                    device=dev,
                ),
                "state": Unbounded(
                    (self.intersection_config.state_dim(),), dtype=torch.float32, device=dev
                ),
                "info": Composite({key: flag() for key in INFO_KEYS}, device=dev),
            },
            device=dev,
        )
        self.action_spec = Composite(
            {
                GROUP: Composite(
                    action=Categorical(N_ACTIONS, shape=(n,), dtype=torch.int64, device=dev),
                    shape=(n,),
                    device=dev,
                )
            },
            device=dev,
        )
        self.reward_spec = Composite(
            {
                GROUP: Composite(
                    reward=Unbounded((n, 1), dtype=torch.float32, device=dev),
                    shape=(n,),
                    device=dev,
                )
            },
            device=dev,
        )
        self.done_spec = Composite(done=flag(), terminated=flag(), truncated=flag(), device=dev)

    # -- seeding
    def _set_seed(self, seed: int | None) -> None:
        """Reseed this env; takes effect at the next reset."""
        self._pending_seed = None if seed is None else int(seed)

    # -- dynamics
    def _output(
        self,
        obs: np.ndarray,
        state: np.ndarray,
        info: dict,
        reward: float | None,
        terminated: bool,
        truncated: bool,
    ) -> TensorDict:
        dev = self.device
        # one small bool array, sliced into [1]-shaped views (cheaper than 7 torch.tensor calls)
        flags = torch.from_numpy(
            np.array(
                [info[key] for key in INFO_KEYS] + [terminated or truncated, terminated, truncated],
                dtype=bool,
            )
        ).to(dev)
        n_info = len(INFO_KEYS)
        group = {"observation": torch.from_numpy(obs).to(dev), "action_mask": self._mask.clone()}
        if reward is not None:
            group["reward"] = torch.full(
                (self.n_agents, 1), reward, dtype=torch.float32, device=dev
            )
        return TensorDict(
            {
                GROUP: TensorDict(group, batch_size=(self.n_agents,), device=dev),
                "state": torch.from_numpy(state).to(dev),
                "info": TensorDict(
                    {key: flags[i : i + 1] for i, key in enumerate(INFO_KEYS)},
                    batch_size=(),
                    device=dev,
                ),
                "done": flags[n_info : n_info + 1],
                "terminated": flags[n_info + 1 : n_info + 2],
                "truncated": flags[n_info + 2 : n_info + 3],
            },
            batch_size=(),
            device=dev,
        )

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDict:
        seed, self._pending_seed = self._pending_seed, None
        obs, _ = self._sim.reset(seed=seed)
        state = self._sim.last_state
        info = {key: False for key in INFO_KEYS}
        return self._output(obs, state, info, None, False, False)

    def _step(self, tensordict: TensorDictBase) -> TensorDict:
        action = tensordict.get((GROUP, "action")).detach().cpu().numpy().reshape(-1)
        obs, reward, terminated, truncated, info = self._sim.step(action)
        return self._output(obs, self._sim.last_state, info, reward, terminated, truncated)

    # -- rendering
    def render(self, mode: str = "rgb_array") -> np.ndarray:
        """An RGB frame ``[H, W, 3]`` uint8 of the current scene (headless: SDL dummy driver)."""
        if mode != "rgb_array":
            raise ValueError(f"only mode='rgb_array' is supported, got {mode!r}")
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        sim = self._sim
        sim.render_mode = "rgb_array"
        if sim.viewer is None:
            from highway_env.envs.common.graphics import EnvViewer

            sim.viewer = EnvViewer(sim)
        # upstream's viewer skips all drawing under SDL's dummy driver (black frames); it draws on an
        # offscreen surface here (config offscreen_rendering=True), so no display is needed
        sim.viewer.enabled = True
        return sim.render()

    @property
    def sim(self):
        """The underlying highway-env environment (:class:`PowIntersectionEnv`)."""
        return self._sim

    def close(self, *, raise_if_closed: bool = True) -> None:
        sim = getattr(self, "_sim", None)
        if sim is not None:
            sim.close()
        super().close(raise_if_closed=raise_if_closed)


class IntersectionEnvFactory:
    """A picklable env constructor that gives its k-th environment the seed ``seed + k``.

    Calls in one process (``SerialEnv``) count up. Each pickled copy (one per ``ParallelEnv`` worker
    under the ``spawn`` start method) takes the next index at pickling time, so workers get distinct,
    reproducible seeds. A copy inherited through ``fork`` cannot know its index; it then offsets the
    seed with the worker's multiprocessing identity (distinct, but dependent on how many processes the
    parent has created) and warns.
    """

    def __init__(self, config: dict, seed: int | None, device: Any = "cpu", start: int = 0) -> None:
        self.config = copy.deepcopy(dict(config))
        self.seed = seed
        self.device = device
        self._next = start
        self._pid = os.getpid()

    def _take_index(self) -> int:
        index = self._next
        self._next += 1
        return index

    def __reduce__(self):
        return (
            type(self),
            (self.config, self.seed, self.device, self._take_index()),
        )

    def next_seed(self) -> int | None:
        """The seed the next environment built here will get (advances the counter)."""
        index = self._take_index()
        if self.seed is None:
            return None
        if os.getpid() != self._pid:  # a fork-inherited copy: unknown worker index
            import multiprocessing

            identity = multiprocessing.current_process()._identity
            offset = 1000 * (identity[-1] if identity else os.getpid())
            warnings.warn(
                "IntersectionEnvFactory used in a forked process: worker seeds depend on the "
                "process creation order. Use the 'spawn' start method for reproducible seeds.",
                stacklevel=2,
            )
            return int(self.seed) + offset + index
        return int(self.seed) + index

    def __call__(self) -> HighwayIntersectionEnv:
        return HighwayIntersectionEnv(config=self.config, seed=self.next_seed(), device=self.device)


# --------------------------------------------------------------------------------------- task
def _rate(batch: TensorDictBase, key: str, done: torch.Tensor) -> float:
    return batch.get(("next", "info", key))[done].to(torch.float).mean().item()


class HighwayIntersectionClass(TaskClass):
    """BenchMARL TaskClass of ``highway/intersection`` (see the module docstring)."""

    def _config(self) -> IntersectionConfig:
        return _as_config(self.config)

    def get_env_fun(
        self,
        num_envs: int,
        continuous_actions: bool,
        seed: int | None,
        device: Any,
    ) -> Callable[[], EnvBase]:
        require_highway_env()
        self._config()  # validate early
        return IntersectionEnvFactory(config=dict(self.config), seed=seed, device=device)

    def supports_continuous_actions(self) -> bool:
        return False

    def supports_discrete_actions(self) -> bool:
        return True

    def has_render(self, env: EnvBase) -> bool:
        return True

    def max_steps(self, env: EnvBase) -> int:
        return self._config().max_steps()

    def group_map(self, env: EnvBase) -> dict[str, list[str]]:
        return {GROUP: [f"agent_{i}" for i in range(self._config().n_vehicles)]}

    def observation_spec(self, env: EnvBase) -> Composite:
        spec = env.observation_spec.clone()
        del spec["info"]
        del spec["state"]
        del spec[(GROUP, "action_mask")]
        return spec

    def info_spec(self, env: EnvBase) -> Composite | None:
        spec = env.observation_spec.clone()
        del spec["state"]
        del spec[GROUP]
        return spec

    def state_spec(self, env: EnvBase) -> Composite | None:
        return Composite({"state": env.observation_spec["state"].clone()})

    def action_mask_spec(self, env: EnvBase) -> Composite | None:
        spec = env.observation_spec.clone()
        del spec["info"]
        del spec["state"]
        del spec[(GROUP, "observation")]
        return spec

    def action_spec(self, env: EnvBase) -> Composite:
        return env.full_action_spec

    @staticmethod
    def log_info(batch: TensorDictBase) -> dict[str, float]:
        done = batch.get(("next", "done")).squeeze(-1)
        if not done.any():
            return {}
        return {
            "collection/info/win_rate": _rate(batch, "win", done),
            "collection/info/collision_rate": _rate(batch, "collision", done),
            "collection/info/time_out_rate": _rate(batch, "time_out", done),
            "collection/info/all_arrived_rate": _rate(batch, "all_arrived", done),
        }

    @staticmethod
    def env_name() -> str:
        return "highway"


HighwayTask = task_enum(
    "HighwayTask",
    ["intersection"],
    HighwayIntersectionClass,
    IntersectionConfig,
    __name__,
    doc='BenchMARL task enum of the highway-env environments of this project.',
)


# --------------------------------------------------------------------------------------- metrics
def episode_outcomes(rollouts: list[TensorDictBase]) -> dict[str, torch.Tensor]:
    """Per-episode ``win``/``collision``/``time_out``/``all_arrived`` (float tensors [n_episodes]) of
    evaluation rollouts, read at each rollout's first done step (a rollout that never finished counts
    as a time-out)."""
    out = {key: [] for key in INFO_KEYS}
    for rollout in rollouts:
        done = rollout.get(("next", "done")).reshape(rollout.shape[0], -1).any(-1)
        finished = done.nonzero()
        t = int(finished[0]) if finished.numel() else rollout.shape[0] - 1
        for key in INFO_KEYS:
            value = bool(rollout.get(("next", "info", key))[t].any())
            if key == "time_out" and not finished.numel():
                value = True
            out[key].append(float(value))
    return {key: torch.tensor(values) for key, values in out.items()}


class IntersectionMetricsCallback(Callback):
    """Log the intersection's evaluation win/collision/time-out rates (BenchMARL ``Callback``).

    On every evaluation it logs ``eval/info/win_rate``, ``eval/info/collision_rate``,
    ``eval/info/time_out_rate`` and ``eval/info/all_arrived_rate`` to the experiment's loggers, and adds
    the per-episode lists ``win_rate``, ``collision_rate`` and ``time_out_rate`` to the evaluation
    JSON (same step entry as ``return``), so marl-eval / ``Benchmark`` plots can use ``win_rate``.
    Usage: ``Experiment(..., callbacks=[IntersectionMetricsCallback()])``. It does nothing for rollouts
    without ``("next", "info", "win")`` (other tasks).
    """

    def on_evaluation_end(self, rollouts: list[TensorDictBase]) -> None:
        if not rollouts or ("next", "info", "win") not in rollouts[0].keys(True, True):
            return
        outcomes = episode_outcomes(rollouts)
        experiment = self.experiment
        experiment.logger.log(
            {
                "eval/info/win_rate": outcomes["win"].mean().item(),
                "eval/info/collision_rate": outcomes["collision"].mean().item(),
                "eval/info/time_out_rate": outcomes["time_out"].mean().item(),
                "eval/info/all_arrived_rate": outcomes["all_arrived"].mean().item(),
            },
            step=experiment.n_iters_performed,
        )
        writer = getattr(experiment.logger, "json_writer", None)
        if writer is not None:
            writer.write(
                metrics={
                    "win_rate": outcomes["win"],
                    "collision_rate": outcomes["collision"],
                    "time_out_rate": outcomes["time_out"],
                },
                total_frames=experiment.total_frames,
                evaluation_step=experiment.total_frames // experiment.config.evaluation_interval,
            )


__all__ = [
    "HighwayIntersectionClass",
    "HighwayIntersectionEnv",
    "HighwayTask",
    "IntersectionConfig",
    "IntersectionEnvFactory",
    "IntersectionMetricsCallback",
    "episode_outcomes",
    "require_highway_env",
]
