"""Diffusion policy baseline: a DDPM over the JOINT action, executed centralised on the state.

It follows the centralised-execution policy of MADiff (Zhu et al., "MADiff: Offline Multi-agent
Learning with Diffusion Models", NeurIPS 2024, arXiv 2305.17330) and, with Q guidance, the policy
variant of DoF (Li et al., "DoF: A Diffusion Factorization Framework for Offline Multi-Agent
Reinforcement Learning", ICLR 2025), whose Q term is Diffusion-QL's (Wang et al., "Diffusion
Policies as an Expressive Policy Class for Offline Reinforcement Learning", ICLR 2023,
arXiv 2208.06193).

Equations, in our notation. The joint action ``x = (a_1, ..., a_N)``, ``[N, D]``, lives in
[-1, 1] per dimension (continuous) or is the stack of the agents' one-hot vectors scaled to
{-1, 1} (discrete, ``2 * one_hot - 1``). A variance schedule ``beta_1..T`` gives
``alpha_k = 1 - beta_k`` and ``abar_k = prod_{j <= k} alpha_j``.

1. Forward process and loss: ``x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps``, ``eps ~ N(0, I)``,
   ``L_diff = E_{k ~ U{1..T}} || eps_theta(x_k, k / T, s[, o_1..o_N]) - eps ||^2``.
2. Sampling from ``x_T ~ N(0, I)``; every step predicts
   ``x0_hat = clip((x_k - sqrt(1 - abar_k) eps_theta) / sqrt(abar_k), -1, 1)`` (clipping as is
   standard) and moves to ``x_{k'}``:
   - ``ddpm`` (ancestral, all T steps): ``x_{k-1} = c1_k x0_hat + c2_k x_k + sigma_k z`` with the
     posterior ``c1 = sqrt(abar_{k-1}) beta_k / (1 - abar_k)``,
     ``c2 = sqrt(alpha_k) (1 - abar_{k-1}) / (1 - abar_k)``,
     ``sigma^2 = beta_k (1 - abar_{k-1}) / (1 - abar_k)``.
   - ``ddim`` (K steps ``k = round(linspace(T, 1, K))``, always from T down to 1; eta):
     ``eps' = (x_k - sqrt(abar_k) x0_hat) / sqrt(1 - abar_k)``,
     ``x_{k'} = sqrt(abar_{k'}) x0_hat + sqrt(1 - abar_{k'} - sigma^2) eps' + sigma z`` with
     ``sigma = eta sqrt((1 - abar_{k'}) / (1 - abar_k) (1 - abar_k / abar_{k'}))``; after the
     last step ``abar = 1``, so the output is ``x0_hat``. With K = T and eta = 1 this is exactly
     the ddpm step (tested).
   Discrete actions are decoded by the legal argmax of the denoised vector, as MAC-Flow's
   discrete teacher does, so an illegal action is never taken.
3. Optional Q guidance (``q_weight > 0``, DoF-policy / Diffusion-QL): per-agent critics
   ``Q_i(o_i, a_i)`` (``nn.Critic``: shared weights, one-hot id, 2 heads) mixed by VDN,
   ``Q_tot = sum_i Q_i``, trained by TD, ``y = r + gamma * bootstrap * agg_heads Q'_tot(s', a')``
   (min over heads by default, bootstrap 0 only after a terminal) with ``a'`` from the EMA
   policy's ``guide_steps`` DDIM chain; the policy minimises
   ``L = L_diff - q_weight * Q_tot(s, a~) / sg(mean |Q_tot|)`` with ``a~`` sampled by a
   differentiable ``guide_steps`` DDIM chain of the online network. The critic is updated
   first, then the policy against it (Diffusion-QL's order).

The network that acts is an exponential moving average of the trained one (``ema``), as in
MADiff and Diffusion-QL.

Execution is centralised: ``act`` denoises the whole joint action from the global state, with one
network evaluation per denoising step (200 for the ``paper`` preset's ddpm, 15 for ddim). That
is the cost diffusion MARL pays at every decision, and what MAC-Flow's one-step decentralised
students avoid (one student forward per agent, on its own observation, no state needed).
Measured once on the shared 2-core CPU (4x512, N = 3, batch 1): ddpm-200 about 21 ms per
decision, ddim-15 about 1.2 ms, against 0.16 ms for one MAC-Flow student (0.44 ms for the team).

Defaults (the ``paper`` preset, MADiff/DoF-like): T = 200, the cosine schedule of MADiff
(Nichol & Dhariwal's, betas clipped at 0.999), ddpm sampling with all T steps, no Q guidance, and
MAC-Flow's teacher width (512,)*4 with the very same network (``nn.JointVelocity``: a flat MLP on
the joint x_t, time features of k / T, the state [, observations]), so the cost per network
evaluation equals the MAC-Flow teacher's. The ``ql`` preset is Diffusion-QL's setting: the VP
schedule with T = 5, ddpm sampling, Q guidance with weight 1 back-propagated through the whole
chain (ddim with K = T = 5 and eta = 1, which is the ancestral chain itself), min over the two
target heads. One training stage, everything trained jointly from the first update as in
Diffusion-QL (no warm-up: the Q term is normalised by mean |Q_tot|, so an untrained critic cannot
blow up the policy, and its diffusion loss keeps it on the data).

Departures from the papers (and why):
- MADiff and DoF diffuse whole trajectories (a planner with inverse dynamics in MADiff); here the
  diffusion model is a policy over the current joint action given the state, as in DoF's policy
  variant and Diffusion-QL, so it plugs into the same single-step interface as every other agent.
- Q guidance back-propagates through a short DDIM chain of ``guide_steps`` steps (default 5)
  rather than through all T = 200 ancestral steps: back-propagating through 200 network
  evaluations per update is prohibitively slow and memory-hungry; the TD targets' next actions
  use the same short chain (of the EMA network, as Diffusion-QL's EMA actor). With
  ``guide_steps == timesteps`` and ``eta = 1`` (the ``ql`` preset) there is no departure. The Q
  term improves the short chain's samples only: on toy/coordination (T = 20, weight 3) the guided
  5-step chain chose (1,1) almost always while ddpm-20 acting did so in 28-59% of episodes. With
  Q guidance and T > guide_steps, act with ``sampler="ddim"``, ``ddim_steps=guide_steps``.
- Discrete tasks with Q guidance: the critic scores the legal-masked softmax of the denoised
  vector (expected utility ``sum_a pi_i(a) Q_i(o_i, a)``), so the Q gradient reaches the network;
  an argmax would give none. Diffusion-QL is continuous only.
- Discrete one-hots are diffused as {-1, 1} vectors ("analog bits"), the scale the schedules are
  made for: with {0, 1} one-hots the rare joint action (1,1) of toy/coordination (5% of the data)
  came out in 1-3% of ddpm samples, with {-1, 1} in about 5%. Decoding is the same argmax.
- ``zero`` acting mode (deterministic): x_T = 0 and eta = 0. For ``ddpm`` this means the
  deterministic DDIM update over all T steps (the ancestral chain needs fresh noise each step).
- The EMA decays every update (0.999, a horizon of 1000 updates) instead of 0.995 every 5
  (Diffusion-QL) or 10 (MADiff) updates, with no delayed start.
- Network widths are MAC-Flow's (512,)*4 (Diffusion-QL: 3x256 Mish; MADiff: a U-Net over time)
  so that the policy networks of the compared methods cost the same per evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from macflow.agents.base import AgentBase, Stage, adam_step, check_config, polyak, small
from macflow.nn import JointVelocity, utilities
from macflow.spec import EnvSpec

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """Diffusion policy hyper-parameters (the ``paper`` preset's values are the defaults)."""

    hidden: tuple[int, ...] = (512, 512, 512, 512)
    """Hidden widths of the noise-prediction network (MAC-Flow's ``teacher_hidden``)."""
    use_obs: bool = False
    """The network also sees every agent's observation (besides the global state)."""
    timesteps: int = 200
    """Number T of diffusion steps (training noise levels; ddpm samples with all of them)."""
    schedule: Literal["cosine", "vp"] = "cosine"
    """Variance schedule: ``cosine`` (MADiff, Nichol & Dhariwal, betas clipped at 0.999) or
    ``vp`` (Diffusion-QL's discretised variance-preserving SDE, beta from 0.1 to 10)."""
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    """How ``act`` samples: ``ddpm`` ancestral with all T steps, or ``ddim`` with
    ``ddim_steps``."""
    ddim_steps: int = 15
    """Steps K of the ddim sampler (1 <= K <= T)."""
    eta: float = 0.0
    """DDIM stochasticity in ``sample`` mode (0: deterministic given x_T; 1: ancestral
    variance). Used by the ddim sampler, the guided chain and the TD targets' actions."""
    q_weight: float = 0.0
    """Weight of the Q term; 0 is pure behaviour diffusion (MADiff) and trains no critic."""
    guide_steps: int = 5
    """DDIM steps of the differentiable chain of the Q term and of the TD targets' actions."""
    critic_hidden: tuple[int, ...] = (512, 512, 512, 512)
    """Hidden widths of the per-agent critic (with LayerNorm); used only with Q guidance."""
    critic_heads: int = 2
    """Critic ensemble size."""
    q_agg: Literal["mean", "min"] = "min"
    """How the target heads are combined (Diffusion-QL: the minimum of two)."""
    discount: float = 0.99
    """Discount gamma."""
    tau: float = 0.005
    """Polyak rate of the target critic."""
    lr: float = 3e-4
    """Adam learning rate of every network."""
    ema: float = 0.999
    """Decay per update of the exponential moving average of the policy network, which acts
    and gives the TD targets' actions (Diffusion-QL and MADiff: 0.995 every 5-10 updates).
    0: use the online weights."""

    def __post_init__(self):
        check_config(self)
        problems = []
        if not self.hidden or min(self.hidden) < 1:
            problems.append(f"hidden must be non-empty positive widths, got {self.hidden}")
        if self.timesteps < 1:
            problems.append(f"timesteps must be >= 1, got {self.timesteps}")
        for name in ("ddim_steps", "guide_steps"):
            value = getattr(self, name)
            if not 1 <= value <= self.timesteps:
                flag = "--agent." + name.replace("_", "-")
                problems.append(f"{flag} must be in [1, timesteps={self.timesteps}], got {value}")
        if self.schedule not in ("cosine", "vp"):
            problems.append(f"schedule must be 'cosine' or 'vp', got {self.schedule!r}")
        if self.sampler not in ("ddpm", "ddim"):
            problems.append(f"sampler must be 'ddpm' or 'ddim', got {self.sampler!r}")
        if self.q_agg not in ("mean", "min"):
            problems.append(f"q_agg must be 'mean' or 'min', got {self.q_agg!r}")
        if not 0 <= self.eta <= 1:
            problems.append(f"eta must be in [0, 1], got {self.eta}")
        if self.q_weight < 0:
            problems.append(f"q_weight must be >= 0, got {self.q_weight}")
        if self.critic_heads < 1:
            problems.append(f"critic_heads must be >= 1, got {self.critic_heads}")
        if not 0 <= self.ema < 1:
            problems.append(f"ema must be in [0, 1), got {self.ema}")
        if not 0 <= self.discount <= 1 or not 0 < self.tau <= 1 or self.lr <= 0:
            problems.append(
                f"need 0 <= discount <= 1, 0 < tau <= 1, lr > 0; got {self.discount}, "
                f"{self.tau}, {self.lr}"
            )
        if problems:
            raise ValueError("invalid DiffusionConfig: " + "; ".join(problems))


def _paper(spec: EnvSpec) -> DiffusionConfig:
    del spec  # the same for both action kinds
    return DiffusionConfig()


def _ql(spec: EnvSpec) -> DiffusionConfig:
    del spec
    return DiffusionConfig(
        timesteps=5,
        schedule="vp",
        sampler="ddpm",
        ddim_steps=5,
        eta=1.0,
        q_weight=1.0,
        guide_steps=5,
    )


def schedule(kind: str, timesteps: int) -> dict[str, np.ndarray]:
    """``betas, alphas, abar, abar_prev`` (``[T]`` float32 numpy; index k-1 is step k)."""
    t = timesteps
    if kind == "cosine":
        s = 0.008
        grid = np.linspace(0, t, t + 1, dtype=np.float64) / t
        f = np.cos((grid + s) / (1 + s) * np.pi / 2) ** 2
        betas = np.clip(1 - f[1:] / f[:-1], 0.0, 0.999)
    else:  # vp
        lo, hi = 0.1, 10.0
        k = np.arange(1, t + 1, dtype=np.float64)
        betas = 1 - np.exp(-lo / t - 0.5 * (hi - lo) * (2 * k - 1) / t**2)
    alphas = 1 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    out = {"betas": betas, "alphas": alphas, "abar": abar, "abar_prev": abar_prev}
    return {k: v.astype(np.float32) for k, v in out.items()}


def ddim_indices(timesteps: int, steps: int) -> np.ndarray:
    """The K step indices (0-based, noisiest first) of a DDIM chain; always from T to 1."""
    if steps == 1:
        return np.array([timesteps - 1])
    return np.round(np.linspace(timesteps - 1, 0, steps)).astype(np.int32)


class Diffusion(AgentBase, struct.PyTreeNode):
    """Noise-prediction network, optional critic (and its target), optimiser states and RNG."""

    rng: Array
    params: dict[str, Any]
    target: dict[str, Any]
    opt: dict[str, Any]
    config: DiffusionConfig = struct.field(pytree_node=False)
    spec: EnvSpec = struct.field(pytree_node=False)

    Config = DiffusionConfig
    centralised = True
    presets = {"paper": _paper, "ql": _ql, "small": small(_paper)}

    @property
    def _dim(self) -> int:
        return self.spec.action_dim

    @property
    def _guided(self) -> bool:
        return self.config.q_weight > 0

    def _net(self):
        return JointVelocity(self.config.hidden, use_obs=self.config.use_obs)

    def _critic(self):
        return self.space.critic(self.config.critic_hidden, self.config.critic_heads)

    @classmethod
    def create(cls, key: Array, spec: EnvSpec, config: DiffusionConfig) -> Diffusion:
        n, d = spec.num_agents, spec.action_dim
        obs = jnp.zeros((1, n, spec.obs_dim))
        state = jnp.zeros((1, spec.state_dim))
        x = jnp.zeros((1, n, d))
        shell = cls(rng=key, params={}, target={}, opt={}, config=config, spec=spec)
        k_net, k_critic, rng = jax.random.split(key, 3)
        params = {"policy": shell._net().init(k_net, x, jnp.zeros(1), state, obs), "critic": {}}
        if shell._guided:
            params["critic"] = shell._critic().init(k_critic, obs, shell.space.critic_input(x))
        opt = {k: optax.adam(config.lr).init(v) for k, v in params.items()}
        target = {"critic": params["critic"], "policy": params["policy"]}
        return shell.replace(rng=rng, params=params, target=target, opt=opt)

    @classmethod
    def stages(cls, config: DiffusionConfig, steps: int) -> list[Stage]:
        return [Stage("all", steps, True)]

    def prepare(self, sampler, stage: str):
        return None

    # --- diffusion ------------------------------------------------------------------------------

    def _schedule(self) -> dict[str, Array]:
        return {
            k: jnp.asarray(v)
            for k, v in schedule(self.config.schedule, self.config.timesteps).items()
        }

    def _targets(self, batch) -> Array:
        """Dataset joint actions x_0: [-1, 1] vectors or {-1, 1} one-hots, ``[B, N, D]``."""
        return self.space.vectors(self.space.from_env(batch.actions), off=-1.0)

    def _x0(self, params, x, index, states, obs, sch) -> Array:
        """The clipped ``x0_hat`` predicted from ``x`` at step ``index + 1`` (a scalar index)."""
        t = jnp.full(x.shape[:1], (index + 1) / self.config.timesteps)
        eps = self._net().apply(params, x, t, states, obs)
        ab = sch["abar"][index]
        return jnp.clip((x - jnp.sqrt(1 - ab) * eps) / jnp.sqrt(ab), -1.0, 1.0)

    def denoise(self, params, key, states, obs, method: str, steps: int, mode: str, eta: float):
        """The denoised joint vector ``[B, N, D]`` in [-1, 1] (differentiable in ``params``).

        ``method`` ``ddpm`` (ancestral, all T steps; deterministic DDIM in ``zero`` mode) or
        ``ddim`` (``steps`` steps, ``eta``; eta = 0 in ``zero`` mode). ``zero``: x_T = 0.
        """
        sch = self._schedule()
        t_total = self.config.timesteps
        shape = (*obs.shape[:-1], self._dim)
        k_init, k_steps = jax.random.split(key)
        x = jnp.zeros(shape) if mode == "zero" else jax.random.normal(k_init, shape)
        if method == "ddpm":
            if mode == "sample":
                return self._ancestral(params, k_steps, x, states, obs, sch)
            steps, eta = t_total, 0.0
        if mode == "zero":
            eta = 0.0
        idx = jnp.asarray(ddim_indices(t_total, steps))
        prev_abar = jnp.concatenate([sch["abar"][idx[1:]], jnp.ones(1)])

        def step(x, inp):
            i, ab_prev, k = inp
            x0 = self._x0(params, x, i, states, obs, sch)
            ab = sch["abar"][i]
            eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)
            var = eta**2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
            direction = jnp.sqrt(jnp.maximum(1 - ab_prev - var, 0.0)) * eps
            x = jnp.sqrt(ab_prev) * x0 + direction
            if eta > 0:  # static: eta is config or 0
                x = x + jnp.sqrt(var) * jax.random.normal(k, x.shape)
            return x, None

        keys = jax.random.split(k_steps, steps)
        x, _ = jax.lax.scan(step, x, (idx, prev_abar, keys))
        return x

    def _ancestral(self, params, key, x, states, obs, sch) -> Array:
        t_total = self.config.timesteps
        betas, alphas, abar, abar_prev = sch["betas"], sch["alphas"], sch["abar"], sch["abar_prev"]
        c1 = jnp.sqrt(abar_prev) * betas / (1 - abar)
        c2 = jnp.sqrt(alphas) * (1 - abar_prev) / (1 - abar)
        var = betas * (1 - abar_prev) / (1 - abar)  # 0 at the last step: no noise added there

        def step(x, inp):
            i, k = inp
            x0 = self._x0(params, x, i, states, obs, sch)
            mean = c1[i] * x0 + c2[i] * x
            return mean + jnp.sqrt(var[i]) * jax.random.normal(k, x.shape), None

        keys = jax.random.split(key, t_total)
        x, _ = jax.lax.scan(step, x, (jnp.arange(t_total - 1, -1, -1), keys))
        return x

    def _decode(self, x: Array, legal: Array | None) -> Array:
        """[-1, 1] joint actions, or the legal argmax of each agent's denoised vector."""
        return self.space.decode(x, legal)

    @functools.partial(jax.jit, static_argnames=("method", "steps", "mode"))
    def sample(self, params, key, states, observations, legal=None, method: str = "ddpm",
               steps: int | None = None, mode: str = "sample"):  # fmt: skip
        """Joint actions for ``states [B, S]``, ``observations [B, N, O]``: [-1, 1] vectors
        ``[B, N, D]`` or legal indices ``[B, N]``. ``method`` ``ddpm`` (all T steps) or ``ddim``
        (``steps``, default ``ddim_steps``). ``params``: a policy network's weights, e.g. the
        EMA ``agent.target["policy"]`` that :meth:`act` uses. For benchmarks: one call is one
        centralised decision of the whole team."""
        steps = steps or (self.config.ddim_steps if method == "ddim" else self.config.timesteps)
        x = self.denoise(params, key, states, observations, method, steps, mode, self.config.eta)
        return self._decode(x, legal)

    def diffusion_loss(self, params, batch, key) -> Array:
        x0 = self._targets(batch)
        k_noise, k_time = jax.random.split(key)
        eps = jax.random.normal(k_noise, x0.shape)
        i = jax.random.randint(k_time, x0.shape[:1], 0, self.config.timesteps)
        ab = self._schedule()["abar"][i][:, None, None]
        xt = jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * eps
        t = (i + 1) / self.config.timesteps
        pred = self._net().apply(params, xt, t, batch.states, batch.observations)
        err = ((pred - eps) ** 2).mean(axis=(1, 2))
        return (err * batch.valid).sum() / batch.valid.sum()

    # --- Q guidance -----------------------------------------------------------------------------

    def _utilities(self, critic, obs: Array, actions: Array) -> Array:
        """Per-agent Q of actions (indices, or [-1, 1] vectors), ``[H, B, N]``."""
        return utilities(self._critic(), critic, obs, actions)

    def _guided_sample(self, params, key, states, obs) -> Array:
        c = self.config
        return self.denoise(params, key, states, obs, "ddim", c.guide_steps, "sample", c.eta)

    def td_target(self, batch, key) -> Array:
        """``r + gamma * bootstrap * agg_heads Q'_tot(s', a')``, ``a'`` from the policy's short
        DDIM chain (legal under the next mask); bootstrap is 0 only after a terminal."""
        c = self.config
        x = self._guided_sample(
            self.target["policy"], key, batch.next_states, batch.next_observations
        )
        next_a = self._decode(x, batch.next_legal_actions)
        q = self._utilities(self.target["critic"], batch.next_observations, next_a).sum(-1)
        q = q.min(axis=0) if c.q_agg == "min" else q.mean(axis=0)
        return jax.lax.stop_gradient(batch.rewards + c.discount * batch.bootstrap * q)

    def critic_loss(self, critic, batch, key) -> tuple[Array, dict]:
        y = self.td_target(batch, key)
        actions = self.space.from_env(batch.actions)
        q = self._utilities(critic, batch.observations, actions).sum(-1)
        loss = (((q - y) ** 2).mean(axis=0) * batch.valid).sum() / batch.valid.sum()
        return loss, {"critic/td_loss": loss, "critic/q_mean": q.mean(), "critic/target": y.mean()}

    def q_value(self, params, batch, key) -> Array:
        """``[B]`` VDN Q_tot of actions sampled by the differentiable guided chain (discrete:
        expected utility under the legal softmax of the denoised vector)."""
        x = self._guided_sample(params, key, batch.states, batch.observations)
        policy = self.space.relax(x, batch.legal_actions)
        return self.space.utility(
            self._critic(), self.params["critic"], batch.observations, policy
        ).sum(-1)

    def policy_loss(self, params, batch, key) -> tuple[Array, dict]:
        k_diff, k_q = jax.random.split(key)
        diff = self.diffusion_loss(params, batch, k_diff)
        info = {"diffusion/loss": diff}
        if not self._guided:
            return diff, info
        q_tot = self.q_value(params, batch, k_q)
        scale = jax.lax.stop_gradient(1 / jnp.maximum(jnp.abs(q_tot).mean(), 1e-6))
        q_term = (q_tot * batch.valid).sum() / batch.valid.sum()
        loss = diff - self.config.q_weight * scale * q_term
        return loss, info | {"actor/loss": loss, "actor/q": q_term, "actor/lambda": scale}

    # --- the interface --------------------------------------------------------------------------

    @functools.partial(jax.jit, static_argnames=("stage",))
    def update(self, batch, stage: str, aux=None) -> tuple[Diffusion, dict[str, Array]]:
        """One update of the critic (with Q guidance) and then of the policy network, which
        uses the updated critic (Diffusion-QL's order)."""
        lr = self.config.lr
        rng, k_critic, k_policy = jax.random.split(self.rng, 3)
        agent, info = self, {}
        if self._guided:
            grads, i = jax.grad(self.critic_loss, has_aux=True)(
                self.params["critic"], batch, k_critic
            )
            info.update(i)
            critic, opt_c = adam_step(lr, self.params["critic"], grads, self.opt["critic"])
            agent = self.replace(
                params=self.params | {"critic": critic},
                opt=self.opt | {"critic": opt_c},
                target=self.target
                | {"critic": polyak(self.target["critic"], critic, self.config.tau)},
            )
        grads, i = jax.grad(agent.policy_loss, has_aux=True)(
            agent.params["policy"], batch, k_policy
        )
        info.update(i)
        policy, opt_p = adam_step(lr, agent.params["policy"], grads, agent.opt["policy"])
        ema = polyak(agent.target["policy"], policy, 1 - self.config.ema)
        agent = agent.replace(
            rng=rng,
            params=agent.params | {"policy": policy},
            opt=agent.opt | {"policy": opt_p},
            target=agent.target | {"policy": ema},
        )
        return agent, info

    @functools.partial(jax.jit, static_argnames=("mode",))
    def act(self, key: Array, observations: Array, legal: Array | None, mode: str = "sample",
            states: Array | None = None):  # fmt: skip
        """Centralised joint actions ``[..., N, A]`` / ``[..., N]`` in the env's own space,
        denoised from the global state ``states [..., S]`` with the configured sampler (T or
        ``ddim_steps`` network evaluations per decision)."""
        if states is None:
            raise ValueError("the diffusion policy is centralised: act needs the global states")
        lead = observations.shape[:-2]
        flat = lambda x: None if x is None else x.reshape(-1, *x.shape[len(lead) :])  # noqa: E731
        a = self.sample(
            self.target["policy"], key, flat(states), flat(observations), flat(legal),
            self.config.sampler, None, mode,
        )  # fmt: skip
        a = a.reshape(*lead, *a.shape[1:])
        return self.space.to_env(a)
