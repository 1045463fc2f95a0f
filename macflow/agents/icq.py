"""ICQ: implicit constraint Q-learning for offline multi-agent RL (discrete actions).

Follows "Believe What You See: Implicit Constraint Approach for Offline Multi-Agent
Reinforcement Learning" (Yang, Ma, Li, Zheng, Zhang, Huang, Yang, Zhao; NeurIPS 2021;
arXiv 2106.03400), the multi-agent version ICQ-MA, and its public code (``ICQ-MA/``).

The idea: never evaluate the critic on actions the data do not contain. The optimum of a
policy improvement step under a KL constraint to the behaviour, ``pi(a|s) ∝ mu(a|s) exp(Q/beta)``,
turns the Bellman target's expectation under ``pi`` into an importance-weighted expectation under
the data: ``E_pi[Q] = E_mu[(1/Z) exp(Q/beta) Q]``, with Z estimated on the mini-batch.

Networks (shared weights across agents, one-hot agent id): per-agent utilities
``Q_i(o_i, .) -> [A]``, categorical policies ``pi_i(. | o_i)`` over legal-masked logits, and the
paper's linear decomposition ``Q_tot(s, a) = sum_i w_i(s) Q_i(o_i, a_i) + b(s)`` with
``w_i(s) = |.| >= 0`` and ``b(s)`` from a hypernetwork on the state. In our notation (primes are
target networks, ``sg`` a stop-gradient, B the batch):

1. Critic: ``L_Q = E (Q_tot(s, a) - y)^2`` with the in-sample target
   ``y = r + gamma * bootstrap * rho * Q'_tot(s', a')`` where ``a'`` is the data's next joint
   action (``batch.next_actions``) and ``rho = B_in * softmax_batch(Q'_tot(s', a') / beta_Q)``,
   the per-sample weight normalised over the ``B_in`` in-sample entries of the batch (the public
   code's ``len * softmax(Q'/beta) * Q'``; rho averages to 1, and ``beta_Q -> inf`` gives SARSA).
   At an episode's last step there is no next action in the data: a terminal does not bootstrap
   (``batch.bootstrap = 0``); after a truncation we bootstrap from the target critic's expected
   value under the current policy, ``sum_i w'_i(s') sum_a pi_i(a | o'_i) Q'_i(o'_i, a) + b'(s')``
   (legal under the next mask). It is the one place that queries actions beyond the data's;
   such steps are excluded from the softmax.
2. Actor (advantage-weighted BC, the implicit constraint again, per agent):
   ``A_i = Q_i(o_i, a_i) - sum_a pi_i(a | o_i) Q_i(o_i, a)`` (all stop-gradient),
   ``L_pi = -E sum_i [B * softmax_batch(w_i(s) A_i / beta) log pi_i(a_i | o_i)]``. With the
   linear mixer the joint advantage is ``sum_i w_i A_i``, so ``exp(A_tot / beta)`` factorises
   into the per-agent ``exp(w_i A_i / beta)``; the factor ``w_i(s)`` also makes the weights
   independent of how the mixer splits scale between ``w_i`` and ``Q_i``.
   (``scale_advantage = False`` uses plain ``A_i / beta``.)

``zero`` mode acts by the legal argmax of the policy, ``sample`` draws from it.

Departures from the paper / public code, and why:

- One-step targets from single transitions: the paper trains on whole trajectories with
  TD(lambda) (lambda = 0.8); macflow's agents learn from sampled transitions.
- Feed-forward networks on each agent's observation (the public code's actor is a GRU on the
  history and its critic also sees the global state): macflow's decentralised interface.
- The mixer keeps the paper's ``sum_i w_i Q_i + b``; the public code normalises ``w`` to sum 1
  and drops ``b``. Its actor multiplies ``softmax(A_i / beta)`` by ``w_i`` outside the softmax;
  we put ``w_i`` inside, as the decomposition above gives.
- Adam instead of RMSprop; MLPs use GELU (macflow's ``MLP``) rather than ReLU.

``paper`` preset: the public code's SMAC values (``config/algs/offpg_smac.yaml``,
``config/default.yaml``, ``learners/offpg_learner.py``): ``beta = 0.1`` (actor),
``beta_Q = 1000`` (critic), ``gamma = 0.99``, actor lr 5e-4, critic lr 1e-4, gradient-norm clip
20, hard target update every 600 critic steps, critic widths (256, 256), mixing hypernetwork 32;
the actor's GRU of 64 units becomes a (64, 64) MLP. (Not macflow's (512,)*4.)
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

from macflow.agents.base import (
    AgentBase,
    Stage,
    check_config,
    clipped_step,
    linear_mix,
    policy_card,
    require,
    small,
)
from macflow.nn import MLP, LinearMixer, agent_ids, pick
from macflow.spec import EnvSpec

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ICQConfig:
    """ICQ hyper-parameters (the ``paper`` preset's values are the defaults)."""

    actor_hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of the per-agent policy (the public code's 64-unit GRU agent)."""
    critic_hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the per-agent utility network."""
    mixer_hidden: int = 32
    """Width of the mixing hypernetwork's hidden layer (state -> w, b)."""
    layer_norm: bool = False
    """LayerNorm in the utility network."""
    beta: float = 0.1
    """Actor temperature: small = greedy in the advantage, large = plain BC."""
    critic_beta: float = 1000.0
    """Critic temperature of the in-sample importance weights (large = SARSA target)."""
    scale_advantage: bool = True
    """Use ``w_i(s) A_i`` (the decomposed joint advantage) in the actor's softmax; False:
    plain ``A_i``."""
    discount: float = 0.99
    """Discount gamma."""
    lr: float = 5e-4
    """Adam learning rate of the policy."""
    critic_lr: float = 1e-4
    """Adam learning rate of the utilities and the mixer."""
    grad_clip: float = 20.0
    """Global gradient-norm clip of each update (0 disables)."""
    target_period: int = 600
    """Copy the critic and mixer into their targets every this many updates."""

    def __post_init__(self):
        check_config(self)
        widths = (*self.actor_hidden, *self.critic_hidden, self.mixer_hidden)
        if not self.actor_hidden or not self.critic_hidden or min(widths) < 1:
            raise ValueError(f"hidden widths must be non-empty and >= 1: {self}")
        if self.beta <= 0 or self.critic_beta <= 0:
            raise ValueError(f"beta and critic_beta must be > 0: {self}")
        if not 0 <= self.discount <= 1:
            raise ValueError(f"discount must be in [0, 1], got {self.discount}")
        if min(self.lr, self.critic_lr) <= 0 or self.grad_clip < 0 or self.target_period < 1:
            raise ValueError(f"need lr, critic_lr > 0, grad_clip >= 0, target_period >= 1: {self}")


def _paper(spec: EnvSpec) -> ICQConfig:
    require(ICQ, spec)
    return ICQConfig()


class Policy(nn.Module):
    """Per-agent logits ``[..., N, A]`` on ``(o_i, id_i)``."""

    hidden: Sequence[int]
    actions: int

    @nn.compact
    def __call__(self, obs: Array) -> Array:
        x = jnp.concatenate([obs, agent_ids(obs.shape[:-2], obs.shape[-2])], axis=-1)
        return MLP(self.hidden, self.actions)(x)


def batch_softmax(x: Array, mask: Array) -> Array:
    """``n * softmax(x)`` over the leading (batch) axis restricted to ``mask``: weights that
    average 1 over the masked entries and are 0 elsewhere (all 0 if nothing is masked in)."""
    x = jnp.where(mask, x, -jnp.inf)
    top = jnp.max(x, axis=0, keepdims=True)
    e = jnp.where(mask, jnp.exp(x - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
    n = mask.sum(axis=0, keepdims=True)
    return n * e / jnp.maximum(e.sum(axis=0, keepdims=True), 1e-30)


class ICQ(AgentBase, struct.PyTreeNode):
    """Utilities, mixer, policy, their targets, optimiser states, RNG and update count."""

    rng: Array
    params: dict[str, Any]
    target: dict[str, Any]
    opt: dict[str, Any]
    step: Array
    config: ICQConfig = struct.field(pytree_node=False)
    spec: EnvSpec = struct.field(pytree_node=False)

    Config = ICQConfig
    centralised = False
    presets = {"paper": _paper, "small": small(_paper)}

    @classmethod
    def supports(cls, spec: EnvSpec) -> str | None:
        if spec.discrete:
            return None
        return (
            f"icq is for discrete actions only, but task {spec.env_id!r} has continuous actions "
            "(use e.g. omiga or matd3bc there)"
        )

    def _critic(self):
        return self.space.critic(self.config.critic_hidden, 1, self.config.layer_norm)

    def _policy(self):
        return Policy(self.config.actor_hidden, self.space.policy_size)

    def _mixer(self):
        return LinearMixer(self.config.mixer_hidden, self.spec.num_agents)

    @classmethod
    def create(cls, key: Array, spec: EnvSpec, config: ICQConfig) -> ICQ:
        require(cls, spec)
        obs = jnp.zeros((1, spec.num_agents, spec.obs_dim))
        shell = cls(
            rng=key, params={}, target={}, opt={}, step=jnp.int32(0), config=config, spec=spec
        )
        k_c, k_p, k_m, rng = jax.random.split(key, 4)
        params = {
            "critic": shell._critic().init(k_c, obs),
            "mixer": shell._mixer().init(k_m, jnp.zeros((1, spec.state_dim))),
            "policy": shell._policy().init(k_p, obs),
        }
        opt = {
            "critic": optax.adam(config.critic_lr).init((params["critic"], params["mixer"])),
            "policy": optax.adam(config.lr).init(params["policy"]),
        }
        target = {"critic": params["critic"], "mixer": params["mixer"]}
        return shell.replace(rng=rng, params=params, target=target, opt=opt)

    @classmethod
    def stages(cls, config: ICQConfig, steps: int) -> list[Stage]:
        return [Stage("train", steps, True)]

    def prepare(self, sampler, stage: str):
        return None

    # --- pieces --------------------------------------------------------------------------------

    def utilities(self, params, obs: Array) -> Array:
        """``Q_i(o_i, .)``, ``[..., N, A]``."""
        return self._critic().apply(params, obs)[0]

    def mix(self, params, local: Array, states: Array) -> Array:
        """``sum_i w_i(s) x_i + b(s)`` for local values ``[..., N]``."""
        return linear_mix(self._mixer(), params, local, states)

    def probs(self, params, obs: Array, legal) -> Array:
        """``pi_i(. | o_i)`` under the legal mask, ``[..., N, A]``."""
        return self.space.relax(self._policy().apply(params, obs), legal)

    def td_target(self, batch) -> tuple[Array, dict]:
        """In-sample implicit-constraint target (module docstring, item 1)."""
        c = self.config
        q_next = self.utilities(self.target["critic"], batch.next_observations)
        taken = pick(q_next, batch.next_actions)
        q_data = self.mix(self.target["mixer"], taken, batch.next_states)
        in_sample = (~batch.last) & (batch.valid > 0)
        rho = batch_softmax(q_data / c.critic_beta, in_sample)
        # Truncated last steps have no next action in the data: the policy's expected value.
        pi = self.probs(self.params["policy"], batch.next_observations, batch.next_legal_actions)
        q_pi = self.mix(self.target["mixer"], (pi * q_next).sum(axis=-1), batch.next_states)
        nxt = jnp.where(batch.last, q_pi, rho * q_data)
        y = batch.rewards + c.discount * batch.bootstrap * nxt
        info = {"critic/target": y.mean(), "critic/rho_max": rho.max()}
        return jax.lax.stop_gradient(y), info

    def advantages(self, batch) -> Array:
        """``w_i(s) A_i`` (or ``A_i``), ``[B, N]``, from the online critic, stop-gradient."""
        q = self.utilities(self.params["critic"], batch.observations)
        pi = self.probs(self.params["policy"], batch.observations, batch.legal_actions)
        adv = pick(q, batch.actions) - (pi * q).sum(axis=-1)
        if self.config.scale_advantage:
            adv = adv * self._mixer().apply(self.params["mixer"], batch.states)[0]
        return jax.lax.stop_gradient(adv)

    # --- losses --------------------------------------------------------------------------------

    def critic_loss(self, critic_mixer, batch) -> tuple[Array, dict]:
        critic, mixer = critic_mixer
        y, info = self.td_target(batch)
        q = self.utilities(critic, batch.observations)
        q_tot = self.mix(mixer, pick(q, batch.actions), batch.states)
        loss = (((q_tot - y) ** 2) * batch.valid).sum() / batch.valid.sum()
        return loss, info | {"critic/td_loss": loss, "critic/q_mean": q_tot.mean()}

    def actor_loss(self, policy, batch) -> tuple[Array, dict]:
        adv = self.advantages(batch)
        valid = jnp.broadcast_to(batch.valid[:, None] > 0, adv.shape)
        weight = batch_softmax(adv / self.config.beta, valid)
        out = self._policy().apply(policy, batch.observations)
        logp = self.space.log_prob(out, batch.legal_actions, batch.actions)
        loss = -(weight * logp * batch.valid[:, None]).sum() / (batch.valid.sum() * adv.shape[1])
        info = {
            "actor/loss": loss,
            "actor/log_prob": logp.mean(),
            "actor/advantage": adv.mean(),
            "actor/weight_max": weight.max(),
        }
        return loss, info

    # --- interface -----------------------------------------------------------------------------

    @functools.partial(jax.jit, static_argnames=("stage",))
    def update(self, batch, stage: str, aux=None) -> tuple[ICQ, dict[str, Array]]:
        """One critic and one actor step from the current networks; hard target copy every
        ``target_period`` updates."""
        c = self.config
        params, opt = dict(self.params), dict(self.opt)
        cm = (params["critic"], params["mixer"])
        g_c, info = jax.grad(self.critic_loss, has_aux=True)(cm, batch)
        g_p, i_p = jax.grad(self.actor_loss, has_aux=True)(params["policy"], batch)
        (params["critic"], params["mixer"]), opt["critic"] = clipped_step(
            c.critic_lr, c.grad_clip, cm, g_c, opt["critic"]
        )
        params["policy"], opt["policy"] = clipped_step(
            c.lr, c.grad_clip, params["policy"], g_p, opt["policy"]
        )
        step = self.step + 1
        copy = step % c.target_period == 0
        online = {"critic": params["critic"], "mixer": params["mixer"]}
        target = jax.tree.map(lambda t, o: jnp.where(copy, o, t), self.target, online)
        rng, _ = jax.random.split(self.rng)
        new = self.replace(rng=rng, params=params, opt=opt, target=target, step=step)
        return new, info | i_p

    @functools.partial(jax.jit, static_argnames=("mode",))
    def act(self, key: Array, observations: Array, legal: Array | None, mode: str = "sample",
            states: Array | None = None):  # fmt: skip
        """Decentralised actions ``[..., N]``, never illegal (``states`` is ignored)."""
        out = self._policy().apply(self.params["policy"], observations)
        return self.space.act(out, legal, mode, key)

    def export_policy(self) -> dict:
        """The policy for ``macflow export``: its logits' legal argmax after Gumbel draws."""
        return policy_card(self.params["policy"], self.space.export_head())
