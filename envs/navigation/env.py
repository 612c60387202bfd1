"""``worldplan/Navigation2D-v0``: drive a MuJoCo point-mass robot through a 2-D map to a
goal, sensing only noisy ranges to known landmarks.

Each reset draws a map (an :class:`worldplan.envs.maps.OccupancyGrid` of random boxes inside an
outer wall, or the one passed in ``options["map"]``), generates the MJCF from it (one box
geom per horizontal run of occupied cells), and places the robot and the goal in free
space, reachable from each other. The robot is a disc on two slide joints (x, y) driven by
velocity actuators: the action is the commanded velocity ``[vx, vy]`` in m/s, perturbed by
Gaussian noise (the process noise). Observation: ``K`` noisy ranges to the landmarks
(metres) and the goal position, ``[K + 2]`` float32. ``info["state"]`` holds the true state
``[x, y, vx, vy]``; ``env.unwrapped.task_model`` the differentiable twin with the map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from worldplan.envs.checks import check_step, end_step, start_episode
from worldplan.envs.maps import OccupancyGrid
from worldplan.envs.navigation.task_model import NavigationParams, NavigationTaskModel


@dataclass(frozen=True)
class MapConfig:
    """The random maps: ``cells`` x ``cells`` grid of ``resolution`` metres."""

    cells: int = 20
    resolution: float = 0.5
    n_boxes: int = 10
    max_box: int = 4
    n_landmarks: int = 6
    min_start_goal: float = 4.0  # metres between start and goal


def mjcf_from_grid(grid: OccupancyGrid, params: NavigationParams, height: float = 0.3) -> str:
    """MJCF text for ``grid``: one box per horizontal run of occupied cells, and the robot
    (a sphere on x/y slide joints with velocity actuators), with zero gravity."""
    r = grid.resolution
    ox, oy = grid.origin
    geoms = []
    for row in range(grid.shape[0]):
        occ = grid.occupied[row]
        col = 0
        while col < len(occ):
            if not occ[col]:
                col += 1
                continue
            end = col
            while end < len(occ) and occ[end]:
                end += 1
            cx = ox + (col + end) / 2 * r
            cy = oy + (row + 0.5) * r
            geoms.append(
                f'<geom type="box" pos="{cx:.6f} {cy:.6f} {height / 2}" '
                f'size="{(end - col) * r / 2:.6f} {r / 2:.6f} {height / 2}" rgba=".4 .4 .4 1"/>'
            )
            col = end
    p = params
    return f"""<mujoco model="navigation2d">
  <option timestep="{p.sim_dt}" gravity="0 0 0" integrator="implicitfast"/>
  <worldbody>
    {chr(10).join('    ' + g for g in geoms).strip()}
    <body name="robot" pos="0 0 {height / 2}">
      <joint name="x" type="slide" axis="1 0 0"/>
      <joint name="y" type="slide" axis="0 1 0"/>
      <geom name="robot" type="sphere" size="{p.radius}" mass="{p.mass}" rgba=".8 .2 .2 1"/>
    </body>
  </worldbody>
  <actuator>
    <velocity joint="x" kv="{p.kv}" ctrlrange="{-p.max_speed} {p.max_speed}" ctrllimited="true"/>
    <velocity joint="y" kv="{p.kv}" ctrlrange="{-p.max_speed} {p.max_speed}" ctrllimited="true"/>
  </actuator>
