"""Networks: MLPs, flow time embedding, velocity fields, one-step students, critics and mixers.

Shapes keep the agent axis explicit and second: ``[B, N, ...]``. Per-agent networks share their
weights across agents and see a one-hot agent id, so one set of parameters serves every agent.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
_INIT = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


class MLP(nn.Module):
    """Dense -> GELU (-> LayerNorm) hidden layers, then a linear output."""

    hidden: Sequence[int]
    out: int
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for width in self.hidden:
            x = nn.gelu(nn.Dense(width, kernel_init=_INIT)(x))
            if self.layer_norm:
                x = nn.LayerNorm()(x)
        return nn.Dense(self.out, kernel_init=_INIT)(x)


def time_features(t: Array, freqs: int = 3) -> Array:
    """``[..., 1 + 2 * freqs]``: t itself and sin/cos(pi 2^k t) for k < freqs.

    Few, low frequencies: on toy/landmarks (20k updates, 3x256) the joint teacher's zero-noise
    actions correlated 0.77 with the data with 3 frequencies and 0.66 with 8.
    """
    scales = jnp.pi * 2.0 ** jnp.arange(freqs)
    angles = t[..., None] * scales
    return jnp.concatenate([t[..., None], jnp.sin(angles), jnp.cos(angles)], axis=-1)


def agent_ids(batch_shape: tuple[int, ...], n: int) -> Array:
    """One-hot agent ids broadcast to ``[*batch_shape, N, N]``."""
    return jnp.broadcast_to(jnp.eye(n), (*batch_shape, n, n))


class JointVelocity(nn.Module):
    """Flow field over the whole joint action: ``f(x_t, t, s[, o_1..o_N][, legal]) -> [B, N, D]``.

    A flat MLP on the concatenated joint action, so every agent's output depends on every other
    agent's current action: the joint distribution, not a product of marginals, is learnt. The
    output is a velocity, or per-agent logits for the discrete posterior teacher, which also
    passes every agent's legal mask ``[B, N, D]`` (a discontinuous function of the state that an
    MLP would otherwise have to learn) and, in its ``bayes`` form, every agent's normalised path
    likelihood ``evidence [B, N, D]``.
    """

    hidden: Sequence[int]
    layer_norm: bool = False
    use_obs: bool = False

    @nn.compact
    def __call__(
        self,
        x: Array,
        t: Array,
        state: Array,
        obs: Array,
        legal: Array | None = None,
        evidence: Array | None = None,
    ) -> Array:
        b, n, d = x.shape
        parts = [x.reshape(b, n * d), time_features(t), state]
        if self.use_obs:
            parts.append(obs.reshape(b, -1))
        for extra in (legal, evidence):
            if extra is not None:
                parts.append(extra.reshape(b, -1).astype(x.dtype))
        out = MLP(self.hidden, n * d, self.layer_norm)(jnp.concatenate(parts, axis=-1))
        return out.reshape(b, n, d)


class PerAgentVelocity(nn.Module):
    """The public code's design: ``v(x_t,i, t, o_i, id_i[, legal_i])`` per agent, shared weights,
    no state.

    Agents are independent given their observations: the learnt "joint" is a product of
    per-agent conditionals.
    """

    hidden: Sequence[int]
    layer_norm: bool = False
    use_obs: bool = True

    @nn.compact
    def __call__(
        self,
        x: Array,
        t: Array,
        state: Array,
        obs: Array,
        legal: Array | None = None,
        evidence: Array | None = None,
    ) -> Array:
        b, n, d = x.shape
        tf = time_features(t)
        tf = jnp.broadcast_to(tf[:, None, :], (b, n, tf.shape[-1]))
        parts = [x, tf, obs, agent_ids((b,), n)]
        for extra in (legal, evidence):  # each agent's own mask and evidence only
            if extra is not None:
                parts.append(extra.astype(x.dtype))
        return MLP(self.hidden, d, self.layer_norm)(jnp.concatenate(parts, axis=-1))


class Student(nn.Module):
    """One-step policy ``mu(o_i, id_i, z_i[, shared]) -> [..., N, D]`` applied to each agent.

    It sees only its own observation, its id and noise; ``shared`` is a latent every agent
    receives identically (the joint noise drawn from a shared seed), if enabled.
    """

    hidden: Sequence[int]
    out: int
    layer_norm: bool = False

    @nn.compact
    def __call__(self, obs: Array, ids: Array, noise: Array, shared: Array | None = None) -> Array:
        """``obs [..., O]``, one-hot ``ids [..., N]``, ``noise [..., D]`` with alike leading
        axes (``[B, N]`` for a team, none for one agent); ``shared`` has no agent axis."""
        parts = [obs, ids, noise]
        if shared is not None:
            if obs.ndim > shared.ndim:  # a team: every agent gets the same shared latent
                shared = jnp.broadcast_to(shared[..., None, :], (*obs.shape[:-1], shared.shape[-1]))
            parts.append(shared)
        return MLP(self.hidden, self.out, self.layer_norm)(jnp.concatenate(parts, axis=-1))


class Critic(nn.Module):
    """Per-agent utilities with an ensemble of ``heads``, shared weights across agents.

    Continuous: ``Q_i(o_i, id_i, a_i) -> [H, ..., N]``. Discrete (``actions=None``):
    ``Q_i(o_i, id_i) -> [H, ..., N, A]``, one value per action.
    """

    hidden: Sequence[int]
    num_actions: int | None = None
    heads: int = 2
    layer_norm: bool = True

    @nn.compact
    def __call__(self, obs: Array, actions: Array | None = None) -> Array:
        *batch, n, _ = obs.shape
        parts = [obs, agent_ids(tuple(batch), n)]
        if actions is not None:
            parts.append(actions)
        x = jnp.concatenate(parts, axis=-1)
        ensemble = nn.vmap(
            MLP,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.heads,
        )
        out = ensemble(self.hidden, self.num_actions or 1, self.layer_norm)(x)
        return out if self.num_actions else out[..., 0]


def pick(values: Array, index: Array) -> Array:
    """``values[..., index]`` along the last axis: ``values [..., A]``, int ``index [...]``."""
    return jnp.take_along_axis(values, index[..., None], axis=-1)[..., 0]


def utilities(critic: Critic, params, obs: Array, actions: Array) -> Array:
    """Per-agent utilities ``[H, ..., N]`` of the given actions: unit vectors for a continuous
    critic, indices for a discrete one (which outputs one value per action)."""
    if critic.num_actions:
        return pick(critic.apply(params, obs), actions[None])
    return critic.apply(params, obs, actions)


class LinearMixer(nn.Module):
    """State hypernetwork of a linear monotone mix: ``s -> (w [..., N] >= 0, b [...])``, so
    ``Q_tot = sum_i w_i(s) Q_i + b(s)`` (OMIGA's and ICQ's decomposition)."""

    hidden: int
    agents: int

    @nn.compact
    def __call__(self, state: Array) -> tuple[Array, Array]:
        out = MLP((self.hidden,), self.agents + 1)(state)
        return jnp.abs(out[..., : self.agents]), out[..., self.agents]


class QMixer(nn.Module):
    """QMIX: ``Q_tot = w2 . elu(W1 q + b1) + b2`` with ``|W1|, |w2|`` from hypernetworks on the
    state, so Q_tot is monotone in every agent's utility (IGM)."""

    embed: int = 32
    hyper: int = 64

    @nn.compact
    def __call__(self, q: Array, state: Array) -> Array:
        """``q [..., N]``, ``state [..., S]`` (broadcastable leading axes) -> ``[...]``."""
        n = q.shape[-1]
        w1 = MLP((self.hyper,), n * self.embed)(state)
        w1 = jnp.abs(w1).reshape(*state.shape[:-1], n, self.embed)
        b1 = nn.Dense(self.embed)(state)
        # q may carry extra leading axes (critic heads) that broadcast against the state's.
        hidden = nn.elu((q[..., :, None] * w1).sum(axis=-2) + b1)
        w2 = jnp.abs(MLP((self.hyper,), self.embed)(state))
        b2 = MLP((self.hyper,), 1)(state)[..., 0]
        return jnp.sum(hidden * w2, axis=-1) + b2
