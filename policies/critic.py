"""IQL critic: twin Q with a Polyak-averaged target, expectile value network (GenerativeRL's GMPO/GMPG critic).

Per batch (order as in the reference): V step on u = min Q_target(s, a) - V(s) with the expectile loss, where
V(s') for the TD target is computed *before* the V update; then the Q step on y = r + gamma (1 - d) V(s');
then the Polyak update of the target Q. Twin Q networks are one batched ``EnsembleMLP`` (a single bmm per
layer for both members).

``ensemble=K`` trains K such critics side by side, each from its own initialisation (twin Q + V, its own TD
targets from its own V; one bmm per layer for all 2K Q nets and one for the K V nets), and reads
Q = mean_k min(Q_k1, Q_k2), V = mean_k V_k. Why: the advantage of one critic depends on its initialisation
(members' advantages correlate only ~0.54 on hopper medium_replay); the mean is less noisy. Measured there, it
did not make GMPO's score steadier over seeds (docs/results.md §3g), so the default is 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .nets import EnsembleMLP, mlp
from .optim import bf16_autocast, make_adam, metrics_out


def expectile_loss(u: Tensor, expectile: float) -> Tensor:
    """mean(|tau - 1[u < 0]| u^2): minimised by the tau-expectile of the residual's distribution."""
    w = torch.where(u < 0, 1.0 - expectile, expectile)
    return (w * u.square()).mean()


class IQLCritic(nn.Module):
    """Twin Q(s, a) on cat[a, s], V(s); ReLU MLPs with ``hidden`` widths. Owns one Adam for Q and one for V.

    ``amp``: the networks' forward and backward passes in ``update`` run under bfloat16 autocast; their outputs
    are cast back to fp32 before the TD targets, residuals and losses, and weights and optimiser state stay
    fp32 (about 3x faster on an AVX512-BF16 CPU). ``q``/``v`` called outside ``update`` stay fp32."""

    def __init__(self, obs_dim: int, action_dim: int, *, hidden: Sequence[int] = (256, 256),
                 expectile: float = 0.7, gamma: float = 0.99, tau: float = 0.005, lr: float = 3e-4,
                 amp: bool = False, obs_encoder: dict[str, Any] | None = None, ensemble: int = 1):
        super().__init__()
        self.amp = bool(amp)
        if not 0.0 < expectile < 1.0:
            raise ValueError(f"expectile must lie in (0, 1), got {expectile}")
        if ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {ensemble}")
        self.ensemble = int(ensemble)
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.expectile, self.gamma, self.tau = float(expectile), float(gamma), float(tau)
        # Observations with cameras: the critic's own image encoder (not the policy's). Q's TD loss trains it; V and
        # the target Q read its features detached (no target encoder). Own, because the policy stage keeps
        # training the policy's encoder while GMPO/GMPG need Q frozen: a shared one would move Q under them.
        self.encoder: nn.Module | None = None
        feat_dim = obs_dim
        if obs_encoder is not None:
            from .obs_encoder import FlatObsEncoder

            self.encoder = FlatObsEncoder(**obs_encoder)
            feat_dim = self.encoder.out_dim
        self.q_net = EnsembleMLP(action_dim + feat_dim, hidden, 1, ensemble=2 * self.ensemble)
        self.q_target = EnsembleMLP(action_dim + feat_dim, hidden, 1, ensemble=2 * self.ensemble)
        self.q_target.load_state_dict(self.q_net.state_dict())
        self.q_target.requires_grad_(False)
        # one critic keeps the plain MLP (and with it every saved checkpoint's parameter names)
        self.v_net = mlp(feat_dim, hidden, 1) if self.ensemble == 1 else EnsembleMLP(feat_dim, hidden, 1,
                                                                                   ensemble=self.ensemble)
        q_params = list(self.q_net.parameters()) + (list(self.encoder.parameters()) if self.encoder else [])
        self._opts = {"q": make_adam(q_params, lr), "v": make_adam(self.v_net.parameters(), lr)}

    def features(self, obs: Tensor, train: bool = False) -> Tensor:
        """What the heads see: ``obs`` itself, or [low-dim, image features] (centre crops unless ``train``)."""
        return obs if self.encoder is None else self.encoder(obs, train)

    def q_both(self, obs: Tensor, act: Tensor, *, target: bool = False, feats: Tensor | None = None) -> Tensor:
        """Every online (or target) Q value, (2K, B): members k's twins are rows 2k and 2k + 1."""
        net = self.q_target if target else self.q_net
        f = self.features(obs) if feats is None else feats
        return net(torch.cat([act, f.to(act.dtype)], dim=-1)).squeeze(-1).float()

    def q_members(self, obs: Tensor, act: Tensor, *, target: bool = False, feats: Tensor | None = None) -> Tensor:
        """min of each member's twins, (K, B)."""
        q = self.q_both(obs, act, target=target, feats=feats)
        return q.view(self.ensemble, 2, *q.shape[1:]).amin(1)

    def q(self, obs: Tensor, act: Tensor) -> Tensor:
        """min of the twin *online* Q networks (what GMPO's weights and GMPG's objective use), averaged over the
        ensemble's members, (B,)."""
        return self.q_members(obs, act).mean(0)

    def v_members(self, obs: Tensor, feats: Tensor | None = None) -> Tensor:
        """Each member's V, (K, B)."""
        v = self.v_net(self.features(obs) if feats is None else feats).squeeze(-1).float()
        return v.unsqueeze(0) if self.ensemble == 1 else v

    def v(self, obs: Tensor, feats: Tensor | None = None) -> Tensor:
        return self.v_members(obs, feats).mean(0)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return dict(self._opts)

    def update(self, batch: dict[str, Tensor], *, sync: bool = True) -> dict[str, Any]:
        """One IQL step; metrics as floats, or (``sync=False``) as detached 0-dim tensors with no host sync."""
        obs, act, next_obs = batch["obs"], batch["action"], batch["next_obs"]
        reward, terminal = batch["reward"].reshape(-1), batch["terminal"].reshape(-1).to(obs.dtype)
        feats = None if self.encoder is None else self.features(obs, train=True)  # random crops: augmentation
        fixed = None if feats is None else feats.detach()
        discount = self.gamma * (1.0 - terminal)
        if "discount_n" in batch:  # n-step targets (genctl.apps.nstep): k rewards, then V k steps ahead
            reward, discount, next_obs = batch["reward_n"].reshape(-1), batch["discount_n"].reshape(-1), \
                batch["next_obs_n"]
        with torch.no_grad(), bf16_autocast(obs.device.type, self.amp):
            q_t = self.q_members(obs, act, target=True, feats=fixed)  # (K, B): each member its own targets
            next_v = self.v_members(next_obs, None if feats is None else self.features(next_obs, train=True))
        with bf16_autocast(obs.device.type, self.amp):
            v = self.v_members(obs, fixed)
        v_loss = expectile_loss(q_t - v, self.expectile) * self.ensemble  # a sum over members: each one's
        # gradient is what it would be alone
        self._opts["v"].zero_grad(set_to_none=True)
        v_loss.backward()
        self._opts["v"].step()

        y = (reward + discount * next_v).repeat_interleave(2, dim=0)  # (2K, B)
        with bf16_autocast(obs.device.type, self.amp):
            q = self.q_both(obs, act, feats=feats)
        q_loss = 0.5 * (q - y).square().mean(1).sum()  # sum over members of 1/2 (MSE(Q1, y) + MSE(Q2, y))
        self._opts["q"].zero_grad(set_to_none=True)
        q_loss.backward()
        self._opts["q"].step()
        self.polyak()
        k = self.ensemble  # losses reported per member, comparable across ensemble sizes
        return metrics_out({"q_loss": q_loss / k, "v_loss": v_loss / k, "q_mean": q.detach().mean(),
                            "v_mean": v.detach().mean()}, sync)

    @torch.no_grad()
    def polyak(self) -> None:
        """target <- (1 - tau) target + tau online, one fused foreach op."""
        torch._foreach_lerp_(list(self.q_target.parameters()), list(self.q_net.parameters()), self.tau)


