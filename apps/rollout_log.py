"""What a closed-loop rollout looks like in rerun.

Per episode ``ep_XXX`` (its own entity subtree, on a shared per-episode ``step`` timeline so episodes line
up for comparison): camera frames, executed action, reward and return, Q and V of the taken action,
joint positions/velocities, and — the view that shows multimodality — ``N`` candidate actions sampled from
the policy at the current state, as a point cloud in action space (first 2-3 dims). A policy with action
chunking also logs each predicted chunk at the step it was predicted, ``ep_XXX/action/predicted_chunk``: the
``horizon`` actions as a line strip in action space (first 2-3 dims) with the executed ones as points
(``.../executed``). Maze envs also get the maze walls and each episode's 2-D path under ``maze/``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from genctl.apps.viz import Viewer
from genctl.envs import sim_data


def maze_walls(env: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Centers and half sizes of the wall cells of a gymnasium-robotics maze, or None for other envs."""
    maze = getattr(env.unwrapped, "maze", None)
    if maze is None or not hasattr(maze, "maze_map"):
        return None
    centers = []
    for i, row in enumerate(maze.maze_map):
        for j, cell in enumerate(row):
            if cell == 1:
                centers.append(np.asarray(maze.cell_rowcol_to_xy(np.array([i, j])), dtype=np.float32))
    half = float(maze.maze_size_scaling) / 2
    return np.array(centers, np.float32), np.full((len(centers), 2), half, np.float32)


def q_colors(q: np.ndarray) -> np.ndarray:
    """Candidate colours by Q: low = blue, high = yellow (within the step's own range)."""
    q = np.asarray(q, np.float64)
    span = float(q.max() - q.min()) if len(q) else 0.0
    u = (q - q.min()) / span if span > 0 else np.full(len(q), 0.5)
    lo, hi = np.array([60, 80, 220.0]), np.array([250, 220, 40.0])
    return (lo + u[:, None] * (hi - lo)).astype(np.uint8)


# one distinct colour per action dimension in the stacked action plot (rerun's default hues are close together)
DIM_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
              (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


# rerun's 2-D views draw y downwards (image convention); plots of actions and maps read y upwards. A static
# mirror on the entity flips the drawing only: the logged values stay the env's own.
def y_up() -> Any:
    import rerun as rr

    return rr.Transform3D(scale=[1.0, -1.0, 1.0])


# planar locomotion moves in x (forward) and z (up): a side view; everything else is traced from above
_SIDE_VIEW = ("Hopper", "Walker", "HalfCheetah", "Swimmer", "hopper", "walker", "cheetah")


def trace_point(env: Any) -> np.ndarray | None:
    """Where the robot is, for the 2-D scene of non-maze envs: the gripper site of Fetch-like arms, else the
    first body's position (the torso of a walker), as (x, z) for planar locomotion and (x, y) otherwise."""
    data = sim_data(env)
    if data is None or not hasattr(data, "xpos") or len(data.xpos) < 2:
        return None
    model = getattr(env.unwrapped, "model", None)
    pos = np.asarray(data.xpos[1], np.float64)
    if model is not None and getattr(model, "nsite", 0):
        import mujoco

        sid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "robot0:grip")
        if sid >= 0:
            pos = np.asarray(data.site_xpos[sid], np.float64)
    side = any(s in str(getattr(getattr(env, "spec", None), "id", "")) for s in _SIDE_VIEW)
    return pos[[0, 2]] if side else pos[:2]


def _qpos_qvel(env: Any) -> tuple[np.ndarray, np.ndarray] | None:
    data = sim_data(env)
    if data is None or not hasattr(data, "qpos"):
        return None
    return np.array(data.qpos, np.float64), np.array(data.qvel, np.float64)


