"""MAC-Flow: a joint flow teacher distilled into decentralised one-step students, IGM critic.

Equations of the paper (arXiv 2511.05005), in our notation; actions live in [-1, 1] (continuous)
or as one-hot vectors (discrete), the joint action being ``x = (a_1, ..., a_N)``:

1. Flow matching (behaviour model, stage 1): ``x_t = (1 - t) x_0 + t x_1`` with ``x_0 ~ N(0, I)``,
   ``L_flow = E || v(x_t, t, s) - (x_1 - x_0) ||^2``. The teacher ``a* = Flow_K(z; s)`` integrates
   v with K Euler steps from the joint noise ``z = (z_1, ..., z_N)``.
   Discrete actions (``x_1 = onehot(a)``), ``teacher_param="posterior"`` (our extension, the
   default; docs/macflow.md derives it): per-agent posteriors on the same path,
   ``pi_i(. | x_t, t, s, legal) = softmax(masked (l_i + f_i))`` with ``l_i = t x_t,i / (1 - t)^2``
   the path's exact log-likelihood and the network ``f`` also reading every agent's
   ``softmax(l_j)`` (``posterior_form="bayes"``; ``"plain"``: ``f`` alone), trained by
   cross-entropy ``L = E mean_i -log pi_i(a_i | x_t, t, s)``. The velocity it implies is
   ``E[x_1 - x_0 | x_t] = (pi - x_t) / (1 - t)``; K - 1 Euler steps with it, then the action is
   drawn from ``pi`` at ``t = (K - 1) / K`` with the Gumbel part g of the joint noise
   (``argmax log pi + g``; zero noise: ``argmax pi``). With K = 1 it is categorical BC on the
   state. ``teacher_param="velocity"`` is the paper's regression onto one-hots + legal argmax.
2. Distillation under the noise coupling: ``L_dist = E mean_i || mu(o_i, id_i, z_i) - a*_i ||^2``
   (discrete: ``KL(pi*_i || softmax(masked mu_i))`` to the teacher's per-agent probabilities for
   the same z with ``distill="soft"``; cross-entropy to its sampled label with ``"hard"``). Summed
   over agents it bounds ``W2^2(joint, product of students)``; ``actor/w2_proxy`` logs its
   square root.
3. IGM critic: ``Q_tot = Mix(Q_1(o_1, a_1), ..., Q_N(o_N, a_N); s)`` (VDN or QMIX), TD target
   ``r + gamma * bootstrap * Q'_tot(s', a')`` with ``a'`` from the current students and the
   bootstrap mask 0 only after a terminal (heads averaged, or their minimum with ``q_agg="min"``).
   Discrete, ``cql > 0`` (CQL, arXiv 2006.04779): ``+ cql * E mean_i [logsumexp_a Q_i(o_i, a) -
   Q_i(o_i, a_i)]`` keeps the utilities of actions the data never took below the data's. The
   ``independent`` mixer is the "without IGM mixing" ablation: each utility regresses the team
   target on its own,
   ``y_i = r + gamma * bootstrap * Q'_i(o'_i, a'_i)`` (independent learners, no factorisation of
   ``Q_tot``), and the actor's Q term is ``sum_i Q_i``.
4. Policy extraction: ``L_actor = alpha * L_dist - lambda * Q_tot(students' actions)``,
   ``lambda = sg(1 / mean |Q_tot|)``. Discrete students feed Q with their legal-masked softmax
   (expected utility ``sum_a pi_i(a) Q_i(a)``), so the Q term really reaches them (the public
   code's argmax gives zero gradient).

Presets: ``paper`` (joint teacher on the state, two stages; discrete: the posterior teacher,
soft targets, ``q_agg="min"``, ``cql=1``) and ``reference`` (the public code's
choices: per-agent teacher, simultaneous losses, VDN-mean, its widths, alpha and discount; without
its bugs). ``shared_noise`` gives every student the whole joint noise, drawn from a seed all agents
share at execution, so decentralised students can reproduce correlated modes such as XOR.
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
    categorical_kl,
    check_config,
    masked_logits,
    mix,
    policy_card,
    polyak,
    small,
)
from macflow.nn import JointVelocity, PerAgentVelocity, QMixer, Student, agent_ids, pick, utilities
from macflow.spec import EnvSpec

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MACFlowConfig:
    """MAC-Flow hyper-parameters (the ``paper`` preset's values are the defaults)."""

    teacher: Literal["joint", "per-agent"] = "joint"
    """``joint``: one velocity field over all agents' actions, conditioned on the global state.
    ``per-agent``: the public code's shared-weight field on each agent's own observation."""
    teacher_obs: bool = False
    """The joint teacher also sees every agent's observation (besides the state)."""
    teacher_param: Literal["posterior", "velocity"] = "posterior"
    """Discrete actions only (a continuous teacher always regresses the velocity).
    ``posterior``: the field reads ``(x_t, t, s, every agent's legal mask)`` and outputs
    per-agent logits of the data's action, trained by cross-entropy; sampling integrates the
    velocity they imply, ``(pi - x_t) / (1 - t)``, and draws the action from the last step's
    ``pi`` with the joint noise's Gumbel part. ``velocity``: the paper's MSE regression of
    ``x_1 - x_0`` onto one-hot targets, decoded by the legal argmax."""
    posterior_form: Literal["bayes", "plain"] = "bayes"
    """Posterior teacher's logits. ``bayes``: Bayes' rule on the path, ``l_i + f``, with
    ``l_i = t x_t,i / (1 - t)^2`` agent i's exact Gaussian log-likelihood and the network ``f``
    also reading every agent's normalised likelihood ``softmax(masked l_j)``, of which the
    exact correction (the prior given the state and the other agents' evidence) is a smooth
    function. ``plain``: the network's logits alone (docs/macflow.md compares both)."""
    distill: Literal["soft", "hard"] = "soft"
    """Discrete only: what the students distil for the teacher's joint noise. ``soft``: its
    per-agent probabilities (KL to them); ``hard``: its sampled label (cross-entropy, the
    paper). A velocity teacher has no probabilities, so its label is the target either way."""
    teacher_hidden: tuple[int, ...] = (512, 512, 512, 512)
    """Hidden widths of the velocity field."""
    flow_steps: int = 10
    """Euler steps K of the teacher."""
    student_hidden: tuple[int, ...] = (512, 512, 512, 512)
    """Hidden widths of the one-step student."""
    shared_noise: bool = False
    """Every student also sees the whole joint noise (needs a seed shared by all agents)."""
    critic_hidden: tuple[int, ...] = (512, 512, 512, 512)
    """Hidden widths of the per-agent critic (with LayerNorm)."""
    critic_heads: int = 2
    """Critic ensemble size."""
    mixer: Literal["vdn", "vdn-mean", "qmix", "independent"] = "vdn"
    """IGM mixing: VDN sum, VDN mean (the public code), or QMIX's monotone hypernetwork.
    ``independent`` (the "without IGM mixing" ablation) trains each ``Q_i(o_i, a_i)`` on the team
    target ``r + gamma * bootstrap * Q'_i(o'_i, a'_i)`` by itself, so no ``Q_tot`` is factorised
    and IGM is not guaranteed; the actor's Q term is ``sum_i Q_i``."""
    cql: float = 0.0
    """Discrete only: weight of a conservative penalty on the per-agent utilities,
    ``E mean_i [logsumexp_a Q_i(o_i, a) - Q_i(o_i, a_i)]`` over legal actions (CQL's), added to the
    TD loss. Without it the expected-utility Q term pushes the students onto actions the data
    never took, whose utilities the critic has never been trained on (the ``paper`` preset uses
    1 for discrete tasks; docs/results.md)."""
    q_agg: Literal["mean", "min"] = "mean"
    """How the target heads are combined: their mean, or their minimum (TD3's clipped double
    Q; the ``paper`` preset's choice for discrete tasks)."""
    discount: float = 0.99
    """Discount gamma."""
    tau: float = 0.005
    """Polyak rate of the target critic."""
    alpha: float = 1.0
    """Weight of the distillation loss."""
    q_weight: float = 1.0
    """Weight of the Q term; 0 gives flow BC + distillation (the "without Q" ablation)."""
    normalize_q: bool = True
    """Scale the Q term by ``1 / mean |Q_tot|`` (stop-gradient)."""
    schedule: Literal["two-stage", "simultaneous"] = "two-stage"
    """``two-stage``: train the teacher, freeze it, then critic + students. ``simultaneous``:
    every loss from the first update (the public code)."""
    teacher_steps: int = 100_000
    """Updates of stage 1 (two-stage schedule only)."""
    teacher_cache: int = 4
    """Two-stage only: when stage 2 starts, the frozen teacher's targets are computed once for
    this many noise draws per dataset row and looked up afterwards (the noise is regenerated from
    a stored key, so only the targets take memory: per row ``4 M N D`` bytes continuous,
    ``2 M N A`` discrete soft (float16), ``M N`` discrete hard). 0: run the teacher on every
    update."""
    lr: float = 3e-4
    """Adam learning rate of every network."""

    def __post_init__(self):
        check_config(self)
        if (
            self.flow_steps < 1
            or self.critic_heads < 1
            or min(self.teacher_steps, self.teacher_cache) < 0
        ):
            raise ValueError(
                f"need flow_steps, critic_heads >= 1, teacher_steps/cache >= 0: {self}"
            )
        choices = {
            "teacher_param": ("posterior", "velocity"),
            "posterior_form": ("bayes", "plain"),
            "distill": ("soft", "hard"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")


def _noise(key: Array, shape: tuple[int, ...], mode: str) -> Array:
    """Joint noise of the acting mode: zeros (``zero``) or a Gaussian draw (``sample``)."""
    return jnp.zeros(shape) if mode == "zero" else jax.random.normal(key, shape)


def _paper(spec: EnvSpec) -> MACFlowConfig:
    if not spec.discrete:
        return MACFlowConfig(alpha=1.0)
    # Discrete (docs/results.md, SMAX tuning): clipped double-Q targets, since with the mean of
    # the heads one seed of three on smax/3m medium overestimated (Q_tot 5.2 where returns are
    # at most 2) and collapsed; and conservative utilities, since without them the students
    # collapsed on smax/3m good and smax/5m_vs_6m medium by exploiting untrained actions.
    return MACFlowConfig(alpha=3.0, q_agg="min", cql=1.0)


def _reference(spec: EnvSpec) -> MACFlowConfig:
    discrete = spec.discrete
    width = (256,) * 4 if discrete else (512,) * 4
    return MACFlowConfig(
        teacher="per-agent",
        teacher_param="velocity",
        distill="hard",
        teacher_hidden=width,
        student_hidden=width,
        critic_hidden=width,
        mixer="vdn" if discrete else "vdn-mean",
        discount=0.99 if discrete else 0.995,
        alpha=3.0 if discrete else 1.0,
        normalize_q=not discrete,
        schedule="simultaneous",
    )


def _quickstart(spec: EnvSpec) -> MACFlowConfig:
    # `macflow quickstart` (make run): widths and steps sized for minutes on a 2-core CPU (the
    # paper uses 4x512 and 1M updates). alpha 0.1 (paper: 1): measured on the quickstart's
    # mpe/spread medium data (3000+3000 updates, 2 seeds), the sampled-noise normalised score
    # is 57 / 61 / 73 at alpha 1 / 0.3 / 0.1 (data: 52).
    hidden = (128, 128)
    return dataclasses.replace(
        _paper(spec),
        teacher_hidden=hidden,
        student_hidden=hidden,
        critic_hidden=hidden,
        alpha=0.1,
        lr=1e-3,
        teacher_steps=3000,
    )


class MACFlow(AgentBase, struct.PyTreeNode):
    """Teacher, students, critic (+ mixer) and their targets, optimiser states and RNG."""

    rng: Array
    cache_key: Array
    """Fixed at creation: the noise of the teacher cache must not depend on when it is built
    (a resumed run rebuilds it and must see the same draws)."""
    params: dict[str, Any]
    target: dict[str, Any]
    opt: dict[str, Any]
    config: MACFlowConfig = struct.field(pytree_node=False)
    spec: EnvSpec = struct.field(pytree_node=False)

    Config = MACFlowConfig
    centralised = False
    presets = {
        "paper": _paper,
        "reference": _reference,
        "small": small(_paper),
        "quickstart": _quickstart,
    }

    # --- networks, rebuilt from static config (cheap; only their parameters are state) ------

    @property
    def _dim(self) -> int:
        return self.spec.action_dim

    @property
    def _posterior(self) -> bool:
        """The discrete teacher predicts per-agent probabilities (not a velocity)."""
        return self.spec.discrete and self.config.teacher_param == "posterior"

    @property
    def _soft(self) -> bool:
        """The students distil the teacher's probabilities (not its sampled labels)."""
        return self._posterior and self.config.distill == "soft"

    def _teacher(self):
        c = self.config
        if c.teacher == "joint":
            return JointVelocity(c.teacher_hidden, use_obs=c.teacher_obs)
        return PerAgentVelocity(c.teacher_hidden)

    def _student(self):
        return Student(self.config.student_hidden, self.space.size)

    def _critic(self):
        return self.space.critic(self.config.critic_hidden, self.config.critic_heads)

    @classmethod
    def create(cls, key: Array, spec: EnvSpec, config: MACFlowConfig) -> MACFlow:
        n, d = spec.num_agents, spec.action_dim
        obs = jnp.zeros((1, n, spec.obs_dim))
        state = jnp.zeros((1, spec.state_dim))
        x = jnp.zeros((1, n, d))
        shell = cls(rng=key, cache_key=key, params={}, target={}, opt={}, config=config, spec=spec)
        k_t, k_s, k_c, k_m, rng = jax.random.split(key, 5)
        shared = x.reshape(1, -1) if config.shared_noise else None
        masks = ()
        if shell._posterior:
            masks = (jnp.ones(x.shape, bool),) + (x,) * (config.posterior_form == "bayes")
        params = {
            "teacher": shell._teacher().init(k_t, x, jnp.zeros(1), state, obs, *masks),
            "student": shell._student().init(k_s, obs, agent_ids((1,), n), x, shared),
            "critic": shell._critic().init(k_c, obs, shell.space.critic_input(x)),
            "mixer": QMixer().init(k_m, jnp.zeros((1, n)), state) if config.mixer == "qmix" else {},
        }
        opt = {
            "teacher": optax.adam(config.lr).init(params["teacher"]),
            "student": optax.adam(config.lr).init(params["student"]),
            "critic": optax.adam(config.lr).init((params["critic"], params["mixer"])),
        }
        target = {"critic": params["critic"], "mixer": params["mixer"]}
        cache_key = jax.random.fold_in(key, 0xCAC4E)
        return shell.replace(rng=rng, cache_key=cache_key, params=params, target=target, opt=opt)

    @classmethod
    def stages(cls, config: MACFlowConfig, steps: int) -> list[Stage]:
        if config.schedule == "two-stage":
            policy = Stage("policy", steps, True, prepare=config.teacher_cache > 0)
            return [Stage("teacher", config.teacher_steps, False), policy]
        return [Stage("all", steps, True)]

    # --- the pieces of the method ------------------------------------------------------------

    def _targets(self, batch) -> Array:
        """Dataset actions as flow targets x_1: [-1, 1] vectors or one-hots, ``[B, N, D]``."""
        return self.space.vectors(self.space.from_env(batch.actions))

    def _field(self, params, x: Array, t: Array, states, obs, legal) -> Array:
        """The teacher's output ``[B, N, D]``: a velocity, or logits (posterior: the network also
        reads the legal masks, a task without masks has every action legal, and adds the exact
        likelihood in the ``bayes`` form)."""
        if not self._posterior:
            return self._teacher().apply(params, x, t, states, obs)
        mask = jnp.ones(x.shape, bool) if legal is None else legal
        if self.config.posterior_form == "plain":
            return self._teacher().apply(params, x, t, states, obs, mask)
        # log N(x_t,i; t e_a, (1 - t)^2 I) = t x_t,i,a / (1 - t)^2 + terms free of a.
        loglik = (t / jnp.maximum(1 - t, 1e-3) ** 2)[:, None, None] * x
        evidence = jax.nn.softmax(masked_logits(loglik, mask))
        return loglik + self._teacher().apply(params, x, t, states, obs, mask, evidence)

    def _probs(self, params, x: Array, t: Array, states, obs, legal) -> Array:
        """Posterior teacher: ``pi(a_i | x_t, t, s)`` ``[B, N, A]``, 0 on illegal actions."""
        return jax.nn.softmax(masked_logits(self._field(params, x, t, states, obs, legal), legal))

    def teacher_flow(self, params, noise: Array, states: Array, obs: Array, legal) -> Array:
        """Integrate the flow from joint noise ``[B, N, D]`` with K Euler steps: its end point.

        Velocity field: ``x_K``. Posterior (discrete): K - 1 steps of ``(pi - x_t) / (1 - t)``
        from ``t = 0``, then ``pi`` at ``t_{K-1} = (K - 1) / K``, where the K-th step lands
        exactly (``x_{K-1} + (pi - x_{K-1}) / (1 - t_{K-1}) / K = pi``): per-agent probabilities.
        """
        k = self.config.flow_steps

        if self._posterior:

            def euler(x, i):
                t = jnp.full(x.shape[:1], i / k)
                pi = self._probs(params, x, t, states, obs, legal)
                return x + (pi - x) / jnp.maximum(1 - i / k, 1e-3) / k, None

            x, _ = jax.lax.scan(euler, noise, jnp.arange(k - 1))
            return self._probs(params, x, jnp.full(x.shape[:1], (k - 1) / k), states, obs, legal)

        def euler(x, i):
            t = jnp.full(x.shape[:1], i / k)
            return x + self._field(params, x, t, states, obs, legal) / k, None

        x, _ = jax.lax.scan(euler, noise, jnp.arange(k))
        return x

    def _decode(self, end: Array, legal, gumbel: Array | None) -> Array:
        """The flow's end point -> actions: clipped to [-1, 1] (continuous); discrete indices
        ``[B, N]``: posterior ``argmax log pi + g`` (``argmax pi`` without Gumbel noise),
        velocity the legal argmax."""
        if not self._posterior:
            return self.space.decode(end, legal)
        if gumbel is None:
            return jnp.argmax(end, axis=-1)
        return jnp.argmax(jnp.log(end) + gumbel, axis=-1)  # log 0 = -inf: never illegal

    def teacher_sample(
        self, params, noise: Array, states: Array, obs: Array, legal, gumbel: Array | None = None
    ) -> Array:
        """The teacher's actions for joint noise ``(z, g)``: ``z`` ``[B, N, D]`` Gaussian and,
        for a sampling posterior teacher, ``g`` ``[B, N, A]`` Gumbel (None: its argmax).

        Returns actions in [-1, 1] (continuous) or legal indices ``[B, N]`` (discrete).
        """
        return self._decode(self.teacher_flow(params, noise, states, obs, legal), legal, gumbel)

    def _student_out(self, params, obs: Array, noise: Array) -> Array:
        shared = noise.reshape(*noise.shape[:-2], -1) if self.config.shared_noise else None
        ids = agent_ids(obs.shape[:-2], self.spec.num_agents)
        return self._student().apply(params, obs, ids, noise, shared)

    def _policy(self, params, key, obs, legal, mode: str) -> Array:
        """Students' actions in the agent's own space: [-1, 1] vectors, or indices."""
        shape = (*obs.shape[:-1], self._dim)
        noise = _noise(key, shape, mode)
        out = self.space.squash(self._student_out(params, obs, noise))
        return self.space.act(out, legal, mode, jax.random.fold_in(key, 1))

    def _utilities(self, params, obs: Array, actions: Array) -> Array:
        """Per-agent Q of the given actions, ``[H, B, N]``."""
        return utilities(self._critic(), params, obs, actions)

    def _mix(self, params, q: Array, states: Array) -> Array:
        """``[..., N]`` utilities -> ``[...]`` team value (the actor's Q term)."""
        return mix(self.config.mixer, params, q, states)

    # --- the frozen teacher's cached targets (two-stage) ---------------------------------------

    def _cache_noise(self, key: Array, row: Array) -> tuple[Array, Array]:
        """The ``[M, N, D]`` Gaussian and Gumbel draws of one dataset row, regenerated from the
        cache key (the Gumbel part only serves a hard-label posterior teacher)."""
        shape = (self.config.teacher_cache, self.spec.num_agents, self._dim)
        k = jax.random.fold_in(key, row)
        return jax.random.normal(k, shape), jax.random.gumbel(jax.random.fold_in(k, 1), shape)

    def _teacher_target(self, noise, gumbel, states, obs, legal) -> Array:
        """What the students distil for joint noise ``(z, g)``: [-1, 1] actions (continuous),
        the teacher's per-agent probabilities ``[B, N, A]`` (soft), or its labels ``[B, N]``."""
        end = self.teacher_flow(self.params["teacher"], noise, states, obs, legal)
        return end if self._soft else self._decode(end, legal, gumbel)

    def prepare(self, sampler, stage: str):
        """Stage 2: the frozen teacher's targets for M noise draws of every dataset row."""
        m = self.config.teacher_cache
        if stage != "policy" or m == 0:
            return None
        key = self.cache_key
        rows_total = sampler.num_transitions
        size = min(1024, rows_total)
        # Probabilities in [0, 1]: half precision keeps ~3 significant digits.
        dtype = jnp.float16 if self._soft else self.space.storage_dtype

        def block(i):
            rows = jnp.minimum(i * size + jnp.arange(size), rows_total - 1)
            b = sampler.gather(rows)
            noise, gumbel = jax.vmap(lambda r: self._cache_noise(key, r))(rows)  # [C, M, N, D]
            rep = lambda x: None if x is None else jnp.repeat(x, m, axis=0)  # noqa: E731
            flat = lambda x: x.reshape(size * m, *x.shape[2:])  # noqa: E731
            out = self._teacher_target(
                flat(noise), flat(gumbel), rep(b.states), rep(b.observations), rep(b.legal_actions)
            )
            return out.reshape(size, m, *out.shape[1:]).astype(dtype)

        blocks = jax.lax.map(block, jnp.arange(-(-rows_total // size)))
        targets = blocks.reshape(-1, *blocks.shape[2:])[:rows_total]
        return {"key": key, "targets": targets}

    def _distill_pair(self, batch, key, aux) -> tuple[Array, Array]:
        """Joint noise ``[B, N, D]`` and the frozen teacher's target for it: [-1, 1] actions
        (continuous) or per-agent probabilities ``[B, N, A]`` (a one-hot for a label)."""
        if aux is None:
            shape = (*batch.observations.shape[:-1], self._dim)
            noise = jax.random.normal(key, shape)
            target = self._teacher_target(
                noise,
                jax.random.gumbel(jax.random.fold_in(key, 1), shape),
                batch.states,
                batch.observations,
                batch.legal_actions,
            )
        else:
            draw = jax.random.randint(key, batch.index.shape, 0, self.config.teacher_cache)
            noise = jax.vmap(lambda r, j: self._cache_noise(aux["key"], r)[0][j])(batch.index, draw)
            target = aux["targets"][batch.index, draw]
        if self._soft:
            target = target.astype(jnp.float32)
            target = target / target.sum(axis=-1, keepdims=True)  # undo float16 rounding
        else:  # a label becomes a one-hot
            target = self.space.vectors(target)
        return noise, jax.lax.stop_gradient(target)

    # --- losses -------------------------------------------------------------------------------

    def flow_loss(self, params, batch, key) -> tuple[Array, dict]:
        x1 = self._targets(batch)
        k_noise, k_time = jax.random.split(key)
        x0 = jax.random.normal(k_noise, x1.shape)
        t = jax.random.uniform(k_time, x1.shape[:1])
        return self._flow_loss_at(params, batch, x0, t)

    def _flow_loss_at(self, params, batch, x0: Array, t: Array) -> tuple[Array, dict]:
        """The teacher's loss at given noise ``x0`` ``[B, N, D]`` and times ``t`` ``[B]``: the
        velocity regression, or the posterior's cross-entropy (mean over agents)."""
        x1 = self._targets(batch)
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
        out = self._field(params, xt, t, batch.states, batch.observations, batch.legal_actions)
        w = batch.valid / batch.valid.sum()
        if self._posterior:
            logits = masked_logits(out, batch.legal_actions)
            nll = -pick(jax.nn.log_softmax(logits), batch.actions)  # [B, N]
            loss = (nll.mean(axis=-1) * w).sum()
            hit = (jnp.argmax(logits, axis=-1) == batch.actions).mean(axis=-1)
            return loss, {"teacher/flow_loss": loss, "teacher/accuracy": (hit * w).sum()}
        err = ((out - (x1 - x0)) ** 2).mean(axis=(1, 2))
        loss = (err * w).sum()
        return loss, {"teacher/flow_loss": loss}

    def _regressed(self, params, q: Array, states: Array) -> Array:
        """What the TD loss fits: ``Q_tot`` ``[H, B]``, or each ``Q_i`` ``[H, B, N]`` when the
        mixer is ``independent``."""
        return q if self.config.mixer == "independent" else self._mix(params, q, states)

    def td_target(self, batch, key) -> Array:
        """``r + gamma * bootstrap * Q'_tot(s', a')`` ``[B]`` (per agent ``[B, N]`` with the
        ``independent`` mixer), ``a'`` from the current students (legal under the next state's
        mask); bootstrap is 0 only after a terminal."""
        c = self.config
        obs, legal = batch.next_observations, batch.next_legal_actions
        next_a = self._policy(self.params["student"], key, obs, legal, "sample")
        u = self._utilities(self.target["critic"], obs, next_a)
        q_next = self._regressed(self.target["mixer"], u, batch.next_states)
        q_next = q_next.min(axis=0) if c.q_agg == "min" else q_next.mean(axis=0)
        lead = (...,) + (None,) * (q_next.ndim - 1)  # the team reward reaches every agent
        y = batch.rewards[lead] + c.discount * batch.bootstrap[lead] * q_next
        return jax.lax.stop_gradient(y)

    def critic_loss(self, critic_mixer, batch, key) -> tuple[Array, dict]:
        critic, mixer = critic_mixer
        y = self.td_target(batch, key)
        actions = self.space.from_env(batch.actions)
        q = self._regressed(
            mixer, self._utilities(critic, batch.observations, actions), batch.states
        )
        err = ((q - y) ** 2).mean(axis=0)
        err = err.reshape(err.shape[0], -1).mean(axis=-1)  # independent: mean over agents
        w = batch.valid / batch.valid.sum()
        loss = (err * w).sum()
        info = {"critic/td_loss": loss, "critic/q_mean": q.mean(), "critic/target": y.mean()}
        if self.config.cql and self.spec.discrete:
            q_all = self._critic().apply(critic, batch.observations)  # [H, B, N, A]
            legal = (
                jnp.ones(q_all.shape[1:], bool)
                if batch.legal_actions is None
                else batch.legal_actions
            )
            lse = jax.nn.logsumexp(jnp.where(legal, q_all, -jnp.inf), axis=-1)
            gap = (lse - pick(q_all, actions[None])).mean(axis=(0, 2))  # [B]
            cql = (gap * w).sum()
            loss = loss + self.config.cql * cql
            info["critic/cql_gap"] = cql
        return loss, info

    def actor_loss(self, student, batch, key, aux=None) -> tuple[Array, dict]:
        c = self.config
        legal = batch.legal_actions
        noise, teacher = self._distill_pair(batch, key, aux)
        out = self.space.squash(self._student_out(student, batch.observations, noise))
        policy = self.space.relax(out, legal)  # unit actions, or legal softmax probabilities
        sq = ((policy - teacher) ** 2).sum(-1)
        # Discrete teachers give per-agent probabilities (soft, or a label's one-hot).
        per_agent = categorical_kl(teacher, masked_logits(out, legal)) if self.spec.discrete else sq
        if c.q_weight != 0:
            q = self.space.utility(
                self._critic(), self.params["critic"], batch.observations, policy
            )
        else:  # flow BC: distillation only, no critic evaluation
            q = jnp.zeros(per_agent.shape)
        q_tot = self._mix(self.params["mixer"], q, batch.states)
        scale = 1 / jnp.maximum(jnp.abs(q_tot).mean(), 1e-6) if c.normalize_q else 1.0
        scale = jax.lax.stop_gradient(scale)
        w = batch.valid / batch.valid.sum()
        distill = (per_agent.mean(axis=-1) * w).sum()
        q_term = (q_tot * w).sum()
        loss = c.alpha * distill - c.q_weight * scale * q_term
        info = {
            "actor/loss": loss,
            "actor/distill": distill,
            "actor/q": q_term,
            "actor/lambda": scale,
            "actor/w2_proxy": jnp.sqrt((sq.sum(axis=-1) * w).sum()),
        }
        return loss, info

    # --- the interface ------------------------------------------------------------------------

    @functools.partial(jax.jit, static_argnames=("stage",))
    def update(self, batch, stage: str, aux=None) -> tuple[MACFlow, dict[str, Array]]:
        """One update of the networks that ``stage`` trains (teacher / policy / all); ``aux`` is
        :meth:`prepare`'s cache of teacher targets, if any."""
        lr = self.config.lr
        rng, k_flow, k_critic, k_actor = jax.random.split(self.rng, 4)
        params, opt, target, info = dict(self.params), dict(self.opt), self.target, {}
        if stage in ("teacher", "all"):
            grads, i = jax.grad(self.flow_loss, has_aux=True)(params["teacher"], batch, k_flow)
            params["teacher"], opt["teacher"] = adam_step(
                lr, params["teacher"], grads, opt["teacher"]
            )
            info.update(i)
        if stage in ("policy", "all"):
            grads_s, i = jax.grad(self.actor_loss, has_aux=True)(
                params["student"], batch, k_actor, aux
            )
            info.update(i)
            if self.config.q_weight != 0:  # without the Q term the critic is never used
                cm = (params["critic"], params["mixer"])
                grads, i = jax.grad(self.critic_loss, has_aux=True)(cm, batch, k_critic)
                info.update(i)
                (params["critic"], params["mixer"]), opt["critic"] = adam_step(
                    lr, cm, grads, opt["critic"]
                )
                online = {"critic": params["critic"], "mixer": params["mixer"]}
                target = polyak(target, online, self.config.tau)
            params["student"], opt["student"] = adam_step(
                lr, params["student"], grads_s, opt["student"]
            )
        return self.replace(rng=rng, params=params, opt=opt, target=target), info

    @functools.partial(jax.jit, static_argnames=("mode",))
    def act(self, key: Array, observations: Array, legal: Array | None, mode: str = "sample",
            states: Array | None = None):  # fmt: skip
        """Decentralised actions ``[..., N, A]`` / ``[..., N]`` in the env's own space
        (``states`` is ignored: students never see the global state).

        Each agent's network sees only its observation, its id and its noise (plus, with
        ``shared_noise``, the joint noise every agent regenerates from the shared seed ``key``).
        """
        a = self._policy(self.params["student"], key, observations, legal, mode)
        return self.space.to_env(a)

    @functools.partial(jax.jit, static_argnames=("agent", "mode"))
    def act_agent(
        self, key: Array, agent: int, observation: Array, legal: Array | None, mode: str = "sample"
    ):
        """What agent ``agent`` runs on its own device: one forward of its student on its own
        observation ``[O]`` (and legal mask ``[A]``). ``key`` is the agent's own key, or the
        team's shared seed with ``shared_noise``; the result equals its slice of :meth:`act`."""
        n = self.spec.num_agents
        shape = (n, self._dim)
        noise = _noise(key, (1, *shape), mode)[0]  # drawn as act draws it for one environment
        shared = noise.reshape(-1) if self.config.shared_noise else None
        out = self._student().apply(
            self.params["student"], observation, jax.nn.one_hot(agent, n), noise[agent], shared
        )
        # Act's draw for one environment (its key, every agent's position), at this agent's.
        team = (1, n, out.shape[-1])
        legal = None if legal is None else jnp.broadcast_to(legal, team)
        out = jnp.broadcast_to(self.space.squash(out), team)
        a = self.space.act(out, legal, mode, jax.random.fold_in(key, 1))[0, agent]
        return self.space.to_env(a)

    def export_policy(self) -> dict:
        """The student for ``macflow export``: one network on ``(o_i, id_i, z_i[, joint z])``,
        the action its squashed output (continuous) or its logits' legal argmax after Gumbel
        draws (discrete), as :meth:`act_agent` computes it for the same draws."""
        c = self.config
        head = self.space.export_head()
        return policy_card(self.params["student"], head, noise=self._dim, joint=c.shared_noise)

    @functools.partial(jax.jit, static_argnames=("mode",))
    def act_teacher(self, key, observations, states, legal, mode: str = "sample"):
        """The joint teacher's actions (centralised: it needs the state), for analysis."""
        shape = (*observations.shape[:-1], self._dim)
        noise = _noise(key, shape, mode)
        # Sampled posterior teacher: the Gumbel half of the joint noise, drawn like the
        # students' categorical draws (same key), so a key fixes the whole joint action.
        gumbel = jax.random.gumbel(jax.random.fold_in(key, 1), shape) if mode == "sample" else None
        lead = observations.shape[:-2]
        flat = lambda x: None if x is None else x.reshape(-1, *x.shape[len(lead) :])  # noqa: E731
        a = self.teacher_sample(
            self.params["teacher"],
            flat(noise),
            flat(states),
            flat(observations),
            flat(legal),
            flat(gumbel),
        )
        a = a.reshape(*lead, *a.shape[1:])
        return self.space.to_env(a)