class ChunkCritic(nn.Module):
    """A single-step ``IQLCritic`` read on observation-history / action-chunk windows (``genctl.datasets.windows``):
    ``q(cond, chunk)`` = Q(current obs, first action of the chunk), ``v(cond)`` = V(current obs).

    GMPO weights a window by the advantage of its *first* action, the one executed at the window's state (an
    n-step chunk value would need a critic on chunks, which IQL does not learn); GMPG maximises Q of the first
    action of the sampled chunk, while its KL term to the behaviour model covers the whole chunk. Gradients flow
    through to ``chunk`` (GMPG); parameters are the wrapped critic's (so freezing this freezes it)."""

    def __init__(self, critic: nn.Module, obs_dim: int, action_dim: int):
        super().__init__()
        self.critic, self.obs_dim, self.action_dim = critic, int(obs_dim), int(action_dim)

    def current(self, cond: Tensor) -> Tensor:
        return cond[..., -self.obs_dim:]

    @property
    def ensemble(self) -> int:
        return self.critic.ensemble

    def q_members(self, cond: Tensor, chunk: Tensor) -> Tensor:
        return self.critic.q_members(self.current(cond), chunk[..., : self.action_dim])

    def q(self, cond: Tensor, chunk: Tensor) -> Tensor:
        return self.critic.q(self.current(cond), chunk[..., : self.action_dim])

    def v(self, cond: Tensor) -> Tensor:
        return self.critic.v(self.current(cond))