class RolloutLogger:
    def __init__(self, viewer: Viewer, env: Any, policy: Any, *, candidates: int = 64, frame_every: int = 1):
        self.v, self.policy = viewer, policy
        self.n_cand, self.frame_every = candidates, frame_every
        self.is_maze = getattr(env.unwrapped, "maze", None) is not None
        self.buf: dict[int, dict[str, list]] = {}
        self._obs: np.ndarray | None = None
        walls = maze_walls(env)
        if walls is not None:
            import rerun as rr

            self.v.log("maze/walls", rr.Boxes2D(centers=walls[0], half_sizes=walls[1], colors=[(90, 90, 110)]),
                       static=True)
            self.v.log("maze/walls", y_up(), static=True)

    def start_episode(self, idx: int, seed: int, env: Any, obs: np.ndarray) -> None:
        import rerun as rr

        self.buf[idx] = {k: [] for k in ("t", "action", "reward", "ret", "q", "v", "qpos", "qvel", "pos", "trace")}
        self.v.log(f"ep_{idx:03d}/seed", rr.TextDocument(f"episode {idx}, eval seed {seed}"), static=True)
        # legend names per action dimension (the layout shows them stacked in one plot)
        names = [f"a[{d}]" for d in range(int(self.policy.action_dim))]
        colors = [DIM_COLORS[d % len(DIM_COLORS)] for d in range(len(names))]
        self.v.log(f"ep_{idx:03d}/action/executed", rr.SeriesLines(names=names, colors=colors), static=True)
        if int(self.policy.action_dim) <= 2:
            self.v.log(f"ep_{idx:03d}/action_space", y_up(), static=True)
            self.v.log(f"ep_{idx:03d}/action/predicted_chunk", y_up(), static=True)
        if self.is_maze:
            self.v.log(f"maze/ep_{idx:03d}", y_up(), static=True)
        else:
            self.v.log(f"scene/ep_{idx:03d}", y_up(), static=True)
        goal = getattr(env.unwrapped, "goal", None)
        if self.is_maze and goal is not None:
            self.v.log(f"maze/ep_{idx:03d}/goal", rr.Points2D([np.asarray(goal)[:2]], radii=0.15,
                                                                colors=[(40, 200, 40)]), static=True)

    def chunk(self, idx: int, t: int, chunk: np.ndarray, n_exec: int) -> None:
        """The (H, A) chunk predicted at step ``t``, of which the first ``n_exec`` actions are executed."""
        import rerun as rr

        p = f"ep_{idx:03d}/action/predicted_chunk"
        self.v.set_step(t)
        c = np.asarray(chunk, np.float64)
        d = c.shape[1]
        if d >= 3:
            self.v.log(p, rr.LineStrips3D([c[:, :3]], radii=0.01, colors=[(255, 170, 40)]))
            self.v.log(f"{p}/executed", rr.Points3D(c[:n_exec, :3], radii=0.03, colors=[(255, 80, 40)]))
        else:
            xy = np.concatenate([c, np.zeros((len(c), 1))], 1) if d == 1 else c
            self.v.log(p, rr.LineStrips2D([xy], radii=0.01, colors=[(255, 170, 40)]))
            self.v.log(f"{p}/executed", rr.Points2D(xy[:n_exec], radii=0.03, colors=[(255, 80, 40)]))

    def step(self, idx: int, t: int, obs: np.ndarray, action: np.ndarray, reward: float, ret: float, env: Any) -> None:
        """``obs``: the current observation (D,) or the policy's observation history (n_obs_steps, D)."""
        import rerun as rr

        b, p = self.buf[idx], f"ep_{idx:03d}"
        self.v.set_step(t)
        b["t"].append(t)
        b["action"].append(np.asarray(action, np.float64))
        b["reward"].append(reward)
        b["ret"].append(ret)
        qv = self.policy.q_v(obs[None], action[None])
        if qv is not None:
            b["q"].append(float(qv[0][0]))
            b["v"].append(float(qv[1][0]))
        joints = _qpos_qvel(env)
        if joints is not None:
            b["qpos"].append(joints[0])
            b["qvel"].append(joints[1])
            if self.is_maze:
                b["pos"].append(joints[0][:2])
                self.v.log(f"maze/ep_{idx:03d}/position", rr.Points2D([joints[0][:2]], radii=0.08))
        if not self.is_maze:
            point = trace_point(env)
            if point is not None:
                b["trace"].append(point)
                self.v.log(f"scene/ep_{idx:03d}/position", rr.Points2D([point], radii=0.04))
        if self.frame_every and t % self.frame_every == 0:
            frame = env.render()
            if frame is not None:
                self.v.log(f"{p}/camera", rr.Image(np.asarray(frame, np.uint8)))
        if self.n_cand:
            self._obs = np.asarray(obs)[-1] if np.ndim(obs) == 2 else np.asarray(obs)
            cand = self.policy.candidates(obs[None], self.n_cand)
            self._action_cloud(f"{p}/action_space", cand, np.asarray(action))

    def selection(self, idx: int, t: int, cand: np.ndarray, q: np.ndarray, chosen: int) -> None:
        """select=q: the (N, A) candidates ranked at step ``t``, coloured by their Q; the chosen one marked."""
        self.v.set_step(t)
        self._action_cloud(f"ep_{idx:03d}/action_space", cand, cand[chosen], q=q)

    def _action_cloud(self, path: str, cand: np.ndarray, taken: np.ndarray, q: np.ndarray | None = None) -> None:
        import rerun as rr

        d = cand.shape[1]
        if q is None:
            qv = self.policy.q_v(np.repeat(self._obs[None], len(cand), 0), cand) if self._obs is not None else None
            q = None if qv is None else qv[0]
        colors = q_colors(q) if q is not None else [(80, 140, 255)]
        if d >= 3:
            self.v.log(f"{path}/candidates", rr.Points3D(cand[:, :3], radii=0.02, colors=colors))
            self.v.log(f"{path}/executed", rr.Points3D(taken[None, :3], radii=0.05, colors=[(255, 80, 40)]))
        else:
            pad = (lambda x: np.concatenate([x, np.zeros((len(x), 1))], 1)) if d == 1 else (lambda x: x)
            self.v.log(f"{path}/candidates", rr.Points2D(pad(cand), radii=0.02, colors=colors))
            self.v.log(f"{path}/executed", rr.Points2D(pad(taken[None]), radii=0.05, colors=[(255, 80, 40)]))

    def end_episode(self, idx: int) -> None:
        import rerun as rr

        b, p = self.buf.pop(idx), f"ep_{idx:03d}"
        t = np.asarray(b["t"], np.int64)
        self.v.scalars_series(f"{p}/action/executed", t, np.stack(b["action"]))
        self.v.scalars_series(f"{p}/reward", t, np.asarray(b["reward"]))
        self.v.scalars_series(f"{p}/return", t, np.asarray(b["ret"]))
        if b["q"]:
            self.v.scalars_series(f"{p}/critic/q", t, np.asarray(b["q"]))
            self.v.scalars_series(f"{p}/critic/v", t, np.asarray(b["v"]))
        if b["qpos"]:
            self.v.scalars_series(f"{p}/joints/qpos", t, np.stack(b["qpos"]))
            self.v.scalars_series(f"{p}/joints/qvel", t, np.stack(b["qvel"]))
        if b["trace"]:
            self.v.set_step(int(t[-1]))
            self.v.log(f"scene/ep_{idx:03d}/trace", rr.LineStrips2D([np.stack(b["trace"])], radii=0.01,
                                                                   colors=[DIM_COLORS[idx % len(DIM_COLORS)]]))
        if b["pos"]:
            self.v.set_step(int(t[-1]))
            # the episode's own colour, so paths stay apart on the all-episodes map
            self.v.log(f"maze/ep_{idx:03d}/path", rr.LineStrips2D([np.stack(b["pos"])], radii=0.03,
                                                                  colors=[DIM_COLORS[idx % len(DIM_COLORS)]]))
