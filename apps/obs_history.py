"""Observation histories for a policy call, in numpy only (the torch-free ONNX policy uses it too)."""

from __future__ import annotations

import numpy as np

from genctl.errors import GenctlError


def stack_history(obs: np.ndarray, n_obs_steps: int, obs_dim: int) -> np.ndarray:
    """(B, n_obs_steps, D) float32 from (B, n_obs_steps, D), or from (B, D) / (D,) by repeating the observation
    (as at an episode start). Shared by the torch policy and the torch-free ONNX one."""
    obs = np.asarray(obs, np.float32)
    if obs.ndim == 3:
        if obs.shape[1:] != (n_obs_steps, obs_dim):
            raise GenctlError(f"observation history of shape {obs.shape[1:]}: the policy expects "
                              f"({n_obs_steps}, {obs_dim})")
        return np.ascontiguousarray(obs)
    if obs.ndim not in (1, 2) or obs.shape[-1] != obs_dim:
        raise GenctlError(f"observation of shape {obs.shape}: the policy expects (B, {n_obs_steps}, "
                          f"{obs_dim}), (B, {obs_dim}) or ({obs_dim},)")
    return np.repeat(obs.reshape(-1, 1, obs_dim), n_obs_steps, axis=1)
