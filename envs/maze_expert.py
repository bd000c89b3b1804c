"""PointMaze expert: plan over the maze grid, follow the smoothed route with velocity-tracking control.

Planning is a Dijkstra search from the goal cell with randomly jittered cell costs: with ``jitter=0``
it is a shortest path; with jitter, different episodes take different near-shortest routes
(multimodal demos), e.g. either side of a pillar. Following skips to the furthest waypoint in clear
line of sight (so the ball cuts corners instead of visiting every cell centre).
"""

from __future__ import annotations

import heapq

import gymnasium as gym
import numpy as np

from genctl.envs.experts import Expert

_NEIGHBOURS = ((1, 0), (-1, 0), (0, 1), (0, -1))


class PointMazeExpert(Expert):
    """Scripted PointMaze controller.

    Args:
        speed: cruise speed (the env clips velocity at 5).
        gain: velocity-error gain, action = gain * (v_desired - v) clipped to [-1, 1].
        jitter: relative random cost added per cell in planning (route diversity; 0 = shortest only).
        clearance: half-width (in cell units) of the corridor that must be free for a shortcut.
    """

    name = "maze"

    def __init__(self, env: gym.Env, *, speed: float = 3.0, gain: float = 3.0, jitter: float = 0.5,
                 clearance: float = 0.3, lookahead: int = 6) -> None:
        super().__init__(env)
        maze = env.unwrapped.maze
        self.maze = maze
        self.scale = float(maze.maze_size_scaling)
        self.free = np.array([[cell != 1 for cell in row] for row in maze.maze_map], dtype=bool)
        self.speed, self.gain, self.jitter = speed, gain, jitter
        self.clearance, self.lookahead = clearance, lookahead
        self.waypoints = np.zeros((0, 2))
        self.goal = np.zeros(2)
        self._cost = np.ones(self.free.shape)
        self.k = 0

    # --- planning -------------------------------------------------------------------------------
    def _cell(self, xy: np.ndarray) -> tuple[int, int]:
        i, j = self.maze.cell_xy_to_rowcol(xy)
        rows, cols = self.free.shape
        return int(np.clip(i, 0, rows - 1)), int(np.clip(j, 0, cols - 1))

    def plan(self, start_xy: np.ndarray, goal_xy: np.ndarray) -> np.ndarray:
        """Waypoints (cell centres after the start cell, then the exact goal)."""
        start, goal = self._cell(start_xy), self._cell(goal_xy)
        cost = self._cost
        dist = np.full(self.free.shape, np.inf)
        nxt: dict[tuple[int, int], tuple[int, int]] = {}
        dist[goal] = 0.0
        heap = [(0.0, goal)]
        while heap:
            d, cell = heapq.heappop(heap)
            if d > dist[cell] or cell == start:
                continue
            for di, dj in _NEIGHBOURS:
                nb = (cell[0] + di, cell[1] + dj)
                if not (0 <= nb[0] < self.free.shape[0] and 0 <= nb[1] < self.free.shape[1]):
                    continue
                if not self.free[nb]:
                    continue
                nd = d + 0.5 * (cost[cell] + cost[nb])
                if nd < dist[nb]:
                    dist[nb] = nd
                    nxt[nb] = cell
                    heapq.heappush(heap, (nd, nb))
        route, cell = [], start
        while cell != goal and cell in nxt:
            cell = nxt[cell]
            route.append(self.maze.cell_rowcol_to_xy(np.array(cell)))
        if route:
            route.pop()  # the goal cell's centre: head for the exact goal instead
        route.append(np.asarray(goal_xy, dtype=np.float64))
        return np.array(route, dtype=np.float64)

    def _clear(self, a: np.ndarray, b: np.ndarray, clearance: float | None = None) -> bool:
        """True if a corridor of half-width ``clearance`` from a to b stays in free cells."""
        delta = b - a
        length = float(np.linalg.norm(delta))
        if length < 1e-9:
            return True
        width = self.clearance if clearance is None else clearance
        normal = np.array([-delta[1], delta[0]]) / length * width * self.scale
        offsets = (normal, -normal) if width > 0 else ()
        n = max(2, int(length / (0.1 * self.scale)) + 1)
        for t in np.linspace(0.0, 1.0, n):
            p = a + t * delta
            for q in (p, *(p + o for o in offsets)):
                i, j = self.maze.cell_xy_to_rowcol(q)
                if not (0 <= i < self.free.shape[0] and 0 <= j < self.free.shape[1]) or not self.free[i, j]:
                    return False
        return True

    # --- Expert API -----------------------------------------------------------------------------
    def reset(self, obs: np.ndarray, info: dict, rng: np.random.Generator) -> None:
        super().reset(obs, info, rng)
        # One random cost map per episode: replans keep preferring the same route (no dithering).
        self._cost = 1.0 + self.jitter * self.rng.random(self.free.shape)
        d = self.split(obs)
        self._replan(d["achieved_goal"], d["desired_goal"])

    def _replan(self, pos: np.ndarray, goal: np.ndarray) -> None:
        self.goal = np.array(goal, dtype=np.float64)
        self.waypoints = self.plan(pos, self.goal)
        self.k = 0

    def act(self, obs: np.ndarray, info: dict) -> np.ndarray:
        d = self.split(obs)
        pos, vel = d["observation"][:2], d["observation"][2:4]
        if not np.allclose(d["desired_goal"], self.goal) or not self._clear(pos, self.waypoints[self.k], 0.0):
            # The goal moved (continuing tasks) or noise pushed the ball out of sight of its target.
            self._replan(pos, d["desired_goal"])
        last = len(self.waypoints) - 1
        for j in range(min(last, self.k + self.lookahead), self.k, -1):
            if self._clear(pos, self.waypoints[j]):
                self.k = j
                break
        target = self.waypoints[self.k]
        if self.k < last and np.linalg.norm(target - pos) < 0.2 * self.scale:
            self.k += 1  # reached an intermediate waypoint that hid the next one
            target = self.waypoints[self.k]
        offset = target - pos
        dist = float(np.linalg.norm(offset))
        speed = self.speed if self.k < last else min(self.speed, 4.0 * dist)
        v_des = offset / max(dist, 1e-9) * speed
        return self.clip(self.gain * (v_des - vel))
