"""BC: per-agent behaviour cloning, one network shared by every agent (plus a one-hot agent id).

The behaviour-cloning baseline of the offline MARL benchmarks (OG-MARL, "Off-the-Grid MARL",
Formanek et al., AAMAS 2023, arXiv 2302.00521; the BC rows of OMIGA, Wang et al., NeurIPS 2023,
arXiv 2307.11620): each agent imitates its own dataset actions from its own observation, so the
learnt team policy is the product of the per-agent marginals of the data, whatever the data's
joint coupling. Equations, in our notation (unit actions ``a`` in [-1, 1] or indices):

- Continuous: a tanh-squashed diagonal Gaussian ``a_i = tanh(u)``, ``u ~ N(mu(o_i, id_i),
  diag sigma(o_i, id_i)^2)``, trained by maximum likelihood of the dataset actions:
  ``L = E mean_i -log N(atanh(a_i); mu, sigma)`` (the tanh Jacobian does not depend on the
  parameters and is left out). ``zero`` acts ``tanh(mu)`` (the squashed distribution's median),
  ``sample`` acts ``tanh(u)`` with a fresh draw.
- Discrete: a categorical over the legal-masked logits, ``L = E mean_i -log pi(a_i | o_i, id_i)``
  (cross-entropy); ``zero`` = legal argmax, ``sample`` = a draw from the masked softmax.

Departures from OG-MARL's BC (and why):
- Feed-forward MLP on the current observation instead of their 64-unit MLP + GRU: every
  algorithm here is feed-forward on the same inputs, so the comparison isolates the objective.
- Continuous BC is a Gaussian maximum-likelihood fit instead of their deterministic MSE
  regression: a stochastic policy gives ``sample`` mode a meaning and shows what independent
  per-agent sampling does to multi-modal joint data (toy/xor). Its mean solves the same
  regression as MSE does.
- Dataset actions are clipped to ``[-1 + eps, 1 - eps]`` before ``atanh`` (data collected with
  clipping often sit exactly on the bounds, where ``atanh`` is infinite).
- Discrete logits are legal-masked in the loss as well as when acting (OG-MARL masks only when
  acting); dataset actions are always legal, so this only removes mass the policy can never use.

Presets: ``paper`` uses MAC-Flow's student widths (512 x 4, Adam 3e-4), so BC and MAC-Flow's
students have the same capacity; ``og-marl`` uses OG-MARL's size (64 x 2) and learning rates
(1e-3 discrete, 3e-4 continuous).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from macflow.agents.base import (
    AgentBase,
    Stage,
    adam_step,
    check_config,
    masked_logits,
    policy_card,
    small,
)
from macflow.nn import MLP, agent_ids
from macflow.spec import EnvSpec

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class BCConfig:
    """BC hyper-parameters (the ``paper`` preset's values are the defaults)."""

    hidden: tuple[int, ...] = (512, 512, 512, 512)
    """Hidden widths of the shared per-agent policy network."""
    layer_norm: bool = False
    """LayerNorm after every hidden layer."""
    lr: float = 3e-4
    """Adam learning rate."""
    log_std_min: float = -5.0
    """Continuous: lower bound of the Gaussian's log standard deviation (pre-tanh)."""
    log_std_max: float = 2.0
    """Continuous: upper bound of the Gaussian's log standard deviation (pre-tanh)."""
    action_eps: float = 1e-3
    """Continuous: dataset actions are clipped to ``[-1 + eps, 1 - eps]`` before ``atanh``."""

    def __post_init__(self):
        check_config(self)
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must be non-empty positive widths, got {self.hidden}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.log_std_min >= self.log_std_max:
            raise ValueError(
                f"need log_std_min < log_std_max, got {self.log_std_min} >= {self.log_std_max}"
            )
        if not 0 < self.action_eps < 1:
            raise ValueError(f"action_eps must lie in (0, 1), got {self.action_eps}")


def _paper(spec: EnvSpec) -> BCConfig:
    return BCConfig()


def _og_marl(spec: EnvSpec) -> BCConfig:
    return BCConfig(hidden=(64, 64), lr=1e-3 if spec.discrete else 3e-4)


class BC(AgentBase, struct.PyTreeNode):
    """The shared policy network, its (unused) target slot, optimiser state and RNG."""

    rng: Array
    params: dict[str, Any]
    target: dict[str, Any]
    opt: dict[str, Any]
    config: BCConfig = struct.field(pytree_node=False)
    spec: EnvSpec = struct.field(pytree_node=False)

    Config = BCConfig
    centralised = False
    presets = {"paper": _paper, "og-marl": _og_marl, "small": small(_paper)}

    def _net(self) -> MLP:
        return MLP(self.config.hidden, self.space.policy_size, self.config.layer_norm)

    def _forward(self, params, obs: Array) -> Array:
        ids = agent_ids(obs.shape[:-2], self.spec.num_agents)
        return self._net().apply(params, jnp.concatenate([obs, ids], axis=-1))

    def _policy(self, params, obs: Array):
        """Logits ``[..., N, A]``, or the pre-tanh mean and log-std ``[..., N, D]`` each."""
        c = self.config
        return self.space.parse_policy(self._forward(params, obs), c.log_std_min, c.log_std_max)

    @classmethod
    def create(cls, key: Array, spec: EnvSpec, config: BCConfig) -> BC:
        shell = cls(rng=key, params={}, target={}, opt={}, config=config, spec=spec)
        k_net, rng = jax.random.split(key)
        x = jnp.zeros((1, spec.num_agents, spec.obs_dim + spec.num_agents))
        params = {"policy": shell._net().init(k_net, x)}
        opt = {"policy": optax.adam(config.lr).init(params["policy"])}
        return shell.replace(rng=rng, params=params, opt=opt)

    @classmethod
    def stages(cls, config: BCConfig, steps: int) -> list[Stage]:
        return [Stage("bc", steps, True)]

    def prepare(self, sampler, stage: str):
        return None

    def loss(self, params, batch) -> tuple[Array, dict]:
        """Negative log-likelihood of the dataset actions, averaged over agents and the batch."""
        w = batch.valid / batch.valid.sum()
        policy = self._policy(params, batch.observations)
        legal = batch.legal_actions
        if self.spec.discrete:
            nll = -self.space.log_prob(policy, legal, batch.actions)
            hit = jnp.argmax(masked_logits(policy, legal), axis=-1) == batch.actions
            extra = {"actor/accuracy": (hit.mean(axis=-1) * w).sum()}
        else:  # the Gaussian's likelihood of the pre-tanh action
            eps = self.config.action_eps
            u = jnp.arctanh(jnp.clip(self.space.from_env(batch.actions), -1 + eps, 1 - eps))
            nll = -self.space.log_prob(policy, legal, u)
            mu, log_std = policy
            extra = {
                "actor/std": (jnp.exp(log_std).mean(axis=(-2, -1)) * w).sum(),
                "actor/mse": (((jnp.tanh(mu) - jnp.tanh(u)) ** 2).mean(axis=(-2, -1)) * w).sum(),
            }
        loss = (nll.mean(axis=-1) * w).sum()
        return loss, {"actor/loss": loss, **extra}

    @functools.partial(jax.jit, static_argnames=("stage",))
    def update(self, batch, stage: str, aux=None) -> tuple[BC, dict[str, Array]]:
        """One Adam step on the negative log-likelihood."""
        grads, info = jax.grad(self.loss, has_aux=True)(self.params["policy"], batch)
        policy, opt = adam_step(self.config.lr, self.params["policy"], grads, self.opt["policy"])
        return self.replace(params={"policy": policy}, opt={"policy": opt}), info

    @functools.partial(jax.jit, static_argnames=("mode",))
    def act(self, key: Array, observations: Array, legal: Array | None, mode: str = "sample",
            states: Array | None = None):  # fmt: skip
        """Each agent acts on its own observation (``states`` is ignored)."""
        policy = self._policy(self.params["policy"], observations)
        return self.space.to_env(self.space.sample(policy, legal, mode, key, squash=True))

    def export_policy(self) -> dict:
        """The policy for ``macflow export``: continuous ``tanh(mean + std * eps)`` with the
        clipped learned log-std (``eps = 0``: ``tanh(mean)``), discrete its logits."""
        c = self.config
        head = self.space.export_head("linear", (c.log_std_min, c.log_std_max), "tanh")
        return policy_card(self.params["policy"], head)
