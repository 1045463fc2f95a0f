"""MA-TD3+BC: TD3+BC with decentralised actors and per-agent twin critics mixed into Q_tot.

TD3+BC ("A Minimalist Approach to Offline Reinforcement Learning", Fujimoto & Gu, NeurIPS 2021,
arXiv 2106.06860) adds a behaviour-cloning term to TD3's deterministic policy gradient and scales
the Q term by a data-independent ``lambda``. Its multi-agent form is the MA-TD3+BC baseline of
OMAR (Pan et al., ICML 2022, arXiv 2111.11188) and OG-MARL (arXiv 2302.00521): shared-weight
decentralised actors ``mu(o_i, id_i)`` and per-agent critics. Here the per-agent twin critics
are mixed (IGM) as in MAC-Flow, so the team value is learnt from the team reward. In our
notation (unit actions in [-1, 1]):

1. Critic: ``Q_tot^h = Mix(Q_1^h(o_1, a_1), ..., Q_N^h(o_N, a_N); s)`` for the twin heads
   ``h = 1, 2`` (VDN sum; QMIX as an option), trained on
   ``L_Q = E sum_h (Q_tot^h(s, a) - y)^2`` with
   ``y = r + gamma * bootstrap * min_h Q'_tot^h(s', a')``,
   ``a'_i = clip(mu'(o'_i) + clip(eps, -c, c), -1, 1)``, ``eps ~ N(0, sigma^2)`` (target policy
   smoothing); the bootstrap mask is 0 only after a terminal.
2. Actor, every ``policy_delay`` critic updates:
   ``L_pi = -lambda * Q_tot^1(s, mu(o)) + mean_i ||mu(o_i) - a_i||^2 / D``,
   ``lambda = alpha / mean |Q_tot^1(s, mu(o))|`` (stop-gradient), ``alpha = 2.5``.
   The BC term is averaged over agents, so each agent's trade-off between its utility and its
   own BC term is TD3+BC's single-agent one (``Q_tot`` sums N utilities, ``lambda`` ~ 1/N).
3. Targets: Polyak averaging of the actor and of the critic (+ mixer) on the delayed steps only.

Discrete actions (toy/coordination, SMAX) are a departure (TD3+BC is continuous only): the actor
outputs legal-masked logits; the Q term uses the expected utility ``sum_a pi_i(a) Q_i^1(o_i, a)``
of its softmax (MAC-Flow's discrete branch; an argmax gives zero gradient), the BC term is the
cross-entropy to the dataset action, and the TD target's next actions are the target actor's
legal argmax (no smoothing noise). Unlike TD3+BC's MSE, the cross-entropy's pull toward the
data never vanishes, so the softmax does not saturate: where the data play the optimum with
marginal ``m`` and the (additive, VDN-exact) Q prefers it, each agent's optimum is
``p = (m + alpha) / (1 + alpha)`` (toy/coordination, ``m = 0.525``: 0.86 at alpha 2.5, 0.98 at 25;
the greedy ``zero`` mode plays the optimum either way).

Other departures (and why):
- No observation normalisation (TD3+BC standardises states by dataset statistics): every
  algorithm here sees the same raw inputs.
- The delayed update runs under ``jit``: actor gradients are computed every update and applied
  (with the target updates) only when the update counter is a multiple of ``policy_delay``, by
  a select rather than Python branching, so the update stays vmappable over seeds.
- ``sample`` mode adds Gaussian noise of std ``act_noise`` (TD3's exploration noise, 0.1) to the
  deterministic continuous action, clipped to the bounds; ``zero`` is the deterministic action.
  Discrete ``sample`` draws from the masked softmax, ``zero`` takes its legal argmax.
- Networks are this library's MLPs (GELU hidden layers) rather than TD3's ReLU ones.

Presets: ``paper`` = TD3+BC's hyper-parameters (2 x 256 actor and critic, Adam 3e-4, gamma 0.99,
tau 0.005, alpha 2.5, smoothing noise 0.2 clipped at 0.5, policy delay 2, VDN mixing, no
LayerNorm), the same for both action kinds.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

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
    mix,
    policy_card,
    polyak,
    small,
)
from macflow.nn import MLP, Critic, QMixer, agent_ids, pick, utilities
from macflow.spec import EnvSpec

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MATD3BCConfig:
    """MA-TD3+BC hyper-parameters (the ``paper`` preset's values are the defaults)."""

    actor_hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the shared deterministic actor."""
    critic_hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the shared per-agent twin critic."""
    critic_layer_norm: bool = False
    """LayerNorm in the critic's hidden layers (TD3+BC has none; MAC-Flow's critic does)."""
    mixer: Literal["vdn", "qmix"] = "vdn"
    """IGM mixing of the per-agent utilities: VDN sum or QMIX's monotone state hypernetwork."""
    discount: float = 0.99
    """Discount gamma."""
    tau: float = 0.005
    """Polyak rate of the target actor and critic."""
    alpha: float = 2.5
    """TD3+BC's alpha: ``lambda = alpha / mean |Q_tot|``; large = more Q, small = more BC."""
    policy_noise: float = 0.2
    """Continuous: std of the target policy smoothing noise (unit action scale)."""
    noise_clip: float = 0.5
    """Continuous: the smoothing noise is clipped to ``[-noise_clip, noise_clip]``."""
    policy_delay: int = 2
    """Actor and target updates happen once every this many critic updates."""
    act_noise: float = 0.1
    """Continuous ``sample`` mode: std of the Gaussian noise added to the deterministic action
    (0 makes ``sample`` equal ``zero``)."""
    lr: float = 3e-4
    """Adam learning rate of the actor and the critic (+ mixer)."""

    def __post_init__(self):
        check_config(self)
        if not self.actor_hidden or not self.critic_hidden:
            raise ValueError("actor_hidden and critic_hidden must be non-empty")
        if min(self.actor_hidden + self.critic_hidden) < 1:
            raise ValueError("hidden widths must be positive")
        if self.mixer not in ("vdn", "qmix"):
            raise ValueError(f"mixer must be 'vdn' or 'qmix', got {self.mixer!r}")
        if not 0 <= self.discount <= 1 or not 0 < self.tau <= 1:
            raise ValueError(f"need 0 <= discount <= 1 and 0 < tau <= 1: {self}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if min(self.policy_noise, self.noise_clip, self.act_noise) < 0:
            raise ValueError("policy_noise, noise_clip and act_noise must be >= 0")
        if self.policy_delay < 1:
            raise ValueError(f"policy_delay must be >= 1, got {self.policy_delay}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def _paper(spec: EnvSpec) -> MATD3BCConfig:
    return MATD3BCConfig()


class MATD3BC(AgentBase, struct.PyTreeNode):
    """Actor, twin critic (+ mixer), their targets, optimiser states, update counter and RNG."""

    rng: Array
    updates: Array
    """Critic updates done so far (int32): the policy delay's clock."""
    params: dict[str, Any]
    target: dict[str, Any]
    opt: dict[str, Any]
    config: MATD3BCConfig = struct.field(pytree_node=False)
    spec: EnvSpec = struct.field(pytree_node=False)

    Config = MATD3BCConfig
    centralised = False
    presets = {"paper": _paper, "small": small(_paper)}

    # --- networks --------------------------------------------------------------------------

    def _actor(self) -> MLP:
        return MLP(self.config.actor_hidden, self.space.size)

    def _critic(self) -> Critic:
        return self.space.critic(self.config.critic_hidden, 2, self.config.critic_layer_norm)

    @classmethod
    def create(cls, key: Array, spec: EnvSpec, config: MATD3BCConfig) -> MATD3BC:
        n, d = spec.num_agents, spec.action_dim
        obs, x = jnp.zeros((1, n, spec.obs_dim)), jnp.zeros((1, n, d))
        shell = cls(
            rng=key, updates=jnp.int32(0), params={}, target={}, opt={}, config=config, spec=spec
        )
        k_a, k_c, k_m, rng = jax.random.split(key, 4)
        mixer = {}
        if config.mixer == "qmix":
            mixer = QMixer().init(k_m, jnp.zeros((1, n)), jnp.zeros((1, spec.state_dim)))
        params = {
            "actor": shell._actor().init(k_a, jnp.zeros((1, n, spec.obs_dim + n))),
            "critic": shell._critic().init(k_c, obs, shell.space.critic_input(x)),
            "mixer": mixer,
        }
        opt = {
            "actor": optax.adam(config.lr).init(params["actor"]),
            "critic": optax.adam(config.lr).init((params["critic"], params["mixer"])),
        }
        return shell.replace(rng=rng, params=params, target=params, opt=opt)

    @classmethod
    def stages(cls, config: MATD3BCConfig, steps: int) -> list[Stage]:
        return [Stage("td3bc", steps, True)]

    def prepare(self, sampler, stage: str):
        return None

    # --- pieces ----------------------------------------------------------------------------

    def _actor_out(self, params, obs: Array) -> Array:
        """Continuous: the deterministic unit action (tanh); discrete: raw logits."""
        ids = agent_ids(obs.shape[:-2], self.spec.num_agents)
        return self.space.squash(self._actor().apply(params, jnp.concatenate([obs, ids], axis=-1)))

    def _utilities(self, params, obs: Array, actions: Array) -> Array:
        """Per-agent twin utilities ``[2, B, N]`` of unit actions or action indices."""
        return utilities(self._critic(), params, obs, actions)

    def _mix(self, params, q: Array, states: Array) -> Array:
        """``[..., N]`` utilities -> ``[...]`` team value."""
        return mix(self.config.mixer, params, q, states)

    def td_target(self, batch, key) -> Array:
        """``r + gamma * bootstrap * min_h Q'_tot^h(s', a')`` with the target actor's smoothed
        (continuous) or legal-argmax (discrete) next actions."""
        c = self.config
        out = self._actor_out(self.target["actor"], batch.next_observations)
        if self.spec.discrete:  # no smoothing: the legal argmax
            next_a = self.space.decode(out, batch.next_legal_actions)
        else:
            noise = c.policy_noise * jax.random.normal(key, out.shape)
            next_a = jnp.clip(out + jnp.clip(noise, -c.noise_clip, c.noise_clip), -1.0, 1.0)
        q = self._utilities(self.target["critic"], batch.next_observations, next_a)
        q_next = self._mix(self.target["mixer"], q, batch.next_states).min(axis=0)
        return jax.lax.stop_gradient(batch.rewards + c.discount * batch.bootstrap * q_next)

    def critic_loss(self, critic_mixer, batch, key) -> tuple[Array, dict]:
        critic, mixer = critic_mixer
        y = self.td_target(batch, key)
        actions = self.space.from_env(batch.actions)
        q = self._mix(mixer, self._utilities(critic, batch.observations, actions), batch.states)
        w = batch.valid / batch.valid.sum()
        loss = (((q - y) ** 2).sum(axis=0) * w).sum()
        return loss, {"critic/td_loss": loss, "critic/q_mean": q.mean(), "critic/target": y.mean()}

    def actor_loss(self, actor, batch) -> tuple[Array, dict]:
        """``-lambda * Q_tot^1(s, mu(o)) + BC``, ``lambda = alpha / mean |Q_tot^1|`` (sg)."""
        out = self._actor_out(actor, batch.observations)
        actions = self.space.from_env(batch.actions)
        if self.spec.discrete:  # cross-entropy; the critic scores the softmax
            logp = jax.nn.log_softmax(masked_logits(out, batch.legal_actions))
            bc, policy = -pick(logp, actions), jnp.exp(logp)
        else:
            bc, policy = ((out - actions) ** 2).mean(axis=-1), out
        q = self.space.utility(self._critic(), self.params["critic"], batch.observations, policy, 0)
        q_tot = self._mix(self.params["mixer"], q, batch.states)
        w = batch.valid / batch.valid.sum()
        lam = jax.lax.stop_gradient(
            self.config.alpha / jnp.maximum((jnp.abs(q_tot) * w).sum(), 1e-6)
        )
        q_term = (q_tot * w).sum()
        bc_term = (bc.mean(axis=-1) * w).sum()
        loss = -lam * q_term + bc_term
        return loss, {
            "actor/loss": loss,
            "actor/bc": bc_term,
            "actor/q": q_term,
            "actor/lambda": lam,
        }

    # --- the interface ---------------------------------------------------------------------

    @functools.partial(jax.jit, static_argnames=("stage",))
    def update(self, batch, stage: str, aux=None) -> tuple[MATD3BC, dict[str, Array]]:
        """One critic update; every ``policy_delay``-th call also an actor and target update."""
        c = self.config
        rng, k_critic = jax.random.split(self.rng)
        params, opt = dict(self.params), dict(self.opt)
        cm = (params["critic"], params["mixer"])
        grads, info = jax.grad(self.critic_loss, has_aux=True)(cm, batch, k_critic)
        (params["critic"], params["mixer"]), opt["critic"] = adam_step(
            c.lr, cm, grads, opt["critic"]
        )

        # TD3 differentiates the actor loss through the freshly updated critic.
        fresh = self.replace(params=params)
        grads, i = jax.grad(fresh.actor_loss, has_aux=True)(params["actor"], batch)
        info.update(i)
        actor, actor_opt = adam_step(c.lr, params["actor"], grads, opt["actor"])
        target = polyak(self.target, {**params, "actor": actor}, c.tau)

        delayed = (self.updates + 1) % c.policy_delay == 0
        keep = lambda new, old: jax.tree.map(lambda x, y: jnp.where(delayed, x, y), new, old)  # noqa: E731
        params["actor"] = keep(actor, params["actor"])
        opt["actor"] = keep(actor_opt, opt["actor"])
        target = keep(target, self.target)
        info["actor/updated"] = delayed.astype(jnp.float32)
        new = self.replace(rng=rng, updates=self.updates + 1, params=params, opt=opt, target=target)
        return new, info

    @functools.partial(jax.jit, static_argnames=("mode",))
    def act(self, key: Array, observations: Array, legal: Array | None, mode: str = "sample",
            states: Array | None = None):  # fmt: skip
        """Each agent acts on its own observation (``states`` is ignored)."""
        out = self._actor_out(self.params["actor"], observations)
        a = self.space.act(out, legal, mode, key, std=self.config.act_noise)
        return self.space.to_env(a)

    def export_policy(self) -> dict:
        """The actor for ``macflow export``: ``clip(tanh(out) + act_noise * eps)`` (continuous;
        ``eps = 0`` in the zero mode), or its logits (discrete)."""
        head = self.space.export_head("tanh", self.config.act_noise, "clip")
        return policy_card(self.params["actor"], head)
