"""OMIGA: offline multi-agent RL with implicit global-to-local value regularisation.

Follows "Offline Multi-Agent Reinforcement Learning with Implicit Global-to-Local Value
Regularization" (Wang, Xu, Zheng, Zhan; NeurIPS 2023; arXiv 2307.11620) and its public code.

Networks (shared weights across agents, one-hot agent id): local ``Q_i(o_i, a_i)`` and
``V_i(o_i)``, a policy ``pi_i(a_i | o_i)``, and a hypernetwork on the state giving non-negative
weights ``w_i(s) = |.| >= 0`` and a bias ``b(s)``. The same ``w, b`` mix Q and V:

    Q_tot(s, a) = sum_i w_i(s) Q_i(o_i, a_i) + b(s),   V_tot(s) = sum_i w_i(s) V_i(o_i) + b(s).

Global objective: return minus ``alpha`` times the reverse KL of the joint policy to the
behaviour's. Its in-sample solution (implicit value regularisation) gives
``pi*(a | s) = mu(a | s) exp((Q_tot - V_tot) / alpha)`` with ``V_tot`` the minimiser of
``E_mu[exp((Q_tot - V_tot) / alpha) + V_tot / alpha]``. With the shared mixing,
``(Q_tot - V_tot) / alpha = sum_i z_i`` where ``z_i = w_i (Q_i - V_i) / alpha``, so the global
regulariser splits into local ones (the paper's global-to-local step). In our notation
(primes are target networks, ``sg`` a stop-gradient):

1. Critic: ``L_Q = E (Q_tot(s, a) - y)^2`` with
   ``y = r + gamma * bootstrap * (sum_i w'_i(s') V'_i(o'_i) + b'(s'))`` (bootstrap 0 only after a
   terminal), trained jointly over Q and the mixer.
2. Local values: ``z_i = sg(w'_i(s)) (sg(Q'_i(o_i, a_i)) - V_i(o_i)) / alpha`` and
   ``L_V = E sum_i [ lexp(z_i) + sg(w'_i(s)) V_i(o_i) / alpha ]``, minimised where
   ``E_mu exp(z_i) = 1``, i.e. ``V_i = (alpha / w_i) log E_mu exp(w_i Q_i / alpha)`` (a
   soft maximum of Q_i over the data's actions: greedy as alpha -> 0, the mean as alpha -> inf).
   ``lexp(z) = exp(z)`` for ``z <= exp_max`` and continues linearly beyond
   (``exp(m) (1 + z - m)``): the loss stays convex and finite and its gradient never vanishes.
3. Actor (weighted BC): ``L_pi = -E sum_i min(exp(sg(z_i)), max_weight) log pi_i(a_i | o_i)``,
   the local factor of ``pi*`` (``pi_i* = mu_i exp(z_i)``).

All losses use the data's own actions only (in-sample learning); targets move by Polyak.

Policies: discrete tasks use a categorical over legal-masked logits (``zero`` = legal argmax,
``sample`` = a draw); continuous tasks a Gaussian on [-1, 1] with a tanh mean and a
state-dependent log std clipped to [-5, 2] (``zero`` = the mean, ``sample`` = a draw clipped to
[-1, 1]).

Departures from the paper / public code, and why:

- The public code clamps ``z`` to [-10, 10] and scales the V loss by ``exp(-max(max z, -1))``;
  the clamp zeroes the exp term's gradient above 10, so on such samples only the linear term
  acts and it pushes V further down (z grows further). We continue the exponential linearly
  above ``exp_max`` (10) instead, and drop the batch-max rescaling (a positive constant: same
  minimiser, and Adam is insensitive to it).
- Actor weights are capped at ``max_weight`` (100, as AWR/IQL do) instead of ``exp(10)``.
- The continuous actor is a Gaussian on [-1, 1] with a tanh mean rather than the public code's
  tanh-squashed Gaussian: the latter evaluates ``atanh`` of data actions, which explodes at the
  bounds where offline datasets often sit.
- MLPs use GELU (macflow's ``MLP``) rather than ReLU; LayerNorm is off as in the public code.
- Decentralised actors and local critics see each agent's observation only (no RNN history).

``paper`` preset: the public code's values, the same for its MaMuJoCo (``algos/OMIGA.py``,
``configs/config.py``) and SMAC (``framework/trainer_omiga.py``, ``run_omiga_sc2.py``) runs:
``alpha = 10``, ``gamma = 0.99``, ``tau = 0.005``, Adam ``lr = 5e-4``, gradient-norm clip 1,
batch 128, Q/V/actor widths (256, 256) (their code's defaults, not macflow's (512,)*4) and a
64-unit mixing hypernetwork.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from macflow.agents.actions import ActionSpace
from macflow.agents.base import (
    AgentBase,
    Stage,
    check_config,
    clipped_step,
    linear_mix,
    policy_card,
    polyak,
    small,
)
from macflow.nn import MLP, Critic, LinearMixer, agent_ids
from macflow.nn import utilities as critic_utilities
from macflow.spec import EnvSpec

Array = jax.Array
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclasses.dataclass(frozen=True)
class OMIGAConfig:
    """OMIGA hyper-parameters (the ``paper`` preset's values are the defaults)."""

    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the local Q, V and policy networks (the public code's 2 x 256)."""
    mixer_hidden: int = 64
    """Width of the mixing hypernetwork's hidden layer (state -> w, b)."""
    layer_norm: bool = False
    """LayerNorm in the Q and V networks (off in the public code)."""
    alpha: float = 10.0
    """Regularisation weight: small = greedy in Q (close to in-sample max), large = plain BC."""
    discount: float = 0.99
    """Discount gamma."""
    tau: float = 0.005
    """Polyak rate of the target Q, V and mixer."""
    lr: float = 5e-4
    """Adam learning rate of every network."""
    grad_clip: float = 1.0
    """Global gradient-norm clip of each network's update (0 disables)."""
    exp_max: float = 10.0
    """Above this exponent the V loss's exponential continues linearly (stability)."""
    max_weight: float = 100.0
    """Cap of the actor's BC weights ``exp(z_i)``."""

    def __post_init__(self):
        check_config(self)
        if not self.hidden or min(self.hidden) < 1 or self.mixer_hidden < 1:
            raise ValueError(f"hidden widths must be non-empty and >= 1: {self}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0 <= self.discount <= 1 or not 0 < self.tau <= 1:
            raise ValueError(f"need 0 <= discount <= 1 and 0 < tau <= 1: {self}")
        if self.lr <= 0 or self.grad_clip < 0 or self.max_weight <= 0:
            raise ValueError(f"need lr > 0, grad_clip >= 0, max_weight > 0: {self}")


def _paper(spec: EnvSpec) -> OMIGAConfig:
    return OMIGAConfig()  # the public code uses the same values on MaMuJoCo and SMAC


class Policy(nn.Module):
    """Per-agent policy head on ``(o_i, id_i)``: logits ``[..., N, A]`` or Gaussian
    ``(mean, log_std)`` each ``[..., N, D]``, the mean tanh'd into [-1, 1]."""

    hidden: Sequence[int]
    space: ActionSpace

    @nn.compact
    def __call__(self, obs: Array):
        x = jnp.concatenate([obs, agent_ids(obs.shape[:-2], obs.shape[-2])], axis=-1)
        out = MLP(self.hidden, self.space.policy_size)(x)
        return self.space.parse_policy(out, LOG_STD_MIN, LOG_STD_MAX, bounded=True)


def linear_exp(z: Array, cap: float) -> Array:
    """``exp(z)`` up to ``cap``, then its tangent line: convex, finite, never a flat gradient."""
    below = z <= cap
    return jnp.where(below, jnp.exp(jnp.where(below, z, cap)), jnp.exp(cap) * (1 + z - cap))


class OMIGA(AgentBase, struct.PyTreeNode):
    """Local Q, V, policy and mixer, their targets, optimiser states and RNG."""

    rng: Array
    params: dict[str, Any]
    target: dict[str, Any]
    opt: dict[str, Any]
    config: OMIGAConfig = struct.field(pytree_node=False)
    spec: EnvSpec = struct.field(pytree_node=False)

    Config = OMIGAConfig
    centralised = False
    presets = {"paper": _paper, "small": small(_paper)}

    # --- networks ------------------------------------------------------------------------------

    def _q_net(self):
        return self.space.critic(self.config.hidden, 1, self.config.layer_norm)

    def _v_net(self):
        return Critic(self.config.hidden, None, 1, self.config.layer_norm)

    def _policy(self):
        return Policy(self.config.hidden, self.space)

    def _mixer(self):
        return LinearMixer(self.config.mixer_hidden, self.spec.num_agents)

    @classmethod
    def create(cls, key: Array, spec: EnvSpec, config: OMIGAConfig) -> OMIGA:
        n = spec.num_agents
        obs = jnp.zeros((1, n, spec.obs_dim))
        shell = cls(rng=key, params={}, target={}, opt={}, config=config, spec=spec)
        k_q, k_v, k_p, k_m, rng = jax.random.split(key, 5)
        act = shell.space.critic_input(jnp.zeros((1, n, spec.action_dim)))
        params = {
            "q": shell._q_net().init(k_q, obs, act),
            "v": shell._v_net().init(k_v, obs),
            "policy": shell._policy().init(k_p, obs),
            "mixer": shell._mixer().init(k_m, jnp.zeros((1, spec.state_dim))),
        }
        adam = optax.adam(config.lr)
        opt = {
            "critic": adam.init((params["q"], params["mixer"])),
            "v": adam.init(params["v"]),
            "policy": adam.init(params["policy"]),
        }
        target = {k: params[k] for k in ("q", "v", "mixer")}
        return shell.replace(rng=rng, params=params, target=target, opt=opt)

    @classmethod
    def stages(cls, config: OMIGAConfig, steps: int) -> list[Stage]:
        return [Stage("train", steps, True)]

    def prepare(self, sampler, stage: str):
        return None

    # --- pieces --------------------------------------------------------------------------------

    def _actions(self, batch) -> Array:
        """Data actions in the networks' space: indices, or [-1, 1] vectors."""
        return self.space.from_env(batch.actions)

    def utilities(self, params, obs: Array, actions: Array) -> Array:
        """``Q_i(o_i, a_i)``, ``[..., N]``."""
        return critic_utilities(self._q_net(), params, obs, actions)[0]

    def values(self, params, obs: Array) -> Array:
        """``V_i(o_i)``, ``[..., N]``."""
        return self._v_net().apply(params, obs)[0]

    def mix(self, params, local: Array, states: Array) -> Array:
        """``sum_i w_i(s) x_i + b(s)`` for local values ``[..., N]``."""
        return linear_mix(self._mixer(), params, local, states)

    def log_prob(self, params, obs: Array, actions: Array, legal) -> Array:
        """``log pi_i(a_i | o_i)``, ``[..., N]`` (discrete: under the legal mask)."""
        return self.space.log_prob(self._policy().apply(params, obs), legal, actions)

    def td_target(self, batch) -> Array:
        """``r + gamma * bootstrap * V'_tot(s')`` from the target V and mixer."""
        v_next = self.values(self.target["v"], batch.next_observations)
        v_tot = self.mix(self.target["mixer"], v_next, batch.next_states)
        return batch.rewards + self.config.discount * batch.bootstrap * v_tot

    def exponent(self, v_params, batch) -> Array:
        """``z_i = w'_i(s) (Q'_i(o_i, a_i) - V_i(o_i)) / alpha``, ``[B, N]``; only V is live."""
        q = self.utilities(self.target["q"], batch.observations, self._actions(batch))
        w, _ = self._mixer().apply(self.target["mixer"], batch.states)
        v = self.values(v_params, batch.observations)
        return jax.lax.stop_gradient(w) * (jax.lax.stop_gradient(q) - v) / self.config.alpha

    # --- losses --------------------------------------------------------------------------------

    @staticmethod
    def _mean(x: Array, valid: Array) -> Array:
        return (x * valid).sum() / valid.sum()

    def critic_loss(self, q_mixer, batch) -> tuple[Array, dict]:
        q_params, mixer = q_mixer
        y = jax.lax.stop_gradient(self.td_target(batch))
        q = self.utilities(q_params, batch.observations, self._actions(batch))
        q_tot = self.mix(mixer, q, batch.states)
        loss = self._mean((q_tot - y) ** 2, batch.valid)
        w, _ = self._mixer().apply(mixer, batch.states)
        info = {
            "critic/td_loss": loss,
            "critic/q_mean": q_tot.mean(),
            "critic/target": y.mean(),
            "critic/w_mean": w.mean(),
        }
        return loss, info

    def value_loss(self, v_params, batch) -> tuple[Array, dict]:
        c = self.config
        z = self.exponent(v_params, batch)
        w, _ = self._mixer().apply(self.target["mixer"], batch.states)
        v = self.values(v_params, batch.observations)
        per = linear_exp(z, c.exp_max) + jax.lax.stop_gradient(w) * v / c.alpha
        loss = self._mean(per.sum(axis=-1), batch.valid)
        return loss, {"value/loss": loss, "value/v_mean": v.mean(), "value/z_mean": z.mean()}

    def actor_loss(self, policy, batch) -> tuple[Array, dict]:
        z = jax.lax.stop_gradient(self.exponent(self.params["v"], batch))
        weight = jnp.minimum(jnp.exp(jnp.minimum(z, self.config.exp_max)), self.config.max_weight)
        logp = self.log_prob(policy, batch.observations, self._actions(batch), batch.legal_actions)
        loss = -self._mean((weight * logp).sum(axis=-1), batch.valid)
        info = {
            "actor/loss": loss,
            "actor/log_prob": logp.mean(),
            "actor/weight_mean": weight.mean(),
            "actor/weight_max": weight.max(),
        }
        return loss, info

    # --- interface -----------------------------------------------------------------------------

    @functools.partial(jax.jit, static_argnames=("stage",))
    def update(self, batch, stage: str, aux=None) -> tuple[OMIGA, dict[str, Array]]:
        """One step of every loss, all computed from the current networks (as the public code)."""
        c = self.config
        params, opt = dict(self.params), dict(self.opt)
        qm = (params["q"], params["mixer"])
        g_c, info = jax.grad(self.critic_loss, has_aux=True)(qm, batch)
        g_v, i_v = jax.grad(self.value_loss, has_aux=True)(params["v"], batch)
        g_p, i_p = jax.grad(self.actor_loss, has_aux=True)(params["policy"], batch)
        (params["q"], params["mixer"]), opt["critic"] = clipped_step(
            c.lr, c.grad_clip, qm, g_c, opt["critic"]
        )
        params["v"], opt["v"] = clipped_step(c.lr, c.grad_clip, params["v"], g_v, opt["v"])
        params["policy"], opt["policy"] = clipped_step(
            c.lr, c.grad_clip, params["policy"], g_p, opt["policy"]
        )
        target = polyak(self.target, {k: params[k] for k in self.target}, c.tau)
        rng, _ = jax.random.split(self.rng)
        return self.replace(rng=rng, params=params, opt=opt, target=target), info | i_v | i_p

    def policy_actions(self, params, key, obs, legal, mode: str) -> Array:
        """Actions in the agent's own space: indices, or [-1, 1] vectors."""
        return self.space.sample(self._policy().apply(params, obs), legal, mode, key)

    @functools.partial(jax.jit, static_argnames=("mode",))
    def act(self, key: Array, observations: Array, legal: Array | None, mode: str = "sample",
            states: Array | None = None):  # fmt: skip
        """Decentralised actions ``[..., N, A]`` / ``[..., N]`` (``states`` is ignored)."""
        a = self.policy_actions(self.params["policy"], key, observations, legal, mode)
        return self.space.to_env(a)

    def export_policy(self) -> dict:
        """The policy for ``macflow export``: ``clip(tanh(mean) + std * eps)`` with the clipped
        learned log-std (continuous), or its logits (discrete)."""
        head = self.space.export_head("tanh", (LOG_STD_MIN, LOG_STD_MAX), "clip")
        return policy_card(self.params["policy"], head)
