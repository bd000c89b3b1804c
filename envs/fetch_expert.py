"""Fetch expert: a scripted Cartesian controller for FetchReach, FetchPush and FetchPickAndPlace.

It reads only the observation (grip position, object position, finger opening, goal). Actions move the
gripper's mocap target by ``0.05 * a`` per step, and ``a[3] = +1`` opens / ``-1`` closes the fingers.
Episodes are 50 steps, so the controller uses high gains and few phases.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from genctl.envs.experts import Expert


class FetchExpert(Expert):
    """Reach: go to the goal. Push: get behind the block, push it along the block->goal line.
    PickAndPlace: hover above the block, descend open, close, carry to the goal.

    Args:
        gain: position-error gain (action units per metre, before clipping to [-1, 1]).
    """

    name = "fetch"

    def __init__(self, env: gym.Env, *, gain: float = 15.0, push_offset: float = 0.07) -> None:
        super().__init__(env)
        self.push_offset = push_offset
        spec_id = env.unwrapped.spec.id if env.unwrapped.spec is not None else ""
        self.task = "reach" if "Reach" in spec_id else "push" if "Push" in spec_id else "pick"
        self.gain = gain
        self.grasp_steps = 0

    def reset(self, obs: np.ndarray, info: dict, rng: np.random.Generator) -> None:
        super().reset(obs, info, rng)
        self.grasp_steps = 0

    def _move(self, grip: np.ndarray, target: np.ndarray, finger: float) -> np.ndarray:
        action = np.zeros(4)
        action[:3] = self.gain * (target - grip)
        action[3] = finger
        return self.clip(action)

    def act(self, obs: np.ndarray, info: dict) -> np.ndarray:
        d = self.split(obs)
        o, goal = d["observation"], d["desired_goal"]
        grip = o[0:3]
        if self.task == "reach":
            return self._move(grip, goal, 0.0)
        obj, fingers = o[3:6], o[9:11]
        if self.task == "push":
            return self._push(grip, obj, goal)
        return self._pick(grip, obj, fingers, goal)

    def _push(self, grip: np.ndarray, obj: np.ndarray, goal: np.ndarray) -> np.ndarray:
        to_goal = goal[:2] - obj[:2]
        dist = float(np.linalg.norm(to_goal))
        if dist < 0.02:  # well inside the 5 cm success radius: stop pushing (overshoot costs more)
            return self._move(grip, grip, -1.0)
        u = to_goal / dist
        rel = grip[:2] - obj[:2]
        along = float(rel @ u)  # about -0.045 when the fingers touch the block from behind
        perp = rel - along * u
        low_z, high_z = obj[2] + 0.005, obj[2] + 0.08
        behind = obj[:2] - u * self.push_offset
        if along > -0.03 or (np.linalg.norm(perp) > 0.03 and along > -self.push_offset):
            # On the wrong side of (or on) the block: lift over it, then go behind it.
            if grip[2] < obj[2] + 0.05:
                return self._move(grip, np.array([*grip[:2], high_z]), -1.0)
            return self._move(grip, np.array([*behind, high_z]), -1.0)
        if np.linalg.norm(perp) > 0.015 or grip[2] > obj[2] + 0.03:
            z = low_z if np.linalg.norm(grip[:2] - behind) < 0.03 else high_z
            return self._move(grip, np.array([*behind, z]), -1.0)
        # Behind the block and on the line: push along it, correcting sideways drift.
        action = np.zeros(4)
        action[:2] = u * np.clip(self.gain * dist, 0.3, 1.0) - self.gain * perp
        action[2] = self.gain * (low_z - grip[2])
        action[3] = -1.0
        return self.clip(action)

    def _pick(self, grip: np.ndarray, obj: np.ndarray, fingers: np.ndarray, goal: np.ndarray) -> np.ndarray:
        rel = obj - grip
        xy_err = float(np.linalg.norm(rel[:2]))
        held = xy_err < 0.02 and abs(rel[2]) < 0.02 and fingers.sum() < 0.09
        if held and self.grasp_steps >= 2:
            return self._move(grip, grip + (goal - obj), -1.0)
        if xy_err < 0.015 and abs(rel[2]) < 0.012 or self.grasp_steps > 0 and xy_err < 0.02:
            self.grasp_steps += 1  # close the fingers in place for a couple of steps
            return self._move(grip, obj, -1.0)
        self.grasp_steps = 0
        if xy_err > 0.02 and rel[2] > -0.02 or xy_err > 0.04:
            # Far, or low beside the block: hover above it first (fingers would hit it from the side).
            hover = obj + np.array([0.0, 0.0, 0.03 if xy_err < 0.05 else 0.06])
            return self._move(grip, hover, 1.0)
        return self._move(grip, obj, 1.0)  # above it and roughly aligned: descend while centring
