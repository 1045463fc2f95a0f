"""One-step cooperative games used by the paper's analysis, with their scripted data generators.

Each game is a single step with a terminal: every agent sees the constant observation ``[1.0]``,
the global state is the concatenation of observations (the documented fallback), and the team
reward is a function of the joint action only.

- ``toy/coordination`` (discrete, 2 agents, actions {0, 1}): payoff 0 for (0,0), 1 for (0,1) and
  (1,0), 2 for (1,1). The data are dominated by the +1 patterns and the optimum (1,1) is rare, so
  behaviour cloning misses it and a decentralised policy must find it through the critic.
- ``toy/xor`` (continuous, 2 agents, actions in [-1, 1]): reward 1 when the signs differ
  (``(a1 > 0) != (a2 > 0)``), else 0. Data sit around (+1,-1) and (-1,+1): two modes that
  independent per-agent noise cannot reproduce (the paper's failure mode).
- ``toy/intensity`` (continuous, 2 agents, actions in [-1, 1]):
  ``r = (1 - zeta) * (a1**2 + a2**2) / 2 + zeta * a1 * a2``. At ``zeta = 0`` the reward is a sum of
  per-agent terms, so any coupling with the same marginals earns the same value; at ``zeta = 1``
  it is the pure interaction ``a1 * a2`` (its mixed partial derivative is 1 everywhere). The data
  are the two coupled modes (+m,+m) and (-m,-m), which score ``m**2`` for every zeta, while the
  product of their marginals scores ``(1 - zeta) * m**2``: the value gap grows linearly in zeta.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from macflow.envs.base import concat_state
from macflow.spec import EnvSpec, TimeStep


def _one_step_timestep(legal: jax.Array | None, reward, done: bool) -> TimeStep:
    obs = jnp.ones((2, 1), jnp.float32)
    return TimeStep(
        observations=obs,
        state=concat_state(obs),
        legal_actions=legal,
        reward=jnp.asarray(reward, jnp.float32),
        terminal=jnp.asarray(done),
        truncation=jnp.asarray(False),
    )


class _OneStepGame:
    """Shared reset/step of the one-step games; subclasses define ``spec`` and ``payoff``."""

    host: ClassVar[bool] = False

    def _legal(self) -> jax.Array | None:
        if self.spec.discrete:
            return jnp.ones((2, self.spec.action_dim), bool)
        return None

    def reset(self, key: jax.Array):
        del key
        return jnp.int32(0), _one_step_timestep(self._legal(), 0.0, False)

    def step(self, key: jax.Array, state, actions: jax.Array):
        del key
        return state + 1, _one_step_timestep(self._legal(), self.payoff(actions), True)


@dataclasses.dataclass(frozen=True)
class Coordination(_OneStepGame):
    """Two agents pick 0 or 1: (0,1) and (1,0) pay 1, (1,1) pays 2, (0,0) pays 0."""

    @property
    def spec(self) -> EnvSpec:
        return EnvSpec(
            "toy/coordination", 2, 1, 2, 2, discrete=True, episode_limit=1, state_is_obs_concat=True
        )

    def payoff(self, actions: jax.Array) -> jax.Array:
        table = jnp.array([[0.0, 1.0], [1.0, 2.0]], jnp.float32)
        return table[actions[0], actions[1]]


@dataclasses.dataclass(frozen=True)
class CoordinationData:
    """Scripted joint behaviour: mostly (0,1)/(1,0), the optimum (1,1) rarely."""

    name: ClassVar[str] = "scripted-coordination"
    rare: float = 0.05
    """Probability of the optimal joint action (1,1)."""
    zero: float = 0.0
    """Probability of the worst joint action (0,0); the rest is split evenly over (0,1), (1,0)."""

    def __post_init__(self):
        if not (0 <= self.rare <= 1 and 0 <= self.zero <= 1 and self.rare + self.zero <= 1):
            raise ValueError(f"need 0 <= rare, zero and rare + zero <= 1, got {self}")

    def init(self, env, key, env_state, ts):
        return ()

    def act(self, env, key, pstate, env_state, ts):
        rest = (1.0 - self.rare - self.zero) / 2
        probs = jnp.array([self.zero, rest, rest, self.rare])  # (0,0) (0,1) (1,0) (1,1)
        joint = jax.random.choice(key, 4, p=probs)
        return jnp.stack([joint // 2, joint % 2]).astype(jnp.int32)


_UNIT_BOX = {"action_low": (-1.0,), "action_high": (1.0,)}


@dataclasses.dataclass(frozen=True)
class Xor(_OneStepGame):
    """Two agents pick a number in [-1, 1]; the team earns 1 when their signs differ."""

    @property
    def spec(self) -> EnvSpec:
        return EnvSpec(
            "toy/xor",
            2,
            1,
            2,
            1,
            discrete=False,
            episode_limit=1,
            state_is_obs_concat=True,
            **_UNIT_BOX,
        )

    def payoff(self, actions: jax.Array) -> jax.Array:
        positive = actions[:, 0] > 0
        return (positive[0] != positive[1]).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class XorData:
    """Scripted joint behaviour: Gaussian noise around (+1,-1) or (-1,+1), clipped to the box."""

    name: ClassVar[str] = "scripted-xor"
    noise: float = 0.1
    """Standard deviation of the Gaussian noise around each mode."""
    balance: float = 0.5
    """Probability of the mode (+1,-1); (-1,+1) gets the rest."""

    def __post_init__(self):
        if self.noise < 0 or not 0 <= self.balance <= 1:
            raise ValueError(f"need noise >= 0 and 0 <= balance <= 1, got {self}")

    def init(self, env, key, env_state, ts):
        return ()

    def act(self, env, key, pstate, env_state, ts):
        k_mode, k_noise = jax.random.split(key)
        sign = jnp.where(jax.random.bernoulli(k_mode, self.balance), 1.0, -1.0)
        mode = jnp.array([[1.0], [-1.0]]) * sign
        return jnp.clip(mode + self.noise * jax.random.normal(k_noise, (2, 1)), -1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Intensity(_OneStepGame):
    """Reward (1 - zeta) * (a1^2 + a2^2) / 2 + zeta * a1 * a2: decomposable at zeta = 0,
    pure interaction at zeta = 1."""

    zeta: float = 0.5
    """Interaction intensity in [0, 1]."""

    def __post_init__(self):
        if not 0 <= self.zeta <= 1:
            raise ValueError(f"toy/intensity: zeta must lie in [0, 1], got {self.zeta}")

    @property
    def spec(self) -> EnvSpec:
        return EnvSpec(
            "toy/intensity",
            2,
            1,
            2,
            1,
            discrete=False,
            episode_limit=1,
            state_is_obs_concat=True,
            **_UNIT_BOX,
        )

    def payoff(self, actions: jax.Array) -> jax.Array:
        a1, a2 = actions[0, 0], actions[1, 0]
        return (1 - self.zeta) * (a1**2 + a2**2) / 2 + self.zeta * a1 * a2


@dataclasses.dataclass(frozen=True)
class IntensityData:
    """Scripted joint behaviour: the coupled modes (+m,+m) and (-m,-m) with Gaussian noise."""

    name: ClassVar[str] = "scripted-intensity"
    mode: float = 0.8
    """Position m of the two modes (+m,+m) and (-m,-m)."""
    noise: float = 0.1
    """Standard deviation of the Gaussian noise around each mode."""

    def __post_init__(self):
        if self.noise < 0 or not 0 <= self.mode <= 1:
            raise ValueError(f"need noise >= 0 and 0 <= mode <= 1, got {self}")

    def init(self, env, key, env_state, ts):
        return ()

    def act(self, env, key, pstate, env_state, ts):
        k_mode, k_noise = jax.random.split(key)
        sign = jnp.where(jax.random.bernoulli(k_mode), 1.0, -1.0)
        mode = jnp.full((2, 1), self.mode) * sign
        return jnp.clip(mode + self.noise * jax.random.normal(k_noise, (2, 1)), -1.0, 1.0)
