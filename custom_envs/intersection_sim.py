"""The authors' crossroads scenario as a small subclass of highway-env's ``IntersectionEnv``.

This module imports ``highway_env`` at module level; :mod:`custom_envs.intersection` imports it lazily,
so that the rest of the project works without the optional ``intersection`` extra.

What is reproduced (spec ``pow_spec.md`` §5.3) on top of upstream highway-env 1.12.1, by configuration
plus the overrides below (upstream's road geometry, vehicle kinematics, lane-following steering,
speed controller and collision test are used unchanged):

* **vehicles**: ``n_vehicles`` controlled cars (4 by default), car ``i`` on the approach lane
  ``o{i%4} -> ir{i%4}`` at longitudinal position ``60 + 5*N(1, 1) + 30*(i//4)`` m, speed 10 m/s, target
  speed 10 m/s, heading along the lane. Destination ``d ~ U{0..3}``, ``d <- d+1 (mod 4)`` when it equals
  the car's own corner (left turn p=1/2, straight 1/4, right 1/4). No background traffic, no
  "challenger" car, no spawning.
* **road**: a plain :class:`highway_env.road.road.Road` (upstream uses ``RegulatedRoad``): road-priority
  yielding is disabled.
* **lane tracking**: route-based. A car's lane index advances along its planned path (approach lane,
  turn/straight lane, exit lane) when it passes the end of the current lane, instead of upstream's
  closest-lane search over every lane of the network at every step.
* **actions**: speed only, ``0 SLOWER, 1 IDLE, 2 FASTER`` over target speeds ``0, 2, ..., 10`` m/s
  (upstream's ``MDPVehicle`` logic: FASTER/SLOWER set the speed index to ``round(speed/2) +/- 1``).
* **timing**: 5 Hz simulation and policy; the time limit is counted in integer steps:
  ``round(duration * policy_frequency)`` = 100 steps (the authors' fork accumulates a float clock and
  times out at step 101, a floating-point artefact).
* **reward (team)**: ``step_reward`` (-1) per step, plus ``all_arrived_reward`` (+100) on the step where
  every car has arrived, **replaced** by ``collision_reward`` (-100) when any car has crashed.
* **arrival**: a car is on an exit lane ``il* -> o*`` at longitudinal coordinate >= ``arrive_distance``
  (25 m); once arrived, the car keeps driving.
* **termination**: any crash or all cars arrived (true terminals); otherwise truncation at the time
  limit.
* **observation** (per agent, unnormalised, ``5*n + 2*len(route_point_times)`` values, 30 by default):
  every car sorted by Euclidean distance to the agent; row 0 the agent's own absolute
  ``[x, y, vx, vy, heading]``, the other rows the other cars' rows minus row 0; then the positions
  along the agent's planned path (lane centre) after ``route_point_times`` (0.2 ... 1.0 s) at its
  current speed, minus its current position, as ``(dx, dy)`` pairs. The points follow the real path
  through the turn lane (the authors' fork skips the turn lane in its lane index, so its route points
  point backwards during the crossing; see spec §5.3).
  Computed directly from vehicle attributes: highway-env's pandas-based ``Kinematics`` observation would
  take most of the step time.
* **state**: the concatenation over agents of ``[own row (5), route points (10)]`` (60 values).
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from highway_env.envs.common.action import action_factory
from highway_env.envs.common.observation import ObservationType
from highway_env.envs.intersection_env import IntersectionEnv
from highway_env.road.road import Road
from highway_env.vehicle.controller import MDPVehicle

ACTION_NAMES: dict[int, str] = {0: "SLOWER", 1: "IDLE", 2: "FASTER"}
N_FEATURES = 5  # x, y, vx, vy, heading
N_CORNERS = 4


class RouteTrackingVehicle(MDPVehicle):
    """An ``MDPVehicle`` whose lane index advances along its planned path.

    ``path`` is the full list of lane indices from the start lane to the destination's exit lane and
    ``path_pos`` the position of the current lane in it. When the car passes the end of its current
    lane, the lane index moves to the next lane of the path (the fork's "simple" state update). Before
    ``set_path`` is called the vehicle behaves like upstream (closest-lane search).
    """

    path: list | None = None
    path_pos: int = 0

    def set_path(self, path: list) -> None:
        self.path = list(path)
        self.path_pos = 0
        self.lane_index = self.path[0]
        self.lane = self.road.network.get_lane(self.lane_index)

    def on_state_update(self) -> None:
        if self.path is None or not self.road:
            super().on_state_update()
            return
        lane = self.lane
        longitudinal = lane.local_coordinates(self.position)[0]
        while longitudinal >= lane.length and self.path_pos + 1 < len(self.path):
            self.path_pos += 1
            self.lane_index = self.path[self.path_pos]
            lane = self.road.network.get_lane(self.lane_index)
            longitudinal = lane.local_coordinates(self.position)[0]
        self.lane = lane
        if self.road.record_history:
            self.history.appendleft(self.create_from(self))

    def apply_action(self, action: int) -> None:
        """High-level speed action (0 SLOWER, 1 IDLE, 2 FASTER), as ``MDPVehicle.act`` does it.

        Only the target speed changes here: the low-level steering/acceleration commands are computed
        by the ``road.act()`` call that follows in the same simulation frame (``MDPVehicle.act`` would
        compute them twice with identical results).
        """
        if action == 2:
            index = self.speed_to_index(self.speed) + 1
        elif action == 0:
            index = self.speed_to_index(self.speed) - 1
        elif action == 1:
            return
        else:
            raise ValueError(
                f"invalid action {action!r}: expected 0 (SLOWER), 1 (IDLE) or 2 (FASTER)"
            )
        self.speed_index = int(np.clip(index, 0, self.target_speeds.size - 1))
        self.target_speed = self.index_to_speed(self.speed_index)

    def route_points(self, times: np.ndarray) -> np.ndarray:
        """Positions on the lane centre along the path after ``times`` seconds at the current speed,
        relative to the current position; shape ``[len(times), 2]``."""
        network = self.road.network
        longitudinal0 = self.lane.local_coordinates(self.position)[0]
        out = np.empty((len(times), 2))
        path = self.path if self.path is not None else [self.lane_index]
        pos = self.path_pos if self.path is not None else 0
        for j, t in enumerate(times):
            s = longitudinal0 + self.speed * t
            k = pos
            lane = network.get_lane(path[k])
            while s > lane.length and k + 1 < len(path):
                s -= lane.length
                k += 1
                lane = network.get_lane(path[k])
            out[j] = lane.position(s, 0.0)
        out -= self.position
        return out


class _RouteKinematicsObservation(ObservationType):
    """The per-agent observation described in the module docstring (shape ``[n, obs_dim]``)."""

    def space(self) -> spaces.Space:
        n = self.env.config["controlled_vehicles"]
        return spaces.Box(-np.inf, np.inf, shape=(n, self.env.obs_dim), dtype=np.float32)

    def observe(self) -> np.ndarray:
        return self.env.observe()[0]


class PowIntersectionEnv(IntersectionEnv):
    """Upstream ``IntersectionEnv`` configured and overridden to the authors' crossroads scenario.

    Extra config keys (besides highway-env's own): ``step_reward``, ``all_arrived_reward``,
    ``collision_reward``, ``arrive_distance``, ``initial_speed``, ``route_point_times``,
    ``start_positions`` (``None`` or one longitudinal position per car, test hook) and
    ``destinations`` (``None`` or one destination corner per car, test hook).

    ``step(actions)`` takes one action index per car and returns
    ``(obs [n, O], reward, terminated, truncated, info)``; ``last_state`` holds the global state of the
    latest reset/step.
    """

    @classmethod
    def default_config(cls) -> dict:
        config = super().default_config()
        config.update(
            {
                "observation": {"type": "RouteKinematics"},  # built by define_spaces below
                "action": {
                    "type": "MultiAgentAction",
                    "action_config": {
                        "type": "DiscreteMetaAction",
                        "longitudinal": True,
                        "lateral": False,
                        "target_speeds": [0.0, 2.0, 4.0, 6.0, 8.0, 10.0],
                    },
                },
                "controlled_vehicles": 4,
                "initial_vehicle_count": 0,
                "spawn_probability": -1.0,
                "simulation_frequency": 5,
                "policy_frequency": 5,
                "duration": 20.0,
                "destination": None,
                "step_reward": -1.0,
                "all_arrived_reward": 100.0,
                "collision_reward": -100.0,
                "arrive_distance": 25.0,
                "initial_speed": 10.0,
                "route_point_times": [0.2, 0.4, 0.6, 0.8, 1.0],
                "start_positions": None,
                "destinations": None,
            }
        )
        return config

    # ------------------------------------------------------------------ setup
    def __init__(self, config: dict | None = None, render_mode: str | None = None) -> None:
        self._network = None
        self.step_count = 0
        self.last_state: np.ndarray | None = None
        base = self.default_config()
        base.update(config or {})
        self.n_vehicles = int(base["controlled_vehicles"])
        self.route_times = np.asarray(base["route_point_times"], dtype=np.float64)
        self.obs_dim = N_FEATURES * self.n_vehicles + 2 * len(self.route_times)
        self.state_dim = self.n_vehicles * (N_FEATURES + 2 * len(self.route_times))
        self.max_steps = int(round(base["duration"] * base["policy_frequency"]))
        super().__init__(config=config, render_mode=render_mode)

    def define_spaces(self) -> None:
        self.observation_type = _RouteKinematicsObservation(self)
        self.action_type = action_factory(self, self.config["action"])
        self.observation_space = self.observation_type.space()
        self.action_space = self.action_type.space()

    def _make_road(self) -> None:
        if self._network is None:
            super()._make_road()  # upstream geometry; built once, the network is immutable
            self._network = self.road.network
        self.road = Road(
            network=self._network,
            np_random=self.np_random,
            record_history=self.config["show_trajectories"],
            neighbour_vehicles_connected_lanes=self.config["neighbour_vehicles_connected_lanes"],
        )

    def _make_vehicles(self, n_vehicles: int = 0) -> None:
        target_speeds = self.config["action"]["action_config"]["target_speeds"]
        fixed_positions = self.config["start_positions"]
        fixed_destinations = self.config["destinations"]
        network = self.road.network
        self.controlled_vehicles = []
        for i in range(self.n_vehicles):
            corner = i % N_CORNERS
            lane_index = (f"o{corner}", f"ir{corner}", 0)
            lane = network.get_lane(lane_index)
            longitudinal = 60.0 + 5.0 * self.np_random.normal(1.0) + 30.0 * (i // N_CORNERS)
            destination = int(self.np_random.integers(0, N_CORNERS))
            if destination == corner:
                destination = (destination + 1) % N_CORNERS
            if fixed_positions is not None:
                longitudinal = float(fixed_positions[i])
            if fixed_destinations is not None:
                destination = int(fixed_destinations[i])
            vehicle = RouteTrackingVehicle(
                self.road,
                lane.position(longitudinal, 0.0),
                heading=lane.heading_at(longitudinal),
                speed=float(self.config["initial_speed"]),
                target_speeds=target_speeds,
            )
            vehicle.plan_route_to(f"o{destination}")
            vehicle.set_path([(a, b, 0 if c is None else c) for (a, b, c) in vehicle.route])
            vehicle.speed_index = vehicle.speed_to_index(vehicle.speed)
            vehicle.target_speed = vehicle.index_to_speed(vehicle.speed_index)
            vehicle.destination_corner = destination
            self.road.vehicles.append(vehicle)
            self.controlled_vehicles.append(vehicle)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        gym.Env.reset(self, seed=seed)
        self.update_metadata()
        self.time = self.steps = self.step_count = 0
        self.done = False
        self._reset()
        self.define_spaces()  # links one action type to each new vehicle
        obs, self.last_state = self.observe()
        return obs, self._info_flags(False, False, False)

    def step(self, action: Sequence[int]):
        if self.road is None or not self.controlled_vehicles:
            raise RuntimeError("call reset() before step()")
        self.step_count += 1
        self.time = self.step_count / self.config["policy_frequency"]
        self._simulate(action)
        obs, self.last_state = self.observe()
        crashed = any(v.crashed for v in self.controlled_vehicles)
        all_arrived = all(self.has_arrived(v) for v in self.controlled_vehicles)
        reward = float(self.config["step_reward"])
        if all_arrived:
            reward += float(self.config["all_arrived_reward"])
        if crashed:
            reward = float(self.config["collision_reward"])
        terminated = crashed or all_arrived
        truncated = (not terminated) and self.step_count >= self.max_steps
        self.done = terminated or truncated
        if self.render_mode == "human":
            self.render()
        return obs, reward, terminated, truncated, self._info_flags(crashed, all_arrived, truncated)

    def _simulate(self, action: Sequence[int] | None = None) -> None:
        """Apply one speed action per car, then run ``simulation_frequency // policy_frequency``
        simulation frames (as ``AbstractEnv._simulate`` does, without its action-type dispatch)."""
        if action is not None:
            if len(action) != len(self.controlled_vehicles):
                raise ValueError(
                    f"expected {len(self.controlled_vehicles)} actions, got {len(action)}"
                )
            for vehicle, a in zip(self.controlled_vehicles, action):
                vehicle.apply_action(int(a))
        frames = int(self.config["simulation_frequency"] // self.config["policy_frequency"])
        dt = 1 / self.config["simulation_frequency"]
        for frame in range(frames):
            self.road.act()
            self.road.step(dt)
            self.steps += 1
            if frame < frames - 1:
                self._automatic_rendering()
        self.enable_auto_render = False

    def has_arrived(self, vehicle, exit_distance: float | None = None) -> bool:
        if exit_distance is None:
            exit_distance = self.config["arrive_distance"]
        return super().has_arrived(vehicle, exit_distance)

    def _info_flags(self, crashed: bool, all_arrived: bool, time_out: bool) -> dict:
        return {
            "collision": bool(crashed),
            "all_arrived": bool(all_arrived),
            "time_out": bool(time_out),
            "win": bool(all_arrived and not crashed),
            "arrived": [self.has_arrived(v) for v in self.controlled_vehicles],
        }

    # ------------------------------------------------------------------ observation
    def observe(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(obs [n, obs_dim], state [state_dim])`` as float32 arrays."""
        vehicles = self.controlled_vehicles
        n = len(vehicles)
        rows = np.empty((n, N_FEATURES))
        for i, v in enumerate(vehicles):
            c, s = np.cos(v.heading), np.sin(v.heading)
            rows[i] = (v.position[0], v.position[1], v.speed * c, v.speed * s, v.heading)
        routes = np.stack([v.route_points(self.route_times).reshape(-1) for v in vehicles])
        diff = rows[None, :, :2] - rows[:, None, :2]
        dist = np.einsum("ijk,ijk->ij", diff, diff)
        np.fill_diagonal(dist, -1.0)  # the agent itself always comes first
        order = np.argsort(dist, axis=1, kind="stable")
        sorted_rows = rows[order]  # [n, n, F]
        sorted_rows[:, 1:] -= rows[:, None, :]
        obs = np.concatenate([sorted_rows.reshape(n, -1), routes], axis=1).astype(np.float32)
        state = np.concatenate([rows, routes], axis=1).reshape(-1).astype(np.float32)
        return obs, state
