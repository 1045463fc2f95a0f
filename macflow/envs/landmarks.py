"""``toy/landmarks``: N agents cover N landmarks in the plane (3 to 40 agents and beyond).

Dynamics: agent positions ``p_i`` and landmarks ``l_k`` start uniform in [-1, 1]^2; each step
``p_i <- p_i + speed * clip(a_i, -1, 1)``. Team reward per step: ``-mean_k min_i ||p_i - l_k||``
(every landmark wants its nearest agent close). No terminal; the time limit truncates.

Observation of agent i (``4N`` floats): its position, the offsets ``l_k - p_i`` of all landmarks,
the offsets ``p_j - p_i`` of the other agents (j != i, in index order). Global state: all agent
positions then all landmark positions (``4N`` floats). ``info["covered"]`` is the fraction of
landmarks with an agent within ``radius``.

The scripted data move each agent toward its landmark in the assignment that minimises the total
distance (exact, scipy's ``linear_sum_assignment`` at the episode start), with Gaussian action
noise; with probability ``shuffle`` an episode uses a random assignment instead.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from scipy.optimize import linear_sum_assignment

from macflow.spec import EnvSpec, TimeStep


@struct.dataclass
class LandmarksState:
    agents: jax.Array  # [N, 2]
    landmarks: jax.Array  # [N, 2]
    t: jax.Array  # [] int32


@dataclasses.dataclass(frozen=True)
class Landmarks:
    """N agents spread over N landmarks; continuous 2-D velocity actions."""

    host: ClassVar[bool] = False
    num_agents: int = 3
    """Number of agents (and of landmarks)."""
    episode_limit: int = 25
    """Steps per episode (the time limit ends every episode as a truncation)."""
    speed: float = 0.1
    """Largest move per step along each axis."""
    radius: float = 0.1
    """A landmark counts as covered when an agent is this close (``info["covered"]``)."""

    def __post_init__(self):
        if self.num_agents < 2:
            raise ValueError(f"toy/landmarks needs num_agents >= 2, got {self.num_agents}")
        if self.episode_limit < 1 or self.speed <= 0 or self.radius <= 0:
            raise ValueError(f"toy/landmarks: episode_limit, speed, radius must be > 0: {self}")

    @property
    def spec(self) -> EnvSpec:
        n = self.num_agents
        return EnvSpec(
            "toy/landmarks",
            n,
            4 * n,
            4 * n,
            2,
            discrete=False,
            episode_limit=self.episode_limit,
            action_low=(-1.0, -1.0),
            action_high=(1.0, 1.0),
        )

    def _timestep(self, s: LandmarksState, reward, truncation) -> TimeStep:
        n = self.num_agents
        offsets = (
            s.landmarks[None, :, :] - s.agents[:, None, :]
        )  # [N, N, 2] landmark k from agent i
        rel = s.agents[None, :, :] - s.agents[:, None, :]  # [N, N, 2] agent j from agent i
        others = np.array([[j for j in range(n) if j != i] for i in range(n)])  # static [N, N-1]
        rel_others = jnp.take_along_axis(rel, others[:, :, None], axis=1)
        obs = jnp.concatenate(
            [s.agents, offsets.reshape(n, 2 * n), rel_others.reshape(n, 2 * (n - 1))], axis=1
        )
        dist = jnp.linalg.norm(offsets, axis=-1)  # [N agents, N landmarks]
        covered = jnp.mean(jnp.min(dist, axis=0) <= self.radius)
        return TimeStep(
            observations=obs.astype(jnp.float32),
            state=jnp.concatenate([s.agents.reshape(-1), s.landmarks.reshape(-1)]),
            legal_actions=None,
            reward=jnp.asarray(reward, jnp.float32),
            terminal=jnp.asarray(False),
            truncation=jnp.asarray(truncation),
            info={"covered": covered.astype(jnp.float32)},
        )

    def reset(self, key: jax.Array):
        k_agents, k_marks = jax.random.split(key)
        shape = (self.num_agents, 2)
        s = LandmarksState(
            agents=jax.random.uniform(k_agents, shape, jnp.float32, -1.0, 1.0),
            landmarks=jax.random.uniform(k_marks, shape, jnp.float32, -1.0, 1.0),
            t=jnp.int32(0),
        )
        return s, self._timestep(s, 0.0, False)

    def step(self, key: jax.Array, state: LandmarksState, actions: jax.Array):
        del key
        agents = state.agents + self.speed * jnp.clip(actions, -1.0, 1.0)
        s = state.replace(agents=agents, t=state.t + 1)
        dist = jnp.linalg.norm(s.landmarks[None, :, :] - agents[:, None, :], axis=-1)
        reward = -jnp.mean(jnp.min(dist, axis=0))
        return s, self._timestep(s, reward, s.t >= self.episode_limit)


def _optimal_assignment(cost: np.ndarray) -> np.ndarray:
    _, cols = linear_sum_assignment(np.asarray(cost))
    return cols.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class LandmarksData:
    """Scripted behaviour: head for the optimally assigned landmark, with Gaussian action noise."""

    name: ClassVar[str] = "scripted-landmarks"
    noise: float = 0.1
    """Standard deviation of the Gaussian noise added to each action before clipping."""
    shuffle: float = 0.0
    """Probability that an episode follows a random assignment instead of the optimal one."""

    def __post_init__(self):
        if self.noise < 0 or not 0 <= self.shuffle <= 1:
            raise ValueError(f"need noise >= 0 and 0 <= shuffle <= 1, got {self}")

    def init(self, env: Landmarks, key, env_state: LandmarksState, ts):
        n = env.num_agents
        cost = jnp.linalg.norm(env_state.agents[:, None, :] - env_state.landmarks[None], axis=-1)
        # scipy's exact assignment on the host; "sequential" runs it once per vmapped episode.
        best = jax.pure_callback(
            _optimal_assignment,
            jax.ShapeDtypeStruct((n,), jnp.int32),
            cost,
            vmap_method="sequential",
        )
        k_coin, k_perm = jax.random.split(key)
        random = jax.random.permutation(k_perm, n).astype(jnp.int32)
        return jnp.where(jax.random.bernoulli(k_coin, self.shuffle), random, best)

    def act(self, env: Landmarks, key, pstate, env_state: LandmarksState, ts):
        target = env_state.landmarks[pstate]
        step = jnp.clip((target - env_state.agents) / env.speed, -1.0, 1.0)
        noise = self.noise * jax.random.normal(key, step.shape)
        return jnp.clip(step + noise, -1.0, 1.0)