</mujoco>
"""


class Navigation2DEnv(gym.Env):
    """Point-mass navigation with landmark ranging. Reward: progress toward the goal (m)
    minus 0.1 per step in contact with an obstacle, plus 10 on arrival (within
    ``params.goal_radius``). Terminates on arrival; truncates after ``max_steps``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        params: NavigationParams | None = None,
        map_config: MapConfig | None = None,
        max_steps: int = 300,
        render_mode: str | None = None,
    ) -> None:
        self.params = params or NavigationParams()
        self.map_config = map_config or MapConfig()
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if int(max_steps) < 1:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        self.render_mode = render_mode
        self.max_steps = int(max_steps)
        k = self.map_config.n_landmarks
        size = self.map_config.cells * self.map_config.resolution
        high = np.full(k + 2, 2 * size + 10, dtype=np.float32)
        low = np.concatenate([np.zeros(k), np.full(2, -2 * size - 10)]).astype(np.float32)
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        m = self.params.max_speed
        self.action_space = gym.spaces.Box(-m, m, shape=(2,), dtype=np.float32)
        self.grid: OccupancyGrid | None = None
        self.landmarks = np.zeros((k, 2))
        self.goal = np.zeros(2)
        self.start = np.zeros(2)
        self.task_model: NavigationTaskModel | None = None
        self._model: mujoco.MjModel | None = None
        self._data: mujoco.MjData | None = None
        self._trace: list[np.ndarray] = []
        self._steps = 0
        self._robot_geom = -1

    # -- map and placement -------------------------------------------------------------
    def _draw_map(self, rng: np.random.Generator) -> OccupancyGrid:
        c = self.map_config
        return OccupancyGrid.boxes((c.cells, c.cells), c.n_boxes, c.max_box,
                                   seed=rng, resolution=c.resolution)

    def _place(self, grid: OccupancyGrid, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """Start, goal (reachable from each other on the inflated grid) and landmarks."""
        from scipy.ndimage import label

        inflated = grid.inflate(self.params.radius + 0.05)
        components, _ = label(~inflated.occupied)  # 4-connected free regions
        free = np.argwhere(~inflated.occupied)
        if len(free) < 2:
            raise ValueError("the map has no room for the robot")
        for _ in range(200):
            s, g = free[rng.integers(0, len(free), size=2)]
            start, goal = grid.cell_to_world(s), grid.cell_to_world(g)
            if np.linalg.norm(start - goal) < self.map_config.min_start_goal:
                continue
            if components[tuple(s)] != components[tuple(g)]:
                continue  # not reachable from each other
            lm_cells = np.argwhere(~grid.occupied)
            pick = rng.choice(len(lm_cells), size=self.map_config.n_landmarks, replace=False)
            landmarks = grid.cell_to_world(lm_cells[pick])
            return start, goal, landmarks
        raise ValueError("could not place a reachable start and goal in this map")

    # -- gymnasium API -----------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        rng = self.np_random
        grid = options.get("map")
        if grid is None:
            grid = self._draw_map(rng)
        elif not isinstance(grid, OccupancyGrid):
            raise TypeError(f"options['map'] must be an OccupancyGrid, got {type(grid).__name__}")
        for _ in range(20):
            try:
                start, goal, landmarks = self._place(grid, rng)
                break
            except ValueError:
                if "map" in options:
                    raise
                grid = self._draw_map(rng)
        else:  # pragma: no cover - vanishingly unlikely with the default config
            raise RuntimeError("could not draw a usable map")
        for key, value in (("start", "start"), ("goal", "goal")):
            if key in options:
                arr = np.asarray(options[key], dtype=float)
                if arr.shape != (2,) or not np.isfinite(arr).all():
                    raise ValueError(f"options[{key!r}] must be a finite (x, y), got {arr}")
                if not grid.inflate(self.params.radius).is_free(arr[None])[0]:
                    raise ValueError(f"options[{key!r}] {arr.tolist()} is not free for the robot")
                if value == "start":
                    start = arr
                else:
                    goal = arr
        self.grid, self.start, self.goal, self.landmarks = grid, start, goal, landmarks
        self.task_model = NavigationTaskModel(self.params, grid, landmarks, goal)
        self._model = mujoco.MjModel.from_xml_string(mjcf_from_grid(grid, self.params))
        self._data = mujoco.MjData(self._model)
        self._robot_geom = mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_GEOM, "robot")
        self._data.qpos[:] = start
        self._data.qvel[:] = 0.0
        mujoco.mj_forward(self._model, self._data)
        self._steps = 0
        self._trace = [start.copy()]
        start_episode(self)
        return self._observe(), self._info(False)

    def _state(self) -> np.ndarray:
        assert self._data is not None
        return np.concatenate([self._data.qpos[:2], self._data.qvel[:2]]).astype(np.float64)

    def _observe(self) -> np.ndarray:
        pos = self._data.qpos[:2]
        ranges = np.linalg.norm(self.landmarks - pos, axis=1)
        ranges = ranges + self.np_random.normal(0.0, self.params.range_noise, size=len(ranges))
        obs = np.concatenate([np.maximum(ranges, 0.0), self.goal]).astype(np.float32)
        return np.clip(obs, self.observation_space.low, self.observation_space.high)

    def _collision(self) -> bool:
        d = self._data
        for i in range(d.ncon):
            if self._robot_geom in (d.contact[i].geom1, d.contact[i].geom2):
                return True
        return False

    def _info(self, collision: bool) -> dict[str, Any]:
        state = self._state()
        dist = float(np.linalg.norm(state[:2] - self.goal))
        return {"state": state, "collision": collision, "distance": dist,
                "is_success": dist <= self.params.goal_radius, "landmarks": self.landmarks.copy()}

    def step(self, action):
        action = check_step(self, action, 2, "(vx, vy)")
        p = self.params
        noisy = action + self.np_random.normal(0.0, p.action_noise, size=2)
        self._data.ctrl[:] = np.clip(noisy, -p.max_speed, p.max_speed)
        before = float(np.linalg.norm(self._data.qpos[:2] - self.goal))
        collision = False
        for _ in range(p.frame_skip):
            mujoco.mj_step(self._model, self._data)
            collision |= self._collision()
        self._steps += 1
        self._trace.append(self._data.qpos[:2].copy())
        info = self._info(collision)
        reward = before - info["distance"] - (0.1 if collision else 0.0)
        terminated = bool(info["is_success"])
        if terminated:
            reward += 10.0
        truncated = self._steps >= self.max_steps and not terminated
        end_step(self, terminated, truncated)
        return self._observe(), float(reward), terminated, truncated, info

    def render(self):
        if self.render_mode != "rgb_array" or self.grid is None:
            return None
        # lazy: the renderer pulls in OpenCV, which only rendering needs
        from worldplan.envs.navigation.render import render_scene

        return render_scene(self.grid, self._trace, self.landmarks, self.goal,
                            self.params.radius)

    def close(self) -> None:
        self._model = None
        self._data = None
